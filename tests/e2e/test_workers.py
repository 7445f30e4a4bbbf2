"""`serve --workers N`: N processes share the ports; one dying stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from proxy_dev import devstack
from tests.conftest import HAIKU, Emulator, Pki, ProxyFactory, children_of

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


def test_two_workers_serve_and_fail_together(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator, shared_redis: str
) -> None:
    proxy = proxy_factory(opa_url, workers=2, task_store=shared_redis)
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


def test_stdout_audit_with_several_workers_is_refused_at_start(
    tmp_path: Path, pki: Pki, emulator: Emulator, opa_url: str
) -> None:
    config = devstack.write_proxy_config(
        tmp_path / "proxy.toml",
        pki=pki.dir,
        opa_url=opa_url,
        emulator=emulator.info,
        audit_log=Path("-"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert 'audit path "-" (stdout) cannot be shared by 2 workers' in done.stderr


def test_memory_task_store_with_several_workers_is_refused_at_start(
    tmp_path: Path, pki: Pki, emulator: Emulator, opa_url: str
) -> None:
    config = devstack.write_proxy_config(
        tmp_path / "proxy.toml",
        pki=pki.dir,
        opa_url=opa_url,
        emulator=emulator.info,
        audit_log=tmp_path / "audit.log",
    )
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--workers", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("bedrock-proxy: ")
    assert 'store = "memory"' in done.stderr and "3 workers" in done.stderr
    assert "[tasks] store" in done.stderr and "redis://" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "audit.log").exists(), "refused before any worker started"


def test_workers_stop_gracefully_when_the_parent_is_killed(
    proxy_factory: ProxyFactory, opa_url: str, shared_redis: str
) -> None:
    proxy = proxy_factory(opa_url, workers=2, task_store=shared_redis)
    workers = children_of(proxy.process.pid)
    assert len(workers) == 2
    proxy.process.kill()  # SIGKILL: the parent cannot forward anything
    proxy.process.wait(10)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "orphaned workers"
    # Each stopped the normal way: its chain ends with the final shutdown checkpoint.
    files = proxy.audit_files()
    assert len(files) == 2
    for path in files:
        last = json.loads(path.read_text().splitlines()[-1])
        assert (last["event"], last["reason"], last["final"]) == ("checkpoint", "shutdown", True)
