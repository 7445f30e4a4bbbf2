"""proxy.policy.classify.redaction: the capture never holds a matched value."""

from __future__ import annotations

import base64
import json

import pytest

from proxy.policy.classify.redaction import redacted_capture
from tests.policy.classify.samples import AWS_SECRET, IMAGE, JWT_VALUE, PEM, converse_body

SECRETS = [
    "a@example.org",
    "078-05-1120",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "AKIAIOSFODNN7EXAMPLE",
    AWS_SECRET,
    JWT_VALUE,
    "MIIEpAIBAAKCAQEA7",
    "+44 20 7946 0958",
]


@pytest.mark.parametrize("operation", ["Converse", "InvokeModel", "CountTokens"])
def test_redacted_capture_contains_no_matched_value(operation: str) -> None:
    text = "; ".join([*SECRETS[:6], JWT_VALUE, PEM, SECRETS[8]])
    inner = json.dumps({"prompt": text, "image": {"type": "base64", "data": "iVBORw0KGgo="}})
    body = {
        "Converse": converse_body({"text": text}, IMAGE, system=[{"text": "ok " + SECRETS[0]}]),
        "InvokeModel": inner.encode(),
        "CountTokens": json.dumps(
            {"input": {"invokeModel": {"body": base64.b64encode(inner.encode()).decode()}}}
        ).encode(),
    }[operation]
    captured = redacted_capture(body, operation)
    for secret in SECRETS:
        assert secret not in captured
    for kind in ("[email]", "[us_ssn]", "[payment_card]", "[iban]", "[aws_secret_key]",
                 "[aws_access_key_id]", "[jwt]", "[private_key]", "[phone]",
                 "[binary_content]"):  # fmt: skip
        assert kind in captured
    assert "; " in captured  # the rest of the prompt is kept


@pytest.mark.parametrize(
    ("body", "captured"),
    [
        (b"plain a@example.org", "plain [email]"),
        (b"\xff\xfe\x00", "[binary_content]"),
        (b'{"a\\u0040example.org": "x"}', '{"[email]":"x"}'),
        (b"[" * 5000 + b"]" * 5000, "[" * 5000 + "]" * 5000),
    ],
)
def test_redacted_capture_edge_cases(body: bytes, captured: str) -> None:
    result = redacted_capture(body, "InvokeModel")
    assert result == captured or result == "[unredactable]"
