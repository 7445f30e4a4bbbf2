"""The ``redacted`` audit capture: the prompt with every finding replaced by its kind.

Contract: the result never contains a value a detector matched. Redaction
runs the same detectors as classification over the same texts (JSON string
values and keys after decoding, so an escape such as ``\\u0040`` cannot hide an
e-mail address from one and not the other) and rebuilds the document from the
redacted strings. Binary content (images, documents, base64 blobs) becomes
``[binary_content]``; a non-JSON, non-UTF-8 body becomes that marker alone.
CountTokens' base64 InvokeModel body is unwrapped, redacted and kept as text.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.policy.classify.detectors import BINARY_CONTENT, scan_text
from proxy.policy.classify.scan import binary_field, count_tokens_inner, is_blob, parse_body
from proxy.request.body import AmbiguousBody


def redacted_capture(body: bytes, operation: str | None) -> str:
    try:
        return _capture(body, operation)
    except (RecursionError, AmbiguousBody):
        # Nesting too deep to rebuild: say so rather than keep any of it.
        return _marker("unredactable")


def _capture(body: bytes, operation: str | None) -> str:
    document = parse_body(body)
    if document is None:
        try:
            return redact_text(body.decode("utf-8"))
        except UnicodeDecodeError:
            return _marker(BINARY_CONTENT)
    inner = count_tokens_inner(document) if operation == "CountTokens" else None
    if inner is None:
        return _dumps(_redact(document))
    # Unwrapped and redacted as the InvokeModel body it is, then kept as text.
    document["input"]["invokeModel"]["body"] = None  # type: ignore[index]
    redacted = _redact(document)
    redacted["input"]["invokeModel"]["body"] = _capture(inner, "InvokeModel")
    return _dumps(redacted)


def redact_text(text: str) -> str:
    spans = scan_text(text)
    if not spans:
        return text
    parts: list[str] = []
    position = 0
    for span in spans:
        parts.append(text[position : span.start])
        parts.append(_marker(span.kind))
        position = span.end
    parts.append(text[position:])
    return "".join(parts)


def _marker(kind: str) -> str:
    return f"[{kind}]"


def _dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _redact(node: Any, key: object = None, parent: dict[str, Any] | None = None) -> Any:
    if isinstance(node, str):
        binary = binary_field(key, parent, node) if parent is not None else is_blob(node)
        return _marker(BINARY_CONTENT) if binary else redact_text(node)
    if isinstance(node, dict):
        if key == "s3Location":
            return _marker(BINARY_CONTENT)
        return {redact_text(k): _redact(v, k, node) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(item) for item in node]
    return node
