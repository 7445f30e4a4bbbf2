from __future__ import annotations

import pytest

from proxy.request.resources import ResourceArn, parse_resource_arn

ACCT = "123456789012"


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        (
            f"arn:aws:bedrock:us-east-1:{ACCT}:guardrail/abc123",
            "guardrail",
            ("aws", "us-east-1", ACCT, "abc123"),
        ),
        (
            f"arn:aws-us-gov:bedrock:us-gov-west-1:{ACCT}:async-invoke/abcdefghijkl",
            "async-invoke",
            ("aws-us-gov", "us-gov-west-1", ACCT, "abcdefghijkl"),
        ),
        (
            f"arn:aws-cn:bedrock:cn-northwest-1:{ACCT}:guardrail/g1",
            "guardrail",
            ("aws-cn", "cn-northwest-1", ACCT, "g1"),
        ),
    ],
)
def test_parse_resource_arn(text: str, kind: str, expected: tuple[str, str, str, str]) -> None:
    assert parse_resource_arn(text, kind) == ResourceArn(text, kind, *expected)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (f"arn:aws:bedrock:us-east-1:{ACCT}:guardrail/abc123", "async-invoke"),
        # A region of another partition: no ARN of any partition.
        (f"arn:aws:bedrock:cn-north-1:{ACCT}:guardrail/abc", "guardrail"),
        (f"arn:aws-cn:bedrock:us-east-1:{ACCT}:guardrail/abc", "guardrail"),
        (f"arn:aws-us-gov:bedrock:eu-west-1:{ACCT}:guardrail/abc", "guardrail"),
        # Partitions Bedrock is not served in through the proxy.
        (f"arn:aws-iso:bedrock:us-iso-east-1:{ACCT}:guardrail/abc", "guardrail"),
        (f"arn:aws:bedrock:us-iso-east-1:{ACCT}:guardrail/abc", "guardrail"),
        (f"arn:aws:bedrock:eusc-de-east-1:{ACCT}:guardrail/abc", "guardrail"),
        # Malformed parts.
        (f"arn:aws:bedrock:moon:{ACCT}:guardrail/abc", "guardrail"),
        (f"arn:aws:bedrock:US-EAST-1:{ACCT}:guardrail/abc", "guardrail"),
        ("arn:aws:bedrock:us-east-1::guardrail/abc", "guardrail"),
        ("arn:aws:bedrock:us-east-1:12345678901:guardrail/abc", "guardrail"),
        (f"arn:aws:sagemaker:us-east-1:{ACCT}:guardrail/abc", "guardrail"),
        (f"arn:aws:bedrock:us-east-1:{ACCT}:guardrail/ABC", "guardrail"),
        (f"arn:aws:bedrock:us-east-1:{ACCT}:guardrail/abc/x", "guardrail"),
        (f"arn:aws:bedrock:us-east-1:{ACCT}:guardrail/abc\n", "guardrail"),
        (f" arn:aws:bedrock:us-east-1:{ACCT}:guardrail/abc", "guardrail"),
        ("abc123", "guardrail"),
        ("", "guardrail"),
    ],
)
def test_not_a_resource_arn(text: str, kind: str) -> None:
    assert parse_resource_arn(text, kind) is None
