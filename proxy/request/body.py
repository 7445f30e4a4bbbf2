"""The request body as Bedrock will read it: one strict JSON parse, or a refusal.

Contract: ``read_document(operation, body)`` returns the body's JSON object,
``None`` for an InvokeModel body that is not JSON in any form a JSON parser
upstream would accept (scanned as text or reported as binary), or raises
``AmbiguousBody`` (400) for a body that two parsers could read differently.
Every later stage (classification, tools, guardrail, obligations) works on
this one document, and the bytes that go upstream are the bytes parsed here.

Security reasoning: the classifier must see exactly what the model sees. A
conforming upstream parser decodes escapes (``\\u0041``, ``\\/``), honours a
byte-order mark, reads UTF-16 and UTF-32, and resolves duplicate keys in its
own way (first wins, last wins, or error). Rather than guess which, the proxy
accepts only the one unambiguous form, RFC 8259 JSON in UTF-8 without a BOM,
without duplicate keys, lone surrogates or non-finite numbers, and refuses
everything else with a reason. Escapes are decoded by the parse itself, so a
secret written as escapes is scanned decoded, in keys as in values.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any

from proxy.errors import InvalidRequest

JSON_BODY_OPERATIONS = frozenset({"Converse", "ConverseStream", "CountTokens", "StartAsyncInvoke"})
_BOMS = (codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF8, codecs.BOM_UTF16_BE,
         codecs.BOM_UTF16_LE)  # fmt: skip
# A surrogate escape in the text; only then can a lone surrogate be in the document.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_WHITESPACE = " \t\n\r"
_KEY_SHOWN = 40


class AmbiguousBody(InvalidRequest):
    code = "ambiguous_body"


def read_document(operation: str, body: bytes) -> dict[str, Any] | None:
    """The body's one JSON object, None for a non-JSON InvokeModel body, else AmbiguousBody."""
    json_operation = operation in JSON_BODY_OPERATIONS
    if not body:
        return {} if json_operation else None
    text = _utf8_text(operation, body, json_operation)
    if text is None:
        return None
    try:
        document = parse_strict(text)
    except AmbiguousBody:
        raise
    except RecursionError as exc:
        # Nothing this deep can be classified or redacted reliably: refuse, whatever the operation.
        raise AmbiguousBody(
            f"The {operation} request body is JSON nested too deeply to be inspected"
        ) from exc
    except ValueError as exc:
        if json_operation or text.lstrip(_JSON_WHITESPACE)[:1] in ("{", "["):
            raise AmbiguousBody(f"The {operation} request body is not valid JSON") from exc
        return None  # InvokeModel text that is no JSON at all: scanned as text
    if not isinstance(document, dict):
        raise AmbiguousBody(f"The {operation} request body must be a JSON object")
    return document


def parse_strict(text: str) -> Any:
    """RFC 8259 JSON with no duplicate keys, lone surrogates or non-finite numbers.

    Raises AmbiguousBody for those, ValueError for text that is not JSON at all,
    RecursionError for nesting Python cannot follow. The object hook also lets
    the GIL go between objects, so a large body parsed in a worker thread does
    not stall the event loop's thread for the whole document.
    """
    document = json.loads(
        text,
        object_pairs_hook=_unique_keys,
        parse_constant=_no_constant,
        parse_float=_finite_float,
    )
    if _SURROGATE_ESCAPE.search(text) is not None and _has_lone_surrogate(document):
        raise AmbiguousBody(
            "The request body has a lone UTF-16 surrogate escape, which JSON parsers "
            "read differently; send valid Unicode"
        )
    return document


def _utf8_text(operation: str, body: bytes, json_operation: bool) -> str | None:
    """The body as text if it is UTF-8 without a BOM; None if it is no text an upstream reads."""
    encoding = json.detect_encoding(body)  # BOM sniffing as a conforming parser does it
    if encoding != "utf-8":
        if not json_operation and not _is_json_in(body, encoding):
            return None  # binary InvokeModel body: reported as binary content
        if body.startswith(_BOMS):
            raise AmbiguousBody(
                f"The {operation} request body starts with a byte-order mark; "
                "send UTF-8 without one"
            )
        raise AmbiguousBody(f"The {operation} request body must be UTF-8, not {encoding}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        if json_operation or body.lstrip(_JSON_WHITESPACE.encode())[:1] in (b"{", b"["):
            raise AmbiguousBody(f"The {operation} request body is not valid UTF-8") from exc
        return None  # binary InvokeModel body: reported as binary content


def _is_json_in(body: bytes, encoding: str) -> bool:
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError:
        return False
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return text.lstrip(_JSON_WHITESPACE)[:1] in ("{", "[")
    return True


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise AmbiguousBody(
            f"The request body has the key {json.dumps(duplicate[:_KEY_SHOWN])} twice in one "
            "object; JSON parsers disagree on which one counts"
        )
    return document


def _no_constant(name: str) -> Any:
    raise AmbiguousBody(f"The request body uses {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise AmbiguousBody("The request body has a number too large for a double")
    return value


def _has_lone_surrogate(document: Any) -> bool:
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node) is not None:
                return True
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False
