"""proxy.policy.classify.defaults: the policy's declared default, cached per revision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from proxy.errors import InvalidRequest, PolicyUnavailable
from proxy.policy.classify.classifier import Classifier, Declared
from proxy.policy.classify.defaults import DeclaredDefaults, declared_default_from
from proxy.policy.opa import OpaClient
from proxy.policy.revision import PolicyRevision
from tests.policy.conftest import refused_url, serve

PATH = "/v1/data/bedrock/classification/declared_default"
AGENT = "spiffe://td/ns/agents/planner"


@pytest.mark.parametrize(
    ("answer", "level"),
    [
        ({"result": "confidential"}, "confidential"),
        ({"result": "public", "decision_id": "d-1"}, "public"),
        # The policy defines no declared_default: no defaults, the documented internal.
        ({}, "internal"),
    ],
)
def test_declared_default_from(answer: object, level: str) -> None:
    assert declared_default_from(answer) == level


@pytest.mark.parametrize(
    "answer",
    [[], "confidential", {"result": "secret"}, {"result": None}, {"result": 2}, {"result": ["x"]}],
)
def test_an_answer_that_is_no_level_is_unavailable(answer: object) -> None:
    with pytest.raises(PolicyUnavailable) as info:
        declared_default_from(answer)
    assert info.value.status == 503
    assert "declared_default" in (info.value.detail or "")


class DefaultsOpa:
    """A stand-in OPA answering declared_default from a table of SPIFFE IDs."""

    def __init__(self) -> None:
        self.defaults: dict[str, str] = {AGENT: "confidential"}
        self.inputs: list[object] = []
        self.status = 200
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.inputs.append(body["input"])
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="nope")
        level = self.defaults.get(body["input"]["identity"]["spiffe_id"], "internal")
        return web.json_response({"result": level})


@asynccontextmanager
async def defaults_against(
    opa_side: DefaultsOpa, *, max_entries: int = 16
) -> AsyncIterator[tuple[DeclaredDefaults, PolicyRevision]]:
    async with (
        serve({("POST", PATH): opa_side.handle}) as url,
        OpaClient(url, timeout_s=2.0) as opa,
    ):
        revision = PolicyRevision(opa)  # never started: the tests set its revision
        revision.current = "sha256:r1"
        yield DeclaredDefaults(opa, revision, max_entries=max_entries), revision


async def test_asks_with_the_spiffe_id_only_and_caches_per_revision() -> None:
    opa_side = DefaultsOpa()
    async with defaults_against(opa_side) as (defaults, revision):
        assert await defaults.of(AGENT) == "confidential"
        assert await defaults.of(AGENT) == "confidential"
        assert opa_side.inputs == [{"identity": {"spiffe_id": AGENT}}]
        # A policy edit: the poller sees a new revision, the next call asks again.
        opa_side.defaults[AGENT] = "restricted"
        assert await defaults.of(AGENT) == "confidential"
        revision.current = "sha256:r2"
        assert await defaults.of(AGENT) == "restricted"
        assert len(opa_side.inputs) == 2


async def test_nothing_is_cached_before_a_revision_is_known() -> None:
    opa_side = DefaultsOpa()
    async with defaults_against(opa_side) as (defaults, revision):
        revision.current = None
        for _ in range(3):
            assert await defaults.of(AGENT) == "confidential"
        assert len(opa_side.inputs) == 3
        assert len(defaults) == 0


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    opa_side = DefaultsOpa()
    async with defaults_against(opa_side, max_entries=3) as (defaults, _):
        ids = [f"spiffe://td/ns/flood/sa/{n}" for n in range(3)]
        for spiffe_id in ids:
            await defaults.of(spiffe_id)
        await defaults.of(ids[0])  # the most recently used now
        for n in range(3, 100):
            await defaults.of(f"spiffe://td/ns/flood/sa/{n}")
            assert len(defaults) <= 3
        asked = len(opa_side.inputs)
        await defaults.of("spiffe://td/ns/flood/sa/99")
        assert len(opa_side.inputs) == asked, "the newest entries stay"
        await defaults.of(ids[0])
        assert len(opa_side.inputs) == asked + 1, "old entries were evicted"


async def test_an_opa_failure_is_policy_unavailable_and_not_cached() -> None:
    opa_side = DefaultsOpa()
    opa_side.status = 500
    async with defaults_against(opa_side) as (defaults, _):
        for _ in range(2):
            with pytest.raises(PolicyUnavailable) as info:
                await defaults.of(AGENT)
            assert info.value.code == "policy_unavailable"
        assert len(opa_side.inputs) == 2
        opa_side.status = 200
        assert await defaults.of(AGENT) == "confidential"


async def test_an_unreachable_opa_is_policy_unavailable() -> None:
    async with OpaClient(refused_url(), timeout_s=2.0) as opa:
        revision = PolicyRevision(opa)
        revision.current = "sha256:r1"
        with pytest.raises(PolicyUnavailable):
            await DeclaredDefaults(opa, revision).of(AGENT)


async def test_concurrent_calls_share_one_query() -> None:
    opa_side = DefaultsOpa()
    opa_side.gate = asyncio.Event()
    async with defaults_against(opa_side) as (defaults, _):
        waiters = [asyncio.create_task(defaults.of(AGENT)) for _ in range(20)]
        await opa_side.asked.wait()
        # One waiter going away does not cancel the query the others await.
        waiters[0].cancel()
        opa_side.gate.set()
        results = await asyncio.gather(*waiters[1:])
        assert results == ["confidential"] * 19
        assert len(opa_side.inputs) == 1


async def test_a_shared_failure_reaches_every_waiter_as_its_own_error() -> None:
    opa_side = DefaultsOpa()
    opa_side.status, opa_side.gate = 503, asyncio.Event()
    async with defaults_against(opa_side) as (defaults, _):
        waiters = [asyncio.create_task(defaults.of(AGENT)) for _ in range(3)]
        await opa_side.asked.wait()
        opa_side.gate.set()
        errors = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(e, PolicyUnavailable) for e in errors)
        assert len({id(e) for e in errors}) == 3
        assert len(opa_side.inputs) == 1


def test_max_entries_must_be_positive() -> None:
    opa = OpaClient("http://127.0.0.1:1", timeout_s=1.0)  # never started: nothing is asked
    with pytest.raises(ValueError, match="max_entries"):
        DeclaredDefaults(opa, PolicyRevision(opa), max_entries=0)


async def test_the_classifier_asks_only_when_there_is_no_header() -> None:
    opa_side = DefaultsOpa()
    async with defaults_against(opa_side) as (defaults, _):
        classifier = Classifier(None, defaults)
        declared = await classifier.declared("public", AGENT)
        assert declared == Declared("public", defaulted=False)
        assert opa_side.inputs == []
        defaulted = await classifier.classify(await classifier.declared(None, AGENT), ())
        assert (defaulted.declared, defaulted.effective, defaulted.defaulted) == (
            "confidential",
            "confidential",
            True,
        )
        assert len(opa_side.inputs) == 1
        # A header that is no level is refused before anything is asked or read.
        with pytest.raises(InvalidRequest, match="X-Data-Classification"):
            await classifier.declared("secret", AGENT)
        assert len(opa_side.inputs) == 1
