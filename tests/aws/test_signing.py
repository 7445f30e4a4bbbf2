"""proxy.aws.signing: caller credentials never go upstream; the SigV4 signature is one
botocore itself reproduces, over the double-encoded canonical URI."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.aws.credentials import SessionCredentials
from proxy.aws.signing import (
    FORWARDED_HEADERS,
    forwardable_headers,
    returnable_headers,
    sign_request,
)
from proxy.request.operations import parse_route

CREDS = SessionCredentials(
    access_key_id="ASIAEXAMPLEEXAMPLE01",
    secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    session_token="FwoGZXIvYXdzEXAMPLETOKEN//////////",
    expiration=datetime(2030, 1, 1, tzinfo=UTC),
    role_session_name="spiffe.example.org.chat",
    source_identity="spiffe.example.org.chat",
    assumed_role_arn="arn:aws:sts::123456789012:assumed-role/bedrock-chat/spiffe.example.org.chat",
)

DROPPED = [
    (
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDCALLER/20240101/us-east-1/bedrock/"
        "aws4_request, SignedHeaders=host;x-amz-date, Signature=abcdef",
    ),
    ("Authorization", "Bearer bedrock-api-key-ABSKQmVkcm9ja0FQSUtleS1"),
    ("authorization", "Bearer x"),
    ("X-Amz-Security-Token", "callers-session-token"),
    ("x-amz-security-token", "callers-session-token"),
    ("X-Amz-Date", "20240101T000000Z"),
    ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
    ("X-AMZ-CONTENT-SHA256", "e3b0c442"),
    ("Host", "bedrock-runtime.us-east-1.amazonaws.com"),
    ("Connection", "keep-alive, Upgrade"),
    ("Transfer-Encoding", "chunked"),
    ("Keep-Alive", "timeout=5"),
    ("Upgrade", "h2c"),
    ("TE", "trailers"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("Content-Length", "12"),
    ("X-Task-Id", "task-1"),
    ("X-Data-Classification", "public"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Amz-User-Agent", "aws-sdk"),
    ("X-Amzn-Trace-Id", "Root=1-abc"),
    ("X-Amzn-Bedrock-Unknown", "x"),
    ("Cookie", "session=1"),
    ("User-Agent", "Boto3/1.44.8"),
    ("Expect", "100-continue"),
]


@pytest.mark.parametrize(("name", "value"), DROPPED)
def test_forwardable_headers_drops(name: str, value: str) -> None:
    assert forwardable_headers([(name, value)]) == {}


KEPT = [
    ("Content-Type", "application/json"),
    ("content-type", "application/json"),
    ("Accept", "application/json"),
    ("X-Amzn-Bedrock-Accept", "*/*"),
    ("X-Amzn-Bedrock-Trace", "ENABLED"),
    ("X-AMZN-BEDROCK-GUARDRAILIDENTIFIER", "abc123"),
    ("X-Amzn-Bedrock-GuardrailVersion", "DRAFT"),
    ("X-Amzn-Bedrock-PerformanceConfig-Latency", "optimized"),
    ("x-amzn-bedrock-service-tier", "priority"),
    ("X-Amzn-Bedrock-Request-Metadata", '{"team":"a"}'),
    ("X-Amzn-Bedrock-ProjectIdentifier", "proj-1"),
]


@pytest.mark.parametrize(("name", "value"), KEPT)
def test_forwardable_headers_keeps_bedrock_headers(name: str, value: str) -> None:
    assert forwardable_headers([(name, value)]) == {name.lower(): value}


def test_forwardable_headers_mixed_request() -> None:
    incoming = DROPPED + KEPT[:1] + KEPT[2:]  # both content-type spellings would collide
    out = forwardable_headers(incoming)
    assert set(out) == {name.lower() for name, _ in KEPT}
    assert set(out) <= FORWARDED_HEADERS


def test_forwardable_headers_repeated_keeps_last() -> None:
    out = forwardable_headers([("Accept", "a/b"), ("ACCEPT", "c/d")])
    assert out == {"accept": "c/d"}


def test_returnable_headers() -> None:
    upstream = {
        "Content-Type": "application/vnd.amazon.eventstream",
        "x-amzn-RequestId": "req-1",
        "X-Amzn-Bedrock-Input-Token-Count": "12",
        "Set-Cookie": "x=1",
        "Connection": "close",
        "Server": "internal",
    }
    assert returnable_headers(upstream) == {
        "Content-Type": "application/vnd.amazon.eventstream",
        "x-amzn-RequestId": "req-1",
        "X-Amzn-Bedrock-Input-Token-Count": "12",
    }


# --- sign_request -----------------------------------------------------------

ARN_WIRE = (
    "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
    "us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"
)
ARN_CANON = (
    "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253Ainference-profile%252F"
    "us.anthropic.claude-3-5-sonnet-20240620-v1%253A0/invoke"
)
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<scope>[^,]+), "
    r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<sig>[0-9a-f]{64})"
)


@pytest.mark.parametrize(
    ("raw_path", "region", "host", "canonical_uri"),
    [
        # Exactly the verified pair known to be accepted by AWS.
        (ARN_WIRE, "us-east-1", "bedrock-runtime.us-east-1.amazonaws.com", ARN_CANON),
        (
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream",
            "eu-central-1",
            "bedrock-runtime.eu-central-1.amazonaws.com",
            "/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse-stream",
        ),
        (
            # The caller spelled ':' raw; the route re-encodes it before signing.
            "/model/us.anthropic.claude-3-5-sonnet-20240620-v1:0/invoke",
            "us-west-2",
            "127.0.0.1:4567",
            "/model/us.anthropic.claude-3-5-sonnet-20240620-v1%253A0/invoke",
        ),
    ],
)
def test_sign_request_matches_botocore(
    raw_path: str, region: str, host: str, canonical_uri: str
) -> None:
    route = parse_route("POST", raw_path)
    scheme = "http" if host.startswith("127.") else "https"
    url = f"{scheme}://{host}{route.wire_target}"
    body = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
    headers = forwardable_headers(
        [
            ("Content-Type", "application/json"),
            ("X-Amzn-Bedrock-Trace", "ENABLED"),
            ("Authorization", "Bearer callers-key"),
            ("X-Amz-Security-Token", "callers-token"),
        ]
    )

    signed = sign_request(
        method="POST", url=url, headers=headers, body=body, credentials=CREDS, region=region
    )

    assert signed["X-Amz-Security-Token"] == CREDS.session_token
    amz_date = signed["X-Amz-Date"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", amz_date)
    match = _AUTH.fullmatch(signed["Authorization"])
    assert match is not None, signed["Authorization"]
    assert match["akid"] == CREDS.access_key_id
    assert match["scope"] == f"{amz_date[:8]}/{region}/bedrock/aws4_request"
    signed_names = match["signed"].split(";")
    assert {
        "host",
        "x-amz-date",
        "x-amz-security-token",
        "content-type",
        "x-amzn-bedrock-trace",
    } <= set(signed_names)
    assert "authorization" not in signed_names
    assert "callers" not in " ".join(signed.values())

    # Recompute independently with botocore's own signer at the same timestamp.
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={k: v for k, v in signed.items() if k != "Authorization"},
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        Credentials(CREDS.access_key_id, CREDS.secret_access_key, CREDS.session_token),
        "bedrock",
        region,
    )
    canonical = signer.canonical_request(request)
    lines = canonical.split("\n")
    assert lines[0] == "POST"
    assert lines[1] == canonical_uri
    assert lines[-1] == hashlib.sha256(body).hexdigest()
    assert lines[-2] == match["signed"]
    string_to_sign = signer.string_to_sign(request, canonical)
    assert string_to_sign.split("\n")[2] == f"{amz_date[:8]}/{region}/bedrock/aws4_request"
    assert signer.signature(string_to_sign, request) == match["sig"]


def test_sign_request_signature_depends_on_body() -> None:
    url = "https://bedrock-runtime.us-east-1.amazonaws.com" + ARN_WIRE
    sigs = {
        sign_request(
            method="POST", url=url, headers={}, body=body, credentials=CREDS, region="us-east-1"
        )["Authorization"].rsplit("=", 1)[1]
        for body in (b"{}", b'{"a":1}')
    }
    assert len(sigs) == 2


def test_sign_request_does_not_mutate_input_headers() -> None:
    headers = {"content-type": "application/json"}
    sign_request(
        method="POST",
        url="https://bedrock-runtime.us-east-1.amazonaws.com/model/a.b/invoke",
        headers=headers,
        body=b"{}",
        credentials=CREDS,
        region="us-east-1",
    )
    assert headers == {"content-type": "application/json"}
