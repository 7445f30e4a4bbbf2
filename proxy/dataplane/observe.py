"""Watch a response on the side for usage, tool calls, stop reason and errors.

The relay hands every chunk to ``ResponseObserver.feed`` *after* writing it to
the client, so observing never delays or alters the bytes. Event streams are
split and CRC-checked by botocore's ``EventStreamBuffer``; a frame the parser
rejects stops observation (the bytes still flow, untouched). JSON bodies are
kept only up to a small bound to read ``usage`` at the end: the response
itself is never buffered. When the policy asks for it, the observer also
feeds a ``ResponseCapture`` (the bytes, and the generated text of streams).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from proxy.dataplane.response_capture import ResponseCapture

_JSON_OBSERVE_LIMIT = 256 * 1024


@dataclass
class Observation:
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_calls: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    frames: int = 0
    exception: str | None = None

    def usage(self) -> dict[str, int | None]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


class ResponseObserver:
    def __init__(
        self,
        content_type: str,
        headers: Mapping[str, str],
        capture: ResponseCapture | None = None,
    ) -> None:
        self.observation = Observation()
        self._capture = capture
        self._stream = content_type.startswith("application/vnd.amazon.eventstream")
        self._events: EventStreamBuffer | None = EventStreamBuffer() if self._stream else None
        self._json = bytearray()
        self._json_overflow = False
        self._from_headers(headers)

    def feed(self, chunk: bytes) -> None:
        if self._capture is not None:
            # Event streams are captured as their generated text, from the parsed events.
            self._capture.add_bytes(chunk, as_text=not self._stream)
        if self._events is not None:
            self._feed_events(chunk)
        elif not self._json_overflow:
            if len(self._json) + len(chunk) > _JSON_OBSERVE_LIMIT:
                self._json_overflow = True
                self._json.clear()
            else:
                self._json.extend(chunk)

    def finish(self) -> Observation:
        if not self._stream and self._json and not self._json_overflow:
            try:
                doc = json.loads(self._json)
            except (ValueError, RecursionError):  # deep nesting must not break the relay
                doc = None
            if isinstance(doc, dict):
                self._from_document(doc)
        return self.observation

    def _from_headers(self, headers: Mapping[str, str]) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        for key, attr in (
            ("x-amzn-bedrock-input-token-count", "input_tokens"),
            ("x-amzn-bedrock-output-token-count", "output_tokens"),
        ):
            value = lowered.get(key, "")
            # ASCII only: str.isdigit() also accepts digits int() cannot parse ("²").
            if value.isascii() and value.isdigit():
                setattr(self.observation, attr, int(value))

    def _feed_events(self, chunk: bytes) -> None:
        assert self._events is not None
        try:
            self._events.add_data(chunk)
            for message in self._events:
                self.observation.frames += 1
                self._from_event(message)
        except ParserError:
            # A frame we cannot parse: stop watching; the bytes still flow untouched.
            self._events = None
            self._json_overflow = True

    def _from_event(self, message: EventStreamMessage) -> None:
        headers = message.headers
        if headers.get(":message-type") in ("exception", "error"):
            self.observation.exception = str(
                headers.get(":exception-type") or headers.get(":error-code") or "error"
            )
            return
        try:
            payload = json.loads(message.payload) if message.payload else {}
        except (ValueError, RecursionError):
            return
        if not isinstance(payload, dict):
            return
        event_type = headers.get(":event-type")
        if event_type == "chunk":
            self._from_chunk(payload)
        else:
            self._from_converse_event(str(event_type), payload)

    def _from_chunk(self, payload: dict[str, Any]) -> None:
        # InvokeModelWithResponseStream: the provider's own event, base64 in "bytes".
        try:
            inner = json.loads(base64.b64decode(payload.get("bytes", "")))
        except (ValueError, TypeError, RecursionError):
            return
        if not isinstance(inner, dict):
            return
        if self._capture is not None:
            self._capture.add_text(_generated_text(inner))
        metrics = inner.get("amazon-bedrock-invocationMetrics")
        if isinstance(metrics, dict):
            self._set_tokens(metrics.get("inputTokenCount"), metrics.get("outputTokenCount"))
        self._from_document(inner)

    def _from_converse_event(self, event_type: str, payload: dict[str, Any]) -> None:
        if event_type == "contentBlockDelta" and self._capture is not None:
            self._capture.add_text(_converse_delta_text(payload.get("delta")))
        if event_type == "contentBlockStart":
            start = payload.get("start")
            tool = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                self.observation.tool_calls.append(tool["name"])
        elif event_type == "messageStop":
            self._set_stop(payload.get("stopReason"))
        elif event_type == "metadata":
            usage = payload.get("usage", {})
            if isinstance(usage, dict):
                self._set_tokens(usage.get("inputTokens"), usage.get("outputTokens"))

    def _from_document(self, doc: dict[str, Any]) -> None:
        """Converse responses and the Anthropic messages shape of InvokeModel."""
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self._set_tokens(
                usage.get("inputTokens", usage.get("input_tokens")),
                usage.get("outputTokens", usage.get("output_tokens")),
            )
        self._set_stop(doc.get("stopReason", doc.get("stop_reason")))
        delta = doc.get("delta")
        if isinstance(delta, dict):
            self._set_stop(delta.get("stop_reason"))
        for block in _content_blocks(doc):
            # Converse: {"toolUse": {"name"}}; Anthropic: {"type": "tool_use", "name"}.
            tool = block.get("toolUse") if "toolUse" in block else block
            if isinstance(tool, dict) and (tool is not block or block.get("type") == "tool_use"):
                if isinstance(tool.get("name"), str):
                    self.observation.tool_calls.append(tool["name"])

    def _set_tokens(self, input_tokens: object, output_tokens: object) -> None:
        if isinstance(input_tokens, int) and not isinstance(input_tokens, bool):
            self.observation.input_tokens = input_tokens
        if isinstance(output_tokens, int) and not isinstance(output_tokens, bool):
            self.observation.output_tokens = output_tokens

    def _set_stop(self, reason: object) -> None:
        if isinstance(reason, str) and reason:
            self.observation.stop_reason = reason


def _content_blocks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Content blocks of a Converse answer, an Anthropic message or stream event."""
    output = doc.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = message.get("content") if isinstance(message, dict) else doc.get("content")
    found = [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []
    if isinstance(doc.get("content_block"), dict):
        found.append(doc["content_block"])
    return found


def _converse_delta_text(delta: object) -> str:
    """The text a ConverseStream delta adds: text, tool input or reasoning."""
    if not isinstance(delta, dict):
        return ""
    for key, inner in (("text", None), ("toolUse", "input"), ("reasoningContent", "text")):
        value = delta.get(key)
        if inner is not None and isinstance(value, dict):
            value = value.get(inner)
        if isinstance(value, str):
            return value
    return ""


def _generated_text(doc: dict[str, Any]) -> str:
    """The text one InvokeModel stream chunk adds, for the providers' known shapes.

    An unknown shape is kept whole (as JSON), so nothing the model said is
    silently left out of a capture.
    """
    delta = doc.get("delta")
    if isinstance(delta, dict) or "type" in doc:
        # Anthropic messages events: only deltas carry text (or tool input).
        delta = delta if isinstance(delta, dict) else {}
        value = delta.get("text", delta.get("partial_json", ""))
        return value if isinstance(value, str) else ""
    for key in ("outputText", "generation", "completion", "text"):
        if isinstance(doc.get(key), str):
            return str(doc[key])
    for key in ("outputs", "generations"):  # Mistral, Cohere
        items = doc.get(key)
        if isinstance(items, list):
            return "".join(
                i["text"] for i in items if isinstance(i, dict) and isinstance(i.get("text"), str)
            )
    return json.dumps(doc, separators=(",", ":")) + "\n"
