"""`serve --workers N`: N processes share the ports; one dying stops them all."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import HAIKU, Emulator, ProxyFactory

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_two_workers_serve_and_fail_together(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(opa_url, workers=2)
    workers = children_of(proxy.process.pid)
    assert len(workers) == 2
    for _ in range(6):
        # A fresh connection each time, so the kernel may pick either worker.
        proxy.close_clients()
        proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    assert len(emulator.requests()) == 6
    assert [r["event"] for r in proxy.records()].count("completed") == 6

    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while proxy.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.process.returncode == 1, "a dead worker stops the whole proxy"
    assert not Path(f"/proc/{workers[1]}").exists() or children_of(proxy.process.pid) == []
