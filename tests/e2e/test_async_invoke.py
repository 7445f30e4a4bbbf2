"""Async invoke through the proxy: start, get and list, each with its own IAM scope."""

from __future__ import annotations

import json

from tests.conftest import HAIKU, Emulator, ProxyHandle

OUTPUT = {"s3OutputDataConfig": {"s3Uri": "s3://demo-bedrock-output/runs/"}}


def test_start_get_and_list_async_invocations(proxy: ProxyHandle, emulator: Emulator) -> None:
    client = proxy.client()
    started = client.start_async_invoke(
        modelId=HAIKU, modelInput={"messages": []}, outputDataConfig=OUTPUT
    )
    arn = started["invocationArn"]
    got = client.get_async_invoke(invocationArn=arn)
    assert got["invocationArn"] == arn
    listed = client.list_async_invokes(maxResults=5)
    assert "asyncInvokeSummaries" in listed
    operations = [r["operation"] for r in emulator.requests()]
    assert operations == ["StartAsyncInvoke", "GetAsyncInvoke", "ListAsyncInvokes"]
    assert all(r["verified"] for r in emulator.requests())
    scopes = {c["access_key_id"]: json.dumps(c["policy"]) for c in emulator.sts_calls()}
    get_key = emulator.requests()[1]["access_key_id"]
    assert arn in scopes[get_key], "GetAsyncInvoke is scoped to that one invocation"
