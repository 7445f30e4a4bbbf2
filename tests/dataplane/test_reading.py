"""proxy.dataplane.reading: what one parse of a body tells the policy, bounded."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from proxy.dataplane import reading
from proxy.errors import InvalidRequest
from proxy.request.operations import parse_route
from tests.conftest import HAIKU

CONVERSE = parse_route("POST", f"/model/{quote(HAIKU, safe='')}/converse")
ASYNC = parse_route("POST", "/async-invoke")
S3 = "s3://bucket/out/"


@pytest.mark.parametrize(
    ("headers", "config", "expected"),
    [
        ({}, None, None),
        ({}, {"guardrailIdentifier": "g1", "guardrailVersion": "1"}, ("g1", "1")),
        ({}, {"guardrailIdentifier": "g1", "guardrailVersion": 2}, ("g1", "2")),
        (
            {},
            {"guardrailIdentifier": "g" * 2048, "guardrailVersion": "DRAFT"},
            ("g" * 2048, "DRAFT"),
        ),
        ({"x-amzn-bedrock-guardrailidentifier": "h1"}, None, ("h1", "")),
        # Longer than Bedrock accepts, or a version of any other type: refused, not copied.
        ({}, {"guardrailIdentifier": "g" * 2049, "guardrailVersion": "1"}, 400),
        ({}, {"guardrailIdentifier": "g1", "guardrailVersion": "1" * 9}, 400),
        ({}, {"guardrailIdentifier": "g1", "guardrailVersion": ["1"] * 1_000_000}, 400),
        ({"x-amzn-bedrock-guardrailidentifier": "h" * 8000}, None, 400),
    ],
)
def test_the_requested_guardrail_is_bounded(
    headers: dict[str, str], config: dict[str, Any] | None, expected: Any
) -> None:
    document = None if config is None else {"guardrailConfig": config}
    if expected == 400:
        with pytest.raises(InvalidRequest) as refused:
            reading._requested_guardrail(CONVERSE, headers, document)
        assert len(refused.value.message) < 200
        return
    guardrail = reading._requested_guardrail(CONVERSE, headers, document)
    found = (guardrail.identifier, guardrail.version) if guardrail else None
    assert found == expected


@pytest.mark.parametrize(
    ("s3", "expected"),
    [
        ({"s3Uri": S3}, (S3, None)),
        ({"s3Uri": S3, "bucketOwner": "123456789012"}, (S3, "123456789012")),
        ({"s3Uri": "s3://b/" + "k" * 1017}, ("s3://b/" + "k" * 1017, None)),
        ({"s3Uri": "s3://b/" + "k" * 1018}, 400),
        ({"s3Uri": S3, "bucketOwner": "1" * 13}, 400),
        ({"s3Uri": "s3://b/" + "k" * 5_000_000}, 400),
    ],
)
def test_the_async_output_location_is_bounded(s3: dict[str, Any], expected: Any) -> None:
    document = {"modelId": HAIKU, "outputDataConfig": {"s3OutputDataConfig": s3}}
    if expected == 400:
        with pytest.raises(InvalidRequest) as refused:
            reading._async_output(document)
        assert len(refused.value.message) < 200
        return
    output = reading._async_output(document)
    assert output is not None and (output.s3_uri, output.bucket_owner) == expected
