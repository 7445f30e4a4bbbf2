"""Bad input gets a clear AWS-shaped error, an audit record, and no upstream call."""

from __future__ import annotations

import gzip
import json
from urllib.parse import quote

import pytest

from tests.conftest import CHAT, HAIKU, Emulator, ProxyHandle

MODEL = quote(HAIKU, safe="")
GOOD = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
JSON = {"Content-Type": "application/json"}

CASES = [
    # (id, method, path, body, headers, status, error type, words in the message)
    (
        "bad-classification",
        "POST",
        f"/model/{MODEL}/converse",
        GOOD,
        {**JSON, "X-Data-Classification": "top-secret"},
        400,
        "ValidationException",
        "X-Data-Classification",
    ),
    (
        "bad-task-id",
        "POST",
        f"/model/{MODEL}/converse",
        GOOD,
        {**JSON, "X-Task-Id": "a b\tc"},
        400,
        "ValidationException",
        "X-Task-Id",
    ),
    (
        "gzip-body",
        "POST",
        f"/model/{MODEL}/converse",
        gzip.compress(GOOD),
        {**JSON, "Content-Encoding": "gzip"},
        400,
        "ValidationException",
        "Compressed",
    ),
    (
        "converse-nested-too-deep",
        "POST",
        f"/model/{MODEL}/converse",
        # Deeper than the parser follows, with fewer '[' than limits.max_json_containers.
        b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        JSON,
        400,
        "ValidationException",
        "nested too deeply",
    ),
    (
        "invoke-nested-too-deep",
        "POST",
        f"/model/{MODEL}/invoke",
        b'{"max_tokens": 10, "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        JSON,
        400,
        "ValidationException",
        "nested too deeply",
    ),
    (
        # More objects and arrays than limits.max_json_containers: refused before the parse.
        "converse-too-many-containers",
        "POST",
        f"/model/{MODEL}/converse",
        b'{"messages": [' + b",".join([b"{}"] * 100_000) + b"]}",
        JSON,
        400,
        "ValidationException",
        "limits.max_json_containers",
    ),
    (
        "converse-not-json",
        "POST",
        f"/model/{MODEL}/converse",
        b"{not json",
        JSON,
        400,
        "ValidationException",
        "not valid JSON",
    ),
    (
        "double-encoded-model",
        "POST",
        f"/model/{quote(MODEL, safe='')}/converse",
        GOOD,
        JSON,
        400,
        "ValidationException",
        "",
    ),
    ("empty-model", "POST", "/model//converse", GOOD, JSON, 400, "ValidationException", ""),
    (
        "unknown-operation",
        "POST",
        f"/model/{MODEL}/summon",
        GOOD,
        JSON,
        404,
        "UnknownOperationException",
        "",
    ),
    ("control-plane", "GET", "/foundation-models", b"", {}, 404, "UnknownOperationException", ""),
    (
        "wrong-method",
        "GET",
        f"/model/{MODEL}/converse",
        b"",
        {},
        404,
        "UnknownOperationException",
        "",
    ),
    (
        "bidirectional-stream",
        "POST",
        f"/model/{MODEL}/invoke-with-bidirectional-stream",
        GOOD,
        JSON,
        501,
        "ValidationException",
        "not supported",
    ),
    (
        "async-without-model",
        "POST",
        "/async-invoke",
        b"{}",
        JSON,
        400,
        "ValidationException",
        "modelId",
    ),
    (
        "bad-region-host",
        "POST",
        f"/model/{MODEL}/converse",
        GOOD,
        {**JSON, "Host": "bedrock-runtime.us-east-100.amazonaws.com"},
        400,
        "ValidationException",
        "region",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "error_type", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_refused_clearly_and_audited(
    proxy: ProxyHandle,
    emulator: Emulator,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    error_type: str,
    words: str,
) -> None:
    got_status, got_headers, raw = proxy.raw(method, path, body=body, headers=headers)
    assert got_status == status, raw
    assert got_headers["x-amzn-ErrorType"] == error_type
    message = json.loads(raw)["message"]
    assert words.lower() in message.lower()
    assert "Traceback" not in message
    assert emulator.requests() == []
    [record] = proxy.request_of(got_headers["x-amzn-RequestId"])
    assert record["event"] == "denied"
    assert record["outcome"] == "invalid_request"
    assert record["decision"] is None


HEAD = b"POST /model/" + MODEL.encode() + b"/converse HTTP/1.1\r\nHost: localhost\r\n"
BODY = b"Content-Type: application/json\r\nContent-Length: " + str(len(GOOD)).encode()
# Requests aiohttp's HTTP parser refuses before any route runs. ZQX marks the
# caller's bytes, which neither the answer nor the audit record may repeat.
MALFORMED: dict[str, tuple[bytes, str]] = {
    "repeated Host": (HEAD + b"Host: ZQX\r\n" + BODY + b"\r\n\r\n" + GOOD, "Host header"),
    "malformed request line": (b"POST ZQX\r\nHost: localhost\r\n\r\n", "request line"),
    "invalid method": (b"P@ST /ZQX HTTP/1.1\r\nHost: localhost\r\n\r\n", "request line"),
    "header too long": (HEAD + b"X-Long: ZQX" + b"a" * 9000 + b"\r\n\r\n", "8190 bytes"),
    "request line too long": (b"GET /ZQX" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", "8190 bytes"),
    "control character in a header name": (HEAD + b"X-ZQX\x01: v\r\n\r\n", "header line"),
    "NUL in a header value": (HEAD + b"X-Task-Id: ZQX\x00\r\n\r\n", "control characters"),
    "too many headers": (
        HEAD + b"".join(b"X-ZQX%d: v\r\n" % i for i in range(200)) + b"\r\n",
        "more than 128 headers",
    ),
    "no Host": (b"GET /ZQX HTTP/1.1\r\n\r\n", "Host header"),
    "Content-Length and Transfer-Encoding": (
        HEAD + BODY + b"\r\nTransfer-Encoding: chunked\r\n\r\nZQX",
        "Content-Length",
    ),
}


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_what_the_http_parser_refuses_is_answered_in_aws_shape_and_audited(
    proxy: ProxyHandle, emulator: Emulator, case: str
) -> None:
    data, words = MALFORMED[case]
    raw = proxy.wire(data)  # returns once the proxy has closed the connection
    assert b"ZQX" not in raw
    status, headers, body = parse_answer(raw)
    assert status == 400
    assert headers["x-amzn-errortype"] == "ValidationException"
    assert "server" not in headers, "the answer names no server software"
    assert words.lower() in body["message"].lower()
    assert emulator.requests() == []
    [record] = proxy.request_of(headers["x-amzn-requestid"])
    assert (record["event"], record["outcome"]) == ("denied", "invalid_request")
    assert record["error"]["code"] == "malformed_http"
    assert record["error"]["message"] == body["message"]
    assert record["peer"] == "127.0.0.1"
    assert (record["spiffe_id"], record["operation"], record["decision"]) == (None, None, None)
    assert "ZQX" not in json.dumps(record)


def test_the_admin_listener_answers_parser_refusals_the_same_way(proxy: ProxyHandle) -> None:
    admin = proxy.pki.svid("spiffe://example.org/ns/platform/sa/admin", "admin-raw-client")
    raw = proxy.wire(
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", admin, proxy.admin_port
    )
    status, headers, body = parse_answer(raw)
    assert (status, headers["x-amzn-errortype"]) == (400, "ValidationException")
    assert "server" not in headers
    assert body["message"] == "The Host header appears more than once; send it once"
    [record] = proxy.request_of(headers["x-amzn-requestid"])
    assert record["error"]["code"] == "malformed_http"


def test_one_connection_one_refusal_and_the_next_connection_is_served(proxy: ProxyHandle) -> None:
    # The parser lost its place: what followed the refused request is not read as a request.
    pipelined = b"GET\r\n\r\n" + HEAD + BODY + b"\r\n\r\n" + GOOD
    assert proxy.wire(pipelined).count(b"x-amzn-RequestId") == 1
    assert proxy.client(CHAT).converse(
        modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hi"}]}]
    )["output"]
