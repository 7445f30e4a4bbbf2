"""Per-caller limits through the real stack: rate, concurrency, body bytes in
flight and open tasks. Each refusal is checked for its status, its AWS error
type, its Retry-After, its audit record and that nothing reached Bedrock,
while a call from another identity still succeeds. Requests are held in
flight by sending headers (and maybe a first chunk) without the rest of the
body; the in-flight gauges on /metrics say when the proxy holds them, so no
test sleeps for the proxy.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy_dev import devstack
from tests import certs
from tests.conftest import CHAT, HAIKU, Emulator, ProxyFactory, ProxyHandle, wait_for
from tests.e2e.test_metrics import sample, scrape

# Matched by the shipped registry's "spiffe://example.org/ns/agents/*": Converse on Haiku.
AGENT_A = "spiffe://example.org/ns/agents/a"
AGENT_B = "spiffe://example.org/ns/agents/b"
AGENT_C = "spiffe://example.org/ns/agents/c"
CONVERSE_PATH = f"/model/{HAIKU}/converse"
MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


def _cert(proxy: ProxyHandle, spiffe_id: str) -> certs.CertPair:
    return proxy.pki.svid(spiffe_id, spiffe_id.rsplit("/", 1)[-1] + "-limits")


def converse(
    proxy: ProxyHandle, spiffe_id: str, *, size: int = 0
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A Converse call; ``size``: its body padded to that many bytes."""
    body = json.dumps({"messages": MESSAGES}).encode()
    body = body.replace(b'"hi"', b'"hi' + b" " * max(0, size - len(body)) + b'"')
    headers = {"Content-Type": "application/json"}
    status, answer_headers, raw = proxy.raw(
        "POST", CONVERSE_PATH, body=body, headers=headers, cert=_cert(proxy, spiffe_id)
    )
    return status, answer_headers, json.loads(raw) if raw else {}


@contextmanager
def held(
    proxy: ProxyHandle,
    spiffe_id: str,
    *,
    length: int | None = 100,
    first_chunk: bytes = b"",
    task_id: str | None = None,
) -> Iterator[http.client.HTTPSConnection]:
    """A Converse call in flight: its headers sent, its body not (all of it)."""
    connection = proxy.connection(_cert(proxy, spiffe_id))
    connection.putrequest("POST", CONVERSE_PATH)
    connection.putheader("Content-Type", "application/json")
    if length is None:
        connection.putheader("Transfer-Encoding", "chunked")
    else:
        connection.putheader("Content-Length", str(length))
    if task_id is not None:
        connection.putheader("X-Task-Id", task_id)
    connection.endheaders()
    if first_chunk:
        connection.send(b"%x\r\n%s\r\n" % (len(first_chunk), first_chunk))
    try:
        yield connection
    finally:
        connection.close()


def wait_in_flight(proxy: ProxyHandle, requests: int, body_bytes: int | None = None) -> None:
    def reached() -> bool:
        text = scrape(proxy)
        if sample(text, "bedrock_proxy_inflight_requests") != requests:
            return False
        return body_bytes is None or sample(text, "bedrock_proxy_inflight_body_bytes") == body_bytes

    wait_for(reached)


def refused_record(proxy: ProxyHandle, request_id: str) -> dict[str, Any]:
    [record] = proxy.records_for(request_id)
    return record


def check_refusal(
    proxy: ProxyHandle,
    answer: tuple[int, dict[str, str], dict[str, Any]],
    *,
    status: int,
    limit: str,
    spiffe_id: str,
    retry_after: tuple[int, int] = (1, 1),
) -> dict[str, Any]:
    """The answer and the one denied record of a refusal at ``limit``."""
    got, headers, body = answer
    assert got == status, body
    error_type = "ThrottlingException" if status == 429 else "ServiceUnavailableException"
    assert headers["x-amzn-ErrorType"] == error_type
    low, high = retry_after
    assert low <= int(headers["Retry-After"]) <= high, headers["Retry-After"]
    record = refused_record(proxy, headers["x-amzn-RequestId"])
    outcome = "throttled" if status == 429 else "overloaded"
    assert (record["event"], record["outcome"], record["spiffe_id"]) == (
        "denied",
        outcome,
        spiffe_id,
    )
    assert (record["error"]["code"], record["error"]["status"]) == (outcome, status)
    assert record["error"]["detail"] == limit
    assert record["error"]["message"] == body["message"]
    return record


