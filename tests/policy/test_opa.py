"""proxy.policy.opa: the one OPA client, against real aiohttp servers on 127.0.0.1.

Every failure is PolicyUnavailable (503, ``policy_unavailable``) with the
library's text in ``detail`` only; one session keeps its connection alive
across queries of every kind.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from proxy.errors import PolicyUnavailable
from proxy.policy.opa import OpaClient, data_path
from tests.policy.conftest import Handler, refused_url, serve

DECISION = "bedrock.authz.decision"
DECISION_PATH = "/v1/data/bedrock/authz/decision"
# What a library's own error text looks like; none of it may reach the caller.
LIBRARY_WORDS = ("Cannot connect", "Connect call failed", "Expecting value", "Errno", "127.0.0.1")


def _answer(body: object, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return handler


def _text(body: str | bytes, content_type: str = "application/json") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raw = body.encode() if isinstance(body, str) else body
        return web.Response(body=raw, content_type=content_type)

    return handler


async def _unavailable(url: str, timeout_s: float = 2.0) -> PolicyUnavailable:
    async with OpaClient(url, timeout_s=timeout_s) as opa:
        with pytest.raises(PolicyUnavailable) as info:
            await opa.query(DECISION, {"x": 1})
    error = info.value
    assert (error.status, error.code) == (503, "policy_unavailable")
    assert not any(word in error.message for word in LIBRARY_WORDS), error.message
    return error


@pytest.mark.parametrize(
    ("ref", "path"),
    [
        ("bedrock.authz.decision", "/v1/data/bedrock/authz/decision"),
        ("bedrock.classification", "/v1/data/bedrock/classification"),
        ("_x.y_1", "/v1/data/_x/y_1"),
    ],
)
def test_data_path(ref: str, path: str) -> None:
    assert data_path(ref) == path


@pytest.mark.parametrize("ref", ["", "a..b", "a/b", "../v1/policies", "a.b?x=1", "1a", "a.", "é"])
def test_data_path_refuses_anything_but_rego_identifiers(ref: str) -> None:
    with pytest.raises(ValueError):
        data_path(ref)


async def test_query_posts_the_input_wrapped_and_returns_the_decoded_answer() -> None:
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        return web.json_response({"result": {"allow": True}})

    async with serve({("POST", DECISION_PATH): handler}) as url:
        async with OpaClient(url + "/", timeout_s=2.0) as opa:
            answer = await opa.query(DECISION, {"x": 1})
    assert answer == {"result": {"allow": True}}
    assert seen == [{"input": {"x": 1}}]


async def test_document_and_get() -> None:
    routes = {
        ("GET", "/v1/data/bedrock/classification"): _answer({"result": {"levels": {}}}),
        ("GET", "/v1/policies"): _text('{"result": []}\n'),
    }
    async with serve(routes) as url, OpaClient(url, timeout_s=2.0) as opa:
        assert await opa.document("bedrock.classification") == {"result": {"levels": {}}}
        # Raw bytes, exactly as OPA sent them: the revision poller hashes them.
        assert await opa.get("/v1/policies") == b'{"result": []}\n'


async def test_timeout_is_policy_unavailable() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"result": {}})

    async with serve({("POST", DECISION_PATH): slow}) as url:
        try:
            error = await _unavailable(url, timeout_s=0.1)
        finally:
            release.set()
    assert "did not answer in time" in error.message
    assert "timeout after 0.1s" in (error.detail or "")


async def test_a_slow_body_counts_against_the_same_budget() -> None:
    release = asyncio.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"result": ')
        await release.wait()
        await response.write(b"{}}")
        return response

    async with serve({("POST", DECISION_PATH): trickle}) as url:
        try:
            error = await _unavailable(url, timeout_s=0.1)
        finally:
            release.set()
    assert "timeout" in (error.detail or "")


async def test_a_per_call_timeout_replaces_the_default() -> None:
    async def slowish(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.Response(body=b"{}")

    async with serve({("GET", "/v1/data"): slowish}) as url, OpaClient(url, timeout_s=0.1) as opa:
        with pytest.raises(PolicyUnavailable):
            await opa.get("/v1/data")
        assert await opa.get("/v1/data", timeout_s=5.0) == b"{}"


async def test_connection_refused_is_policy_unavailable() -> None:
    error = await _unavailable(refused_url())
    assert "transport error" in (error.detail or "")


@pytest.mark.parametrize("status", [500, 503, 404, 400, 204])
async def test_any_status_but_200_is_policy_unavailable(status: int) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if status == 204:
            return web.Response(status=204)
        return web.json_response({"code": "internal_error", "message": "boom"}, status=status)

    async with serve({("POST", DECISION_PATH): handler}) as url:
        error = await _unavailable(url)
    assert f"HTTP {status}" in (error.detail or "")
    assert "boom" not in error.message


@pytest.mark.parametrize(
    "handler",
    [
        _text("<html>oops</html>", "text/html"),
        _text('{"result": {"allow": tru'),
        _text(""),
        _text(b'{"result": "\xff"}'),
    ],
    ids=["html", "truncated", "empty", "not-utf8"],
)
async def test_an_answer_that_is_not_json_is_policy_unavailable(handler: Handler) -> None:
    async with serve({("POST", DECISION_PATH): handler}) as url:
        error = await _unavailable(url)
    assert "not JSON" in (error.detail or "")


async def test_queries_of_every_kind_share_one_keep_alive_connection() -> None:
    peers: list[object] = []

    def counted(body: object) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            assert request.transport is not None
            peers.append(request.transport.get_extra_info("peername"))
            return web.json_response(body)

        return handler

    routes = {
        ("POST", DECISION_PATH): counted({"result": {"allow": False}}),
        ("GET", "/v1/data/bedrock/classification"): counted({}),
        ("GET", "/v1/policies"): counted({"result": []}),
        ("GET", "/v1/data"): counted({"result": {}}),
    }
    async with serve(routes) as url, OpaClient(url, timeout_s=2.0) as opa:
        for _ in range(3):
            await opa.query(DECISION, {"x": 1})
            await opa.document("bedrock.classification")
            await opa.get("/v1/policies")
            await opa.get("/v1/data")
        # A refusal is read to its end too, so its connection stays usable.
        with pytest.raises(PolicyUnavailable):
            await opa.get("/v1/nothing-here")
        await opa.get("/v1/data")
    assert len(peers) == 13
    assert len(set(peers)) == 1


async def test_close_closes_the_session() -> None:
    async with serve({("GET", "/v1/data"): _answer({})}) as url:
        opa = OpaClient(url, timeout_s=2.0)
        await opa.start()
        await opa.get("/v1/data")
        await opa.close()
        with pytest.raises(PolicyUnavailable) as info:
            await opa.get("/v1/data")
    assert "closed" in (info.value.detail or "")
