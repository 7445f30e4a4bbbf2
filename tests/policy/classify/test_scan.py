"""proxy.policy.classify.scan: every text a model would see is scanned, in every body shape."""

from __future__ import annotations

import base64
import itertools
import json
import math

import pytest

from proxy.policy.classify.classifier import classify
from proxy.policy.classify.scan import scan_body
from tests.policy.classify.samples import AWS_SECRET, IMAGE, JWT_VALUE, PEM, converse_body


@pytest.mark.parametrize(
    ("operation", "body", "kinds"),
    [
        ("Converse", converse_body({"text": "hello"}), ()),
        ("Converse", converse_body({"text": "mail a@example.org"}), ("email",)),
        ("Converse", converse_body({"text": "hi"}, system=[{"text": f"key {AWS_SECRET}"}]),
         ("aws_secret_key",)),
        ("ConverseStream", converse_body({"toolResult": {"toolUseId": "t1", "content": [
            {"json": {"rows": [{"ssn": "078-05-1120"}]}}]}}), ("us_ssn",)),
        ("Converse", converse_body({"toolUse": {"toolUseId": "t", "name": "n",
                                            "input": {"card": "4111111111111111"}}}),
         ("payment_card",)),
        ("Converse", json.dumps({"promptVariables": {"who": {"text": "AKIAIOSFODNN7EXAMPLE"}}})
         .encode(), ("aws_access_key_id",)),
        ("Converse", converse_body(IMAGE), ("binary_content",)),
        ("Converse", converse_body({"document": {"format": "pdf", "name": "d", "source": {
            "s3Location": {"uri": "s3://b/k"}}}}), ("binary_content",)),
        ("InvokeModel", json.dumps({"anthropic_version": "x", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "text", "text": PEM},
                                         {"type": "image", "source": {"type": "base64",
                                          "media_type": "image/png", "data": "iVBORw0K"}}]}]})
         .encode(), ("binary_content", "private_key")),
        ("InvokeModel", json.dumps({"inputText": f"token {JWT_VALUE}"}).encode(), ("jwt",)),
        ("InvokeModel", json.dumps({"prompt": "x", "extra": {"deep": [[["a@example.org"]]]}})
         .encode(), ("email",)),
        ("InvokeModel", b"plain text prompt with 078-05-1120", ("us_ssn",)),
        ("InvokeModel", b"\x89PNG\r\n\x1a\n\x00\x00\xff", ("binary_content",)),
        ("InvokeModel", json.dumps({"blob": "QUJD" * 400}).encode(), ("binary_content",)),
        ("CountTokens", json.dumps({"input": {"invokeModel": {"body": base64.b64encode(
            json.dumps({"prompt": f"secret {AWS_SECRET}"}).encode()).decode()}}}).encode(),
         ("aws_secret_key",)),
        ("CountTokens", json.dumps({"input": {"converse": {"messages": [{"role": "user",
            "content": [{"text": "DE89 3704 0044 0532 0130 00"}]}]}}}).encode(), ("iban",)),
        ("Converse", json.dumps({"a@example.org": "keys are scanned too"}).encode(), ("email",)),
        ("Converse", b'{"messages": [{"content": [{"text": "a\\u0040example.org"}]}]}',
         ("email",)),
    ],
)  # fmt: skip
def test_every_body_shape_is_walked(operation: str, body: bytes, kinds: tuple[str, ...]) -> None:
    assert scan_body(body, operation=operation, deadline=float("inf")) == kinds


# One string the size of a large prompt: a check between strings alone looks at
# the clock once before it and never again until the whole string is scanned.
_LONG_STRING = "ssn 078-05-1120, then " + "1 " * 100_000


@pytest.mark.parametrize(
    "body",
    [json.dumps({"inputText": _LONG_STRING}).encode(), _LONG_STRING.encode()],
    ids=["one JSON string", "plain text"],
)
def test_a_budget_spent_inside_one_string_is_scan_incomplete(body: bytes) -> None:
    assert scan_body(body, operation="InvokeModel", deadline=math.inf) == ("us_ssn",)
    ticks = itertools.count()  # one tick per look at the clock
    kinds = scan_body(body, operation="InvokeModel", deadline=10, clock=lambda: next(ticks))
    assert kinds == ("scan_incomplete",)
    # It stopped at the first look past the deadline, not at the end of the string.
    assert next(ticks) == 12


def test_a_zero_budget_on_one_long_text_is_restricted() -> None:
    ticks = itertools.count()
    result = classify("public", _LONG_STRING.encode(), budget_s=0, clock=lambda: next(ticks))
    assert (result.findings, result.effective) == (("scan_incomplete",), "restricted")
