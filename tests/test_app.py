"""proxy.app: the components' lifecycle.

Start-up builds every component under one exit stack, so a failure half-way
closes what had already started, in reverse order, and a clean shutdown
closes everything in the same order. Warnings are errors in this suite, so a
session left open would also fail the test. Body work, the audit fsync and
STS each run on threads of their own, so a flood of one cannot delay another.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

import proxy.app
from proxy.app import AUDIT, DATA_PLANE, build_data_app
from proxy.audit.log import AuditLog
from proxy.audit.sinks import FileSink
from proxy.aws.credentials import CredentialScope
from proxy.config import Settings, load_settings
from proxy.dataplane.upstream import Upstream
from proxy.offload import OFFLOAD_BYTES
from proxy.policy.classify.rules import PolicyRules
from proxy.policy.opa import OpaClient
from proxy.policy.revision import PolicyRevision
from proxy.tasks.store import MemoryTaskStore
from proxy_dev import devstack
from tests.conftest import Pki
from tests.policy.conftest import serve

# Nothing listens on port 9 of loopback: no test here sends a Bedrock or STS call.
NOWHERE = {"sts_url": "http://127.0.0.1:9", "bedrock_url": "http://127.0.0.1:9"}
STARTED = ["audit", "opa", "revision", "upstream", "store"]


@pytest.fixture
async def opa_url() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"result": {}})

    routes = {("GET", path): answer for path in ("/v1/policies", "/v1/data")}
    async with serve(routes) as url:
        yield url


@pytest.fixture
def settings(pki: Pki, opa_url: str, tmp_path: Path) -> Settings:
    config = devstack.write_proxy_config(
        tmp_path / "proxy.toml",
        pki=pki.dir,
        opa_url=opa_url,
        emulator=NOWHERE,
        audit_log=tmp_path / "audit.log",
    )
    return load_settings(config)


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The components closed, in the order they were closed."""
    order: list[str] = []

    def spy(cls: type, name: str) -> None:
        original: Callable[[Any], Any] = cls.close

        def close(self: Any) -> Any:
            order.append(name)
            return original(self)

        monkeypatch.setattr(cls, "close", close)

    for cls, name in [
        (AuditLog, "audit"),
        (OpaClient, "opa"),
        (PolicyRevision, "revision"),
        (Upstream, "upstream"),
        (MemoryTaskStore, "store"),
    ]:
        spy(cls, name)
    return order


def _raising(*args: Any, **kwargs: Any) -> Awaitable[None]:
    async def fail() -> None:
        raise OSError("injected start-up failure")

    return fail()


@asynccontextmanager
async def _sweeper_failing(*args: Any) -> AsyncIterator[None]:
    raise OSError("injected start-up failure")
    yield


