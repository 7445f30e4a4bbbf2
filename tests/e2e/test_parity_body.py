"""Inspection parity end to end: what the policy judges is what Bedrock receives.

Each case names the class of bypass it closes. The first is the one a review
confirmed against the old proxy: a restricted secret written as JSON escapes
behind a UTF-8 byte-order mark was scanned as raw text (escapes and all), so
it was classified public and forwarded; every JSON parser upstream reads it.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

import pytest

from tests.conftest import BATCH, CHAT, HAIKU, Emulator, ProxyHandle

TITAN = "amazon.titan-text-express-v1"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
INVOKE_TITAN = f"/model/{TITAN}/invoke"
CONVERSE_HAIKU = f"/model/{HAIKU}/converse"


def escaped(text: str) -> str:
    return "".join(f"\\u{ord(char):04x}" for char in text)


def send(
    proxy: ProxyHandle,
    path: str,
    body: bytes,
    headers: list[tuple[str, str]],
    identity: str = BATCH,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One request whose headers may repeat (http.client sends them as given)."""
    connection = proxy.connection(proxy.pki.svid(identity, identity.rsplit("/", 1)[-1] + "-raw"))
    try:
        connection.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in [*headers, ("Content-Length", str(len(body)))]:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        raw = response.read()
        try:
            document = json.loads(raw or b"{}")
        except ValueError:
            document = {"raw": raw.decode(errors="replace")}
        return response.status, dict(response.getheaders()), document
    finally:
        connection.close()


def refused(proxy: ProxyHandle, answer: tuple[int, dict[str, str], dict[str, Any]]) -> str:
    status, headers, document = answer
    assert status == 400, document
    assert headers["x-amzn-ErrorType"] == "ValidationException"
    [record] = proxy.request_of(headers["x-amzn-RequestId"])
    assert (record["event"], record["outcome"]) == ("denied", "invalid_request")
    message: str = document["message"]
    return message


PUBLIC_JSON = [("Content-Type", "application/json"), ("X-Data-Classification", "public")]


# Class: body encodings a JSON parser reads but the scanner did not.
@pytest.mark.parametrize(
    ("encode", "why"),
    [
        (lambda text: codecs.BOM_UTF8 + text.encode(), "byte-order mark"),
        (lambda text: text.encode("utf-16"), "byte-order mark"),
        (lambda text: text.encode("utf-16-le"), "must be UTF-8"),
        (lambda text: text.encode("utf-32-be"), "must be UTF-8"),
    ],
)
def test_a_secret_behind_another_encoding_is_refused(
    proxy: ProxyHandle, emulator: Emulator, encode: Any, why: str
) -> None:
    body = encode(json.dumps({"inputText": f"deploy with key {escaped(AWS_SECRET)}"}))
    message = refused(proxy, send(proxy, INVOKE_TITAN, body, PUBLIC_JSON))
    assert why in message
    assert emulator.requests() == []


# Class: escapes decoded upstream must be decoded before scanning (values and keys).
@pytest.mark.parametrize(
    "document",
    [
        json.dumps({"inputText": "deploy with key SECRET"}).replace("SECRET", escaped(AWS_SECRET)),
        json.dumps({"inputText": "deploy with key " + AWS_SECRET}).replace("/", "\\/"),
        json.dumps({"inputText": "hi", "textGenerationConfig": {"K": 1}}).replace(
            '"K"', '"' + escaped(AWS_SECRET) + '"'
        ),
    ],
)
def test_an_escaped_secret_is_classified_as_the_secret(
    proxy: ProxyHandle, emulator: Emulator, document: str
) -> None:
    status, headers, answer = send(proxy, INVOKE_TITAN, document.encode(), PUBLIC_JSON)
    assert status == 403, answer
    assert "classification_too_high: restricted" in answer["message"]
    [record] = proxy.request_of(headers["x-amzn-RequestId"])
    assert record["classification"]["findings"] == ["aws_secret_key"]
    assert emulator.requests() == []


