"""proxy.request.body: one strict parse, or a 400 that says why; what is forwarded is scanned."""

from __future__ import annotations

import asyncio
import codecs
import json
import sys
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.policy.classify.classifier import classify
from proxy.request.body import (
    MAX_JSON_CONTAINERS,
    AmbiguousBody,
    JsonTooComplex,
    parse_strict,
    read_document,
)

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"


def _anthropic(text: str) -> dict[str, Any]:
    return {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
    }


@pytest.mark.parametrize(
    ("operation", "body", "document"),
    [
        ("Converse", b"", {}),
        ("InvokeModel", b"", None),
        ("Converse", b' \t\r\n{"a": [1, 2.5, null, true]} \n', {"a": [1, 2.5, None, True]}),
        ("InvokeModel", b'{"prompt": "caf\\u00e9 \\/ ok"}', {"prompt": "caf\u00e9 / ok"}),
        # A valid surrogate pair (what json.dumps writes for an emoji) is one character.
        ("InvokeModel", b'{"p": "\\ud83d\\ude00"}', {"p": "\U0001f600"}),
        # Not JSON in any form: InvokeModel text and binary bodies are scanned as such.
        ("InvokeModel", b"Human: hello\n\nAssistant:", None),
        ("InvokeModel", b"\x89PNG\r\n\x1a\n\x00\x00", None),
        ("InvokeModel", b"\xfa\xfb not text", None),
        # Bytes that look like a BOM but are no text in that encoding: binary.
        ("InvokeModel", b"\xff\xfe\x00\xd8", None),
    ],
)
def test_documents_read_once(operation: str, body: bytes, document: object) -> None:
    assert read_document(operation, body) == document