def test_an_identity_over_its_rate_is_throttled_and_others_are_not(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(
        opa_url,
        limits_options={"requests_per_second_per_identity": 0.2, "burst_per_identity": 2},
    )
    assert converse(proxy, AGENT_A)[0] == 200
    assert converse(proxy, AGENT_A)[0] == 200
    refused = converse(proxy, AGENT_A)
    record = check_refusal(
        proxy, refused, status=429, limit="identity_rate", spiffe_id=AGENT_A, retry_after=(4, 5)
    )
    assert record["operation"] == "Converse"
    assert "0.2 requests a second (bursts of 2)" in refused[2]["message"]
    # An SDK sees its usual exception.
    with pytest.raises(ClientError) as caught:
        proxy.client(AGENT_A).converse(modelId=HAIKU, messages=MESSAGES)
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    # Meanwhile another identity's call goes through.
    assert converse(proxy, AGENT_B)[0] == 200
    assert len(emulator.requests()) == 3
    metrics = scrape(proxy)
    assert (
        sample(
            metrics,
            "bedrock_proxy_limit_refusals_total",
            outcome="throttled",
            limit="identity_rate",
        )
        == 2
    )
    assert (
        sample(metrics, "bedrock_proxy_requests_total", operation="Converse", outcome="throttled")
        == 2
    )


def test_requests_in_flight_per_identity_are_capped_until_they_end(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(opa_url, limits_options={"concurrent_requests_per_identity": 2})
    with held(proxy, AGENT_A), held(proxy, AGENT_A):
        wait_in_flight(proxy, 2)
        refused = converse(proxy, AGENT_A)
        check_refusal(proxy, refused, status=429, limit="identity_concurrency", spiffe_id=AGENT_A)
        assert "already has 2 requests in flight" in refused[2]["message"]
        assert converse(proxy, AGENT_B)[0] == 200
    # The client went away: its slots come back (and each leaves its record).
    wait_in_flight(proxy, 0, 0)
    assert converse(proxy, AGENT_A)[0] == 200
    aborted = [r for r in proxy.records() if r.get("outcome") == "client_aborted"]
    assert [r["spiffe_id"] for r in aborted] == [AGENT_A, AGENT_A]
    assert len(emulator.requests()) == 2


def test_a_task_has_its_own_rate_and_concurrency(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(
        opa_url,
        limits_options={
            "requests_per_second_per_task": 0.2,
            "burst_per_task": 2,
            "concurrent_requests_per_task": 1,
        },
    )
    first, second, third = (open_task(proxy)["task_id"] for _ in range(3))
    assert chat(proxy, first)[0] == 200
    assert chat(proxy, first)[0] == 200
    refused = chat(proxy, first)
    check_refusal(proxy, refused, status=429, limit="task_rate", spiffe_id=CHAT, retry_after=(4, 5))
    assert f"Task {first} sends more than" in refused[2]["message"]
    # The identity's other task, its calls without a task, and other identities go on.
    assert chat(proxy, second)[0] == 200
    assert chat(proxy, None)[0] == 200
    assert converse(proxy, AGENT_B)[0] == 200
    with held(proxy, CHAT, task_id=third):
        wait_in_flight(proxy, 1)
        refused = chat(proxy, third)
        check_refusal(proxy, refused, status=429, limit="task_concurrency", spiffe_id=CHAT)
        assert chat(proxy, None)[0] == 200
    assert len(emulator.requests()) == 6


def test_body_bytes_in_flight_are_bounded_per_identity_and_in_all(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(
        opa_url,
        max_body_bytes=1000,
        limits_options={"inflight_body_bytes_per_identity": 1500, "inflight_body_bytes": 2500},
    )
    # A chunked body is counted as its chunks arrive, before it is complete.
    with held(proxy, AGENT_A, length=None, first_chunk=b"x" * 700):
        wait_in_flight(proxy, 1, 700)
        # Content-Length is reserved before the body is read: 700 + 900 > 1500.
        refused = converse(proxy, AGENT_A, size=900)
        check_refusal(proxy, refused, status=429, limit="identity_body_bytes", spiffe_id=AGENT_A)
        assert "limits.inflight_body_bytes_per_identity" in refused[2]["message"]
        with held(proxy, AGENT_B, length=1000):
            wait_in_flight(proxy, 2, 1700)
            # 1700 + 900 > 2500: the process is full, whoever asks.
            refused = converse(proxy, AGENT_C, size=900)
            check_refusal(proxy, refused, status=503, limit="global_body_bytes", spiffe_id=AGENT_C)
            # What still fits goes through meanwhile, for a third identity.
            assert converse(proxy, AGENT_C)[0] == 200
    wait_in_flight(proxy, 0, 0)
    assert converse(proxy, AGENT_A, size=900)[0] == 200
    assert len(emulator.requests()) == 2
    metrics = scrape(proxy)
    assert (
        sample(
            metrics,
            "bedrock_proxy_limit_refusals_total",
            outcome="overloaded",
            limit="global_body_bytes",
        )
        == 1
    )


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_open_tasks_per_identity_are_capped(
    proxy_factory: ProxyFactory, opa_url: str, tmp_path: Path, store: str
) -> None:
    redis = None
    if store == "redis":
        redis, url = devstack.start_redis(tmp_path)
    try:
        options: dict[str, Any] = {"tasks_options": {"max_open_per_identity": 2}}
        if redis is not None:
            options["task_store"] = url
        handles = []
        proxy = proxy_factory(opa_url, **options)
        # With Redis, a second replica shares the count.
        other = proxy_factory(opa_url, **options) if redis is not None else proxy
        handles = [proxy, other]
        first = open_task(proxy)
        open_task(other)
        refused = call(other, "POST", "/v1/tasks", TASK)
        record = check_refusal(
            other, refused, status=429, limit="open_tasks", spiffe_id=CHAT, retry_after=(590, 600)
        )
        assert record["operation"] == "OpenTask"
        assert "2 tasks open" in refused[2]["message"]
        # Another identity's calls go on; an ended task stops counting.
        assert converse(proxy, AGENT_A)[0] == 200
        assert call(proxy, "DELETE", f"/v1/tasks/{first['task_id']}")[0] == 200
        assert open_task(other)["state"] == "open"
        opened = [r for r in proxy.records() + other.records() if r["event"] == "task_opened"]
        assert len({r["task_id"] for r in opened}) == 3
    finally:
        if redis is not None:
            for handle in handles:
                devstack.stop(handle.process)
            devstack.stop(redis)


TASK = {"purpose": "limits", "ttl_seconds": 600, "max_calls": 50}


def call(
    proxy: ProxyHandle,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = b"" if body is None else json.dumps(body).encode()
    status, answer_headers, raw = proxy.raw(
        method,
        path,
        body=data,
        headers={"Content-Type": "application/json", **(headers or {})},
        cert=_cert(proxy, CHAT),
    )
    return status, answer_headers, json.loads(raw) if raw else {}


def open_task(proxy: ProxyHandle) -> dict[str, Any]:
    status, _, document = call(proxy, "POST", "/v1/tasks", TASK)
    assert status == 201, document
    return document


def chat(proxy: ProxyHandle, task_id: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {} if task_id is None else {"X-Task-Id": task_id}
    return call(proxy, "POST", CONVERSE_PATH, {"messages": MESSAGES}, headers)