# Class: documents two parsers read differently.
@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"inputText": "hello", "inputText": "' + AWS_SECRET.encode() + b'"}', "twice"),
        (b'{"inputText": "hi \\ud800"}', "lone UTF-16 surrogate"),
        (b'{"inputText": "hi", "x": NaN}', "not JSON"),
        (b'{"inputText": "hi",}', "not valid JSON"),
        (b'"' + escaped(AWS_SECRET).encode() + b'"', "must be a JSON object"),
    ],
)
def test_a_body_with_two_readings_is_refused(
    proxy: ProxyHandle, emulator: Emulator, body: bytes, why: str
) -> None:
    assert why in refused(proxy, send(proxy, INVOKE_TITAN, body, PUBLIC_JSON))
    assert emulator.requests() == []


def test_duplicate_keys_in_converse_are_refused(proxy: ProxyHandle, emulator: Emulator) -> None:
    body = b'{"messages": [{"role": "user", "role": "assistant", "content": [{"text": "hi"}]}]}'
    assert "twice" in refused(proxy, send(proxy, CONVERSE_HAIKU, body, [], CHAT))
    assert emulator.requests() == []


# Class: repeated headers, one value judged and another forwarded.
@pytest.mark.parametrize(
    "headers",
    [
        [("X-Data-Classification", "restricted"), ("X-Data-Classification", "public")],
        [("X-Task-Id", "task-a"), ("X-Task-Id", "task-b")],
        [("X-Amzn-Bedrock-GuardrailIdentifier", "gr1"), ("x-amzn-bedrock-guardrailidentifier", "")],
        [("X-Amzn-Bedrock-Service-Tier", "default"), ("X-Amzn-Bedrock-Service-Tier", "priority")],
    ],
)
def test_a_repeated_header_is_refused(
    proxy: ProxyHandle, emulator: Emulator, headers: list[tuple[str, str]]
) -> None:
    body = json.dumps({"inputText": "hello"}).encode()
    assert "appears more than once" in refused(proxy, send(proxy, INVOKE_TITAN, body, headers))
    assert emulator.requests() == []


# Class: a compressed body would be scanned compressed (or inflated past the limit).
@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")],
        [("Content-Encoding", "identity, gzip")],
    ],
)
def test_any_content_coding_is_refused(
    proxy: ProxyHandle, emulator: Emulator, headers: list[tuple[str, str]]
) -> None:
    body = json.dumps({"inputText": "hello"}).encode()
    message = refused(proxy, send(proxy, INVOKE_TITAN, body, headers))
    assert "Compressed" in message or "more than once" in message
    assert emulator.requests() == []


# Class: headers that change cost reach the policy, which judges them.
def test_cost_headers_are_policy_inputs(proxy: ProxyHandle, emulator: Emulator) -> None:
    client = proxy.client(CHAT)

    def tier(value: str) -> Any:
        def add(request: Any, **_: Any) -> None:
            request.headers["X-Amzn-Bedrock-Service-Tier"] = value

        return add

    messages = [{"role": "user", "content": [{"text": "hello"}]}]
    try:
        client.meta.events.register_first("before-sign.bedrock-runtime.Converse", tier("default"))
        assert client.converse(modelId=HAIKU, messages=messages)["stopReason"] == "end_turn"
        client.meta.events.unregister("before-sign.bedrock-runtime.Converse", tier("default"))
    finally:
        proxy.close_clients()
    status, headers, answer = send(
        proxy,
        CONVERSE_HAIKU,
        json.dumps({"messages": messages}).encode(),
        [("X-Amzn-Bedrock-Service-Tier", "priority")],
        CHAT,
    )
    assert status == 403 and "service_tier_not_allowed: service tier priority" in answer["message"]
    [record] = proxy.request_of(headers["x-amzn-RequestId"])
    assert record["outcome"] == "denied"
    [forwarded] = emulator.requests()
    assert forwarded["headers"].get("x-amzn-bedrock-service-tier") == "default"