@pytest.mark.parametrize(
    ("operation", "body", "why"),
    [
        # Forms a conforming parser would read but the scanner would not: refused.
        ("InvokeModel", codecs.BOM_UTF8 + b'{"prompt": "x"}', "byte-order mark"),
        ("Converse", codecs.BOM_UTF8 + b"{}", "byte-order mark"),
        ("InvokeModel", '{"prompt": "x"}'.encode("utf-16"), "byte-order mark"),
        ("InvokeModel", '{"prompt": "x"}'.encode("utf-16-le"), "must be UTF-8"),
        ("InvokeModel", '{"prompt": "x"}'.encode("utf-32-be"), "must be UTF-8"),
        ("Converse", '{"a": 1}'.encode("utf-16-be"), "must be UTF-8"),
        ("InvokeModel", b'{"prompt": "\xc3\x28"}', "not valid UTF-8"),
        # An encoded surrogate (CESU-8) is not UTF-8 either.
        ("InvokeModel", b'{"prompt": "\xed\xa0\x80"}', "not valid UTF-8"),
        ("InvokeModel", b'{"prompt": "a", "prompt": "b"}', "twice in one object"),
        ("Converse", b'{"m": [{"role": "user", "role": "assistant"}]}', "twice in one object"),
        ("InvokeModel", b'{"prompt": "\\ud800"}', "lone UTF-16 surrogate"),
        ("InvokeModel", b'{"\\udfff": "x"}', "lone UTF-16 surrogate"),
        ("InvokeModel", b'{"t": NaN}', "not JSON"),
        ("InvokeModel", b'{"t": -Infinity}', "not JSON"),
        ("InvokeModel", b'{"t": 1e999}', "too large"),
        # JSON-looking but malformed: a lenient parser might still read it.
        ("InvokeModel", b'{"prompt": "x",}', "not valid JSON"),
        ("InvokeModel", b"  [1, 2", "not valid JSON"),
        ("Converse", b"not json", "not valid JSON"),
        # JSON, but not an object: no Bedrock body has that shape.
        ("InvokeModel", b'"-----BEGIN PRIVATE KEY-----"', "must be a JSON object"),
        ("InvokeModel", b"[1, 2]", "must be a JSON object"),
        ("Converse", b"42", "must be a JSON object"),
        ("Converse", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_ambiguous_bodies_are_refused_with_a_reason(operation: str, body: bytes, why: str) -> None:
    with pytest.raises(AmbiguousBody, match=why) as refused:
        read_document(operation, body)
    assert refused.value.status == 400 and refused.value.error_type == "ValidationException"


def test_a_duplicate_key_is_named_escaped_and_capped() -> None:
    key = 'k"' + "x" * 200
    body = json.dumps({"a": 1}).replace("}", "") + f", {json.dumps(key)}: 1, {json.dumps(key)}: 2}}"
    with pytest.raises(AmbiguousBody) as refused:
        read_document("InvokeModel", body.encode())
    assert '"k\\"xxx' in refused.value.message and "x" * 60 not in refused.value.message


# --- property: forwarded => scanned with the same findings --------------------------------

SECRETS = st.sampled_from([KEY_ID, PEM, "jane.doe@example.org", "4111 1111 1111 1111"])
FILLER = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)


def _escape_some(text: str, which: list[bool]) -> str:
    """JSON string content with the chosen characters written as escapes."""
    out = []
    for char, escape in zip(text, which + [False] * len(text), strict=False):
        if char == "/" and escape:
            out.append("\\/")
        elif escape or char in '"\\' or ord(char) < 0x20:
            out.append("".join(f"\\u{unit:04x}" for unit in _utf16_units(char)))
        else:
            out.append(char)
    return "".join(out)


def _utf16_units(char: str) -> list[int]:
    encoded = char.encode("utf-16-be")
    return [int.from_bytes(encoded[i : i + 2], "big") for i in range(0, len(encoded), 2)]


@st.composite
def written_forms(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A body holding a secret written some way a JSON parser reads, and its plain form."""
    text = draw(FILLER) + draw(SECRETS) + draw(FILLER)
    escaped = _escape_some(text, draw(st.lists(st.booleans(), max_size=len(text))))
    in_key = draw(st.booleans())
    written = f'{{"{escaped}": 1}}' if in_key else f'{{"prompt": "{escaped}"}}'
    plain = {text: 1} if in_key else {"prompt": text}
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"]))
    return written.encode(encoding), json.dumps(plain, ensure_ascii=False).encode()


@given(written_forms())
def test_whatever_is_forwarded_is_scanned_with_the_findings_of_its_plain_form(
    form: tuple[bytes, bytes],
) -> None:
    body, plain_body = form
    plain = classify("public", plain_body, operation="InvokeModel")
    try:
        document = read_document("InvokeModel", body)
    except AmbiguousBody:
        return  # refused: nothing reaches Bedrock
    seen = classify("public", body, operation="InvokeModel", document=document)
    assert seen.findings == plain.findings
    assert seen.effective == plain.effective


@given(st.sampled_from([KEY_ID, PEM]), st.lists(st.booleans(), max_size=80))
def test_an_escaped_secret_is_found(secret: str, which: list[bool]) -> None:
    body = f'{{"prompt": "{_escape_some(secret, which)}"}}'.encode()
    document = read_document("InvokeModel", body)
    assert classify("public", body, operation="InvokeModel", document=document).effective == (
        "restricted"
    )


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | FILLER,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(FILLER, inner, max_size=4),
        max_leaves=20,
    )
)
def test_any_json_object_python_writes_is_read_back_unchanged(value: object) -> None:
    document = {"v": value}
    for ensure_ascii in (True, False):
        body = json.dumps(document, ensure_ascii=ensure_ascii).encode()
        assert read_document("Converse", body) == document


@given(st.binary(max_size=64))
def test_no_byte_string_escapes_both_the_parse_and_the_refusal(body: bytes) -> None:
    """Every body is a JSON object, a refusal, or not JSON in any encoding."""
    try:
        document = read_document("InvokeModel", body)
    except AmbiguousBody:
        return
    if document is None:
        for encoding in ("utf-8-sig", "utf-16", "utf-32"):
            try:
                json.loads(body.decode(encoding))
            except (ValueError, RecursionError):
                continue
            raise AssertionError(f"{body!r} is JSON in {encoding} but was not refused")
    else:
        assert isinstance(document, dict)


async def test_the_loop_runs_while_a_large_document_is_parsed_in_a_thread() -> None:
    """json's C parser alone would hold the GIL, and so the loop, for the whole document."""
    body = json.dumps({"content": [{"text": "words"} for _ in range(300_000)]}).encode()
    window: list[int] = []
    turns: list[int] = []

    def parse() -> Any:
        window.append(time.perf_counter_ns())
        try:
            # More objects than the default limit lets through: the hand-over is measured.
            return parse_strict(body.decode(), max_containers=1_000_000)
        finally:
            window.append(time.perf_counter_ns())

    interval = sys.getswitchinterval()
    # Frequent hand-overs: many loop turns per slice whatever the machine's speed.
    sys.setswitchinterval(0.0005)
    try:
        parsing = asyncio.ensure_future(asyncio.to_thread(parse))
        while not parsing.done():
            turns.append(time.perf_counter_ns())
            await asyncio.sleep(0)
        document = await parsing
    finally:
        sys.setswitchinterval(interval)
    assert document["content"][-1] == {"text": "words"}
    # Relative, not a wall-clock limit: in how many tenths of the parse did the
    # loop get a turn? Held by one C call, it would get one in a tenth or two.
    started, finished = window
    slices = {(t - started) * 10 // (finished - started) for t in turns if started < t < finished}
    inside = [started, *(t for t in turns if started < t < finished), finished]
    longest = max(b - a for a, b in zip(inside, inside[1:], strict=False))
    print(
        f"\nparse of {len(body) / 1e6:.1f} MB: {(finished - started) / 1e6:.0f} ms, "
        f"loop ran in {len(slices)}/10 tenths, longest wait {longest / 1e6:.1f} ms"
    )
    assert len(slices) >= 5


def _wide(unit: str, count: int) -> bytes:
    return ('{"a":[' + ",".join([unit] * count) + "]}").encode()


@pytest.mark.parametrize(
    ("operation", "body", "limit", "refused"),
    [
        ("Converse", _wide("{}", 98), 100, False),  # 98 + the two outer ones
        ("Converse", _wide("{}", 99), 100, True),
        ("Converse", _wide("[]", 99), 100, True),
        ("Converse", ('{"a":' * 101 + "{}" + "}" * 101).encode(), 100, True),
        # Inside strings too: a conservative overcount, never an undercount.
        ("Converse", json.dumps({"a": "{[" * 50}).encode(), 100, True),
        ("Converse", json.dumps({"a": "{[" * 49}).encode(), 100, False),
        ("InvokeModel", b"  \n" + _wide("{}", 99), 100, True),
        # Text that does not start as an object or array cannot make one: not counted.
        ("InvokeModel", b"Human: " + b"{}" * 500, 100, False),
        # Bodies in another encoding are counted before their JSON test too.
        ("InvokeModel", _wide("{}", 500).decode().encode("utf-16-le"), 100, "must be UTF-8"),
        ("InvokeModel", _wide("{}", 500).decode().encode("utf-32"), 100, "byte-order mark"),
        ("Converse", _wide('"ab"', 50_000), 100, False),
    ],
)
def test_objects_and_arrays_are_counted_before_the_parse(
    operation: str, body: bytes, limit: int, refused: bool | str
) -> None:
    if isinstance(refused, str):
        with pytest.raises(AmbiguousBody, match=refused):
            read_document(operation, body, max_containers=limit)
        return
    if not refused:
        read_document(operation, body, max_containers=limit)
        return
    with pytest.raises(JsonTooComplex) as caught:
        read_document(operation, body, max_containers=limit)
    assert caught.value.status == 400 and caught.value.code == "json_too_complex"
    assert "limits.max_json_containers" in caught.value.message
    assert f"more than the {limit}" in caught.value.message


def test_the_default_limit_holds_for_parses_without_one() -> None:
    # The InvokeModel body inside CountTokens and a capture's re-parse pass no limit.
    with pytest.raises(JsonTooComplex):
        parse_strict("[" + ",".join(["{}"] * MAX_JSON_CONTAINERS) + "]")
    assert len(parse_strict("[" + ",".join(["{}"] * (MAX_JSON_CONTAINERS - 1)) + "]")) == (
        MAX_JSON_CONTAINERS - 1
    )


def test_an_oversized_body_is_refused_without_being_parsed() -> None:
    body = _wide("{}", 3_000_000)  # 9 MB: about 220 MB as Python objects
    tracemalloc.start()
    try:
        with pytest.raises(JsonTooComplex):
            read_document("Converse", body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The decoded text and nothing more.
    assert peak < 1.2 * len(body)


# The documented bound (body.py, Memory): at most 16 bytes held per byte of
# text, plus 300 per object or array counted, plus a fixed part for any parse.
_BYTES_PER_BYTE, _BYTES_PER_CONTAINER, _FIXED = 16, 300, 2048
_LIMIT = 20
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
_DOCUMENTS = st.dictionaries(
    st.text(max_size=4),
    st.recursive(
        _SCALARS,
        lambda inner: (
            st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=4), inner, max_size=8)
        ),
        max_leaves=100,
    )
    # The shape of the attack: many empty containers side by side.
    | st.lists(st.sampled_from([{}, []]), max_size=1000),
    max_size=8,
)


@given(_DOCUMENTS, st.booleans())
@example({"a": [{}] * 1000}, True)  # unchecked, 78 KB held: over the bound
def test_whatever_the_pre_check_accepts_parses_within_the_bound(
    document: dict[str, Any], ascii_only: bool
) -> None:
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=ascii_only).encode()
    limit = _LIMIT
    tracemalloc.start()
    try:
        try:
            parsed = read_document("Converse", body, max_containers=limit)
        except JsonTooComplex:
            assert body.count(b"{") + body.count(b"[") > limit
            return
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parsed == document
    bound = _BYTES_PER_BYTE * len(body) + _BYTES_PER_CONTAINER * limit + _FIXED
    assert peak <= bound, (peak, bound, len(body))
