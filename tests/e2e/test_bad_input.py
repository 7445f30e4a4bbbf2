"""Bad input gets a clear AWS-shaped error, an audit record, and no upstream call."""

from __future__ import annotations

import gzip
import json
from urllib.parse import quote

import pytest

from tests.conftest import HAIKU, Emulator, ProxyHandle

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
        b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        JSON,
        400,
        "ValidationException",
        "nested too deeply",
    ),
    (
        "invoke-nested-too-deep",
        "POST",
        f"/model/{MODEL}/invoke",
        b'{"max_tokens": 10, "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        JSON,
        400,
        "ValidationException",
        "nested too deeply",
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
