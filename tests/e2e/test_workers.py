"""`serve --workers N`: N processes share the ports; one that dies is started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import botocore.exceptions

from proxy_dev import devstack
from tests.conftest import HAIKU, Emulator, Pki, ProxyFactory, ProxyHandle, children_of, wait_for
from tests.e2e.test_metrics import sample, scrape

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


def test_a_worker_that_dies_is_started_again_while_the_other_serves(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator, shared_redis: str
) -> None:
    proxy = proxy_factory(opa_url, workers=2, task_store=shared_redis)
    workers = children_of(proxy.process.pid)
    assert len(workers) == 2
    victim = workers[0]
    index = _index_of(proxy, victim)
    log = proxy.audit_path.parent / "proxy.log"

    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"(pid {victim}) died (SIGKILL)" in log.read_text(), timeout=10)
    # Meanwhile the kernel gives every new connection to the worker still listening.
    for _ in range(4):
        _call(proxy)
    wait_for(lambda: len(children_of(proxy.process.pid)) == 2, timeout=15)
    [replacement] = set(children_of(proxy.process.pid)) - set(workers)
    assert proxy.process.poll() is None, "the proxy kept running"
    assert f"worker {index} started again as pid {replacement}" in log.read_text()

    # The replacement resumes its predecessor's audit chain, and serves.
    path = proxy.audit_files()[index]
    wait_for(lambda: _resumed_by(path, replacement), timeout=15)
    calls = 0
    while calls < 40 and not _served_after_resume(path, replacement):
        _call(proxy)
        calls += 1
    assert _served_after_resume(path, replacement), "the replacement took no connection"
    assert sample(scrape(proxy), "bedrock_proxy_worker_deaths_total", cause="SIGKILL") == 1.0
    completed = [
        r for r in proxy.records() if r["event"] == "completed" and r["operation"] == "Converse"
    ]
    assert all(r["outcome"] == "ok" for r in completed) and len(completed) == 4 + calls


def test_one_worker_is_started_again_and_a_stop_while_it_waits_starts_nothing(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(opa_url)
    log = proxy.audit_path.parent / "proxy.log"
    [first] = children_of(proxy.process.pid)
    os.kill(first, signal.SIGKILL)
    # The parent kept the port: the replacement binds it again and serves.
    wait_for(lambda: "worker 0 started again" in log.read_text(), timeout=10)
    [second] = children_of(proxy.process.pid)
    wait_for(lambda: _serves(proxy), timeout=15)
    assert _resumed_by(proxy.audit_path, second)

    os.kill(second, signal.SIGKILL)  # a quick second death: a longer wait before the restart
    wait_for(lambda: f"(pid {second}) died (SIGKILL)" in log.read_text(), timeout=10)
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(5) == 0, "a clean stop, not a failure"
    assert log.read_text().count("started again") == 1
    deaths = [line for line in log.read_text().splitlines() if "died (SIGKILL)" in line]
    assert deaths[0].endswith("starting it again in 1 s")
    assert deaths[1].endswith("starting it again in 2 s")


def _serves(proxy: ProxyHandle) -> bool:
    try:
        _call(proxy)
    except botocore.exceptions.EndpointConnectionError:
        return False  # not listening yet
    return True


def _call(proxy: ProxyHandle) -> None:
    proxy.close_clients()  # a fresh connection: the kernel picks a worker for each
    assert proxy.client().converse(modelId=HAIKU, messages=MESSAGES)["output"]


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _index_of(proxy: ProxyHandle, pid: int) -> int:
    [start] = [r for r in proxy.all_records() if r["event"] == "chain_start" and r["pid"] == pid]
    index = start["worker"]
    assert isinstance(index, int)
    return index


def _resumed_by(path: Path, pid: int) -> bool:
    return any(r["event"] == "chain_resumed" and r["pid"] == pid for r in _lines(path))


def _served_after_resume(path: Path, pid: int) -> bool:
    records = _lines(path)
    [resumed] = [i for i, r in enumerate(records) if r["event"] == "chain_resumed"]
    assert records[resumed]["pid"] == pid and records[resumed]["previous_sealed"] is False
    return any(r["event"] == "completed" for r in records[resumed:])


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
