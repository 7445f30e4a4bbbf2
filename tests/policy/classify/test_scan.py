"""proxy.policy.classify.scan: every text a model would see is scanned, in every body shape."""

from __future__ import annotations

import base64
import json

import pytest

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
