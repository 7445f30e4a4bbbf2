"""proxy.policy.obligations: every obligation is enforced on the request, or the call is refused."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.aws.signing import forwardable_headers
from proxy.dataplane.response_capture import CAPTURE_LIMIT_CHARS as RESPONSE_CAPTURE_LIMIT_CHARS
from proxy.errors import InvalidRequest, ObligationUnenforceable
from proxy.policy.decision import Guardrail, Obligations
from proxy.policy.obligations import CAPTURE_LIMIT_CHARS, apply_obligations, prompt_capture
from proxy.request.models import ModelRef, parse_model_id
from proxy.request.operations import Route, parse_route

ACCT = "123456789012"
ROLE = f"arn:aws:iam::{ACCT}:role/bedrock-chat"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
LLAMA = "meta.llama3-8b-instruct-v1:0"
MISTRAL = "mistral.mistral-7b-instruct-v0:2"
TITAN = "amazon.titan-text-express-v1"
COHERE = "cohere.command-r-v1:0"
AI21 = "ai21.jamba-instruct-v1:0"
APP_PROFILE = f"arn:aws:bedrock:us-east-1:{ACCT}:application-inference-profile/a1b2c3d4e5f6"
GUARDRAIL = Guardrail("strict01", "3")


def _route(operation: str, model_id: str = HAIKU) -> tuple[Route, ModelRef | None]:
    action = {
        "InvokeModel": "invoke",
        "InvokeModelWithResponseStream": "invoke-with-response-stream",
        "Converse": "converse",
        "ConverseStream": "converse-stream",
        "CountTokens": "count-tokens",
    }.get(operation)
    if action is None:
        path = {
            "StartAsyncInvoke": ("POST", "/async-invoke"),
            "ListAsyncInvokes": ("GET", "/async-invoke"),
            "ApplyGuardrail": ("POST", "/guardrail/abc123/version/1/apply"),
        }[operation]
        return parse_route(*path), None
    route = parse_route("POST", f"/model/{quote(model_id, safe='')}/{action}")
    assert route.model_id is not None
    return route, parse_model_id(route.model_id, "us-east-1", ACCT)


def _obligations(
    *,
    guardrail: Guardrail | None = None,
    max_output_tokens: int | None = None,
    audit_capture: str = "none",
) -> Obligations:
    return Obligations(
        role_arn=ROLE,
        session_seconds=900,
        audit_capture=audit_capture,
        guardrail=guardrail,
        max_output_tokens=max_output_tokens,
    )


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


# --- guardrail --------------------------------------------------------------


@pytest.mark.parametrize("operation", ["Converse", "ConverseStream"])
@pytest.mark.parametrize(
    "caller_config",
    [
        None,
        {"guardrailIdentifier": "weak01", "guardrailVersion": "DRAFT", "trace": "enabled"},
        {"guardrailIdentifier": "strict01", "guardrailVersion": "1"},
        "not-an-object",
    ],
)
def test_guardrail_on_converse_replaces_callers(operation: str, caller_config: object) -> None:
    route, model = _route(operation)
    doc: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    if caller_config is not None:
        doc["guardrailConfig"] = caller_config
    headers = {"content-type": "application/json"}
    out_headers, out_body = apply_obligations(
        route, model, headers, _json(doc), _obligations(guardrail=GUARDRAIL)
    )
    sent = json.loads(out_body)
    assert sent["guardrailConfig"] == {"guardrailIdentifier": "strict01", "guardrailVersion": "3"}
    assert sent["messages"] == doc["messages"]
    assert out_headers == headers


@pytest.mark.parametrize("operation", ["Converse", "ConverseStream"])
def test_guard_content_blocks_become_plain_content(operation: str) -> None:
    # With guardContent the guardrail would read only those blocks: the caller's choice.
    image = {"format": "png", "source": {"bytes": "aGk="}}
    doc = {
        "system": [{"guardContent": {"text": {"text": "rules"}}}, {"text": "be brief"}],
        "messages": [
            {"role": "user", "content": [
                {"text": "unguarded question"},
                {"guardContent": {"text": {"text": "guarded", "qualifiers": ["query"]}}},
                {"guardContent": {"image": image}},
            ]},
        ],
    }  # fmt: skip
    route, model = _route(operation)
    _, body = apply_obligations(route, model, {}, _json(doc), _obligations(guardrail=GUARDRAIL))
    sent = json.loads(body)
    assert sent["system"] == [{"text": "rules"}, {"text": "be brief"}]
    assert sent["messages"][0]["content"] == [
        {"text": "unguarded question"}, {"text": "guarded"}, {"image": image},
    ]  # fmt: skip
    # Without a guardrail obligation the caller's blocks are its own business.
    _, untouched = apply_obligations(route, model, {}, _json(doc), _obligations())
    assert json.loads(untouched) == doc


@pytest.mark.parametrize(
    "block",
    [{"guardContent": {"image": {"format": "png"}}}, {"guardContent": {"video": {}}}],
    ids=["image-in-system", "unknown-kind"],
)
def test_guard_content_that_cannot_be_unwrapped_is_refused(block: dict[str, Any]) -> None:
    route, model = _route("Converse")
    doc = {"system": [block], "messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    with pytest.raises(ObligationUnenforceable, match="guardContent"):
        apply_obligations(route, model, {}, _json(doc), _obligations(guardrail=GUARDRAIL))


def test_invoke_model_body_guardrail_config_is_removed() -> None:
    doc = {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "amazon-bedrock-guardrailConfig": {"tagSuffix": "x1",
                                           "streamProcessingMode": "ASYNCHRONOUS"},
    }  # fmt: skip
    route, model = _route("InvokeModelWithResponseStream")
    _, body = apply_obligations(route, model, {}, _json(doc), _obligations(guardrail=GUARDRAIL))
    sent = json.loads(body)
    assert "amazon-bedrock-guardrailConfig" not in sent
    assert sent["messages"] == doc["messages"]


@pytest.mark.parametrize(
    "prompt",
    [
        "<amazon-bedrock-guardrails-guardContent_x1>only this",
        "<\\u0061mazon-bedrock-guardrails-guardContent_x1>only this",
    ],
    ids=["plain", "json-escaped"],
)
def test_invoke_model_input_tags_are_refused(prompt: str) -> None:
    route, model = _route("InvokeModel")
    body = ('{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "messages": '
            '[{"role": "user", "content": "' + prompt + '"}]}').encode()  # fmt: skip
    with pytest.raises(ObligationUnenforceable, match="input tags"):
        apply_obligations(route, model, {}, body, _obligations(guardrail=GUARDRAIL))


@pytest.mark.parametrize("operation", ["InvokeModel", "InvokeModelWithResponseStream"])
@pytest.mark.parametrize(
    "caller_headers",
    [
        [("Content-Type", "application/json")],
        [
            ("Content-Type", "application/json"),
            ("X-Amzn-Bedrock-GuardrailIdentifier", "weak01"),
            ("X-Amzn-Bedrock-GuardrailVersion", "DRAFT"),
        ],
        [("x-amzn-bedrock-guardrailidentifier", "weak01")],
    ],
)
def test_guardrail_on_invoke_model_sets_headers(
    operation: str, caller_headers: list[tuple[str, str]]
) -> None:
    route, model = _route(operation)
    headers = forwardable_headers(caller_headers)
    # Not JSON: a guardrail alone only touches headers, so the body is left alone.
    body = b"\x00raw provider bytes"
    out_headers, out_body = apply_obligations(
        route, model, headers, body, _obligations(guardrail=GUARDRAIL)
    )
    assert out_body is body
    assert out_headers["x-amzn-bedrock-guardrailidentifier"] == "strict01"
    assert out_headers["x-amzn-bedrock-guardrailversion"] == "3"
    guardrail_keys = [k for k in out_headers if "guardrail" in k.lower()]
    assert sorted(guardrail_keys) == [
        "x-amzn-bedrock-guardrailidentifier",
        "x-amzn-bedrock-guardrailversion",
    ]
    # The caller's dict is not mutated.
    assert headers == forwardable_headers(caller_headers)


# --- max_output_tokens ------------------------------------------------------


@pytest.mark.parametrize("operation", ["Converse", "ConverseStream"])
@pytest.mark.parametrize(
    ("inference_config", "expected"),
    [
        (None, {"maxTokens": 500}),
        ({}, {"maxTokens": 500}),
        ({"maxTokens": 100, "temperature": 0.2}, {"maxTokens": 100, "temperature": 0.2}),
        ({"maxTokens": 500}, {"maxTokens": 500}),
        ({"maxTokens": 4096}, {"maxTokens": 500}),
        ({"maxTokens": 0}, {"maxTokens": 500}),
        ({"maxTokens": -1}, {"maxTokens": 500}),
        ({"maxTokens": "10"}, {"maxTokens": 500}),
        ({"maxTokens": True}, {"maxTokens": 500}),
        ({"maxTokens": 10.5}, {"maxTokens": 500}),
    ],
)
def test_max_output_tokens_on_converse(
    operation: str, inference_config: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    route, model = _route(operation)
    doc: dict[str, Any] = {"messages": []}
    if inference_config is not None:
        doc["inferenceConfig"] = inference_config
    _, out_body = apply_obligations(
        route, model, {}, _json(doc), _obligations(max_output_tokens=500)
    )
    assert json.loads(out_body)["inferenceConfig"] == expected


def test_max_output_tokens_on_converse_bad_inference_config() -> None:
    route, model = _route("Converse")
    with pytest.raises(InvalidRequest):
        apply_obligations(
            route,
            model,
            {},
            _json({"messages": [], "inferenceConfig": [1]}),
            _obligations(max_output_tokens=500),
        )


@pytest.mark.parametrize("operation", ["InvokeModel", "InvokeModelWithResponseStream"])
@pytest.mark.parametrize(
    ("model_id", "body", "path", "expected"),
    [
        (HAIKU, {"max_tokens": 100, "messages": []}, ("max_tokens",), 100),
        (HAIKU, {"max_tokens": 9000, "messages": []}, ("max_tokens",), 500),
        (HAIKU, {"messages": []}, ("max_tokens",), 500),
        (
            "anthropic.claude-v2:1",
            {"prompt": "\n\nHuman: x\n\nAssistant:", "max_tokens_to_sample": 4000},
            ("max_tokens_to_sample",),
            500,
        ),
        (f"us.{HAIKU}", {"max_tokens": 9000}, ("max_tokens",), 500),
        (
            f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}",
            {"max_tokens": 9000},
            ("max_tokens",),
            500,
        ),
        (LLAMA, {"prompt": "x", "max_gen_len": 2048}, ("max_gen_len",), 500),
        (LLAMA, {"prompt": "x", "max_gen_len": 64}, ("max_gen_len",), 64),
        (LLAMA, {"prompt": "x"}, ("max_gen_len",), 500),
        (MISTRAL, {"prompt": "x", "max_tokens": 8192}, ("max_tokens",), 500),
        (MISTRAL, {"prompt": "x", "max_tokens": 20}, ("max_tokens",), 20),
        (COHERE, {"message": "x", "max_tokens": 4000}, ("max_tokens",), 500),
        (
            TITAN,
            {"inputText": "x", "textGenerationConfig": {"maxTokenCount": 8192}},
            ("textGenerationConfig", "maxTokenCount"),
            500,
        ),
        (
            TITAN,
            {"inputText": "x", "textGenerationConfig": {"maxTokenCount": 42}},
            ("textGenerationConfig", "maxTokenCount"),
            42,
        ),
        (
            TITAN,
            {"inputText": "x", "textGenerationConfig": {"temperature": 0}},
            ("textGenerationConfig", "maxTokenCount"),
            500,
        ),
    ],
)
def test_max_output_tokens_on_invoke_model(
    operation: str, model_id: str, body: dict[str, Any], path: tuple[str, ...], expected: int
) -> None:
    route, model = _route(operation, model_id)
    headers = {"content-type": "application/json"}
    out_headers, out_body = apply_obligations(
        route, model, headers, _json(body), _obligations(max_output_tokens=500)
    )
    value: Any = json.loads(out_body)
    for key in path:
        value = value[key]
    assert value == expected
    assert out_headers == headers


@pytest.mark.parametrize("operation", ["InvokeModel", "InvokeModelWithResponseStream"])
@pytest.mark.parametrize(
    ("model_id", "body"),
    [
        (AI21, {"messages": [], "max_tokens": 100}),
        (APP_PROFILE, {"max_tokens": 100}),  # provider cannot be known from the ARN
        # Titan-family id without the Titan body shape (e.g. Nova): no known field.
        ("amazon.nova-lite-v1:0", {"inferenceConfig": {"max_new_tokens": 100}}),
    ],
)
def test_max_output_tokens_unknown_provider_is_unenforceable(
    operation: str, model_id: str, body: dict[str, Any]
) -> None:
    route, model = _route(operation, model_id)
    with pytest.raises(ObligationUnenforceable) as info:
        apply_obligations(route, model, {}, _json(body), _obligations(max_output_tokens=500))
    assert info.value.status == 403


# --- operations that cannot carry the obligation -----------------------------


@pytest.mark.parametrize(
    "obligations",
    [_obligations(guardrail=GUARDRAIL), _obligations(max_output_tokens=10)],
    ids=["guardrail", "max_output_tokens"],
)
@pytest.mark.parametrize("operation", ["StartAsyncInvoke"])
def test_operation_without_carrier_is_unenforceable(
    operation: str, obligations: Obligations
) -> None:
    route, model = _route(operation)
    body = _json({"modelId": HAIKU, "modelInput": {"max_tokens": 10}})
    with pytest.raises(ObligationUnenforceable):
        apply_obligations(route, model, {}, body, obligations)


@pytest.mark.parametrize(
    "obligations",
    [
        _obligations(),
        _obligations(guardrail=GUARDRAIL),
        _obligations(max_output_tokens=10),
        _obligations(guardrail=GUARDRAIL, max_output_tokens=10, audit_capture="full"),
    ],
)
@pytest.mark.parametrize("operation", ["CountTokens", "ApplyGuardrail"])
def test_operations_without_model_output_are_untouched(
    operation: str, obligations: Obligations
) -> None:
    route, model = _route(operation)
    headers = {"content-type": "application/json"}
    body = b'{"input": {"converse": {"messages": []}}}'
    assert apply_obligations(route, model, headers, body, obligations) == (headers, body)


@pytest.mark.parametrize(
    "operation", ["InvokeModel", "Converse", "CountTokens", "StartAsyncInvoke"]
)
def test_no_edit_obligations_leave_request_alone(operation: str) -> None:
    route, model = _route(operation)
    headers = {"content-type": "application/json"}
    body = b'{ "messages" : [] }'  # not re-serialised when nothing needs changing
    for capture in ("none", "hash", "full"):
        out = apply_obligations(route, model, headers, body, _obligations(audit_capture=capture))
        assert out == (headers, body)


@pytest.mark.parametrize("operation", ["InvokeModel", "Converse", "CountTokens"])
def test_audit_capture_redacted_leaves_request_alone(operation: str) -> None:
    route, model = _route(operation)
    body = b'{"messages": []}'
    assert apply_obligations(route, model, {}, body, _obligations(audit_capture="redacted")) == (
        {},
        body,
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", (False, None, False)),
        ("hash", (True, None, False)),
        ("redacted", (True, '{"prompt":"mail [email]"}', False)),
        ("full", (True, '{"prompt": "mail a@example.org"}', False)),
    ],
)
def test_prompt_capture_modes(mode: str, expected: tuple[bool, str | None, bool]) -> None:
    assert prompt_capture(mode, "InvokeModel", b'{"prompt": "mail a@example.org"}') == expected


LIMIT = CAPTURE_LIMIT_CHARS


@pytest.mark.parametrize(
    ("body", "captured", "truncated"),
    [
        (b"a" * LIMIT, "a" * LIMIT, False),
        (b"a" * (LIMIT + 1), "a" * LIMIT, True),
        (b"a" * 25_000_000, "a" * LIMIT, True),
        # Multi-byte characters count as one each, whole or not at all.
        ("\u00e9".encode() * LIMIT, "\u00e9" * LIMIT, False),
        ("\U0001f600".encode() * LIMIT, "\U0001f600" * LIMIT, False),
        ("\U0001f600".encode() * (LIMIT + 1), "\U0001f600" * LIMIT, True),
        (b"a" + "\U0001f600".encode() * LIMIT, "a" + "\U0001f600" * (LIMIT - 1), True),
        (b"\xff" * (5 * LIMIT), "\ufffd" * LIMIT, True),
    ],
)
def test_full_prompt_capture_keeps_at_most_the_limit(
    body: bytes, captured: str, truncated: bool
) -> None:
    assert prompt_capture("full", "InvokeModel", body) == (True, captured, truncated)


def test_redacted_prompt_capture_is_redacted_before_it_is_cut() -> None:
    # An address straddling the cut is replaced whole, not kept in part.
    text = "x" * (LIMIT - 10) + " jane.roe@example.org " + "y" * 100_000
    keep, captured, truncated = prompt_capture("redacted", "InvokeModel", text.encode())
    assert keep and truncated and captured is not None and len(captured) == LIMIT
    assert captured == "x" * (LIMIT - 10) + " [email] y"


def test_the_prompt_and_response_captures_have_one_limit() -> None:
    assert CAPTURE_LIMIT_CHARS == RESPONSE_CAPTURE_LIMIT_CHARS


def test_prompt_capture_unknown_mode_refuses() -> None:
    with pytest.raises(ObligationUnenforceable):
        prompt_capture("everything", "Converse", b"{}")


# --- bodies that cannot be edited -------------------------------------------


@pytest.mark.parametrize(
    ("operation", "obligations"),
    [
        ("Converse", _obligations(guardrail=GUARDRAIL)),
        ("ConverseStream", _obligations(max_output_tokens=10)),
        ("InvokeModel", _obligations(max_output_tokens=10)),
        ("InvokeModelWithResponseStream", _obligations(guardrail=GUARDRAIL, max_output_tokens=1)),
    ],
)
@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null", b'{"a": '],
)
def test_non_json_body_when_edit_needed_is_invalid(
    operation: str, obligations: Obligations, body: bytes
) -> None:
    route, model = _route(operation)
    with pytest.raises(InvalidRequest) as info:
        apply_obligations(route, model, {}, body, obligations)
    assert info.value.status == 400


def test_text_completion_body_gets_no_messages_api_field() -> None:
    route, model = _route("InvokeModel", "anthropic.claude-v2:1")
    body = _json({"prompt": "\n\nHuman: x\n\nAssistant:", "max_tokens_to_sample": 4000})
    _, out = apply_obligations(route, model, {}, body, _obligations(max_output_tokens=500))
    assert json.loads(out) == {"prompt": "\n\nHuman: x\n\nAssistant:", "max_tokens_to_sample": 500}
