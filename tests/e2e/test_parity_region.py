"""Inspection parity for where a call goes: the region, the account and the endpoint
that policy and the audit record see are the ones the call is signed for and sent to.

Each case names the class of bypass it closes. The first is the one the old
proxy had: an unsigned boto3 client configured for us-west-2 (README's setup)
sends its region nowhere, so the proxy sent the call to its default us-east-1
and audited it there; the client had no way to name its region.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from proxy_dev.devstack import ACCOUNT
from tests.conftest import (
    CHAT,
    HAIKU,
    Emulator,
    ProxyFactory,
    ProxyHandle,
    bedrock_client,
)

FOREIGN_ACCOUNT = "210987654321"
OUTPUT = {"s3OutputDataConfig": {"s3Uri": "s3://demo-bedrock-output/runs/"}}
MESSAGES = [{"role": "user", "content": [{"text": "hello"}]}]
CONVERSE = f"/model/{quote(HAIKU, safe='')}/converse"
JSON = {"Content-Type": "application/json"}
BODY = json.dumps({"messages": MESSAGES}).encode()

Client = Callable[..., Any]


@pytest.fixture
def regional(proxy: ProxyHandle) -> Iterator[Client]:
    """f(region, proxy=proxy): an unsigned boto3 client for ``region`` whose endpoint is
    ``https://<proxy>/region/<region>``, the form README tells applications to use."""
    opened: list[Any] = []

    def make(region: str, through: ProxyHandle = proxy, *, prefix: bool = True) -> Any:
        url = f"{through.url}/region/{region}" if prefix else through.url
        client = bedrock_client(
            url, through.pki.ca_bundle, through.pki.svid(CHAT, "chat-client"), region
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture(scope="module")
def strict_proxy(proxy_factory: ProxyFactory, opa_url: str) -> ProxyHandle:
    """A proxy without aws.default_region: a call must name its region."""
    return proxy_factory(opa_url, default_region=None)


def _error(raised: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    response = raised.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


def _records(proxy: ProxyHandle, response: dict[str, Any]) -> list[dict[str, Any]]:
    return proxy.request_of(response["ResponseMetadata"]["RequestId"])


def _refusal(proxy: ProxyHandle, raised: pytest.ExceptionInfo[ClientError]) -> dict[str, Any]:
    [record] = _records(proxy, raised.value.response)
    assert record["event"] == "denied"
    return record


# --- Class: region replaced silently (an unsigned client's region never reached the proxy)


@pytest.mark.parametrize("region", ["us-east-1", "us-west-2"])
def test_unsigned_clients_in_two_regions_keep_their_region(
    proxy: ProxyHandle, emulator: Emulator, regional: Client, region: str
) -> None:
    # Fails on the old proxy: /region/<region> was an unknown path (404), and the
    # same client without it was sent to us-east-1.
    answer = regional(region).converse(modelId=HAIKU, messages=MESSAGES)
    authorized, completed = _records(proxy, answer)
    assert authorized["region"] == completed["region"] == region
    assert completed["outcome"] == "ok"
    # The emulator checks the SigV4 scope against the STS session's
    # aws:RequestedRegion: the call was signed for, and sent as, this region.
    [seen] = emulator.requests()
    assert seen["verified"] is True and seen["region"] == region
    # The prefix is the proxy's, never Bedrock's: the signed path is without it.
    assert seen["raw_path"] == CONVERSE
    [session] = [c for c in emulator.sts_calls() if c["access_key_id"] == seen["access_key_id"]]
    assert f'"aws:RequestedRegion": "{region}"' in json.dumps(session["policy"])


def test_a_client_that_names_no_region_is_refused_without_a_default(
    strict_proxy: ProxyHandle, emulator: Emulator, regional: Client
) -> None:
    # Fails on the old proxy: every config had us-east-1 as its default, so this
    # us-west-2 client's call went to us-east-1 and was audited there.
    with pytest.raises(ClientError) as raised:
        regional("us-west-2", strict_proxy, prefix=False).converse(modelId=HAIKU, messages=MESSAGES)
    status, code, message = _error(raised)
    assert (status, code) == (400, "ValidationException")
    assert "names no AWS region" in message
    assert "aws.default_region" in message and "/region/<region>" in message
    record = _refusal(strict_proxy, raised)
    assert record["outcome"] == "invalid_request" and record["region"] is None
    assert emulator.requests() == []
    # The same client with its region in the endpoint needs no default.
    answer = regional("us-west-2", strict_proxy).converse(modelId=HAIKU, messages=MESSAGES)
    assert _records(strict_proxy, answer)[0]["region"] == "us-west-2"


def test_tasks_are_served_under_the_same_endpoint(strict_proxy: ProxyHandle) -> None:
    # One endpoint URL for everything an application calls on the data listener.
    body = json.dumps({"purpose": "region parity", "ttl_seconds": 600, "max_calls": 5}).encode()
    status, headers, raw = strict_proxy.raw("POST", "/region/us-west-2/v1/tasks", body=body)
    assert status == 201, raw
    task_id = json.loads(raw)["task_id"]
    [completed] = [r for r in strict_proxy.request_of(headers["x-amzn-RequestId"]) if "region" in r]
    assert completed["operation"] == "OpenTask" and completed["region"] == "us-west-2"
    status, _, raw = strict_proxy.raw("GET", f"/region/us-west-2/v1/tasks/{task_id}")
    assert status == 200, raw
    status, _, raw = strict_proxy.raw("POST", "/v1/tasks", body=body)
    assert status == 400 and b"aws.default_region" in raw
    status, _, raw = strict_proxy.raw("POST", "/region/moon/v1/tasks", body=body)
    assert status == 400 and b"/region/<region>" in raw


# --- Class: one request read as two regions ------------------------------------------


def test_a_signing_client_whose_scope_disagrees_with_the_endpoint_is_refused(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    # A client signs for us-east-1 (placeholder keys) but its endpoint names
    # us-west-2: policy could be told one and Bedrock the other.
    cert = proxy.pki.svid(CHAT, "chat-client")
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=f"{proxy.url}/region/us-west-2",
        verify=str(proxy.pki.ca_bundle),
        aws_access_key_id="AKIAPLACEHOLDER00000",
        aws_secret_access_key="placeholder",
        config=Config(
            client_cert=(str(cert.cert), str(cert.key)), retries={"total_max_attempts": 1}
        ),
    )
    try:
        with pytest.raises(ClientError) as raised:
            client.converse(modelId=HAIKU, messages=MESSAGES)
    finally:
        client.close()
    status, code, message = _error(raised)
    assert (status, code) == (400, "ValidationException")
    assert "more than one region" in message
    assert "us-west-2" in message and "us-east-1" in message
    assert _refusal(proxy, raised)["outcome"] == "invalid_request"
    assert emulator.requests() == []


def test_a_host_region_that_disagrees_with_the_endpoint_is_refused(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    status, _, raw = proxy.raw(
        "POST",
        "/region/us-west-2" + CONVERSE,
        body=BODY,
        headers={**JSON, "Host": "bedrock-runtime.us-east-1.proxy.test"},
    )
    assert status == 400
    assert "more than one region" in json.loads(raw)["message"]
    assert emulator.requests() == []


# --- Class: a resource of another account or region named in the path ----------------


@pytest.mark.parametrize("region", ["us-east-1", "us-west-2"])
def test_async_invocation_of_another_account_is_denied(
    proxy: ProxyHandle, emulator: Emulator, regional: Client, region: str
) -> None:
    # The old proxy gave policy the configured account, not the invocation's, and
    # let it through (the us-east-1 case: an unmodified client, the default region).
    arn = f"arn:aws:bedrock:{region}:{FOREIGN_ACCOUNT}:async-invoke/abcdef123456"
    client = regional(region, prefix=region != "us-east-1")
    with pytest.raises(ClientError) as raised:
        client.get_async_invoke(invocationArn=arn)
    status, code, message = _error(raised)
    assert (status, code) == (403, "AccessDeniedException")
    assert f"account_not_allowed: account {FOREIGN_ACCOUNT}" in message
    record = _refusal(proxy, raised)
    assert record["account"] == FOREIGN_ACCOUNT and record["region"] == region
    assert emulator.requests() == []


def test_guardrail_of_another_account_is_denied(
    proxy: ProxyHandle, emulator: Emulator, regional: Client
) -> None:
    # The old proxy allowed this, and the guardrail was applied.
    with pytest.raises(ClientError) as raised:
        regional("us-east-1", prefix=False).apply_guardrail(
            guardrailIdentifier=f"arn:aws:bedrock:us-east-1:{FOREIGN_ACCOUNT}:guardrail/gr1abc",
            guardrailVersion="1",
            source="INPUT",
            content=[{"text": {"text": "hello"}}],
        )
    status, code, message = _error(raised)
    assert (status, code) == (403, "AccessDeniedException")
    assert f"account_not_allowed: account {FOREIGN_ACCOUNT}" in message
    assert _refusal(proxy, raised)["account"] == FOREIGN_ACCOUNT
    assert emulator.requests() == []


@pytest.mark.parametrize("region", ["us-east-1", "us-west-2"])
def test_same_account_resources_are_allowed(
    proxy: ProxyHandle, emulator: Emulator, regional: Client, region: str
) -> None:
    client = regional(region)
    started = client.start_async_invoke(
        modelId=HAIKU, modelInput={"messages": []}, outputDataConfig=OUTPUT
    )
    arn = started["invocationArn"]
    assert arn.startswith(f"arn:aws:bedrock:{region}:{ACCOUNT}:async-invoke/")
    got = client.get_async_invoke(invocationArn=arn)
    assert got["invocationArn"] == arn
    [authorized, completed] = _records(proxy, got)
    assert authorized["account"] == ACCOUNT and authorized["region"] == region
    assert completed["outcome"] == "ok"
    guarded = client.apply_guardrail(
        guardrailIdentifier=f"arn:aws:bedrock:{region}:{ACCOUNT}:guardrail/gr1abc",
        guardrailVersion="1",
        source="INPUT",
        content=[{"text": {"text": "hello"}}],
    )
    assert guarded["action"] == "NONE"
    assert _records(proxy, guarded)[0]["account"] == ACCOUNT
    seen = emulator.requests()
    assert [r["operation"] for r in seen] == [
        "StartAsyncInvoke",
        "GetAsyncInvoke",
        "ApplyGuardrail",
    ]
    assert all(r["verified"] and r["region"] == region for r in seen)


@pytest.mark.parametrize(
    "call",
    [
        lambda client, arn: client.get_async_invoke(invocationArn=arn),
        lambda client, arn: client.apply_guardrail(
            guardrailIdentifier=arn.replace("async-invoke/", "guardrail/"),
            guardrailVersion="1",
            source="INPUT",
            content=[{"text": {"text": "hello"}}],
        ),
    ],
    ids=["GetAsyncInvoke", "ApplyGuardrail"],
)
def test_a_resource_of_another_region_than_the_call_is_refused(
    proxy: ProxyHandle, emulator: Emulator, regional: Client, call: Client
) -> None:
    # Bedrock looks a resource up in the region the call goes to; policy would
    # have judged the call's region while the ARN names another.
    arn = f"arn:aws:bedrock:us-west-2:{ACCOUNT}:async-invoke/abcdef123456"
    for client in (regional("us-east-1"), regional("us-east-1", prefix=False)):
        with pytest.raises(ClientError) as raised:
            call(client, arn)
        status, code, message = _error(raised)
        assert (status, code) == (400, "ValidationException")
        assert "is in region us-west-2" in message and "for us-east-1" in message
        assert "/region/us-west-2" in message
    assert emulator.requests() == []


# --- Class: FIPS downgrade (a FIPS endpoint asked for, a non-FIPS one called) ---------


@pytest.mark.parametrize(
    "host", ["bedrock-runtime-fips.us-east-1.proxy.test", "bedrock-runtime-fips.proxy.test:8443"]
)
def test_fips_host_is_refused_when_the_upstream_has_no_fips_form(
    proxy: ProxyHandle, emulator: Emulator, host: str
) -> None:
    # The old proxy read the region from the FIPS host and sent the call to the
    # one (non-FIPS) upstream it had.
    status, headers, raw = proxy.raw("POST", CONVERSE, body=BODY, headers={**JSON, "Host": host})
    assert status == 400
    assert headers["x-amzn-ErrorType"] == "ValidationException"
    message = json.loads(raw)["message"]
    assert "FIPS endpoint" in message and "upstream.url" in message
    [record] = proxy.request_of(headers["x-amzn-RequestId"])
    assert record["outcome"] == "invalid_request"
    assert emulator.requests() == []
