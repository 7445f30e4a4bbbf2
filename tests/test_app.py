"""proxy.app: the components' lifecycle.

Start-up builds every component under one exit stack, so a failure half-way
closes what had already started, in reverse order, and a clean shutdown
closes everything in the same order. Warnings are errors in this suite, so a
session left open would also fail the test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import proxy.app
from proxy.app import build_data_app
from proxy.audit.log import AuditLog
from proxy.config import Settings, load_settings
from proxy.dataplane.upstream import Upstream
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
