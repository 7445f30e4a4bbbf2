"""The policy revision is a digest of what OPA loaded: modules and data, not rules.

The poller reads it through the shared OpaClient, keeps the last revision when a
poll fails, and decodes the answers only when their bytes changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from aiohttp import web

import proxy.policy.revision
from proxy.policy.opa import OpaClient
from proxy.policy.revision import PolicyRevision, revision_digest
from tests.policy.conftest import Handler, serve


def module(path: list[str], raw: str) -> dict[str, Any]:
    terms = [{"type": "var", "value": "data"}] + [{"type": "string", "value": p} for p in path]
    return {"id": "/".join(path) + ".rego", "raw": raw, "ast": {"package": {"path": terms}}}


AUTHZ = module(["bedrock", "authz"], "package bedrock.authz\ndecision := 1")
DATA = {"bedrock": {"workloads": {"a": 1}, "authz": {"decision": 1}}}


def test_same_modules_and_data_same_revision() -> None:
    assert revision_digest([AUTHZ], DATA) == revision_digest([AUTHZ], DATA)
    assert revision_digest([AUTHZ], DATA).startswith("sha256:")


def test_an_edited_module_changes_the_revision() -> None:
    edited = {**AUTHZ, "raw": AUTHZ["raw"] + "\nother := 2"}
    assert revision_digest([edited], DATA) != revision_digest([AUTHZ], DATA)


def test_edited_data_changes_the_revision() -> None:
    edited = {"bedrock": {"workloads": {"a": 2}, "authz": {"decision": 1}}}
    assert revision_digest([AUTHZ], edited) != revision_digest([AUTHZ], DATA)


def test_evaluated_rules_do_not_count_only_their_source() -> None:
    # A rule's value follows from modules and data; hashing it again adds nothing
    # and would make the digest depend on evaluation without input.
    other_value = {"bedrock": {"workloads": {"a": 1}, "authz": {"decision": 99}}}
    assert revision_digest([AUTHZ], other_value) == revision_digest([AUTHZ], DATA)


def test_module_path_does_not_matter() -> None:
    moved = {**AUTHZ, "id": "/abs/elsewhere/authz.rego"}
    assert revision_digest([moved], DATA) == revision_digest([AUTHZ], DATA)


# --- the poller, asking a stand-in OPA through the shared client ------------------


class StandIn:
    """``/v1/policies`` and ``/v1/data`` as OPA answers them; editable, breakable."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = DATA
        self.status = 200
        self.delay_s = 0.0
        self.decision_id = 0

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", "/v1/policies"): self._policies, ("GET", "/v1/data"): self._data}

    async def _answer(self, result: object) -> web.Response:
        await asyncio.sleep(self.delay_s)
        # With decision logging on, every answer carries a fresh decision id first;
        # compact JSON, as OPA writes it.
        self.decision_id += 1
        body = {"decision_id": f"d{self.decision_id}", "result": result}
        return web.Response(body=json.dumps(body, separators=(",", ":")), status=self.status)

    async def _policies(self, request: web.Request) -> web.StreamResponse:
        return await self._answer([AUTHZ])

    async def _data(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(self.data)


@pytest.fixture
def digests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every digest computed: one per decoding of the answers."""
    computed: list[str] = []

    def counting(policies: Any, data: Any) -> str:
        computed.append(revision_digest(policies, data))
        return computed[-1]

    monkeypatch.setattr(proxy.policy.revision, "revision_digest", counting)
    return computed


async def test_poller_decodes_only_when_the_bytes_change(digests: list[str]) -> None:
    opa_side = StandIn()
    async with serve(opa_side.routes()) as url, OpaClient(url, timeout_s=2.0) as opa:
        revision = PolicyRevision(opa, interval_s=3600)
        await revision.start()
        try:
            first = revision.current
            assert first == revision_digest([AUTHZ], DATA)
            await revision.refresh()
            assert (revision.current, len(digests)) == (first, 1)
            opa_side.data = {"bedrock": {"workloads": {"a": 2}}}
            await revision.refresh()
            assert revision.current not in (None, first)
            assert len(digests) == 2
        finally:
            await revision.close()


@pytest.mark.parametrize("failure", ["status", "slow", "gone"])
async def test_a_failed_poll_keeps_the_last_revision(failure: str) -> None:
    opa_side = StandIn()
    async with contextlib.AsyncExitStack() as stack:
        server = contextlib.AsyncExitStack()
        url = await server.enter_async_context(serve(opa_side.routes()))
        opa = await stack.enter_async_context(OpaClient(url, timeout_s=2.0))
        stack.push_async_callback(server.aclose)
        revision = PolicyRevision(opa, interval_s=3600, timeout_s=0.2)
        await revision.start()
        stack.push_async_callback(revision.close)
        known = revision.current
        assert known is not None
        opa_side.data = {"edited": {"a": 1}}
        if failure == "status":
            opa_side.status = 500
        elif failure == "slow":
            opa_side.delay_s = 0.5
        else:
            await server.aclose()
        await revision.refresh()
        assert revision.current == known
        if failure != "gone":
            # Recovery: the next good poll reads the edit.
            opa_side.status, opa_side.delay_s = 200, 0.0
            await revision.refresh()
            assert revision.current not in (None, known)


async def test_the_poller_has_its_own_budget_per_call() -> None:
    # As the proxy wires it: decisions get opa.timeout_ms, the poller at least a second.
    opa_side = StandIn()
    opa_side.delay_s = 0.3
    async with serve(opa_side.routes()) as url, OpaClient(url, timeout_s=0.1) as opa:
        revision = PolicyRevision(opa, interval_s=3600, timeout_s=1.0)
        await revision.start()
        await revision.close()
    assert revision.current == revision_digest([AUTHZ], DATA)


async def test_the_poller_polls() -> None:
    opa_side = StandIn()
    async with serve(opa_side.routes()) as url, OpaClient(url, timeout_s=2.0) as opa:
        revision = PolicyRevision(opa, interval_s=0.01)
        await revision.start()
        try:
            first = revision.current
            opa_side.data = {"edited": {"a": 1}}
            for _ in range(200):
                if revision.current != first:
                    break
                await asyncio.sleep(0.01)
        finally:
            await revision.close()
    assert revision.current not in (None, first)
