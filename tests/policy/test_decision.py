"""proxy.policy.decision: OPA input (a contract), strict reading of OPA's answer, and the
decider asking a real aiohttp server on 127.0.0.1 through the shared OpaClient."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from proxy.errors import ObligationUnenforceable, PolicyUnavailable
from proxy.identity.svid import WorkloadIdentity
from proxy.policy.classify.classifier import Classification
from proxy.policy.decision import (
    MAX_REASON_CHARS,
    MAX_REASONS_SHOWN,
    Decision,
    Guardrail,
    Obligations,
    OpaDecider,
    PolicyQuery,
    build_opa_input,
    denial_message,
    parse_decision,
    parse_obligations,
    shown_reasons,
)
from proxy.policy.opa import OpaClient
from proxy.request.models import parse_model_id
from proxy.request.operations import parse_route
from tests.policy.conftest import Handler, refused_url, serve

ACCT = "123456789012"
ROLE = f"arn:aws:iam::{ACCT}:role/bedrock-chat"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
APP_PROFILE = f"arn:aws:bedrock:us-east-1:{ACCT}:application-inference-profile/a1b2c3d4e5f6"
SONNET = "anthropic.claude-3-5-sonnet-20240620-v1:0"
NOW = datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC)
IDENTITY = WorkloadIdentity(
    spiffe_id="spiffe://example.org/ns/demo/sa/chat",
    trust_domain="example.org",
    path="/ns/demo/sa/chat",
    serial="1f2e",
    not_after=datetime(2024, 5, 2, 0, 0, 0, tzinfo=UTC),
)
CLASSIFICATION = Classification("confidential", "public", "confidential", ("email",))

# --- build_opa_input --------------------------------------------------------

TOP_KEYS = {"identity", "request", "classification", "task", "time"}
IDENTITY_KEYS = {"spiffe_id", "trust_domain", "path", "serial", "not_after"}
REQUEST_KEYS = {
    "operation",
    "method",
    "path",
    "region",
    "account",
    "model",
    "resource",  # added: the guardrail or invocation ARN a path names
    "body_bytes",
    "tools",
    "tools_unreadable",  # added: places holding tools the proxy could not read
    "stream",
    "guardrail",
    "async_output",  # added for the async-invoke output bucket rule
    "bedrock_headers",  # added: forwarded X-Amzn-Bedrock-* headers
}
MODEL_KEYS = {"id", "kind", "provider", "arn", "geo"}  # docs/opa.md; more may be added
CLASSIFICATION_KEYS = {"declared", "detected", "effective", "findings", "defaulted"}


def _query(
    method: str,
    raw_path: str,
    *,
    region: str = "us-east-1",
    account: str | None = ACCT,
    guardrail: Guardrail | None = None,
    tools: tuple[str, ...] = (),
) -> PolicyQuery:
    route = parse_route(method, raw_path)
    model = None if route.model_id is None else parse_model_id(route.model_id, region, account)
    return PolicyQuery(
        identity=IDENTITY,
        route=route,
        model=model,
        region=region,
        account=account,
        body_bytes=321,
        tools=tools,
        guardrail=guardrail,
        classification=CLASSIFICATION,
        now=NOW,
    )


@pytest.mark.parametrize(
    ("method", "raw_path", "operation", "stream", "wire_path", "model"),
    [
        (
            "POST",
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke",
            "InvokeModel",
            False,
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke",
            {
                "id": HAIKU,
                "kind": "foundation-model",
                "provider": "anthropic",
                "arn": f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}",
                "geo": None,
            },
        ),
        (
            "POST",
            f"/model/us.{SONNET.replace(':', '%3A')}/converse-stream",
            "ConverseStream",
            True,
            f"/model/us.{SONNET.replace(':', '%3A')}/converse-stream",
            {
                "id": f"us.{SONNET}",
                "kind": "inference-profile",
                "provider": "anthropic",
                "arn": f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/us.{SONNET}",
                "geo": "us",
            },
        ),
        (
            "POST",
            f"/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A{ACCT}"
            "%3Aapplication-inference-profile%2Fa1b2c3d4e5f6/converse",
            "Converse",
            False,
            f"/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A{ACCT}"
            "%3Aapplication-inference-profile%2Fa1b2c3d4e5f6/converse",
            {
                "id": APP_PROFILE,
                "kind": "application-inference-profile",
                "provider": None,
                "arn": APP_PROFILE,
                "geo": None,
            },
        ),
        (
            "POST",
            "/guardrail/abc123/version/DRAFT/apply",
            "ApplyGuardrail",
            False,
            "/guardrail/abc123/version/DRAFT/apply",
            None,
        ),
    ],
)
def test_build_opa_input_contract(
    method: str,
    raw_path: str,
    operation: str,
    stream: bool,
    wire_path: str,
    model: dict[str, Any] | None,
) -> None:
    doc = build_opa_input(
        _query(method, raw_path, guardrail=Guardrail("gr1", "2"), tools=("search", "calc"))
    )
    assert set(doc) == TOP_KEYS
    assert set(doc["identity"]) == IDENTITY_KEYS
    assert set(doc["request"]) == REQUEST_KEYS
    assert set(doc["classification"]) == CLASSIFICATION_KEYS
    assert doc["identity"] == {
        "spiffe_id": "spiffe://example.org/ns/demo/sa/chat",
        "trust_domain": "example.org",
        "path": "/ns/demo/sa/chat",
        "serial": "1f2e",
        "not_after": "2024-05-02T00:00:00Z",
    }
    request = doc["request"]
    assert request["operation"] == operation
    assert request["method"] == method
    assert request["path"] == wire_path
    assert request["region"] == "us-east-1"
    assert request["account"] == ACCT
    assert request["body_bytes"] == 321
    assert request["tools"] == ["search", "calc"]
    assert request["stream"] is stream
    assert request["guardrail"] == {"identifier": "gr1", "version": "2"}
    if model is None:
        assert request["model"] is None
    else:
        assert MODEL_KEYS <= set(request["model"])
        assert {k: request["model"][k] for k in MODEL_KEYS} == model
    assert doc["classification"] == {
        "declared": "confidential",
        "detected": "public",
        "effective": "confidential",
        "findings": ["email"],
        "defaulted": False,
    }
    assert doc["task"] is None
    assert doc["time"] == "2024-05-01T12:30:45Z"


@pytest.mark.parametrize(
    ("method", "raw_path", "resource"),
    [
        (
            "GET",
            "/async-invoke/arn%3Aaws%3Abedrock%3Aus-west-2%3A210987654321%3Aasync-invoke%2Fabcdefghijkl",
            {
                "arn": "arn:aws:bedrock:us-west-2:210987654321:async-invoke/abcdefghijkl",
                "type": "async-invoke",
                "account": "210987654321",
                "region": "us-west-2",
            },
        ),
        (
            "POST",
            "/guardrail/arn%3Aaws%3Abedrock%3Aus-east-1%3A210987654321%3Aguardrail%2Fg1/version/1/apply",
            {
                "arn": "arn:aws:bedrock:us-east-1:210987654321:guardrail/g1",
                "type": "guardrail",
                "account": "210987654321",
                "region": "us-east-1",
            },
        ),
        ("POST", "/guardrail/g1/version/1/apply", None),
        ("POST", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke", None),
    ],
)
def test_build_opa_input_names_the_resource_arn_of_the_path(
    method: str, raw_path: str, resource: dict[str, str] | None
) -> None:
    assert build_opa_input(_query(method, raw_path))["request"]["resource"] == resource


def test_build_opa_input_without_guardrail_or_account() -> None:
    doc = build_opa_input(
        _query("POST", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke", account=None)
    )
    assert doc["request"]["guardrail"] is None
    assert doc["request"]["account"] is None
    assert doc["request"]["tools"] == []
    assert doc["request"]["tools_unreadable"] == []


def test_build_opa_input_names_where_tools_are_unreadable() -> None:
    query = replace(
        _query("POST", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"),
        tools=("bash",),
        tools_unreadable=("mcp_servers", "tools[1]"),
    )
    request = build_opa_input(query)["request"]
    assert request["tools"] == ["bash"]
    assert request["tools_unreadable"] == ["mcp_servers", "tools[1]"]


# --- parse_decision ---------------------------------------------------------

GOOD_OBLIGATIONS = {"role_arn": ROLE, "session_seconds": 900}
POLICY_ERROR = "policy_error: the decision has no boolean 'allow'"


@pytest.mark.parametrize(
    ("answer", "allow", "reasons"),
    [
        ({"result": {"allow": True, "obligations": GOOD_OBLIGATIONS}}, True, ()),
        (
            {
                "result": {
                    "allow": True,
                    "reasons": ["chat may call haiku"],
                    "obligations": GOOD_OBLIGATIONS,
                }
            },
            True,
            ("chat may call haiku",),
        ),
        ({"result": {"allow": False, "reasons": ["no task"]}}, False, ("no task",)),
        ({"result": {"allow": False}}, False, ("denied by policy",)),
        ({"result": {"allow": "true", "obligations": GOOD_OBLIGATIONS}}, False, (POLICY_ERROR,)),
        ({"result": {"allow": 1, "obligations": GOOD_OBLIGATIONS}}, False, (POLICY_ERROR,)),
        ({"result": {"obligations": GOOD_OBLIGATIONS}}, False, (POLICY_ERROR,)),
        ({"result": {"allow": None}}, False, (POLICY_ERROR,)),
        ({"result": {}}, False, (POLICY_ERROR,)),
        (
            {"result": {"allow": "yes", "reasons": ["r1"]}},
            False,
            ("r1", POLICY_ERROR),
        ),
        # Non-string reasons are dropped, strings kept in order.
        (
            {"result": {"allow": False, "reasons": ["a", 3, None, "b"]}},
            False,
            ("a", "b"),
        ),
    ],
)
def test_parse_decision_allow_and_reasons(
    answer: dict[str, Any], allow: bool, reasons: tuple[str, ...]
) -> None:
    decision = parse_decision(answer, fallback_id="fallback-1")
    assert decision.allow is allow
    assert decision.reasons == reasons
    if allow:
        assert decision.obligations == Obligations(role_arn=ROLE, session_seconds=900)
    else:
        assert decision.obligations is None


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"decision_id": "d1"},
        {"result": None},
        {"result": True},
        {"result": [{"allow": True}]},
        {"result": "allow"},
        [],
        None,
        "allow",
    ],
)
def test_parse_decision_without_result_object_is_unavailable(answer: object) -> None:
    with pytest.raises(PolicyUnavailable) as info:
        parse_decision(answer, fallback_id="fallback-1")
    assert info.value.status == 503
    assert info.value.code == "policy_unavailable"


@pytest.mark.parametrize(
    ("answer", "decision_id"),
    [
        ({"decision_id": "opa-42", "result": {"allow": False}}, "opa-42"),
        ({"result": {"allow": False}}, "fallback-1"),
        ({"decision_id": "", "result": {"allow": False}}, "fallback-1"),
        ({"decision_id": 42, "result": {"allow": False}}, "fallback-1"),
    ],
)
def test_parse_decision_id(answer: dict[str, Any], decision_id: str) -> None:
    assert parse_decision(answer, fallback_id="fallback-1").decision_id == decision_id


@pytest.mark.parametrize(
    ("provenance", "revision"),
    [
        (None, None),
        ({"revision": "r7"}, "r7"),
        ({"bundles": {"b2": {"revision": "y"}, "b1": {"revision": "x"}}}, "b1:x,b2:y"),
        ("r7", None),
    ],
)
def test_parse_decision_policy_revision(provenance: object, revision: str | None) -> None:
    answer = {"result": {"allow": False}, "provenance": provenance}
    assert parse_decision(answer, fallback_id="f").policy_revision == revision


@pytest.mark.parametrize("obligations", [None, [], "role", {"role_arn": ROLE, "surprise": True}])
def test_parse_decision_allow_with_bad_obligations_denies(obligations: object) -> None:
    answer = {"decision_id": "d9", "result": {"allow": True, "obligations": obligations}}
    with pytest.raises(ObligationUnenforceable) as info:
        parse_decision(answer, fallback_id="f")
    assert info.value.status == 403
    assert "d9" in info.value.message


# --- parse_obligations ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"role_arn": ROLE}, Obligations(role_arn=ROLE, session_seconds=900)),
        (
            {
                "role_arn": "arn:aws-us-gov:iam::123456789012:role/path/to/r+=,.@-_",
                "session_seconds": 43200,
                "audit_capture": "full",
                "guardrail": {"identifier": "abc123", "version": "DRAFT"},
                "max_output_tokens": 1,
            },
            Obligations(
                role_arn="arn:aws-us-gov:iam::123456789012:role/path/to/r+=,.@-_",
                session_seconds=43200,
                audit_capture="full",
                guardrail=Guardrail("abc123", "DRAFT"),
                max_output_tokens=1,
            ),
        ),
        (
            {
                "role_arn": ROLE,
                "session_seconds": 900,
                "audit_capture": "hash",
                "guardrail": None,
                "max_output_tokens": None,
            },
            Obligations(role_arn=ROLE, session_seconds=900, audit_capture="hash"),
        ),
        (
            {
                "role_arn": ROLE,
                "audit_capture": "redacted",
                "guardrail": {
                    "identifier": f"arn:aws:bedrock:eu-central-1:{ACCT}:guardrail/abc123",
                    "version": "99999999",
                },
                "max_output_tokens": 4096,
            },
            Obligations(
                role_arn=ROLE,
                session_seconds=900,
                audit_capture="redacted",
                guardrail=Guardrail(
                    f"arn:aws:bedrock:eu-central-1:{ACCT}:guardrail/abc123", "99999999"
                ),
                max_output_tokens=4096,
            ),
        ),
        (
            {"role_arn": "arn:aws-cn:iam::123456789012:role/r", "audit_capture": "none"},
            Obligations(role_arn="arn:aws-cn:iam::123456789012:role/r", session_seconds=900),
        ),
    ],
)
def test_parse_obligations_valid(raw: dict[str, Any], expected: Obligations) -> None:
    assert parse_obligations(raw, "d1") == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (None, "obligations missing"),
        ([], "obligations missing"),
        ({"role_arn": ROLE, "extra": 1}, "unknown obligation"),
        ({"role_arn": ROLE, "Role_Arn": ROLE}, "unknown obligation"),
        ({}, "role_arn"),
        ({"role_arn": None}, "role_arn"),
        ({"role_arn": 123456789012}, "role_arn"),
        ({"role_arn": ""}, "role_arn"),
        ({"role_arn": f"arn:aws:iam::{ACCT}:user/alice"}, "role_arn"),
        ({"role_arn": "arn:aws:iam::12345678901:role/r"}, "role_arn"),
        ({"role_arn": f"arn:aws:sts::{ACCT}:role/r"}, "role_arn"),
        ({"role_arn": f"arn:aws:iam::{ACCT}:role/"}, "role_arn"),
        ({"role_arn": f"arn:aws:iam::{ACCT}:role/r x"}, "role_arn"),
        ({"role_arn": f"arn:aws:iam::{ACCT}:role/r\n"}, "role_arn"),
        ({"role_arn": f" {ROLE}"}, "role_arn"),
        ({"role_arn": ROLE, "session_seconds": 899}, "session_seconds"),
        ({"role_arn": ROLE, "session_seconds": 43201}, "session_seconds"),
        ({"role_arn": ROLE, "session_seconds": 0}, "session_seconds"),
        ({"role_arn": ROLE, "session_seconds": -900}, "session_seconds"),
        ({"role_arn": ROLE, "session_seconds": True}, "session_seconds"),
        ({"role_arn": ROLE, "session_seconds": 900.0}, "session_seconds"),
        ({"role_arn": ROLE, "session_seconds": "900"}, "session_seconds"),
        ({"role_arn": ROLE, "session_seconds": None}, "session_seconds"),
        ({"role_arn": ROLE, "audit_capture": "FULL"}, "audit_capture"),
        ({"role_arn": ROLE, "audit_capture": "everything"}, "audit_capture"),
        ({"role_arn": ROLE, "audit_capture": None}, "audit_capture"),
        ({"role_arn": ROLE, "audit_capture": ["full"]}, "audit_capture"),
        ({"role_arn": ROLE, "audit_capture": True}, "audit_capture"),
        ({"role_arn": ROLE, "guardrail": "abc123"}, "guardrail must be an object"),
        ({"role_arn": ROLE, "guardrail": ["abc123", "1"]}, "guardrail must be an object"),
        ({"role_arn": ROLE, "guardrail": {"version": "1"}}, "guardrail.identifier"),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "", "version": "1"}},
            "guardrail.identifier",
        ),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": 5, "version": "1"}},
            "guardrail.identifier",
        ),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "a" * 2049, "version": "1"}},
            "guardrail.identifier",
        ),
        # The identifier goes into an HTTP header: it must be an id or a guardrail ARN.
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "abc\r\nx-evil: 1", "version": "1"}},
            "guardrail.identifier",
        ),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "ABC", "version": "1"}},
            "guardrail.identifier",
        ),
        (
            {
                "role_arn": ROLE,
                "guardrail": {
                    "identifier": f"arn:aws:s3:eu-central-1:{ACCT}:guardrail/abc",
                    "version": "1",
                },
            },
            "guardrail.identifier",
        ),
        (
            {
                "role_arn": ROLE,
                "guardrail": {
                    "identifier": f"arn:aws-\r\n:bedrock:eu-central-1:{ACCT}:guardrail/abc",
                    "version": "1",
                },
            },
            "guardrail.identifier",
        ),
        ({"role_arn": ROLE, "guardrail": {"identifier": "abc123"}}, "guardrail.version"),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "abc123", "version": 1}},
            "guardrail.version",
        ),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "abc123", "version": "0"}},
            "guardrail.version",
        ),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "abc123", "version": "draft"}},
            "guardrail.version",
        ),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "abc123", "version": "123456789"}},
            "guardrail.version",
        ),
        (
            {"role_arn": ROLE, "guardrail": {"identifier": "abc123", "version": "DRAFT\n"}},
            "guardrail.version",
        ),
        ({"role_arn": ROLE, "max_output_tokens": 0}, "max_output_tokens"),
        ({"role_arn": ROLE, "max_output_tokens": -5}, "max_output_tokens"),
        ({"role_arn": ROLE, "max_output_tokens": True}, "max_output_tokens"),
        ({"role_arn": ROLE, "max_output_tokens": 100.0}, "max_output_tokens"),
        ({"role_arn": ROLE, "max_output_tokens": "100"}, "max_output_tokens"),
    ],
)
def test_parse_obligations_refused(raw: object, why: str) -> None:
    with pytest.raises(ObligationUnenforceable) as info:
        parse_obligations(raw, "dec-77")
    assert why in info.value.message
    assert "dec-77" in info.value.message
    assert info.value.code == "obligation_unenforceable"


def test_obligations_to_audit() -> None:
    obligations = Obligations(ROLE, 1800, "hash", Guardrail("abc", "3"), 256)
    assert obligations.to_audit() == {
        "role_arn": ROLE,
        "session_seconds": 1800,
        "audit_capture": "hash",
        "guardrail": {"identifier": "abc", "version": "3"},
        "max_output_tokens": 256,
    }


# --- OpaDecider against a real HTTP server ----------------------------------

DECISION_PATH = "/v1/data/bedrock/authz/decision"


@pytest.fixture
def release() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def seen() -> list[dict[str, Any]]:
    return []


def _serve(handler: Handler, path: str = DECISION_PATH) -> AbstractAsyncContextManager[str]:
    return serve({("POST", path): handler})


async def _decide(
    url: str, opa_input: dict[str, Any], timeout_s: float = 2.0, **options: Any
) -> Decision:
    async with OpaClient(url, timeout_s=timeout_s) as opa:
        return await OpaDecider(opa, **options).decide(opa_input)


async def test_opa_decider_good_decision(seen: list[dict[str, Any]]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        return web.json_response(
            {
                "decision_id": "opa-d1",
                "result": {"allow": True, "reasons": ["ok"], "obligations": GOOD_OBLIGATIONS},
            }
        )

    opa_input = build_opa_input(
        _query("POST", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke")
    )
    async with _serve(handler) as url:
        decision = await _decide(url, opa_input)
    assert decision == Decision(
        allow=True,
        reasons=("ok",),
        obligations=Obligations(ROLE, 900),
        decision_id="opa-d1",
        policy_revision=None,
    )
    # The input travels wrapped in {"input": ...}, exactly as built.
    assert seen == [{"input": opa_input}]


async def test_opa_decider_deny_gets_fallback_id() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"result": {"allow": False, "reasons": ["nope"]}})

    async with _serve(handler) as url:
        decision = await _decide(url, {"x": 1})
    assert decision.allow is False
    assert decision.reasons == ("nope",)
    assert decision.decision_id.startswith("proxy-")


def _status(code: int) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"code": "internal_error"}, status=code)

    return handler


def _text(body: str, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, content_type=content_type)

    return handler


@pytest.mark.parametrize(
    "handler",
    [
        _status(500),
        _status(503),
        _status(400),
        _status(404),
        _text("<html>oops</html>", "text/html"),
        _text('{"result": {"allow": tru', "application/json"),
        _text("", "application/json"),
        _text("{}", "application/json"),  # undefined decision: no result
        _text('{"result": "yes"}', "application/json"),
    ],
    ids=["500", "503", "400", "404", "html", "bad-json", "empty", "undefined", "not-object"],
)
async def test_opa_decider_bad_answers_are_unavailable(handler: Handler) -> None:
    async with _serve(handler) as url:
        with pytest.raises(PolicyUnavailable) as info:
            await _decide(url, {"x": 1})
    assert info.value.status == 503


async def test_opa_decider_slow_answer_is_unavailable(release: asyncio.Event) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"result": {"allow": True, "obligations": GOOD_OBLIGATIONS}})

    async with _serve(handler) as url:
        try:
            with pytest.raises(PolicyUnavailable) as info:
                await _decide(url, {"x": 1}, timeout_s=0.2)
        finally:
            release.set()
    assert "timeout" in (info.value.detail or "")


async def test_opa_decider_connection_refused_is_unavailable() -> None:
    with pytest.raises(PolicyUnavailable) as info:
        await _decide(refused_url(), {"x": 1}, timeout_s=2.0)
    assert info.value.code == "policy_unavailable"


async def test_admin_decider_asks_its_package_and_needs_no_obligations() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"decision_id": "a1", "result": {"allow": True}})

    async with _serve(handler, "/v1/data/bedrock/admin/decision") as url:
        decision = await _decide(url, {"x": 1}, package="bedrock.admin")
    assert (decision.allow, decision.obligations, decision.decision_id) == (True, None, "a1")


async def test_opa_decider_names_the_revision_it_was_given() -> None:
    class Revision:
        current = "sha256:abc"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"result": {"allow": False}})

    async with _serve(handler) as url:
        decision = await _decide(url, {"x": 1}, revision=Revision())
    assert decision.policy_revision == "sha256:abc"


LONG = "x" * 1_000_000


@pytest.mark.parametrize(
    ("reasons", "shown", "omitted"),
    [
        ((), [], 0),
        (("a",), ["a"], 0),
        (tuple("abcde"), list("abcde"), 0),
        (tuple("abcdef"), list("abcde"), 1),
        (("r",) * 50_000, ["r"] * MAX_REASONS_SHOWN, 50_000 - MAX_REASONS_SHOWN),
        (("y" * MAX_REASON_CHARS,), ["y" * MAX_REASON_CHARS], 0),
        ((LONG, "b"), [LONG[:237] + "...[+999763 chars]", "b"], 0),
    ],
)
def test_shown_reasons_are_bounded_and_count_the_rest(
    reasons: tuple[str, ...], shown: list[str], omitted: int
) -> None:
    assert shown_reasons(reasons) == (shown, omitted)
    assert all(len(reason) <= MAX_REASON_CHARS for reason in shown_reasons(reasons)[0])


@pytest.mark.parametrize(
    ("reasons", "decision_id", "message"),
    [
        (("no",), "d1", "Denied by policy: no (decision d1)"),
        (("a", "b"), "d1", "Denied by policy: a; b (decision d1)"),
        (
            tuple(f"tool_not_allowed: t{i}" for i in range(17)),
            "d2",
            "Denied by policy: tool_not_allowed: t0; tool_not_allowed: t1; tool_not_allowed: "
            "t2; tool_not_allowed: t3; tool_not_allowed: t4 ... and 12 more (decision d2)",
        ),
        (("no",), "i" * 1000, f"Denied by policy: no (decision {'i' * 112}...[+888 chars])"),
    ],
)
def test_denial_message_lists_at_most_five_reasons(
    reasons: tuple[str, ...], decision_id: str, message: str
) -> None:
    assert denial_message(Decision(False, reasons, None, decision_id, None)) == message


def test_denial_message_of_a_policy_echoing_a_huge_input_is_small() -> None:
    # One reason per tool name of a 50,000-tool request, plus a 1 MB one.
    reasons = (LONG, *(f"tool_not_allowed: {'n' * 60}{i}" for i in range(50_000)))
    message = denial_message(Decision(False, reasons, None, "d", None))
    assert len(message) < MAX_REASONS_SHOWN * (MAX_REASON_CHARS + 2) + 200
    assert message.endswith(" ... and 49996 more (decision d)")
