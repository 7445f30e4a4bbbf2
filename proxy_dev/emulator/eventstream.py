"""Encoder for ``application/vnd.amazon.eventstream`` frames (sans-I/O).

Contract: ``encode_frame(headers, payload)`` returns one complete binary
frame: total length (u32), headers length (u32), prelude CRC32, headers,
payload, message CRC32, all big-endian, CRC32 being IEEE (``binascii.crc32``)
over every preceding byte. Header values are strings (type 7), which is all
bedrock-runtime sends on its response streams.

Only the encoder lives here: decoding is botocore's job
(``botocore.eventstream.EventStreamBuffer``), and the tests round-trip every
frame through it, so a framing or CRC mistake cannot hide behind a decoder
written by the same hand.
"""

from __future__ import annotations

import binascii
import json
import struct
from collections.abc import Mapping
from typing import Any

_STRING = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
# Limits botocore enforces on the way in; exceeding them would produce a frame
# no SDK can read, so refuse to build it.
MAX_HEADERS_BYTES = 128 * 1024
MAX_PAYLOAD_BYTES = 24 * 1024 * 1024


def _encode_headers(headers: Mapping[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        if not 0 < len(raw_name) < 256:
            raise ValueError(f"header name length out of range: {name!r}")
        if len(raw_value) >= 1 << 15:
            raise ValueError(f"header value too long for {name!r}")
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING, len(raw_value)) + raw_value
    return bytes(out)


def encode_frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    encoded_headers = _encode_headers(headers)
    if len(encoded_headers) > MAX_HEADERS_BYTES:
        raise ValueError("event-stream headers too large")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError("event-stream payload too large")
    total = _PRELUDE.size + _CRC.size + len(encoded_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(encoded_headers))
    head = prelude + _CRC.pack(binascii.crc32(prelude))
    body = head + encoded_headers + payload
    return body + _CRC.pack(binascii.crc32(body))


def event_frame(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """A normal event, as bedrock sends for chunks and Converse stream events."""
    return encode_frame(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        json.dumps(payload, separators=(",", ":")).encode("utf-8"),
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    """A modelled exception sent after HTTP 200 (``:message-type exception``)."""
    return encode_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode("utf-8"),
    )
