"""The whole data path with real components: boto3 over mTLS -> proxy -> real OPA
-> moto STS -> the emulator (which verifies every SigV4 signature)."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from contextlib import closing
from typing import Any
from urllib.parse import quote

import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from proxy_dev import devstack
from tests.conftest import BATCH, CHAT, HAIKU, Emulator, ProxyHandle

ANTHROPIC_BODY = json.dumps(
    {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hello"}],
    }
)
PROFILE_ARN = (
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
    "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
)
MESSAGES = [{"role": "user", "content": [{"text": "hello"}]}]


def test_invoke_model_allowed_and_audited(proxy: ProxyHandle, emulator: Emulator) -> None:
    response = proxy.client().invoke_model(modelId=HAIKU, body=ANTHROPIC_BODY)
    answer = json.loads(response["body"].read())
    assert answer["content"][0]["type"] == "text"

    [seen] = emulator.requests()
    assert seen["verified"] is True
    records = proxy.request_of(response["ResponseMetadata"]["RequestId"])
    assert [r["event"] for r in records] == ["authorized", "completed"]
    authorized, completed = records
    assert authorized["spiffe_id"] == CHAT
    assert authorized["owner"] == "team-demo"
    assert authorized["model_id"] == HAIKU
    assert authorized["region"] == "us-east-1"
    assert authorized["decision"]["allow"] is True
    assert authorized["role_arn"] == "arn:aws:iam::123456789012:role/bedrock-runtime-demo"
    assert completed["outcome"] == "ok"
    assert completed["upstream_status"] == 200
    assert completed["usage"]["output_tokens"] == answer["usage"]["output_tokens"]
    assert completed["aws_request_id"] == response["ResponseMetadata"]["RequestId"]
    assert completed["source_identity"] == seen_source_identity(emulator)


def seen_source_identity(emulator: Emulator) -> str:
    return str(emulator.sts_calls()[-1]["source_identity"])


def test_converse_allowed(proxy: ProxyHandle, emulator: Emulator) -> None:
    response = proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    assert response["output"]["message"]["role"] == "assistant"
    completed = proxy.request_of(response["ResponseMetadata"]["RequestId"])[-1]
    assert completed["outcome"] == "ok"
    assert completed["stop_reason"] == response["stopReason"]
    assert completed["usage"]["input_tokens"] == response["usage"]["inputTokens"]


def test_converse_stream_arrives_while_emulator_still_sends(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    tools = {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {}}}}]}
    response = proxy.client().converse_stream(modelId=HAIKU, messages=MESSAGES, toolConfig=tools)
    events = []
    first_event_at = None
    for event in response["stream"]:
        if first_event_at is None:
            first_event_at = time.time()
        events.append(next(iter(event)))
    assert events[0] == "messageStart" and events[-1] == "metadata"
    [seen] = emulator.requests()
    assert seen["outcome"] == "completed"
    assert first_event_at is not None and first_event_at < seen["last_frame_at"]
    completed = proxy.request_of(response["ResponseMetadata"]["RequestId"])[-1]
    assert completed["outcome"] == "ok"
    assert completed["tool_calls"] == ["lookup"]
    assert completed["stop_reason"] == "tool_use"


def test_invoke_with_response_stream_streams(proxy: ProxyHandle, emulator: Emulator) -> None:
    response = proxy.client().invoke_model_with_response_stream(modelId=HAIKU, body=ANTHROPIC_BODY)
    first_event_at = None
    chunks = 0
    for event in response["body"]:
        if first_event_at is None:
            first_event_at = time.time()
        chunks += "chunk" in event
    [seen] = emulator.requests()
    assert chunks == seen["frames_sent"]
    assert first_event_at is not None and first_event_at < seen["last_frame_at"]
    completed = proxy.request_of(response["ResponseMetadata"]["RequestId"])[-1]
    assert completed["usage"]["output_tokens"] is not None
    assert completed["outcome"] == "ok"


def test_count_tokens(proxy: ProxyHandle, emulator: Emulator) -> None:
    response = proxy.client().count_tokens(
        modelId=HAIKU, input={"converse": {"messages": MESSAGES}}
    )
    assert response["inputTokens"] > 0
    assert emulator.requests()[0]["verified"] is True


@pytest.mark.parametrize(
    "model_id",
    [HAIKU, PROFILE_ARN, "us.anthropic.claude-3-5-sonnet-20240620-v1:0"],
    ids=["colon-version", "profile-arn", "geo-profile-id"],
)
def test_model_ids_with_colons_and_arns_sign_correctly(
    proxy: ProxyHandle, emulator: Emulator, model_id: str
) -> None:
    proxy.client().converse(modelId=model_id, messages=MESSAGES)
    [seen] = emulator.requests()
    assert seen["verified"] is True
    assert seen["raw_path"] == f"/model/{quote(model_id, safe='')}/converse"
    [call] = [c for c in emulator.sts_calls() if c["access_key_id"] == seen["access_key_id"]]
    assert json.loads(json.dumps(call["policy"]))["Statement"][0]["Resource"]


def test_denied_model_carries_reasons_and_decision_id(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    with pytest.raises(ClientError) as raised:
        proxy.client().converse(modelId="meta.llama3-70b-instruct-v1:0", messages=MESSAGES)
    error = raised.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "model_not_allowed" in error["Message"]
    assert emulator.requests() == []
    [record] = proxy.request_of(raised.value.response["ResponseMetadata"]["RequestId"])
    assert record["event"] == "denied" and record["outcome"] == "denied"
    assert record["decision_id"] in error["Message"]
    assert any(r.startswith("model_not_allowed") for r in record["decision"]["reasons"])


def test_operation_not_allowed_for_workload(proxy: ProxyHandle, emulator: Emulator) -> None:
    with pytest.raises(ClientError) as raised:
        proxy.client(BATCH).converse(modelId="amazon.titan-text-express-v1", messages=MESSAGES)
    assert raised.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "operation_not_allowed" in raised.value.response["Error"]["Message"]


def test_tasks_of_one_identity_never_share_credentials(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    client = proxy.client()
    keys = {}
    ids = {name: _open_task(proxy) for name in ("task-a", "task-b")}
    for task in ("task-a", "task-b", "task-a"):

        def add_task(request: Any, task: str = task, **_: Any) -> None:
            request.headers["X-Task-Id"] = ids[task]

        client.meta.events.register_first("before-sign.bedrock-runtime.Converse", add_task)
        try:
            client.converse(modelId=HAIKU, messages=MESSAGES)
        finally:
            client.meta.events.unregister("before-sign.bedrock-runtime.Converse", add_task)
        keys.setdefault(task, set()).add(emulator.requests()[-1]["access_key_id"])
    assert len(keys["task-a"]) == 1, "the same task reuses its cached credentials"
    assert keys["task-a"].isdisjoint(keys["task-b"])
    task_tags = {c["access_key_id"]: c["tags"]["task"] for c in emulator.sts_calls()}
    assert task_tags[next(iter(keys["task-b"]))] == ids["task-b"]


def _open_task(proxy: ProxyHandle) -> str:
    """A real task (unknown X-Task-Id values are refused)."""
    body = json.dumps({"purpose": "e2e", "ttl_seconds": 600, "max_calls": 100}).encode()
    status, _, raw = proxy.raw("POST", "/v1/tasks", body=body)
    assert status == 201, raw
    return str(json.loads(raw)["task_id"])


CANARIES = {
    "Authorization": "Bearer CANARY-BEARER-7f3a",
    "X-Amz-Security-Token": "CANARY-TOKEN-91bc",
    "X-Amz-Date": "20250101T000000Z",
    "X-Amz-Content-Sha256": "CANARY-SHA-0d0d",
    "X-Api-Key": "CANARY-APIKEY-5e5e",
}


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer CANARY-BEARER-7f3a",
        "AWS4-HMAC-SHA256 Credential=AKIACANARYSIGV40000/20250101/us-east-1/bedrock/aws4_request, "
        "SignedHeaders=host, Signature=CANARYSIG",
    ],
    ids=["bearer", "sigv4"],
)
def test_caller_credentials_never_reach_upstream_or_audit(
    proxy: ProxyHandle, emulator: Emulator, authorization: str
) -> None:
    headers = {**CANARIES, "Authorization": authorization, "Content-Type": "application/json"}
    status, response_headers, _ = proxy.raw(
        "POST",
        f"/model/{quote(HAIKU, safe='')}/converse?X-Amz-Signature=CANARY-QS&X-Amz-Credential=x",
        body=json.dumps({"messages": MESSAGES}).encode(),
        headers=headers,
    )
    assert status == 200
    [seen] = emulator.requests()
    assert seen["verified"] is True
    forwarded = json.dumps(seen).lower()
    audit_text = proxy.audit_text().lower()
    for canary in (
        "canary-bearer",
        "canary-token",
        "canary-sha",
        "canary-apikey",
        "canary-qs",
        "akiacanarysigv4",
        "canarysig",
    ):
        assert canary not in forwarded
        assert canary not in audit_text
    assert (
        seen["headers"].get("X-Amz-Date", seen["headers"].get("x-amz-date")) != "20250101T000000Z"
    )


def test_opa_stopped_fails_closed(proxy_factory: Any, start_opa: Any, emulator: Emulator) -> None:
    from tests.conftest import POLICIES

    opa_process, opa_url = start_opa(POLICIES)
    proxy = proxy_factory(opa_url)
    proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    opa_process.terminate()
    opa_process.wait()
    with pytest.raises(ClientError) as raised:
        proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    assert raised.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert len(emulator.requests()) == 1
    [record] = proxy.request_of(raised.value.response["ResponseMetadata"]["RequestId"])
    assert record["outcome"] == "policy_unavailable"


@pytest.mark.parametrize(
    ("policy_dir", "status", "code"),
    [
        ("policies_undefined", 503, "ServiceUnavailableException"),
        ("policies_string_allow", 403, "AccessDeniedException"),
        ("policies_unknown_obligation", 403, "AccessDeniedException"),
    ],
)
def test_malformed_decisions_deny(
    proxy_factory: Any, start_opa: Any, emulator: Emulator, policy_dir: str, status: int, code: str
) -> None:
    from tests.conftest import PROJECT_ROOT

    _, opa_url = start_opa(PROJECT_ROOT / "tests" / "fixtures" / policy_dir)
    proxy = proxy_factory(opa_url)
    with pytest.raises(ClientError) as raised:
        proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert emulator.requests() == []


def test_sts_refusal_fails_closed_without_fallback(proxy: ProxyHandle, emulator: Emulator) -> None:
    emulator.fault("sts_deny", count=1)
    with pytest.raises(ClientError) as raised:
        _call_in_fresh_task(proxy)
    error = raised.value.response
    assert error["Error"]["Code"] == "ServiceUnavailableException"
    assert "AccessDenied" not in error["Error"]["Message"]
    assert emulator.requests() == []
    [record] = proxy.request_of(error["ResponseMetadata"]["RequestId"])
    assert record["outcome"] == "credentials_unavailable"
    assert "AccessDenied" in record["error"]["detail"]


def _call_in_fresh_task(proxy: ProxyHandle) -> Any:
    """A call whose credentials are not cached yet, so STS must be asked."""
    client = proxy.client()
    task_id = _open_task(proxy)

    def add_task(request: Any, **_: Any) -> None:
        request.headers["X-Task-Id"] = task_id

    client.meta.events.register_first("before-sign.bedrock-runtime.Converse", add_task)
    try:
        return client.converse(modelId=HAIKU, messages=MESSAGES)
    finally:
        client.meta.events.unregister("before-sign.bedrock-runtime.Converse", add_task)


def test_upstream_throttling_passes_through(proxy: ProxyHandle, emulator: Emulator) -> None:
    emulator.fault("throttle", count=1)
    with pytest.raises(ClientError) as raised:
        proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    records = proxy.request_of(raised.value.response["ResponseMetadata"]["RequestId"])
    assert records[-1]["upstream_status"] == 429


def test_upstream_5xx_passes_through_unchanged(proxy: ProxyHandle, emulator: Emulator) -> None:
    emulator.fault("http5xx", count=1, status=503)
    status, headers, raw = proxy.raw(
        "POST",
        f"/model/{quote(HAIKU, safe='')}/converse",
        body=json.dumps({"messages": MESSAGES}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 503 and headers["x-amzn-ErrorType"].startswith("ServiceUnavailableException")
    assert b"message" in raw  # Bedrock's own error body, not one of the proxy's
    completed = proxy.request_of(headers["x-amzn-RequestId"])[-1]
    assert (completed["upstream_status"], completed["outcome"]) == (503, "upstream_error")
    assert completed["bytes_out"] == len(raw)


def _start_raw_stream(
    proxy: ProxyHandle, client_name: str
) -> tuple[http.client.HTTPSConnection, http.client.HTTPResponse]:
    """A ConverseStream over a raw connection, so a test controls every read."""
    connection = proxy.connection(proxy.pki.svid(CHAT, client_name))
    connection.request(
        "POST",
        f"/model/{quote(HAIKU, safe='')}/converse-stream",
        body=json.dumps({"messages": MESSAGES}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return connection, connection.getresponse()


def test_upstream_reset_mid_stream_cuts_the_client_and_is_audited(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    emulator.fault("reset", count=1)
    connection, response = _start_raw_stream(proxy, "reset-client")
    try:
        assert response.status == 200  # the stream had started: nothing AWS-shaped is left
        request_id = response.getheader("x-amzn-RequestId")
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        connection.close()
    completed = proxy.request_of(request_id)[-1]
    assert completed["outcome"] == "upstream_error"
    assert "closed the response early" in completed["error"]["message"]
    [seen] = emulator.requests()
    assert (seen["outcome"], seen["fault"]) == ("fault", "reset")


def test_unreachable_upstream_is_a_502_after_the_write_ahead_record(
    proxy_factory: Any, opa_url: str, emulator: Emulator
) -> None:
    closed = {**emulator.info, "bedrock_url": f"https://127.0.0.1:{devstack.free_port()}"}
    proxy = proxy_factory(opa_url, upstream=closed)
    with pytest.raises(ClientError) as raised:
        proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert "Bedrock could not be reached" in error["Error"]["Message"]
    records = proxy.request_of(error["ResponseMetadata"]["RequestId"])
    assert [r["event"] for r in records] == ["authorized", "completed"]
    assert records[-1]["outcome"] == "upstream_error"


def test_exception_frame_mid_stream_is_relayed_and_audited(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    emulator.fault("exception_frame", count=1)
    status, headers, raw = proxy.raw(
        "POST",
        f"/model/{quote(HAIKU, safe='')}/converse-stream",
        body=json.dumps({"messages": MESSAGES}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200
    frames = list(_frames(raw))
    assert frames[-1].headers[":message-type"] == "exception"
    assert frames[-1].headers[":exception-type"] == "throttlingException"
    [seen] = emulator.requests()
    assert len(frames) == seen["frames_sent"] + 1  # the events, then the exception
    assert seen["stream_sha256"] == hashlib.sha256(raw).hexdigest()  # relayed byte-exact
    request_id = headers["x-amzn-RequestId"]
    completed = proxy.request_of(request_id)[-1]
    assert completed["stream_exception"] == "throttlingException"
    assert completed["bytes_out"] == len(raw)
    assert completed["outcome"] == "upstream_error"

    emulator.fault("exception_frame", count=1)
    stream = proxy.client().converse_stream(modelId=HAIKU, messages=MESSAGES)["stream"]
    with closing(stream), pytest.raises(EventStreamError):  # closing: the error leaves it open
        for _ in stream:
            pass


def _frames(raw: bytes) -> Any:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    yield from buffer


def test_client_disconnect_mid_stream_aborts_upstream(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    emulator.fault("slow", count=1, delay_ms=300)
    connection, response = _start_raw_stream(proxy, "aborting-client")
    request_id = response.getheader("x-amzn-RequestId")
    assert response.read1(64)
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    completed = proxy.request_of(request_id)[-1]
    assert completed["event"] == "completed"
    assert completed["outcome"] == "client_aborted"
    deadline = time.monotonic() + 10
    while emulator.requests()[0]["outcome"] != "aborted" and time.monotonic() < deadline:
        time.sleep(0.05)
    [seen] = emulator.requests()
    assert seen["outcome"] == "aborted"
    assert seen["frames_sent"] < 8


CONVERSE_PATH = f"/model/{quote(HAIKU, safe='')}/converse"
OVER_LIMIT = json.dumps(
    {"messages": [{"role": "user", "content": [{"text": "x" * 2000}]}]}
).encode()


def test_body_over_limit_refused_before_policy(proxy_factory: Any, emulator: Emulator) -> None:
    # OPA points at a closed port: reaching the policy stage would answer 503, not 413.
    proxy = proxy_factory("http://127.0.0.1:9", max_body_bytes=1000)
    status, headers, raw = proxy.raw(
        "POST", CONVERSE_PATH, body=OVER_LIMIT, headers={"Content-Type": "application/json"}
    )
    assert status == 413, raw
    assert headers["x-amzn-ErrorType"] == "ValidationException"
    assert "limit of 1000 bytes" in json.loads(raw)["message"]
    [record] = proxy.records()
    assert (record["outcome"], record["decision"]) == ("invalid_request", None)
    assert emulator.requests() == []


def test_chunked_body_over_limit_is_cut_while_read(
    proxy_factory: Any, start_opa: Any, emulator: Emulator
) -> None:
    # A chunked body has no length up front: the caller passes admission, then the
    # read stops at the limit, before the body is parsed or the decision asked.
    from tests.conftest import POLICIES

    _, opa_url = start_opa(POLICIES)
    proxy = proxy_factory(opa_url, max_body_bytes=1000)
    payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(OVER_LIMIT), OVER_LIMIT)
    status, headers, raw = proxy.raw(
        "POST",
        CONVERSE_PATH,
        body=payload,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert status == 413, raw
    assert "limit of 1000 bytes" in json.loads(raw)["message"]
    [record] = proxy.records()
    assert (record["outcome"], record["decision"]) == ("invalid_request", None)
    assert emulator.requests() == []
