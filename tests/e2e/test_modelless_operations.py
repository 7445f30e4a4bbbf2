"""Operations without a model in the path: async invoke (start, get, list) and ApplyGuardrail,
each with its own IAM scope."""

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


def test_apply_guardrail_is_scoped_to_that_guardrail(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    answer = proxy.client().apply_guardrail(
        guardrailIdentifier="gr1abc2def3g",
        guardrailVersion="DRAFT",
        source="INPUT",
        content=[{"text": {"text": "hello"}}],
    )
    assert answer["action"] == "NONE"
    [seen] = emulator.requests()
    assert seen["operation"] == "ApplyGuardrail" and seen["verified"]
    [call] = [c for c in emulator.sts_calls() if c["access_key_id"] == seen["access_key_id"]]
    assert call["policy"]["Statement"][0]["Resource"] == [
        "arn:aws:bedrock:us-east-1:123456789012:guardrail/gr1abc2def3g"
    ]
