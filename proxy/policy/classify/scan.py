"""Scanning a request body: every text a model would see, through the detectors.

Detection walks the body generically: every JSON string value (and key) of
any shape, which covers Converse/ConverseStream messages, system prompts, tool
uses and results, prompt variables, InvokeModel bodies of every provider and
StartAsyncInvoke model input. CountTokens' ``input.invokeModel.body`` is a
base64 envelope around an InvokeModel body, so it is unwrapped and scanned as
one. A non-JSON body is scanned as text if it is UTF-8, else reported as
``binary_content``. Images, documents and base64 blobs are never decoded:
they are reported as ``binary_content`` so policy can decide, since an image
can carry text that no pattern here could see.

A time budget is checked between texts and, through the detectors'
``Deadline``, inside each one (between regex windows and matches), so one
20 MB string cannot outlast it; running out reports ``scan_incomplete``
(restricted unless policy says otherwise), never a clean result.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from proxy.policy.classify.detectors import (
    BINARY_CONTENT,
    BLOB_CHARS,
    SCAN_INCOMPLETE,
    Deadline,
    OutOfTime,
    scan_text,
)
from proxy.request.body import read_document

# Marks "the body has not been parsed yet" (None means "parsed: not JSON").
NOT_PARSED = object()
_BLOB = re.compile(r"[A-Za-z0-9+/=_\-\r\n]+")


def is_blob(value: str) -> bool:
    if value.startswith("data:") and ";base64," in value[:200]:
        return True
    return len(value) >= BLOB_CHARS and _BLOB.fullmatch(value) is not None


def binary_field(key: object, parent: Mapping[str, Any], value: str) -> bool:
    # Converse image/document/video ``source.bytes``; Anthropic ``source.data``
    # with ``type: base64``; any other base64 blob or data: URI.
    if key == "bytes" or (key == "data" and parent.get("type") == "base64"):
        return True
    return is_blob(value)


def walk_json(document: object) -> Iterator[tuple[object, str, bool]]:
    """Every (container, key, binary) holding a string, keys included; iterative, any depth.

    For a list the key is the index. Map keys are yielded with container None.
    """
    stack: list[object] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield None, key, False
                if isinstance(value, str):
                    yield node, key, binary_field(key, node, value)
                elif key == "s3Location" and isinstance(value, dict):
                    # Content by reference: the proxy cannot see it at all.
                    yield node, key, True
                else:
                    stack.append(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, str):
                    yield node, str(index), is_blob(value)
                else:
                    stack.append(value)


def parse_body(body: bytes) -> dict[str, Any] | None:
    """An InvokeModel body as JSON, None when it is not JSON (the pipeline's one strict parse)."""
    return read_document("InvokeModel", body)


def count_tokens_inner(document: object) -> bytes | None:
    """CountTokens ``input.invokeModel.body``: a base64 InvokeModel body, decoded."""
    inner = document.get("input") if isinstance(document, dict) else None
    invoke = inner.get("invokeModel") if isinstance(inner, dict) else None
    encoded = invoke.get("body") if isinstance(invoke, dict) else None
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        return None


def scan_body(
    body: bytes,
    *,
    operation: str | None,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    document: object = NOT_PARSED,
) -> tuple[str, ...]:
    """The sorted finding kinds of a whole body (``document``: its JSON, if already parsed).

    Past ``deadline`` (on ``clock``) the kinds found so far and ``scan_incomplete``.
    """
    kinds: set[str] = set()
    try:
        _scan_into(kinds, body, operation, Deadline(deadline, clock), document)
    except OutOfTime:
        kinds.add(SCAN_INCOMPLETE)
    return tuple(sorted(kinds))


def _scan_into(
    kinds: set[str],
    body: bytes,
    operation: str | None,
    deadline: Deadline,
    document: object = NOT_PARSED,
) -> None:
    if not body:
        return
    if document is NOT_PARSED:
        document = parse_body(body)
    if document is None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            kinds.add(BINARY_CONTENT)
            return
        kinds.update(span.kind for span in scan_text(text, deadline))
        return
    envelope = None
    if operation == "CountTokens":
        inner = count_tokens_inner(document)
        if inner is not None:
            _scan_into(kinds, inner, "InvokeModel", deadline)
            envelope = document["input"]["invokeModel"]  # type: ignore[index]
    for container, key, binary in walk_json(document):
        deadline.check()
        if container is envelope and key == "body":
            continue  # scanned above as the InvokeModel body it wraps
        if binary:
            kinds.add(BINARY_CONTENT)
            continue
        text = key if container is None else _get(container, key)
        kinds.update(span.kind for span in scan_text(text, deadline))


def _get(container: object, key: str) -> str:
    value = container[int(key)] if isinstance(container, list) else container[key]  # type: ignore[index]
    return value if isinstance(value, str) else ""
