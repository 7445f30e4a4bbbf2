"""Prometheus metrics on the admin listener count what the data plane did."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import CHAT, HAIKU, ProxyFactory, ProxyHandle

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


ADMIN = "spiffe://example.org/ns/platform/sa/admin"


def admin_get(proxy: ProxyHandle, path: str, spiffe_id: str = ADMIN) -> tuple[int, str]:
    cert = proxy.pki.svid(spiffe_id, spiffe_id.rsplit("/", 1)[-1] + "-scraper")
    status, _, body = proxy.raw("GET", path, cert=cert, port=proxy.admin_port)
    return status, body.decode()


def scrape(proxy: ProxyHandle) -> str:
    status, text = admin_get(proxy, "/metrics")
    assert status == 200, text
    return text


@pytest.mark.parametrize("path", ["/metrics", "/healthz"])
def test_runtime_identities_never_reach_the_admin_plane(
    proxy_factory: ProxyFactory, opa_url: str, path: str
) -> None:
    proxy = proxy_factory(opa_url)
    status, body = admin_get(proxy, path, CHAT)
    assert status == 403 and "runtime_identity_on_admin" in body
    assert admin_get(proxy, path)[0] == 200
    refused, allowed = [r for r in proxy.records() if r.get("operation") == "GetStatus"]
    assert (refused["event"], refused["spiffe_id"]) == ("denied", CHAT)
    assert (allowed["event"], allowed["outcome"]) == ("completed", "ok")
    assert allowed["spiffe_id"] == ADMIN


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_requests_outcomes_tokens_and_sts_calls_are_counted(
    proxy_factory: ProxyFactory, opa_url: str
) -> None:
    proxy = proxy_factory(opa_url)
    client = proxy.client()
    answer = client.converse(modelId=HAIKU, messages=MESSAGES)
    client.converse(modelId=HAIKU, messages=MESSAGES)
    with pytest.raises(ClientError):
        client.converse(modelId="meta.llama3-70b-instruct-v1:0", messages=MESSAGES)

    text = scrape(proxy)
    ok = sample(text, "bedrock_proxy_requests_total", operation="Converse", outcome="ok")
    denied = sample(text, "bedrock_proxy_requests_total", operation="Converse", outcome="denied")
    assert (ok, denied) == (2.0, 1.0)
    # The llama call is refused at admission, before its body: no full decision is timed.
    assert sample(text, "bedrock_proxy_decision_seconds_count") == 2.0
    assert sample(text, "bedrock_proxy_sts_calls_total") == 1.0, "the second call hit the cache"
    output_tokens = sample(text, "bedrock_proxy_tokens_total", direction="output")
    assert output_tokens == 2 * answer["usage"]["outputTokens"]


def test_every_scrape_sums_all_workers(
    proxy_factory: ProxyFactory, opa_url: str, shared_redis: str
) -> None:
    proxy = proxy_factory(opa_url, workers=2, task_store=shared_redis)
    calls = 0
    # Fresh connections until both workers have served (the kernel picks one per connection).
    while calls < 40 and (calls < 6 or len(_workers_that_served(proxy)) < 2):
        proxy.close_clients()
        proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
        calls += 1
    assert len(_workers_that_served(proxy)) == 2, "one worker took every connection"
    proxy.records()  # the last call's terminal record (and its count) is written
    for _ in range(6):
        # Each worker alone saw fewer calls than were made: only a sum can match.
        text = scrape(proxy)
        ok = sample(text, "bedrock_proxy_requests_total", operation="Converse", outcome="ok")
        assert ok == calls
        assert sample(text, "bedrock_proxy_decision_seconds_count") == calls


def _workers_that_served(proxy: ProxyHandle) -> list[Path]:
    return [p for p in proxy.audit_files() if '"event":"completed"' in p.read_text()]
