"""Cheap refusals first: a caller the policy refuses whatever its body says is
refused before its body is read, parsed or scanned (authz.rego ``admission``)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from tests.conftest import BATCH, CHAT, HAIKU, Emulator, ProxyHandle

STRANGER = "spiffe://example.org/ns/demo/sa/stranger"
LLAMA = "meta.llama3-70b-instruct-v1:0"


def refusal_without_a_body(proxy: ProxyHandle, identity: str, path: str) -> dict[str, Any]:
    """Announce 5 MB and send none of it: only a proxy that never reads it can answer."""
    connection = proxy.connection(proxy.pki.svid(identity, identity.rsplit("/", 1)[-1] + "-adm"))
    connection.timeout = 10  # the test's own bound: a proxy waiting for the body fails it
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(5_000_000))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 403, response.read()
        assert response.getheader("x-amzn-ErrorType") == "AccessDeniedException"
        document: dict[str, Any] = json.loads(response.read())
        document["request_id"] = response.getheader("x-amzn-RequestId")
        return document
    except TimeoutError as exc:
        raise AssertionError("the proxy waited for a body it should never have read") from exc
    finally:
        connection.close()


def test_an_unregistered_caller_is_refused_before_its_body_is_read(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    answer = refusal_without_a_body(proxy, STRANGER, f"/model/{quote(HAIKU, safe='')}/converse")
    assert "workload_not_registered" in answer["message"]
    [record] = proxy.request_of(answer["request_id"])
    assert (record["event"], record["outcome"]) == ("denied", "denied")
    assert record["decision"]["reasons"][0].startswith("workload_not_registered")
    assert record["classification"] is None and record["bytes_in"] == 0
    assert emulator.requests() == []


def test_a_model_outside_the_allowlist_is_refused_before_the_body(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    answer = refusal_without_a_body(proxy, CHAT, f"/model/{quote(LLAMA, safe='')}/converse")
    assert "model_not_allowed" in answer["message"]
    answer = refusal_without_a_body(proxy, BATCH, f"/model/{quote(HAIKU, safe='')}/converse")
    assert "operation_not_allowed" in answer["message"]
    assert emulator.requests() == []


def test_a_refused_caller_gets_its_403_however_its_body_reads(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    # Parsed, this body would be a 400 (duplicate key) and scanned a restricted secret:
    # the refusal names only what no body can change, and nothing was classified.
    body = b'{"messages": [], "messages": [], "k": "AKIAIOSFODNN7EXAMPLE"}'
    status, headers, raw = proxy.raw(
        "POST",
        f"/model/{quote(LLAMA, safe='')}/converse",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 403, raw
    [record] = proxy.request_of(headers["x-amzn-RequestId"])
    assert [r.split(":")[0] for r in record["decision"]["reasons"]] == ["model_not_allowed"]
    assert record["classification"] is None
    assert emulator.requests() == []


def test_an_admitted_caller_is_still_judged_on_its_body(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    secret = {"messages": [{"role": "user", "content": [{"text": "key AKIAIOSFODNN7EXAMPLE"}]}]}
    status, headers, raw = proxy.raw(
        "POST",
        f"/model/{quote(HAIKU, safe='')}/converse",
        body=json.dumps(secret).encode(),
        headers={"Content-Type": "application/json", "X-Data-Classification": "public"},
    )
    assert status == 403, raw
    [record] = proxy.request_of(headers["x-amzn-RequestId"])
    assert record["classification"]["findings"] == ["aws_access_key_id"]
    assert "classification_too_high: restricted" in json.loads(raw)["message"]
    assert emulator.requests() == []