@pytest.mark.parametrize(
    ("failing", "started"),
    [
        ("revision", ["audit", "opa"]),
        ("rules", ["audit", "opa", "revision"]),
        ("upstream", ["audit", "opa", "revision"]),
        ("sweeper", STARTED),
    ],
)
async def test_a_start_up_failure_closes_what_started_in_reverse_order(
    failing: str,
    started: list[str],
    settings: Settings,
    closed: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if failing == "sweeper":
        monkeypatch.setattr(proxy.app, "sweeper", _sweeper_failing)
    else:
        owner = {"revision": PolicyRevision, "rules": PolicyRules, "upstream": Upstream}[failing]
        monkeypatch.setattr(owner, "start", _raising)
    runner = web.AppRunner(build_data_app(settings))
    with pytest.raises(OSError, match="injected"):
        await runner.setup()
    await runner.cleanup()
    assert closed == started[::-1]
    assert _timers() == set()
    # The audit chain is sealed even though the proxy never served.
    assert _last_record(settings)["final"] is True


async def test_shutdown_closes_every_component_in_reverse_order(
    settings: Settings, closed: list[str]
) -> None:
    runner = web.AppRunner(build_data_app(settings))
    await runner.setup()
    assert closed == []
    assert _timers() == {"run_checkpoints", "run_sweeper"}
    await runner.cleanup()
    assert closed == STARTED[::-1]
    assert _timers() == set()
    assert _last_record(settings)["final"] is True


def _timers() -> set[str]:
    """The component tasks still running (checkpoints, task sweeper)."""
    coros = (task.get_coro() for task in asyncio.all_tasks())
    names = {getattr(coro, "__qualname__", "").rsplit(".", 1)[-1] for coro in coros}
    return names & {"run_checkpoints", "run_sweeper"}


def _last_record(settings: Settings) -> dict[str, Any]:
    return dict(json.loads(_lines(Path(settings.audit_path))[-1]))


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


class _StubSts:
    """A botocore STS client stand-in: answers AssumeRole and says on which thread."""

    def __init__(self) -> None:
        self.meta = SimpleNamespace(events=SimpleNamespace(register=lambda *args: None))
        self.threads: list[str] = []

    def assume_role(self, **params: Any) -> dict[str, Any]:
        self.threads.append(threading.current_thread().name)
        return {
            "Credentials": {
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "secret",
                "SessionToken": "token",
                "Expiration": datetime.now(UTC) + timedelta(hours=1),
            },
            "AssumedRoleUser": {"Arn": "arn:aws:sts::123456789012:assumed-role/r/s"},
        }


async def test_a_saturated_body_pool_delays_neither_the_audit_fsync_nor_sts(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sts = _StubSts()
    monkeypatch.setattr(proxy.app, "make_sts_client", lambda **options: sts)
    syncs: list[str] = []
    sync = FileSink.sync

    def recording_sync(self: FileSink) -> None:
        syncs.append(threading.current_thread().name)
        sync(self)

    monkeypatch.setattr(FileSink, "sync", recording_sync)
    runner = web.AppRunner(build_data_app(settings))
    await runner.setup()
    plane, release = runner.app[DATA_PLANE], threading.Event()
    # Every body-work thread busy and more heavy bodies queued; the loop's default
    # executor busy too, so neither can be what the audit log or STS runs on.
    jobs = settings.body_work_threads + 2
    started: asyncio.Queue[int] = asyncio.Queue()
    loop, default_pool = asyncio.get_running_loop(), ThreadPoolExecutor(1)
    loop.set_default_executor(default_pool)

    def heavy(index: int) -> int:
        loop.call_soon_threadsafe(started.put_nowait, index)
        release.wait()
        return index

    bodies = [
        asyncio.ensure_future(plane.offload.if_large(OFFLOAD_BYTES + 1, heavy, i))
        for i in range(jobs)
    ]
    default_busy = loop.run_in_executor(None, release.wait)
    try:
        async with asyncio.timeout(30):  # a hang guard, not a measurement
            for _ in range(settings.body_work_threads):
                await started.get()
            await runner.app[AUDIT].write_ahead("authorized", request_id="isolation")
            creds = await plane.broker.credentials_for(_scope())
        # Both completed while every heavy body was still held.
        assert not any(body.done() for body in bodies) and not default_busy.done()
        assert started.empty()  # the bodies beyond the pool's threads are still queued
        assert creds.access_key_id == "ASIAEXAMPLE"
        assert [name.rsplit("_", 1)[0] for name in sts.threads] == ["sts"]
        assert syncs and all(name.startswith("audit_") for name in syncs)
    finally:
        release.set()
        assert await asyncio.gather(*bodies) == list(range(jobs))
        await default_busy
        await runner.cleanup()
        default_pool.shutdown(wait=True)


def _scope() -> CredentialScope:
    return CredentialScope(
        role_arn="arn:aws:iam::123456789012:role/runtime",
        spiffe_id="spiffe://example.org/ns/demo/sa/chat",
        trust_domain="example.org",
        workload_path="/ns/demo/sa/chat",
        task_id=None,
        region="us-east-1",
        resource_arns=("arn:aws:bedrock:us-east-1::foundation-model/m",),
        actions=("bedrock:InvokeModel",),
        classification="internal",
        session_seconds=900,
    )
