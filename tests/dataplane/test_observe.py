"""proxy.dataplane.observe: usage, tool calls, stop reason and stream exceptions read on the
side of a response, whatever the chunking, and never raising."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from proxy.dataplane.observe import Observation, ResponseObserver
from proxy.dataplane.response_capture import CAPTURE_LIMIT_CHARS, ResponseCapture

EVENTSTREAM = "application/vnd.amazon.eventstream"


# A deliberately separate, minimal encoder (string headers only), so that a
# framing mistake in the emulator's encoder cannot hide here.
def frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    raw_headers = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        raw_headers += struct.pack(">B", len(n)) + n + struct.pack(">BH", 7, len(v)) + v
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", binascii.crc32(message))


def event(event_type: str, payload: Any) -> bytes:
    return frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(payload).encode(),
    )


def chunk(inner: dict[str, Any]) -> bytes:
    return event("chunk", {"bytes": base64.b64encode(json.dumps(inner).encode()).decode()})


def exception(kind: str, message: str) -> bytes:
    return frame(
        {
            ":exception-type": kind,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode(),
    )


CONVERSE_STREAM = [
    event("messageStart", {"role": "assistant"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me look."}}),
    event("contentBlockStop", {"contentBlockIndex": 0}),
    event(
        "contentBlockStart",
        {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "get_weather"}}},
    ),
    event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{}"}}}),
    event("contentBlockStop", {"contentBlockIndex": 1}),
    event(
        "contentBlockStart",
        {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t2", "name": "search"}}},
    ),
    event("contentBlockStop", {"contentBlockIndex": 2}),
    event("messageStop", {"stopReason": "tool_use"}),
    event(
        "metadata",
        {
            "usage": {"inputTokens": 25, "outputTokens": 31, "totalTokens": 56},
            "metrics": {"latencyMs": 420},
        },
    ),
]

INVOKE_STREAM = [
    chunk(
        {
            "type": "message_start",
            "message": {"role": "assistant", "content": [], "usage": {"input_tokens": 9}},
        }
    ),
    chunk(
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "tu1", "name": "lookup", "input": {}},
        }
    ),
    chunk(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        }
    ),
    chunk({"type": "content_block_stop", "index": 0}),
    chunk(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 6},
        }
    ),
    chunk(
        {
            "type": "message_stop",
            "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 9,
                "outputTokenCount": 7,
                "invocationLatency": 300,
                "firstByteLatency": 100,
            },
        }
    ),
]

# (frames, input, output, tools, stop, exception)
STREAMS = {
    "converse-stream": (CONVERSE_STREAM, 25, 31, ["get_weather", "search"], "tool_use", None),
    "invoke-stream": (INVOKE_STREAM, 9, 7, ["lookup"], "tool_use", None),
    "converse-stream-exception": (
        CONVERSE_STREAM[:3] + [exception("throttlingException", "slow down")],
        None,
        None,
        [],
        None,
        "throttlingException",
    ),
    "invoke-stream-exception": (
        INVOKE_STREAM[:2] + [exception("modelStreamErrorException", "boom")],
        None,
        None,
        ["lookup"],
        None,
        "modelStreamErrorException",
    ),
}


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def observe(
    chunks: Iterator[bytes] | list[bytes],
    content_type: str = EVENTSTREAM,
    headers: Mapping[str, str] | None = None,
) -> Observation:
    observer = ResponseObserver(content_type, headers or {})
    for part in chunks:
        observer.feed(part)
    return observer.finish()


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("size", [1, 7, 1 << 30], ids=["1", "7", "whole"])
def test_event_stream_any_chunking(name: str, size: int) -> None:
    frames, input_tokens, output_tokens, tools, stop, exc = STREAMS[name]
    seen = observe(pieces(b"".join(frames), size))
    assert seen.frames == len(frames)
    assert seen.usage() == {"input_tokens": input_tokens, "output_tokens": output_tokens}
    assert seen.tool_calls == tools
    assert seen.stop_reason == stop
    assert seen.exception == exc


@pytest.mark.parametrize("name", ["converse-stream", "invoke-stream"])
def test_event_stream_split_at_every_byte(name: str) -> None:
    frames, input_tokens, output_tokens, tools, stop, _ = STREAMS[name]
    data = b"".join(frames)
    for cut in range(len(data) + 1):
        seen = observe([data[:cut], data[cut:]])
        assert (seen.frames, seen.input_tokens, seen.output_tokens) == (
            len(frames),
            input_tokens,
            output_tokens,
        ), cut
        assert (seen.tool_calls, seen.stop_reason) == (tools, stop), cut


def _corrupt_crc(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _corrupt_prelude(data: bytes) -> bytes:
    return data[:9] + bytes([data[9] ^ 0xFF]) + data[10:]


@pytest.mark.parametrize("corrupt", [_corrupt_crc, _corrupt_prelude], ids=["message", "prelude"])
@pytest.mark.parametrize("size", [1, 7, 1 << 30], ids=["1", "7", "whole"])
def test_corrupted_frame_stops_observation_without_raising(corrupt: Any, size: int) -> None:
    # Frames: messageStart, (corrupted) toolUse start, messageStop, metadata.
    frames = [CONVERSE_STREAM[0], corrupt(CONVERSE_STREAM[3]), *CONVERSE_STREAM[8:]]
    data = b"".join(frames) + b"".join(CONVERSE_STREAM)  # more valid frames after
    seen = observe(pieces(data, size))
    assert seen.frames == 1
    assert seen.tool_calls == []
    assert seen.stop_reason is None
    assert seen.usage() == {"input_tokens": None, "output_tokens": None}


@pytest.mark.parametrize(
    "bad_frame",
    [
        event("contentBlockStart", {"start": "toolUse"}),
        event("contentBlockStart", {"start": {"toolUse": "x"}}),
        event("contentBlockStart", {"start": {"toolUse": {"name": 5}}}),
        event("messageStop", {"stopReason": 7}),
        event("metadata", {"usage": "lots"}),
        event("metadata", {"usage": {"inputTokens": "3", "outputTokens": True}}),
        event("messageStart", [1, 2]),
        frame({":event-type": "messageStop", ":message-type": "event"}, b"\xff\xfe"),
        frame({":event-type": "messageStop", ":message-type": "event"}, b"[" * 100_000),
        event("chunk", {"bytes": "!!!not base64"}),
        event("chunk", {"bytes": 5}),
        event("chunk", {"bytes": base64.b64encode(b"[1]").decode()}),
        event("chunk", {"bytes": base64.b64encode(b"\xff").decode()}),
        event("chunk", {}),
    ],
)
def test_malformed_event_payloads_are_ignored(bad_frame: bytes) -> None:
    seen = observe([bad_frame, *CONVERSE_STREAM[8:]])
    assert seen.frames == 3
    assert seen.tool_calls == []
    assert seen.stop_reason == "tool_use"
    assert seen.usage() == {"input_tokens": 25, "output_tokens": 31}


# --- JSON bodies ------------------------------------------------------------

CONVERSE_JSON = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {"text": "calling"},
                {"toolUse": {"toolUseId": "t1", "name": "search", "input": {}}},
                {"toolUse": {"toolUseId": "t2", "name": "calc", "input": {}}},
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {"inputTokens": 11, "outputTokens": 22, "totalTokens": 33},
    "metrics": {"latencyMs": 100},
}
ANTHROPIC_JSON = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "content": [
        {"type": "text", "text": "x"},
        {"type": "tool_use", "id": "tu1", "name": "lookup", "input": {}},
        # "name" on a non-tool block is not a tool call.
        {"type": "text", "name": "not-a-tool"},
    ],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 3, "output_tokens": 4},
}


@pytest.mark.parametrize(
    ("doc", "input_tokens", "output_tokens", "tools", "stop"),
    [
        (CONVERSE_JSON, 11, 22, ["search", "calc"], "tool_use"),
        (ANTHROPIC_JSON, 3, 4, ["lookup"], "end_turn"),
        ({"message": "ThrottlingException"}, None, None, [], None),
    ],
)
@pytest.mark.parametrize("size", [1, 7, 1 << 30], ids=["1", "7", "whole"])
def test_json_bodies(
    doc: dict[str, Any],
    input_tokens: int | None,
    output_tokens: int | None,
    tools: list[str],
    stop: str | None,
    size: int,
) -> None:
    seen = observe(pieces(json.dumps(doc).encode(), size), "application/json")
    assert seen.usage() == {"input_tokens": input_tokens, "output_tokens": output_tokens}
    assert seen.tool_calls == tools
    assert seen.stop_reason == stop
    assert seen.frames == 0


def _padded(size: int) -> bytes:
    base = json.dumps({**ANTHROPIC_JSON, "pad": ""}).encode()
    body = json.dumps({**ANTHROPIC_JSON, "pad": "x" * (size - len(base))}).encode()
    assert len(body) == size
    return body


@pytest.mark.parametrize(
    ("size", "parsed"),
    [(256 * 1024, True), (256 * 1024 + 1, False), (1024 * 1024, False)],
)
def test_json_bound(size: int, parsed: bool) -> None:
    seen = observe(pieces(_padded(size), 4096), "application/json")
    assert (seen.input_tokens == 3) is parsed
    assert (seen.tool_calls == ["lookup"]) is parsed


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b"\xff\xfe", b"[" * 100_000, b'{"usage": [1]}'],
)
def test_unusable_json_bodies_do_not_raise(body: bytes) -> None:
    seen = observe([body], "application/json")
    assert seen == Observation()


@pytest.mark.parametrize(
    ("headers", "input_tokens", "output_tokens"),
    [
        (
            {"X-Amzn-Bedrock-Input-Token-Count": "12", "X-Amzn-Bedrock-Output-Token-Count": "34"},
            12,
            34,
        ),
        ({"x-amzn-bedrock-input-token-count": "0"}, 0, None),
        ({"X-Amzn-Bedrock-Output-Token-Count": "-1"}, None, None),
        ({"X-Amzn-Bedrock-Output-Token-Count": "1.5"}, None, None),
        ({"X-Amzn-Bedrock-Output-Token-Count": ""}, None, None),
        ({"X-Amzn-Bedrock-Output-Token-Count": "\u00b2"}, None, None),  # isdigit, not int
        ({"X-Amzn-Bedrock-Output-Token-Count": "\u0663"}, None, None),  # Arabic-Indic 3
        ({}, None, None),
    ],
)
def test_token_counts_from_headers(
    headers: dict[str, str], input_tokens: int | None, output_tokens: int | None
) -> None:
    # An InvokeModel body of a provider whose shape carries no usage.
    seen = observe([b'{"generation": "hi"}'], "application/json", headers)
    assert seen.usage() == {"input_tokens": input_tokens, "output_tokens": output_tokens}


def test_headers_then_stream_metrics() -> None:
    headers = {"X-Amzn-Bedrock-Input-Token-Count": "1", "X-Amzn-Bedrock-Output-Token-Count": "2"}
    seen = observe([b"".join(INVOKE_STREAM)], EVENTSTREAM, headers)
    assert seen.usage() == {"input_tokens": 9, "output_tokens": 7}


# ------------------------------------------------------------- response capture

EMAIL = "jane.roe@example.org"


def _observe(content_type: str, chunks: list[bytes], mode: str) -> dict[str, Any]:
    capture = ResponseCapture(mode)
    observer = ResponseObserver(content_type, {}, capture)
    for piece in chunks:
        observer.feed(piece)
    observer.finish()
    return capture.record()


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_capture_hash_is_of_the_bytes_relayed() -> None:
    body = json.dumps({"output": {"message": {"content": [{"text": "héllo"}]}}}).encode()
    record = _observe("application/json", _bytewise(body), "hash")
    assert record == {"sha256": hashlib.sha256(body).hexdigest(), "captured": None,
                      "truncated": False}  # fmt: skip


def test_full_capture_keeps_a_json_body_whatever_the_chunking() -> None:
    body = json.dumps({"text": "naïve café ✓"}, ensure_ascii=False).encode()
    record = _observe("application/json", _bytewise(body), "full")
    assert record["captured"] == body.decode()


def test_capture_is_bounded_and_says_so() -> None:
    body = b'{"text": "' + b"x" * (CAPTURE_LIMIT_CHARS * 2) + b'"}'
    record = _observe("application/json", [body[:1000], body[1000:]], "full")
    assert len(record["captured"]) == CAPTURE_LIMIT_CHARS and record["truncated"] is True
    assert record["sha256"] == hashlib.sha256(body).hexdigest()


def test_converse_stream_capture_joins_deltas_so_a_split_value_is_still_redacted() -> None:
    # The address arrives in three deltas; only the joined text shows it whole.
    deltas = ["Write to jane.r", "oe@exam", "ple.org today"]
    frames = [event("messageStart", {"role": "assistant"})]
    frames += [event("contentBlockDelta", {"delta": {"text": d}}) for d in deltas]
    frames += [event("contentBlockDelta", {"delta": {"toolUse": {"input": '{"q":1}'}}})]
    frames += [event("messageStop", {"stopReason": "end_turn"})]
    wire = b"".join(frames)
    full = _observe(EVENTSTREAM, [wire[:50], wire[50:]], "full")
    assert full["captured"] == "".join(deltas) + '{"q":1}'
    redacted = _observe(EVENTSTREAM, [wire], "redacted")
    assert EMAIL not in redacted["captured"] and "oe@exam" not in redacted["captured"]
    assert redacted["captured"] == 'Write to [email] today{"q":1}'
    assert redacted["sha256"] == hashlib.sha256(wire).hexdigest()


@pytest.mark.parametrize(
    ("inners", "captured"),
    [
        ([{"type": "message_start", "message": {}},
          {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi "}},
          {"type": "content_block_delta", "delta": {"type": "input_json_delta",
                                                    "partial_json": "{}"}},
          {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
          {"type": "message_stop"}], "Hi {}"),
        ([{"outputText": "Hello "}, {"outputText": "there", "completionReason": "FINISH"}],
         "Hello there"),
        ([{"generation": "a"}, {"completion": "b"}, {"outputs": [{"text": "c"}]},
          {"generations": [{"text": "d"}]}], "abcd"),
        ([{"novel": {"shape": 1}}], '{"novel":{"shape":1}}\n'),
    ],
    ids=["anthropic", "titan", "other-providers", "unknown-shape-kept-whole"],
)  # fmt: skip
def test_invoke_stream_capture_reads_the_providers_shapes(
    inners: list[dict[str, Any]], captured: str
) -> None:
    record = _observe(EVENTSTREAM, [chunk(i) for i in inners], "full")
    assert record["captured"] == captured


def test_a_value_straddling_the_cut_is_redacted_whole() -> None:
    # The cut falls inside the address: without scanning past it, "jane.r" would stay.
    text = "x " * ((CAPTURE_LIMIT_CHARS - 6) // 2) + EMAIL + " tail"
    frames = event("contentBlockDelta", {"delta": {"text": text}})
    record = _observe(EVENTSTREAM, [frames], "redacted")
    assert record["truncated"] is True and len(record["captured"]) == CAPTURE_LIMIT_CHARS
    assert "jane" not in record["captured"]
    assert _observe(EVENTSTREAM, [frames], "full")["captured"].endswith("jane.r")


@pytest.mark.parametrize("padding", [0, 2 * CAPTURE_LIMIT_CHARS], ids=["whole", "cut-short"])
def test_json_escapes_cannot_hide_a_value_from_redaction(padding: int) -> None:
    body = ('{"text": "mail jane.roe\\u0040example.org", "pad": "' + "p" * padding + '"}').encode()
    record = _observe("application/json", [body], "redacted")
    assert "[email]" in record["captured"] and "jane.roe" not in record["captured"]
    assert record["truncated"] is (padding > 0)
