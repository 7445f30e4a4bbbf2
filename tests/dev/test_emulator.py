"""Tests for the local bedrock-runtime + STS emulator (proxy/emulator/).

Pure parts (framing, routing, SigV4 verification, session policies, fault
parsing) are table-driven; the rest drives a real emulator on 127.0.0.1 with
boto3, exactly as the proxy and the e2e tests will.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
import urllib3.exceptions
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError, ResponseStreamingError
from multidict import CIMultiDict

from proxy_dev.emulator import Emulator, responses, start_emulator
from proxy_dev.emulator.errors import AwsError
from proxy_dev.emulator.eventstream import encode_frame, event_frame, exception_frame
from proxy_dev.emulator.faults import parse_fault
from proxy_dev.emulator.iam import model_resource, profile_route, session_policy_allows
from proxy_dev.emulator.routes import parse_route
from proxy_dev.emulator.sigv4 import IssuedCredential, parse_authorization, verify_request

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/bedrock-demo"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SONNET = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE_ARN = (
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
    "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
)
# botocore's max_attempts counts retries, not attempts: total_max_attempts=1
# is what makes one fault produce exactly one error.
NO_RETRY = botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=10)
ANTHROPIC_BODY = json.dumps(
    {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello"}],
    }
).encode()
Q_HAIKU = HAIKU.replace(":", "%3A")
MESSAGES = [{"role": "user", "content": [{"text": "Say hello"}]}]
TOOLS = {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {}}}}]}
ANTHROPIC_TOOLS = [{"name": "lookup", "input_schema": {"type": "object"}}]


# --------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("headers", "payload"),
    [
        ({}, b""),
        ({":event-type": "chunk", ":message-type": "event"}, b'{"bytes":"e30="}'),
        ({"x": "é ünïcode"}, "payload ✓".encode()),
        ({":content-type": "application/json"}, b"x" * 70_000),
    ],
)
def test_encoder_round_trips_through_botocore(headers: dict[str, str], payload: bytes) -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(encode_frame(headers, payload) * 2)
    messages = list(buffer)
    assert len(messages) == 2
    for message in messages:
        assert message.headers == headers
        assert message.payload == payload


def test_encoder_frames_are_checksummed() -> None:
    frame = bytearray(event_frame("chunk", {"bytes": "AA=="}))
    frame[-5] ^= 0xFF  # flip a payload byte: the message CRC must catch it
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(frame))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


def test_exception_frame_shape() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(exception_frame("throttlingException", "slow down"))
    (message,) = list(buffer)
    assert message.headers[":message-type"] == "exception"
    assert message.headers[":exception-type"] == "throttlingException"
    assert json.loads(message.payload) == {"message": "slow down"}


@pytest.mark.parametrize(
    ("method", "path", "operation", "action", "label"),
    [
        ("POST", f"/model/{Q_HAIKU}/invoke", "InvokeModel", "bedrock:InvokeModel", HAIKU),
        ("POST", "/model/m/invoke-with-response-stream", "InvokeModelWithResponseStream",
         "bedrock:InvokeModelWithResponseStream", "m"),
        ("POST", "/model/m/converse", "Converse", "bedrock:InvokeModel", "m"),
        ("POST", "/model/m/converse-stream", "ConverseStream",
         "bedrock:InvokeModelWithResponseStream", "m"),
        ("POST", "/model/m/count-tokens", "CountTokens", "bedrock:CountTokens", "m"),
        ("POST", "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/invoke",
         "InvokeModel", "bedrock:InvokeModel",
         "arn:aws:bedrock:us-east-1:1:inference-profile/us.x"),
        ("POST", "/guardrail/gr1/version/DRAFT/apply", "ApplyGuardrail",
         "bedrock:ApplyGuardrail", None),
        ("POST", "/async-invoke", "StartAsyncInvoke", "bedrock:InvokeModel", None),
        ("GET", "/async-invoke?maxResults=3", "ListAsyncInvokes", "bedrock:ListAsyncInvokes", None),
    ],
)  # fmt: skip
def test_parse_route(
    method: str, path: str, operation: str, action: str, label: str | None
) -> None:
    route = parse_route(method, path)
    assert (route.operation, route.action, route.model_id) == (operation, action, label)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/model/m/explode", 404),
        ("GET", "/model/m/invoke", 404),
        ("POST", "/model/a/b/invoke", 404),  # a raw "/" splits the label: not one model id
        ("POST", "/model/a%252Fb/invoke", 400),  # decoded once -> "a%2Fb", not a valid id
        ("POST", "/model/a%20b/invoke", 400),
        ("POST", "/model//invoke", 400),
        ("POST", "/guardrail/g/version/0/apply", 400),
        ("GET", "/async-invoke/not-an-arn", 400),
        ("GET", "/", 404),
    ],
)
def test_parse_route_rejects(method: str, path: str, status: int) -> None:
    with pytest.raises(AwsError) as info:
        parse_route(method, path)
    assert info.value.status == status


def _policy(resources: list[str], actions: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    statement = {
        "Effect": "Allow",
        "Action": actions or ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"],
        "Resource": resources,
        **extra,
    }
    return {"Version": "2012-10-17", "Statement": [statement]}


HAIKU_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{HAIKU}"


@pytest.mark.parametrize(
    ("policy", "action", "resource", "region", "allowed"),
    [
        (None, "bedrock:InvokeModel", HAIKU_ARN, REGION, True),
        (_policy([HAIKU_ARN]), "bedrock:InvokeModel", HAIKU_ARN, REGION, True),
        (_policy([HAIKU_ARN]), "bedrock:invokemodel", HAIKU_ARN, REGION, True),
        (_policy([HAIKU_ARN]), "bedrock:CountTokens", HAIKU_ARN, REGION, False),
        (_policy([HAIKU_ARN]), "bedrock:InvokeModel", HAIKU_ARN.replace("haiku", "opus"),
         REGION, False),
        (_policy(["arn:aws:bedrock:*::foundation-model/anthropic.*"]), "bedrock:InvokeModel",
         HAIKU_ARN, REGION, True),
        (_policy([HAIKU_ARN], ["bedrock:*"]), "bedrock:CountTokens", HAIKU_ARN, REGION, True),
        (_policy([HAIKU_ARN], Condition={"StringEquals": {"aws:RequestedRegion": REGION}}),
         "bedrock:InvokeModel", HAIKU_ARN, REGION, True),
        (_policy([HAIKU_ARN], Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}),
         "bedrock:InvokeModel", HAIKU_ARN, REGION, False),
        (_policy([HAIKU_ARN], Condition={"StringEquals": {"aws:SourceIp": "1.2.3.4"}}),
         "bedrock:InvokeModel", HAIKU_ARN, REGION, False),  # unknown key never widens
        (_policy([HAIKU_ARN], NotAction="x"), "bedrock:InvokeModel", HAIKU_ARN, REGION, False),
        ({"Statement": [_policy(["*"])["Statement"][0],
                        {"Effect": "Deny", "Action": "bedrock:*", "Resource": HAIKU_ARN}]},
         "bedrock:InvokeModel", HAIKU_ARN, REGION, False),
        ({"Statement": "nonsense"}, "bedrock:InvokeModel", HAIKU_ARN, REGION, False),
    ],
)  # fmt: skip
def test_session_policy(
    policy: dict[str, Any] | None, action: str, resource: str, region: str, allowed: bool
) -> None:
    assert session_policy_allows(policy, action, resource, region) is allowed


US_PROFILE = f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/us.{HAIKU}"
GLOBAL_PROFILE = f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/global.{HAIKU}"
GLOBAL_HAIKU = f"arn:aws:bedrock:::foundation-model/{HAIKU}"


@pytest.mark.parametrize(
    ("resource", "route"),
    [
        (US_PROFILE, (HAIKU_ARN, REGION)),
        (GLOBAL_PROFILE, (GLOBAL_HAIKU, "unspecified")),
        (HAIKU_ARN, None),
        ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc", None),
    ],
)
def test_profile_route(resource: str, route: tuple[str, str] | None) -> None:
    assert profile_route(resource) == route


@pytest.mark.parametrize(
    ("condition", "region", "profile", "allowed"),
    [
        ({"bedrock:InferenceProfileArn": US_PROFILE}, REGION, US_PROFILE, True),
        ({"bedrock:InferenceProfileArn": US_PROFILE}, REGION, GLOBAL_PROFILE, False),
        ({"bedrock:InferenceProfileArn": US_PROFILE}, REGION, None, False),  # key absent
        ({"aws:RequestedRegion": "unspecified"}, "unspecified", None, True),
        ({"aws:RequestedRegion": "unspecified"}, REGION, None, False),
    ],
)
def test_profile_conditions(
    condition: dict[str, str], region: str, profile: str | None, allowed: bool
) -> None:
    policy = _policy([HAIKU_ARN, GLOBAL_HAIKU], Condition={"StringEquals": condition})
    resource = GLOBAL_HAIKU if region == "unspecified" else HAIKU_ARN
    assert (
        session_policy_allows(policy, "bedrock:InvokeModel", resource, region, profile_arn=profile)
        is allowed
    )


@pytest.mark.parametrize(
    ("model_id", "arn"),
    [
        (HAIKU, HAIKU_ARN),
        ("us.x.y-v1:0", "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x.y-v1:0"),
        ("global.x", "arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.x"),
        (PROFILE_ARN, PROFILE_ARN),
    ],
)
def test_model_resource(model_id: str, arn: str) -> None:
    assert model_resource(model_id, REGION, "123456789012") == arn


@pytest.mark.parametrize(
    ("header", "error_type"),
    [
        (None, "MissingAuthenticationTokenException"),
        ("Bearer abc", "IncompleteSignatureException"),
        ("AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/bedrock/aws4_request, "
         "SignedHeaders=host, Signature=zz", "IncompleteSignatureException"),
        ("AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/s3/aws4_request, "
         "SignedHeaders=host, Signature=" + "a" * 64, "InvalidSignatureException"),
        ("AWS4-HMAC-SHA256 Credential=A/20240101/Mars/bedrock/aws4_request, "
         "SignedHeaders=host, Signature=" + "a" * 64, "InvalidSignatureException"),
        ("AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/bedrock/aws4_request, "
         "SignedHeaders=x-amz-date, Signature=" + "a" * 64, "InvalidSignatureException"),
        ("AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/bedrock/aws4_request, "
         "SignedHeaders=x-amz-date;host, Signature=" + "a" * 64, "InvalidSignatureException"),
    ],
)  # fmt: skip
def test_parse_authorization_rejects(header: str | None, error_type: str) -> None:
    with pytest.raises(AwsError) as info:
        parse_authorization(header)
    assert (info.value.status, info.value.error_type) == (403, error_type)


NOW = time.time()
CRED = IssuedCredential("ASIATEST", "secret", "token", NOW + 900, ROLE, None, None)


def _signed(
    *, path: str, body: bytes, secret: str = "secret", token: str = "token",
    akid: str = "ASIATEST", at: float = NOW, extra: dict[str, str] | None = None,
) -> CIMultiDict[str]:  # fmt: skip
    request = AWSRequest(
        method="POST",
        url="http://127.0.0.1:1" + path,
        data=body,
        headers={"Content-Type": "application/json", **(extra or {})},
    )
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC)
    signer = SigV4Auth(Credentials(akid, secret, token), "bedrock", REGION)
    request.context["timestamp"] = stamp.strftime("%Y%m%dT%H%M%SZ")
    signer._modify_request_before_signing(request)
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signer._inject_signature_to_request(request, signature)
    headers = CIMultiDict(request.headers.items())
    headers["Host"] = "127.0.0.1:1"
    return headers


ARN_PATH = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x%3A0/invoke"


@pytest.mark.parametrize(
    ("kwargs", "tamper", "error_type"),
    [
        ({}, None, None),
        ({"extra": {"X-Amz-Content-Sha256": hashlib.sha256(b"{}").hexdigest()}}, None, None),
        ({"secret": "wrong"}, None, "InvalidSignatureException"),
        ({"akid": "ASIAUNKNOWN"}, None, "UnrecognizedClientException"),
        ({"token": "other"}, None, "UnrecognizedClientException"),
        ({"at": NOW - 3600}, None, "InvalidSignatureException"),
        ({}, lambda h: h.__setitem__("Content-Type", "text/plain"), "InvalidSignatureException"),
        ({"extra": {"X-Amz-Content-Sha256": "0" * 64}}, None, "InvalidSignatureException"),
        ({}, lambda h: h.__delitem__("X-Amz-Date"), "InvalidSignatureException"),
    ],
)
def test_verify_request(
    kwargs: dict[str, Any],
    tamper: Callable[[CIMultiDict[str]], None] | None,
    error_type: str | None,
) -> None:
    headers = _signed(path=ARN_PATH, body=b"{}", **kwargs)
    if tamper is not None:
        tamper(headers)

    def verify(path: str = ARN_PATH, body: bytes = b"{}") -> None:
        verify_request(
            method="POST", raw_path=path, headers=headers, body=body,
            lookup={"ASIATEST": CRED}.get, now=NOW,
        )  # fmt: skip

    if error_type is None:
        verify()
        # Same signature, other bytes: the path as sent and the body are covered.
        for path, body in ((ARN_PATH.replace("%3A0", ":0"), b"{}"), (ARN_PATH, b"{ }")):
            with pytest.raises(AwsError) as info:
                verify(path, body)
            assert info.value.error_type == "InvalidSignatureException"
    else:
        with pytest.raises(AwsError) as info:
            verify()
        assert (info.value.status, info.value.error_type) == (403, error_type)


def test_verify_rejects_expired_credential() -> None:
    expired = IssuedCredential("ASIATEST", "secret", "token", NOW - 1, ROLE, None, None)
    with pytest.raises(AwsError) as info:
        verify_request(
            method="POST", raw_path=ARN_PATH, headers=_signed(path=ARN_PATH, body=b""),
            body=b"", lookup={"ASIATEST": expired}.get, now=NOW,
        )  # fmt: skip
    assert info.value.error_type == "ExpiredTokenException"


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"kind": "explode"},
        {"kind": "throttle", "count": 0},
        {"kind": "throttle", "count": True},
        {"kind": "http5xx", "status": 200},
        {"kind": "slow", "delay_ms": -1},
        {"kind": "exception_frame", "exception_type": "nope"},
        {"kind": "throttle", "surprise": 1},
    ],
)
def test_parse_fault_rejects(doc: Any) -> None:
    with pytest.raises(AwsError) as info:
        parse_fault(doc)
    assert info.value.status == 400


def _converse_result(tool_use_id: str, *extra: dict[str, Any]) -> dict[str, Any]:
    result = {"toolResult": {"toolUseId": tool_use_id, "content": [{"text": "42"}]}}
    return {"role": "user", "content": [result, *extra]}


def _anthropic_result(tool_use_id: str) -> dict[str, Any]:
    result = {"type": "tool_result", "tool_use_id": tool_use_id, "content": "42"}
    return {"role": "user", "content": [result]}


_ASK = {"role": "user", "content": [{"text": "Look it up"}]}
_CALL = {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "lookup"}}]}
_TELL = {"role": "assistant", "content": [{"text": "It is 42."}]}
_A_CALL = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup"}]}


@pytest.mark.parametrize(
    ("messages", "stop"),
    [
        ([_ASK], "tool_use"),
        ([_ASK, _CALL, _converse_result("t1")], "end_turn"),
        ([_ASK, _CALL, _converse_result("t1", {"text": "and now?"})], "end_turn"),
        # An older tool exchange does not answer a new question.
        ([_ASK, _CALL, _converse_result("t1"), _TELL, _ASK], "tool_use"),
    ],
)
def test_converse_calls_the_tool_until_the_last_user_message_holds_its_result(
    messages: list[dict[str, Any]], stop: str
) -> None:
    reply = responses.converse({"messages": messages, "toolConfig": TOOLS}, b"{}", 3, 1)
    assert reply.body["stopReason"] == stop
    (block,) = reply.body["output"]["message"]["content"]
    assert ("toolUse" in block) is (stop == "tool_use")


@pytest.mark.parametrize(
    ("messages", "stop"),
    [
        ([{"role": "user", "content": "Look it up"}], "tool_use"),
        ([{"role": "user", "content": "Look it up"}, _A_CALL, _anthropic_result("t1")],
         "end_turn"),
        ([{"role": "user", "content": "Look it up"}, _A_CALL, _anthropic_result("t1"),
          {"role": "assistant", "content": "It is 42."}, {"role": "user", "content": "Again"}],
         "tool_use"),
    ],
)  # fmt: skip
def test_anthropic_calls_the_tool_until_the_last_user_message_holds_its_result(
    messages: list[dict[str, Any]], stop: str
) -> None:
    request = {"anthropic_version": "bedrock-2023-05-31", "tools": ANTHROPIC_TOOLS,
               "messages": messages}  # fmt: skip
    reply = responses.invoke_model(HAIKU, json.dumps(request).encode(), request, 3)
    assert reply.body["stop_reason"] == stop
    (block,) = reply.body["content"]
    assert block["type"] == ("tool_use" if stop == "tool_use" else "text")


# ------------------------------------------------------ running emulator


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    # The emulator gets its own loop thread so that tests can use boto3's
    # blocking clients exactly as applications do.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emu = asyncio.run_coroutine_threadsafe(
        start_emulator(frame_delay_s=0.01, frames=5), loop
    ).result(30)
    try:
        yield emu
    finally:
        asyncio.run_coroutine_threadsafe(emu.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class Harness:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self._clients: list[Any] = []
        self.sts = self._track(
            boto3.client(
                "sts", endpoint_url=emu.sts_url, region_name=REGION,
                aws_access_key_id="AKIDCALLER", aws_secret_access_key="caller-secret",
                config=NO_RETRY,
            )
        )  # fmt: skip

    def _track(self, client: Any) -> Any:
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def assume(self, **kwargs: Any) -> dict[str, Any]:
        answer = self.sts.assume_role(RoleArn=ROLE, RoleSessionName="test-session", **kwargs)
        return dict(answer["Credentials"])

    def bedrock(self, creds: dict[str, Any] | None = None, **overrides: str) -> Any:
        creds = creds or self.assume()
        values = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
            **overrides,
        }
        return self._track(
            boto3.client(
                "bedrock-runtime", endpoint_url=self.emu.bedrock_url, region_name=REGION,
                config=NO_RETRY, **values,
            )
        )  # fmt: skip

    def control(self, method: str, path: str, doc: Any = None) -> Any:
        data = json.dumps(doc).encode() if doc is not None else None
        request = urllib.request.Request(
            self.emu.bedrock_url + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def fault(self, **doc: Any) -> None:
        self.control("POST", "/_emulator/faults", doc)

    def records(self) -> list[dict[str, Any]]:
        return list(self.control("GET", "/_emulator/requests"))


@pytest.fixture
def harness(emulator: Emulator) -> Iterator[Harness]:
    h = Harness(emulator)
    try:
        yield h
    finally:
        h.close()


def _decode_chunks(stream: Any) -> list[dict[str, Any]]:
    return [json.loads(event["chunk"]["bytes"]) for event in stream]


def test_invoke_model_anthropic(harness: Harness) -> None:
    answer = harness.bedrock().invoke_model(modelId=HAIKU, body=ANTHROPIC_BODY)
    body = json.loads(answer["body"].read())
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"][0]["type"] == "text" and body["content"][0]["text"]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["output_tokens"] == 5 and body["usage"]["input_tokens"] > 0
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == "5"
    assert int(headers["x-amzn-bedrock-input-token-count"]) == body["usage"]["input_tokens"]
    assert answer["ResponseMetadata"]["RequestId"]


def test_invoke_model_generic_body(harness: Harness) -> None:
    answer = harness.bedrock().invoke_model(modelId="amazon.titan-text-express-v1", body=b"{}")
    assert json.loads(answer["body"].read())["results"][0]["completionReason"] == "FINISH"


@pytest.mark.parametrize(
    "model_id", [HAIKU, PROFILE_ARN, "us.anthropic.claude-3-5-sonnet-20240620-v1:0"]
)
def test_model_ids_with_colons_and_arns_are_verified(harness: Harness, model_id: str) -> None:
    answer = harness.bedrock().converse(modelId=model_id, messages=MESSAGES)
    assert answer["stopReason"] == "end_turn"
    (record,) = harness.records()
    assert record["model_id"] == model_id and record["verified"] is True
    assert "%3A" in record["raw_path"] and ":" not in record["raw_path"]


def test_converse_text_and_tool_use(harness: Harness) -> None:
    client = harness.bedrock()
    answer = client.converse(modelId=HAIKU, messages=MESSAGES)
    assert answer["output"]["message"]["content"][0]["text"]
    usage = answer["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert "latencyMs" in answer["metrics"]
    tools = {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {}}}}]}
    answer = client.converse(modelId=HAIKU, messages=MESSAGES, toolConfig=tools)
    assert answer["stopReason"] == "tool_use"
    assert answer["output"]["message"]["content"][0]["toolUse"]["name"] == "lookup"


def test_converse_stream_event_order(harness: Harness) -> None:
    answer = harness.bedrock().converse_stream(modelId=HAIKU, messages=MESSAGES)
    events = [next(iter(e)) for e in answer["stream"]]
    assert events == (
        ["messageStart"] + ["contentBlockDelta"] * 5
        + ["contentBlockStop", "messageStop", "metadata"]
    )  # fmt: skip
    (record,) = harness.records()
    assert record["frames_sent"] == len(events) and record["outcome"] == "completed"
    assert record["last_frame_at"] - record["first_frame_at"] >= 0.01 * (len(events) - 1) * 0.9


def test_converse_stream_tool_use(harness: Harness) -> None:
    tools = {"tools": [{"toolSpec": {"name": "search", "inputSchema": {"json": {}}}}]}
    answer = harness.bedrock().converse_stream(modelId=HAIKU, messages=MESSAGES, toolConfig=tools)
    events = list(answer["stream"])
    assert events[1]["contentBlockStart"]["start"]["toolUse"]["name"] == "search"
    pieces = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events[2:-3])
    assert json.loads(pieces)["query"]
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"


def test_converse_agent_loop_ends_after_the_tool_result(harness: Harness) -> None:
    client = harness.bedrock()
    first = client.converse(modelId=HAIKU, messages=MESSAGES, toolConfig=TOOLS)
    assert first["stopReason"] == "tool_use"
    call = first["output"]["message"]
    (block,) = call["content"]
    history = [*MESSAGES, call, _converse_result(block["toolUse"]["toolUseId"])]
    second = client.converse(modelId=HAIKU, messages=history, toolConfig=TOOLS)
    assert second["stopReason"] == "end_turn"
    (block,) = second["output"]["message"]["content"]
    assert block["text"] and "toolUse" not in block
    assert second["usage"]["outputTokens"] == 5
    # A new question after that exchange is not answered by the old result.
    history += [second["output"]["message"], {"role": "user", "content": [{"text": "Again"}]}]
    third = client.converse(modelId=HAIKU, messages=history, toolConfig=TOOLS)
    assert third["stopReason"] == "tool_use"
    assert third["output"]["message"]["content"][0]["toolUse"]["name"] == "lookup"


def test_converse_stream_agent_loop_ends_after_the_tool_result(harness: Harness) -> None:
    client = harness.bedrock()
    first = list(
        client.converse_stream(modelId=HAIKU, messages=MESSAGES, toolConfig=TOOLS)["stream"]
    )
    assert first[-2]["messageStop"]["stopReason"] == "tool_use"
    tool = first[1]["contentBlockStart"]["start"]["toolUse"]
    pieces = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in first[2:-3])
    call = {"role": "assistant", "content": [{"toolUse": {**tool, "input": json.loads(pieces)}}]}
    history = [*MESSAGES, call, _converse_result(tool["toolUseId"])]
    second = list(
        client.converse_stream(modelId=HAIKU, messages=history, toolConfig=TOOLS)["stream"]
    )
    assert [next(iter(e)) for e in second] == (
        ["messageStart"] + ["contentBlockDelta"] * 5
        + ["contentBlockStop", "messageStop", "metadata"]
    )  # fmt: skip
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in second[1:-3]).strip()
    assert second[-2]["messageStop"]["stopReason"] == "end_turn"
    assert second[-1]["metadata"]["usage"]["outputTokens"] == 5


def _anthropic_body(messages: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "tools": ANTHROPIC_TOOLS,
         "messages": messages}
    ).encode()  # fmt: skip


def test_invoke_model_agent_loop_ends_after_the_tool_result(harness: Harness) -> None:
    client = harness.bedrock()
    ask = [{"role": "user", "content": "Look it up"}]
    first = json.loads(client.invoke_model(modelId=HAIKU, body=_anthropic_body(ask))["body"].read())
    assert first["stop_reason"] == "tool_use"
    (block,) = first["content"]
    assert block["type"] == "tool_use" and block["name"] == "lookup"
    history = [
        *ask,
        {"role": "assistant", "content": first["content"]},
        _anthropic_result(block["id"]),
    ]
    answer = client.invoke_model(modelId=HAIKU, body=_anthropic_body(history))
    second = json.loads(answer["body"].read())
    assert second["stop_reason"] == "end_turn"
    (block,) = second["content"]
    assert block["type"] == "text" and block["text"]
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-output-token-count"] == "5"


def test_invoke_model_stream_agent_loop_ends_after_the_tool_result(harness: Harness) -> None:
    client = harness.bedrock()
    ask = [{"role": "user", "content": "Look it up"}]
    answer = client.invoke_model_with_response_stream(modelId=HAIKU, body=_anthropic_body(ask))
    first = _decode_chunks(answer["body"])
    assert first[1]["content_block"]["type"] == "tool_use"
    assert first[-2]["delta"]["stop_reason"] == "tool_use"
    pieces = "".join(c["delta"]["partial_json"] for c in first[2:-3])
    call = {**first[1]["content_block"], "input": json.loads(pieces)}
    history = [*ask, {"role": "assistant", "content": [call]}, _anthropic_result(call["id"])]
    answer = client.invoke_model_with_response_stream(modelId=HAIKU, body=_anthropic_body(history))
    second = _decode_chunks(answer["body"])
    assert second[1]["content_block"]["type"] == "text"
    assert "".join(c["delta"]["text"] for c in second[2:-3]).strip()
    assert second[-2]["delta"]["stop_reason"] == "end_turn"
    assert second[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 5


def test_invoke_model_with_response_stream(harness: Harness) -> None:
    answer = harness.bedrock().invoke_model_with_response_stream(modelId=HAIKU, body=ANTHROPIC_BODY)
    assert answer["contentType"] == "application/json"
    chunks = _decode_chunks(answer["body"])
    assert [c["type"] for c in chunks] == (
        ["message_start", "content_block_start"] + ["content_block_delta"] * 5
        + ["content_block_stop", "message_delta", "message_stop"]
    )  # fmt: skip
    assert chunks[-2]["delta"]["stop_reason"] == "end_turn"
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == 5 and metrics["inputTokenCount"] > 0
    assert {"invocationLatency", "firstByteLatency"} <= set(metrics)


def test_count_tokens_guardrail_and_async(harness: Harness) -> None:
    client = harness.bedrock()
    counted = client.count_tokens(modelId=HAIKU, input={"invokeModel": {"body": b"x" * 400}})
    assert counted["inputTokens"] == 100
    guard = client.apply_guardrail(
        guardrailIdentifier="gr1", guardrailVersion="1", source="INPUT",
        content=[{"text": {"text": "hi"}}],
    )  # fmt: skip
    assert guard["action"] == "NONE"
    started = client.start_async_invoke(
        modelId=HAIKU, modelInput={"prompt": "x"},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://bucket/out"}},
    )  # fmt: skip
    arn = started["invocationArn"]
    assert arn.startswith("arn:aws:bedrock:us-east-1:123456789012:async-invoke/")
    assert client.get_async_invoke(invocationArn=arn)["status"] == "Completed"
    listed = client.list_async_invokes(maxResults=5)["asyncInvokeSummaries"]
    assert [s["invocationArn"] for s in listed] == [arn]


def _error_code(call: Callable[[], Any]) -> tuple[str, int]:
    with pytest.raises(ClientError) as info:
        call()
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_signature_and_credential_rejections(harness: Harness) -> None:
    creds = harness.assume()
    wrong_secret = harness.bedrock(creds, aws_secret_access_key="not-the-secret")
    unknown_key = harness.bedrock(creds, aws_access_key_id="ASIANOTISSUED")
    other_token = harness.bedrock(creds, aws_session_token="forged")
    static = harness.bedrock(
        {"AccessKeyId": "AKIDCALLER", "SecretAccessKey": "caller-secret", "SessionToken": ""}
    )
    cases = [
        (wrong_secret, "InvalidSignatureException"),
        (unknown_key, "UnrecognizedClientException"),
        (other_token, "UnrecognizedClientException"),
        (static, "UnrecognizedClientException"),
    ]
    for client, code in cases:
        assert _error_code(lambda c=client: c.converse(modelId=HAIKU, messages=MESSAGES)) == (
            code,
            403,
        )
    records = harness.records()
    assert [r["outcome"] for r in records] == ["rejected"] * 4
    assert not any(r["verified"] for r in records)
    assert records[1]["access_key_id"] == "ASIANOTISSUED"


def test_session_policy_scopes_models(harness: Harness) -> None:
    policy = _policy(
        [f"arn:aws:bedrock:{REGION}::foundation-model/{HAIKU}"],
        Condition={"StringEquals": {"aws:RequestedRegion": REGION}},
    )
    client = harness.bedrock(harness.assume(Policy=json.dumps(policy)))
    assert client.converse(modelId=HAIKU, messages=MESSAGES)["stopReason"] == "end_turn"
    assert _error_code(lambda: client.converse(modelId=SONNET, messages=MESSAGES)) == (
        "AccessDeniedException",
        403,
    )
    # CountTokens is its own action, not granted by the policy.
    assert _error_code(
        lambda: client.count_tokens(modelId=HAIKU, input={"invokeModel": {"body": b"{}"}})
    ) == ("AccessDeniedException", 403)
    assert [r["outcome"] for r in harness.records()] == ["completed", "rejected", "rejected"]


@pytest.mark.parametrize("geo", ["us", "global"])
def test_profile_calls_need_the_routed_model_too(harness: Harness, geo: str) -> None:
    profile = US_PROFILE if geo == "us" else GLOBAL_PROFILE
    routed, routed_region = profile_route(profile) or ("", "")
    only_profile = _policy([profile])
    both = {
        "Version": "2012-10-17",
        "Statement": [
            only_profile["Statement"][0],
            _policy([routed], Condition={"StringEquals": {"aws:RequestedRegion": routed_region}})[
                "Statement"
            ][0],
        ],
    }
    denied = harness.bedrock(harness.assume(Policy=json.dumps(only_profile)))
    allowed = harness.bedrock(harness.assume(Policy=json.dumps(both)))
    model_id = f"{geo}.{HAIKU}"
    assert _error_code(lambda: denied.converse(modelId=model_id, messages=MESSAGES)) == (
        "AccessDeniedException",
        403,
    )
    assert allowed.converse(modelId=model_id, messages=MESSAGES)["stopReason"] == "end_turn"


def test_sts_records_calls_and_rejects_bad_policies(harness: Harness) -> None:
    policy = _policy([HAIKU_ARN])
    creds = harness.assume(
        Policy=json.dumps(policy), SourceIdentity="spiffe.example.org.w1",
        Tags=[{"Key": "task", "Value": "t-1"}], DurationSeconds=900,
    )  # fmt: skip
    assert _error_code(lambda: harness.assume(Policy="{not json")) == (
        "MalformedPolicyDocument",
        400,
    )
    calls = harness.control("GET", "/_emulator/sts-calls")
    assert calls[0] == {
        "role_arn": ROLE,
        "role_session_name": "test-session",
        "source_identity": "spiffe.example.org.w1",
        "duration": 900,
        "policy": policy,
        "tags": {"task": "t-1"},
        "access_key_id": creds["AccessKeyId"],
        "status": 200,
    }
    assert calls[1]["status"] == 400 and calls[1]["access_key_id"] is None


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [
        ({"kind": "throttle"}, "ThrottlingException", 429),
        ({"kind": "http5xx"}, "InternalServerException", 500),
        ({"kind": "http5xx", "status": 503}, "ServiceUnavailableException", 503),
    ],
)
def test_http_faults(harness: Harness, fault: dict[str, Any], code: str, status: int) -> None:
    client = harness.bedrock()
    harness.fault(count=2, **fault)
    for _ in range(2):
        assert _error_code(lambda: client.invoke_model(modelId=HAIKU, body=b"{}")) == (
            code,
            status,
        )
    client.invoke_model(modelId=HAIKU, body=b"{}")  # the fault is used up
    outcomes = [(r["outcome"], r["fault"]) for r in harness.records()]
    assert outcomes == [("fault", fault["kind"])] * 2 + [("completed", None)]


def test_exception_frame_fault(harness: Harness) -> None:
    client = harness.bedrock()
    harness.fault(kind="exception_frame")
    client.converse(modelId=HAIKU, messages=MESSAGES)  # non-streaming calls leave it queued
    stream = client.converse_stream(modelId=HAIKU, messages=MESSAGES)["stream"]
    seen = []
    # A stream that ends in an error keeps its socket until closed.
    with closing(stream), pytest.raises(EventStreamError) as info:
        for event in stream:
            seen.append(next(iter(event)))
    assert info.value.response["Error"]["Code"] == "throttlingException"
    assert seen == ["messageStart", "contentBlockDelta"]
    records = harness.records()
    assert [(r["outcome"], r["frames_sent"]) for r in records] == [("completed", 0), ("fault", 2)]


def test_reset_fault(harness: Harness) -> None:
    client = harness.bedrock()
    harness.fault(kind="reset")
    stream = client.invoke_model_with_response_stream(modelId=HAIKU, body=ANTHROPIC_BODY)["body"]
    seen = []
    with closing(stream), pytest.raises((urllib3.exceptions.ProtocolError, ResponseStreamingError)):
        for event in stream:
            seen.append(event)
    assert len(seen) == 2
    (record,) = harness.records()
    assert (record["outcome"], record["fault"], record["frames_sent"]) == ("fault", "reset", 2)


def test_slow_fault(harness: Harness) -> None:
    client = harness.bedrock()
    harness.fault(kind="slow", delay_ms=60)
    list(client.converse_stream(modelId=HAIKU, messages=MESSAGES)["stream"])
    list(client.converse_stream(modelId=HAIKU, messages=MESSAGES)["stream"])
    slow, normal = harness.records()
    gaps = [r["last_frame_at"] - r["first_frame_at"] for r in (slow, normal)]
    assert gaps[0] >= 0.06 * (slow["frames_sent"] - 1) * 0.9
    assert gaps[1] < gaps[0] / 2
    assert (slow["outcome"], slow["fault"], normal["fault"]) == ("completed", "slow", None)


def test_sts_deny_fault(harness: Harness) -> None:
    client = harness.bedrock()
    harness.fault(kind="sts_deny")
    client.converse(modelId=HAIKU, messages=MESSAGES)  # bedrock calls do not consume it
    assert _error_code(harness.assume) == ("AccessDenied", 403)
    assert harness.assume()["AccessKeyId"]
    statuses = [c["status"] for c in harness.control("GET", "/_emulator/sts-calls")]
    assert statuses == [200, 403, 200]


def test_fault_control_validation_and_clear(harness: Harness) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        harness.fault(kind="meteor")
    assert info.value.code == 400
    info.value.close()
    harness.fault(kind="throttle", count=3)
    assert harness.control("GET", "/_emulator/faults")[0]["remaining"] == 3
    harness.control("DELETE", "/_emulator/faults")
    harness.bedrock().invoke_model(modelId=HAIKU, body=b"{}")
    harness.control("DELETE", "/_emulator/requests")
    assert harness.records() == []


def _raw_signed_call(
    harness: Harness, creds: dict[str, Any], path: str, body: bytes
) -> tuple[socket.socket, bytes]:
    """Send one signed request over a raw socket, so a test can hang up mid-stream."""
    host, port = harness.emu.bedrock_url.removeprefix("http://").rsplit(":", 1)
    request = AWSRequest(
        method="POST", url=harness.emu.bedrock_url + path, data=body,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    credentials = Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    SigV4Auth(credentials, "bedrock", REGION).add_auth(request)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items()]
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock, sock.recv(65536)


def test_bad_json_and_unknown_path(harness: Harness) -> None:
    creds = harness.assume()
    for path, status, error_type in (
        (f"/model/{Q_HAIKU}/converse", 400, "ValidationException"),
        ("/model/m/summon", 404, "UnknownOperationException"),
    ):
        sock, head = _raw_signed_call(harness, creds, path, b"{not json")
        sock.close()
        assert head.startswith(f"HTTP/1.1 {status}".encode())
        assert f"x-amzn-ErrorType: {error_type}".lower().encode() in head.lower()
    assert [r["outcome"] for r in harness.records()] == ["rejected", "rejected"]


def test_client_hang_up_is_recorded_as_aborted(harness: Harness) -> None:
    creds = harness.assume()
    harness.fault(kind="slow", delay_ms=100)
    sock, head = _raw_signed_call(
        harness, creds, f"/model/{Q_HAIKU}/converse-stream",
        json.dumps({"messages": MESSAGES}).encode(),
    )  # fmt: skip
    assert head.startswith(b"HTTP/1.1 200")
    sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        (record,) = harness.records()
        if record["outcome"] != "in_progress":
            break
        time.sleep(0.05)
    assert record["outcome"] == "aborted"
    assert 1 <= record["frames_sent"] < 9


def test_cli_writes_ready_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "emulator.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy_dev.emulator", "--ready-file", str(ready), "--frames", "3"],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        document = json.loads(ready.read_text())
        assert document["pid"] == process.pid
        assert document["bedrock_url"].startswith("http://127.0.0.1:")
        assert document["sts_url"].startswith("http://127.0.0.1:")
        with urllib.request.urlopen(document["bedrock_url"] + "/_emulator/requests") as answer:
            assert json.loads(answer.read()) == []
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err.decode()
    assert list(tmp_path.iterdir()) == [ready]  # no temporary file left behind
    assert json.loads(out.decode().splitlines()[0]) == document


def test_records_capture_body_and_headers(harness: Harness) -> None:
    harness.bedrock().invoke_model(modelId=HAIKU, body=ANTHROPIC_BODY)
    (record,) = harness.records()
    assert base64.b64decode(record["body_b64"]) == ANTHROPIC_BODY
    assert record["body_len"] == len(ANTHROPIC_BODY)
    assert record["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256")
    assert (record["region"], record["operation"], record["status"]) == (
        REGION,
        "InvokeModel",
        200,
    )
