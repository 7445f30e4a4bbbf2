"""Classification and obligations end to end: real OPA, the proxy, the emulator.

A caller cannot declare its way below what the detectors find; obligations
are visible at the emulator (what it received), and the audit record holds
finding kinds and a redacted prompt, never a matched value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError

from tests.conftest import BATCH, CHAT, HAIKU, PROJECT_ROOT, Emulator, ProxyHandle

TITAN = "amazon.titan-text-express-v1"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EMAIL = "jane.roe@example.org"
OBLIGATIONS_POLICY = PROJECT_ROOT / "tests" / "fixtures" / "policies_obligations"


def with_classification(client: Any, operation: str, level: str) -> None:
    def add(request: Any, **_: Any) -> None:
        request.headers["X-Data-Classification"] = level

    client.meta.events.register_first(f"before-sign.bedrock-runtime.{operation}", add)


@pytest.fixture
def obligations_proxy(proxy_factory: Any, start_opa: Any) -> Iterator[ProxyHandle]:
    _, opa_url = start_opa(OBLIGATIONS_POLICY)
    yield proxy_factory(opa_url)


def test_declared_public_with_aws_secret_is_denied(proxy: ProxyHandle, emulator: Emulator) -> None:
    client = proxy.client(BATCH)
    with_classification(client, "InvokeModel", "public")
    body = json.dumps({"inputText": f"deploy with key {AWS_SECRET} please"})
    try:
        with pytest.raises(ClientError) as raised:
            client.invoke_model(modelId=TITAN, body=body)
    finally:
        proxy.close_clients()
    error = raised.value.response
    assert error["Error"]["Code"] == "AccessDeniedException"
    assert "classification_too_high: restricted" in error["Error"]["Message"]
    assert emulator.requests() == []
    [record] = proxy.request_of(error["ResponseMetadata"]["RequestId"])
    assert record["event"] == "denied"
    assert record["classification"] == {
        "declared": "public",
        "detected": "restricted",
        "effective": "restricted",
        "findings": ["aws_secret_key"],
        "defaulted": False,
    }
    assert AWS_SECRET not in proxy.audit_text()


def test_same_call_without_the_secret_is_allowed(proxy: ProxyHandle, emulator: Emulator) -> None:
    client = proxy.client(BATCH)
    with_classification(client, "InvokeModel", "public")
    try:
        response = client.invoke_model(modelId=TITAN, body=json.dumps({"inputText": "hello"}))
    finally:
        proxy.close_clients()
    [record] = proxy.request_of(response["ResponseMetadata"]["RequestId"])[:1]
    assert record["classification"]["effective"] == "public"
    assert len(emulator.requests()) == 1


def test_obligations_reach_the_emulator_and_capture_is_redacted(
    obligations_proxy: ProxyHandle, emulator: Emulator
) -> None:
    client = obligations_proxy.client(CHAT)
    converse = client.converse(
        modelId=HAIKU,
        messages=[{"role": "user", "content": [{"text": f"mail {EMAIL} key {AWS_SECRET}"}]}],
        inferenceConfig={"maxTokens": 4000},
        guardrailConfig={"guardrailIdentifier": "weak01", "guardrailVersion": "DRAFT"},
    )
    anthropic = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 4000,
        "messages": [{"role": "user", "content": f"ssn 078-05-1120 {EMAIL}"}],
    }
    invoke = client.invoke_model(
        modelId=HAIKU, body=json.dumps(anthropic), guardrailIdentifier="weak01",
        guardrailVersion="1",
    )  # fmt: skip
    invoke["body"].read()
    seen_converse, seen_invoke = emulator.requests()
    assert seen_converse["verified"] and seen_invoke["verified"]
    sent = json.loads(base64.b64decode(seen_converse["body_b64"]))
    assert sent["guardrailConfig"] == {"guardrailIdentifier": "strict01", "guardrailVersion": "3"}
    assert sent["inferenceConfig"]["maxTokens"] == 64
    headers = {k.lower(): v for k, v in seen_invoke["headers"].items()}
    assert headers["x-amzn-bedrock-guardrailidentifier"] == "strict01"
    assert headers["x-amzn-bedrock-guardrailversion"] == "3"
    assert json.loads(base64.b64decode(seen_invoke["body_b64"]))["max_tokens"] == 64

    audit_text = obligations_proxy.audit_text()
    for secret in (EMAIL, AWS_SECRET, "078-05-1120"):
        assert secret not in audit_text
    converse_records = obligations_proxy.request_of(converse["ResponseMetadata"]["RequestId"])
    authorized = converse_records[0]
    assert authorized["obligations"]["audit_capture"] == "redacted"
    captured = authorized["prompt"]["captured"]
    assert "[email]" in captured and "[aws_secret_key]" in captured
    assert "mail" in captured and authorized["prompt"]["sha256"]
    # The policy was asked: chat's declared_default is confidential there
    # (the call sent no header), and its map makes e-mail addresses restricted.
    assert authorized["classification"] == {
        "declared": "confidential",
        "detected": "restricted",
        "effective": "restricted",
        "findings": ["aws_secret_key", "email"],
        "defaulted": True,
    }
    invoke_records = obligations_proxy.request_of(invoke["ResponseMetadata"]["RequestId"])
    assert "[us_ssn]" in invoke_records[0]["prompt"]["captured"]


def test_response_capture_is_redacted_and_hashes_what_the_client_got(
    obligations_proxy: ProxyHandle,
) -> None:
    # The emulator answers an "echo:" prompt with its rest, split across the frames.
    prompt = {"messages": [{"role": "user", "content": [{"text": f"echo: write to {EMAIL} now"}]}]}
    status, headers, raw = obligations_proxy.raw(
        "POST",
        f"/model/{quote(HAIKU, safe='')}/converse-stream",
        body=json.dumps(prompt).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200
    answer = obligations_proxy.client(CHAT).converse(modelId=HAIKU, messages=prompt["messages"])
    assert EMAIL in answer["output"]["message"]["content"][0]["text"]  # the echo did happen

    authorized, streamed = obligations_proxy.request_of(headers["x-amzn-RequestId"])
    assert authorized["response"] is None  # written before the call is made
    assert streamed["event"] == "completed"
    assert streamed["response"] == {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "captured": "write to [email] now",
        "truncated": False,
    }
    plain = obligations_proxy.request_of(answer["ResponseMetadata"]["RequestId"])[-1]
    assert "[email]" in plain["response"]["captured"]
    assert EMAIL not in obligations_proxy.audit_text()


def test_hash_capture_keeps_no_response_text(proxy: ProxyHandle) -> None:
    answer = proxy.client(CHAT).converse(
        modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hello"}]}]
    )
    record = proxy.request_of(answer["ResponseMetadata"]["RequestId"])[-1]
    assert record["obligations"]["audit_capture"] == "hash"
    assert record["response"]["captured"] is None
    assert len(record["response"]["sha256"]) == 64 and record["bytes_out"] > 0


def test_large_body_is_scanned_without_blocking_small_requests(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    """A 20 MB prompt is parsed and scanned off the loop; small calls keep flowing meanwhile."""
    # ~100k small text blocks, as a long conversation has: parsing them is a
    # cost of its own, not only scanning them. The secret is in the last block.
    words = "the quarterly report says revenue grew and customers asked about orders "
    block = {"text": words * 3}
    count = 20_000_000 // len(json.dumps(block))
    content = [block] * count + [{"text": f"deploy with {AWS_SECRET}"}]
    big = json.dumps({"messages": [{"role": "user", "content": content}]}).encode()
    path = f"/model/{quote(HAIKU, safe='')}/converse"
    timeline: dict[str, float] = {}
    result: dict[str, Any] = {}

    def send_big() -> None:
        connection = proxy.connection(proxy.pki.svid(CHAT, "big-client"))
        try:
            connection.request("POST", path, body=big, headers={"Content-Type": "application/json"})
            timeline["big_sent"] = time.monotonic()
            response = connection.getresponse()
            result["status"], result["body"] = response.status, response.read()
        finally:
            timeline["big_done"] = time.monotonic()
            connection.close()

    small = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()

    def call_small() -> tuple[float, float]:
        started = time.monotonic()
        status, _, _ = proxy.raw(
            "POST", path, body=small, headers={"Content-Type": "application/json"}
        )
        assert status == 200
        return started, time.monotonic()

    call_small()  # the first call also fetches STS credentials
    baseline = sorted(end - start for start, end in (call_small() for _ in range(5)))
    latencies: list[tuple[float, float]] = []
    thread = threading.Thread(target=send_big)
    thread.start()
    while "big_done" not in timeline and len(latencies) < 500:
        latencies.append(call_small())
    thread.join(timeout=120)
    assert result["status"] == 403  # refused as restricted, never let through unscanned
    assert b"classification_too_high" in result["body"]
    during_scan = [
        end - start
        for start, end in latencies
        if start >= timeline["big_sent"] and end <= timeline["big_done"]
    ]
    # At least one small call started after the big body was uploaded and
    # finished before its answer: the scan did not hold the event loop.
    assert during_scan, "no small request completed while the large body was scanned"
    # Measured, not asserted: the delay a small call sees while the big one is
    # parsed and scanned, against small calls alone (each on a new TLS connection).
    print(
        f"\nlarge body {len(big) / 1e6:.1f} MB of {count} blocks answered "
        f"{timeline['big_done'] - timeline['big_sent']:.2f}s after upload; "
        f"{len(during_scan)} small calls meanwhile, "
        f"latency max {max(during_scan) * 1000:.0f} ms, "
        f"median {sorted(during_scan)[len(during_scan) // 2] * 1000:.0f} ms; "
        f"alone: max {baseline[-1] * 1000:.0f} ms, median {baseline[2] * 1000:.0f} ms"
    )
