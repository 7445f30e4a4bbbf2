"""The request body as Bedrock will read it: one strict JSON parse, or a refusal.

Contract: ``read_document(operation, body)`` returns the body's JSON object,
``None`` for an InvokeModel body that is not JSON in any form a JSON parser
upstream would accept (scanned as text or reported as binary), or raises
``AmbiguousBody`` (400) for a body that two parsers could read differently,
or ``JsonTooComplex`` (400) for one with more objects and arrays than the
limit (see Memory below).
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

Memory: a parsed document outweighs its text. A string or number costs a
Python object of 30-60 bytes, an object or array 60-300 with its contents'
slots, so ``[{},{},...]`` holds about 24 times its size, ``[{"a":0},...]``
28 times, and the documents of a few large bodies of that shape exhaust the
process (``bench/json_memory.py`` measures every shape). Before any parse of
text that starts as an object or array, ``{`` and ``[`` are counted with
``str.count`` (strings included: an overcount, never an undercount) and more
than ``max_containers`` is refused with ``JsonTooComplex`` (400), before a
single object is made. Containers, the costliest objects per byte, then hold
at most about 300 bytes each, 30 MB at the default limit whatever the body's
size; what is left (strings, numbers, keys) holds at most 12 times its size
(16 at the parse's peak), and the data plane's in-flight body budget bounds
how many bodies are held at once.
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
# The default and largest limits.max_json_containers. Parses of bytes derived
# from the body (the InvokeModel body inside CountTokens, a capture's re-parse)
# are held to it, so a configured limit can only lower the bound.
MAX_JSON_CONTAINERS = 100_000
_FIRST_SIGNIFICANT = re.compile(r"[^ \t\n\r]")


class AmbiguousBody(InvalidRequest):
    code = "ambiguous_body"


class JsonTooComplex(InvalidRequest):
    code = "json_too_complex"


def read_document(
    operation: str, body: bytes, *, max_containers: int = MAX_JSON_CONTAINERS
) -> dict[str, Any] | None:
    """The body's one JSON object, None for a non-JSON InvokeModel body, else AmbiguousBody
    (or JsonTooComplex: more than ``max_containers`` objects and arrays)."""
    json_operation = operation in JSON_BODY_OPERATIONS
    if not body:
        return {} if json_operation else None
    text = _utf8_text(operation, body, json_operation, max_containers)
    if text is None:
        return None
    try:
        document = parse_strict(text, max_containers=max_containers)
    except (AmbiguousBody, JsonTooComplex):
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


def parse_strict(text: str, *, max_containers: int = MAX_JSON_CONTAINERS) -> Any:
    """RFC 8259 JSON with no duplicate keys, lone surrogates or non-finite numbers.

    Raises AmbiguousBody for those, JsonTooComplex for more than
    ``max_containers`` objects and arrays (counted before parsing), ValueError
    for text that is not JSON at all, RecursionError for nesting Python cannot
    follow. The object hook also lets the GIL go between objects, so a large
    body parsed in a worker thread does not stall the event loop's thread for
    the whole document.
    """
    check_containers(text, max_containers)
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


def check_containers(text: str, limit: int) -> None:
    """JsonTooComplex if ``text``, read as JSON, could hold more than ``limit`` objects
    and arrays. Only text that starts as one can: any other parse stops at once."""
    first = _FIRST_SIGNIFICANT.search(text)
    if first is None or first.group() not in "{[":
        return
    # C-speed counts over the text, no parse: strings are counted too (an overcount).
    count = text.count("{") + text.count("[")
    if count > limit:
        raise JsonTooComplex(
            f"The request body has {count} '{{' and '[' characters, more than the {limit} "
            "JSON objects and arrays the proxy parses in one body (limits.max_json_containers; "
            "characters inside strings are counted too)"
        )


def _utf8_text(
    operation: str, body: bytes, json_operation: bool, max_containers: int
) -> str | None:
    """The body as text if it is UTF-8 without a BOM; None if it is no text an upstream reads."""
    encoding = json.detect_encoding(body)  # BOM sniffing as a conforming parser does it
    if encoding != "utf-8":
        if not json_operation and not _is_json_in(body, encoding, max_containers):
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


def _is_json_in(body: bytes, encoding: str, max_containers: int) -> bool:
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError:
        return False
    try:
        check_containers(text, max_containers)
        json.loads(text)
    except JsonTooComplex:
        return True  # an object or array, not parsed: refused as not UTF-8
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
