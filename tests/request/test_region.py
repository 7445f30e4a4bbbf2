from __future__ import annotations

import pytest

from proxy.errors import InvalidRequest
from proxy.request.region import NO_REGION_MESSAGE, Region, find_region, is_region, resolve_region
from proxy.request.resources import ResourceArn, parse_resource_arn

ACCT = "123456789012"


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
        # Host and scope name the same region: one reading.
        (
            "bedrock-runtime.us-west-2.amazonaws.com",
            _sigv4("AKID/20240101/us-west-2/bedrock/aws4_request"),
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
    assert resolve_region(host, authorization, "eu-central-1").name == expected


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
        # A good Host does not hide a malformed scope: the request is read whole.
        (
            "bedrock-runtime.us-east-1.amazonaws.com",
            _sigv4("AKID/20240101/us-east-100/bedrock/aws4_request"),
        ),
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
    with pytest.raises(ValueError, match="not an AWS region"):
        resolve_region(None, None, None, path_region="moon-base-x")


# --- the path prefix, and two sources naming different regions -----------------------


@pytest.mark.parametrize(
    ("host", "authorization", "path_region", "default", "expected"),
    [
        # An unsigned SDK client with endpoint https://proxy/region/us-west-2.
        ("127.0.0.1:8443", None, "us-west-2", "us-east-1", "us-west-2"),
        ("127.0.0.1:8443", None, "us-west-2", None, "us-west-2"),
        # Every source that names one names the same: accepted.
        ("bedrock-runtime.us-west-2.x", None, "us-west-2", None, "us-west-2"),
        (
            None,
            _sigv4("AKID/20240101/eu-west-1/bedrock/aws4_request"),
            "eu-west-1",
            None,
            "eu-west-1",
        ),
        (
            "bedrock-runtime.eu-west-1.x",
            _sigv4("AKID/20240101/eu-west-1/bedrock/aws4_request"),
            "eu-west-1",
            "us-east-1",
            "eu-west-1",
        ),
        # Nothing named: the configured default, and only then.
        ("proxy.internal:8443", None, None, "ap-south-1", "ap-south-1"),
    ],
)
def test_one_region_from_every_source(
    host: str | None,
    authorization: str | None,
    path_region: str | None,
    default: str | None,
    expected: str,
) -> None:
    region = resolve_region(host, authorization, default, path_region=path_region)
    assert region == Region(expected)


@pytest.mark.parametrize(
    ("host", "authorization", "path_region", "named"),
    [
        ("bedrock-runtime.us-east-1.x", None, "us-west-2", ("us-west-2", "us-east-1")),
        (
            None,
            _sigv4("AKID/20240101/us-east-1/bedrock/aws4_request"),
            "us-west-2",
            ("us-west-2", "us-east-1"),
        ),
        (
            "bedrock-runtime.us-west-2.amazonaws.com",
            _sigv4("AKID/20240101/eu-west-1/bedrock/aws4_request"),
            None,
            ("us-west-2", "eu-west-1"),
        ),
        (
            "bedrock-runtime-fips.us-east-1.x",
            _sigv4("AKID/20240101/us-east-2/bedrock/aws4_request"),
            "us-east-1",
            ("us-east-1", "us-east-2"),
        ),
    ],
)
def test_two_regions_in_one_request_are_refused(
    host: str | None,
    authorization: str | None,
    path_region: str | None,
    named: tuple[str, str],
) -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve_region(host, authorization, "us-east-1", path_region=path_region)
    assert err.value.status == 400
    assert "more than one region" in err.value.message
    assert all(region in err.value.message for region in named)


@pytest.mark.parametrize("host", [None, "", "127.0.0.1:8443", "bedrock-runtime.ai-gateway.svc"])
def test_no_region_and_no_default_is_refused_naming_the_setting(host: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve_region(host, "Bearer key", None)
    assert err.value.status == 400
    assert err.value.message == NO_REGION_MESSAGE
    assert "aws.default_region" in err.value.message and "/region/" in err.value.message


def test_find_region_answers_none_instead_of_refusing() -> None:
    assert find_region("127.0.0.1:9443", None, None) is None
    assert find_region("127.0.0.1:9443", None, "eu-west-1") == Region("eu-west-1")
    assert find_region("bedrock-runtime.eu-west-3.x", None, None) == Region("eu-west-3")
    with pytest.raises(InvalidRequest):
        find_region(
            "bedrock-runtime.eu-west-3.x",
            _sigv4("AKID/20240101/eu-west-1/bedrock/aws4_request"),
            None,
        )


# --- FIPS -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "default", "expected"),
    [
        ("bedrock-runtime-fips.us-east-1.amazonaws.com", None, Region("us-east-1", fips=True)),
        ("BEDROCK-RUNTIME-FIPS.US-GOV-WEST-1.proxy:8443", None, Region("us-gov-west-1", True)),
        # The FIPS label asks for FIPS even when the region comes from elsewhere.
        ("bedrock-runtime-fips.internal", "us-east-2", Region("us-east-2", fips=True)),
        ("bedrock-runtime.us-east-1.amazonaws.com", None, Region("us-east-1", fips=False)),
        ("fips.bedrock-runtime.us-east-1.x", "us-east-1", Region("us-east-1", fips=False)),
        ("bedrock-runtime-fipsx.us-east-1.x", "us-east-1", Region("us-east-1", fips=False)),
        ("[::1]:8443", "us-east-1", Region("us-east-1", fips=False)),
    ],
)
def test_fips_host_form(host: str, default: str | None, expected: Region) -> None:
    assert resolve_region(host, None, default) == expected


# --- an ARN in the path must be in the region of the call -----------------------------


def _arn(kind: str, region: str, partition: str = "aws") -> ResourceArn:
    identifier = "abcdef123456"
    resource = parse_resource_arn(
        f"arn:{partition}:bedrock:{region}:{ACCT}:{kind}/{identifier}", kind
    )
    assert resource is not None
    return resource


@pytest.mark.parametrize("kind", ["async-invoke", "guardrail"])
def test_resource_in_the_region_of_the_call_is_accepted(kind: str) -> None:
    resource = _arn(kind, "us-west-2")
    assert resolve_region(None, None, None, path_region="us-west-2", resource=resource) == Region(
        "us-west-2"
    )


@pytest.mark.parametrize(
    ("host", "path_region", "default", "source"),
    [
        (None, "us-east-1", None, "the path prefix /region/us-east-1"),
        ("bedrock-runtime.us-east-1.x", None, None, "the Host header"),
        # The default is a reading too: the ARN does not silently override it.
        ("127.0.0.1:8443", None, "us-east-1", "aws.default_region"),
    ],
)
@pytest.mark.parametrize("kind", ["async-invoke", "guardrail"])
def test_resource_in_another_region_is_refused(
    kind: str, host: str | None, path_region: str | None, default: str | None, source: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve_region(
            host, None, default, path_region=path_region, resource=_arn(kind, "us-west-2")
        )
    assert err.value.status == 400
    message = err.value.message
    assert f"{kind} ARN" in message and "us-west-2" in message and "us-east-1" in message
    assert source in message and "/region/us-west-2" in message


def test_resource_without_any_region_named_or_configured_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve_region(None, None, None, resource=_arn("guardrail", "us-west-2"))
    assert err.value.message == NO_REGION_MESSAGE
