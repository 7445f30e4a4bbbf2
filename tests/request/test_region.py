from __future__ import annotations

import pytest

from proxy.errors import InvalidRequest
from proxy.request.region import is_region, resolve_region


def _sigv4(scope: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential={scope}, "
        "SignedHeaders=content-type;host;x-amz-date, Signature=" + "0" * 64
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("us-east-1", True),
        ("eu-central-2", True),
        ("ap-southeast-5", True),
        ("il-central-1", True),
        ("mx-central-1", True),
        ("us-gov-west-1", True),
        ("cn-northwest-1", True),
        ("us-iso-east-1", True),
        ("us-isob-east-1", True),
        ("eu-isoe-west-1", True),
        ("eusc-de-east-1", True),
        ("", False),
        ("us-east", False),
        ("us-east-", False),
        ("us-east-100", False),
        ("US-EAST-1", False),
        ("us_east_1", False),
        ("useast1", False),
        ("u-east-1", False),
        ("us-east-1 ", False),
        ("us-east-1\n", False),
        ("us-east-1.", False),
        ("us-east-1a", False),
        ("us-ea st-1", False),
        ("us-east-\u0661", False),  # Arabic-Indic digit one
        ("../us-east-1", False),
    ],
)
def test_is_region(value: str, expected: bool) -> None:
    assert is_region(value) is expected


@pytest.mark.parametrize(
    ("host", "authorization", "expected"),
    [
        # Host wins when it names a region.
        ("bedrock-runtime.us-west-2.amazonaws.com", None, "us-west-2"),
        ("bedrock-runtime.eu-west-1.amazonaws.com:443", None, "eu-west-1"),
        ("bedrock-runtime-fips.us-gov-west-1.amazonaws.com", None, "us-gov-west-1"),
        ("bedrock-runtime.cn-north-1.amazonaws.com.cn", None, "cn-north-1"),
        ("bedrock-runtime.ap-south-1.api.aws", None, "ap-south-1"),
        ("bedrock-runtime.ca-central-1.proxy.internal:8443", None, "ca-central-1"),
        ("BEDROCK-RUNTIME.US-EAST-2.AMAZONAWS.COM", None, "us-east-2"),
        ("bedrock-runtime.eu-north-1", None, "eu-north-1"),
        (
            "bedrock-runtime.us-west-2.amazonaws.com",
            _sigv4("AKID/20240101/eu-west-1/bedrock/aws4_request"),
            "us-west-2",
        ),
        # Host without a region: the SigV4 scope decides.
        ("localhost:8443", _sigv4("AKID/20240101/eu-west-3/bedrock/aws4_request"), "eu-west-3"),
        (
            "127.0.0.1:8443",
            _sigv4("AKID/20240101/ap-northeast-1/bedrock/aws4_request"),
            "ap-northeast-1",
        ),
        ("[::1]:8443", _sigv4("AKID/20240101/sa-east-1/bedrock/aws4_request"), "sa-east-1"),
        (None, _sigv4("AKID/20240101/us-gov-east-1/bedrock/aws4_request"), "us-gov-east-1"),
        # "bedrock-runtime." followed by an ordinary DNS label names no region.
        ("bedrock-runtime.ai-gateway.svc.cluster.local", None, "eu-central-1"),
        ("bedrock-runtime.mycorp.net", None, "eu-central-1"),
        ("bedrock-runtime", None, "eu-central-1"),
        ("bedrock.us-east-1.amazonaws.com", None, "eu-central-1"),
        ("bedrock-runtimex.us-east-1.amazonaws.com", None, "eu-central-1"),
        ("evil.bedrock-runtime.us-east-1.example.com", None, "eu-central-1"),
        # Other schemes carry no region: default.
        ("localhost", "Bearer bedrock-api-key-abc", "eu-central-1"),
        (
            "localhost",
            "AWS4-ECDSA-P256-SHA256 Credential=AKID/20240101/bedrock/aws4_request",
            "eu-central-1",
        ),
        (None, None, "eu-central-1"),
        ("", "", "eu-central-1"),
    ],
)
def test_resolve_region(host: str | None, authorization: str | None, expected: str) -> None:
    assert resolve_region(host, authorization, "eu-central-1") == expected


@pytest.mark.parametrize(
    ("host", "authorization"),
    [
        ("bedrock-runtime.us-east-100.amazonaws.com", None),
        ("bedrock-runtime.us_east-1.amazonaws.com", None),
        ("bedrock-runtime.east-1.amazonaws.com", None),
        ("bedrock-runtime-fips.xx-yy-zz-9.amazonaws.com", None),
        (
            "bedrock-runtime.u-east-1.amazonaws.com",
            _sigv4("AKID/20240101/us-east-1/bedrock/aws4_request"),
        ),
        (None, _sigv4("AKID/20240101/us-east-100/bedrock/aws4_request")),
        (None, _sigv4("AKID/20240101/US-EAST-1/bedrock/aws4_request")),
        (None, _sigv4("AKID/20240101//bedrock/aws4_request")),
        (None, _sigv4("AKID/20240101/us-east-1/bedrock")),
        (None, _sigv4("AKID/20240101/us-east-1/bedrock/aws4_request/extra")),
        (None, _sigv4("AKID/20240101/us-east-1/bedrock/aws5_request")),
        (None, "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00"),
        (None, "AWS4-HMAC-SHA256"),
        ("localhost", _sigv4("AKID/20240101/us-east-1%0a/bedrock/aws4_request")),
    ],
)
def test_resolve_region_rejects_malformed(host: str | None, authorization: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve_region(host, authorization, "eu-central-1")
    assert err.value.status == 400
    assert "region" in err.value.message or "credential scope" in err.value.message


def test_resolve_region_rejects_bad_default() -> None:
    with pytest.raises(ValueError, match="not an AWS region"):
        resolve_region(None, None, "moon-base-x")
