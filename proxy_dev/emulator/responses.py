"""Canned, wire-accurate bedrock-runtime answers (pure, no I/O).

Contract: each builder turns a parsed request into the body (or the ordered
list of event-stream frames) that bedrock-runtime would send for it, with
plausible token counts. Content is synthetic and deterministic (a prompt
that starts with ``echo:`` is answered with the rest of itself, split across
the frames, so a test can put a known value in an answer); the shapes
are what matter, because the proxy observes usage, tool calls and stop
reasons in exactly these places (as Bedrock does):

- InvokeModel on an Anthropic messages body: a Messages API response; any
  other body: a small generic JSON.
- InvokeModelWithResponseStream: ``chunk`` events whose payload is
  ``{"bytes": base64(json)}``; the last chunk carries
  ``amazon-bedrock-invocationMetrics``.
- Converse / ConverseStream: text, or a ``toolUse`` block naming the first
  tool when ``toolConfig.tools`` is given (stop reason ``tool_use``).

Tool use, in Converse and in Anthropic bodies alike, follows one rule
(``_tool_call``): call the first offered tool unless the last user message
carries a tool result, which is answered with text and ``end_turn`` as a real
model would, so an agent loop terminates.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from proxy_dev.emulator.eventstream import event_frame

_WORDS = (
    "Hello", "from", "the", "local", "bedrock", "emulator;", "this", "answer", "is",
    "synthetic", "and", "streamed", "one", "word", "per", "frame.",
)  # fmt: skip


@dataclass(frozen=True)
class Reply:
    body: dict[str, Any]
    input_tokens: int
    output_tokens: int


def estimate_tokens(data: bytes | str) -> int:
    # Roughly four characters per token, as vendors quote; only needs to be plausible.
    return max(1, len(data) // 4)


def reply_words(count: int, request: Any = None) -> list[str]:
    echo = _echo(request)
    if echo is not None:
        return _split(echo, count)
    return [_WORDS[i % len(_WORDS)] + " " for i in range(max(1, count))]


def _echo(request: Any) -> str | None:
    """The rest of an ``echo:`` prompt: the last message's text, or inputText/prompt."""
    if not isinstance(request, dict):
        return None
    texts = [request.get("inputText"), request.get("prompt")]
    messages = request.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        texts += [block.get("text") for block in content if isinstance(block, dict)]
    for text in texts:
        if isinstance(text, str) and text.startswith("echo:") and text[5:].strip():
            return text[5:].strip()
    return None


def is_anthropic(request: Any) -> bool:
    return isinstance(request, dict) and ("anthropic_version" in request or "messages" in request)


def _anthropic_tool(request: dict[str, Any]) -> str | None:
    tools = request.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        name = tools[0].get("name")
        return name if isinstance(name, str) else None
    return None


def converse_tool(request: dict[str, Any]) -> str | None:
    config = request.get("toolConfig")
    tools = config.get("tools") if isinstance(config, dict) else None
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        spec = tools[0].get("toolSpec")
        name = spec.get("name") if isinstance(spec, dict) else None
        return name if isinstance(name, str) else None
    return None


def _tool_call(request: dict[str, Any], offered: str | None) -> str | None:
    """The tool to call for ``request``, or None to end the turn with text.

    Agent frameworks (strands-agents, LangChain, pydantic-ai) call the model
    again after running a tool and stop only when it answers in text; calling
    the tool again would loop them forever. Only the last user message
    counts: a new question after an older tool exchange calls the tool again.
    """
    if offered is None or _holds_tool_result(_last_user_content(request)):
        return None
    return offered


def _last_user_content(request: dict[str, Any]) -> Any:
    messages = request.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message.get("content")
    return None


def _holds_tool_result(content: Any) -> bool:
    # Converse blocks are keyed by member name, Anthropic blocks by "type".
    return isinstance(content, list) and any(
        isinstance(block, dict) and ("toolResult" in block or block.get("type") == "tool_result")
        for block in content
    )


def _tool_input(frames: int) -> dict[str, Any]:
    return {"query": "".join(reply_words(frames)).strip()}


def _split(text: str, parts: int) -> list[str]:
    size = max(1, math.ceil(len(text) / max(1, parts)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _msg_id() -> str:
    return "msg_bdrk_" + uuid.uuid4().hex[:24]


def _tool_id() -> str:
    return "toolu_bdrk_" + uuid.uuid4().hex[:24]


def invoke_model(model_id: str, raw_body: bytes, request: Any, frames: int) -> Reply:
    input_tokens = estimate_tokens(raw_body)
    if is_anthropic(request):
        tool = _tool_call(request, _anthropic_tool(request))
        if tool is not None:
            content: list[dict[str, Any]] = [
                {"type": "tool_use", "id": _tool_id(), "name": tool, "input": _tool_input(frames)}
            ]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": "".join(reply_words(frames, request)).strip()}]
            stop = "end_turn"
        body: dict[str, Any] = {
            "id": _msg_id(),
            "type": "message",
            "role": "assistant",
            "model": model_id,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": frames},
        }
        return Reply(body, input_tokens, frames)
    text = "".join(reply_words(frames, request)).strip()
    return Reply(
        {
            "inputTextTokenCount": input_tokens,
            "results": [{"tokenCount": frames, "outputText": text, "completionReason": "FINISH"}],
        },
        input_tokens,
        frames,
    )


def _chunk(payload: dict[str, Any]) -> bytes:
    raw = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return event_frame("chunk", {"bytes": base64.b64encode(raw).decode("ascii")})


def _metrics(
    input_tokens: int, output_tokens: int, latency_ms: int, first_ms: int
) -> dict[str, int]:
    return {
        "inputTokenCount": input_tokens,
        "outputTokenCount": output_tokens,
        "invocationLatency": latency_ms,
        "firstByteLatency": first_ms,
    }


def invoke_stream(
    model_id: str, raw_body: bytes, request: Any, frames: int, latency_ms: int, first_ms: int
) -> list[bytes]:
    input_tokens = estimate_tokens(raw_body)
    metrics = _metrics(input_tokens, frames, latency_ms, first_ms)
    if not is_anthropic(request):
        words = reply_words(frames, request)
        out = [_chunk({"outputText": w, "index": 0}) for w in words[:-1]]
        out.append(
            _chunk(
                {
                    "outputText": words[-1],
                    "index": 0,
                    "completionReason": "FINISH",
                    "amazon-bedrock-invocationMetrics": metrics,
                }
            )
        )
        return out
    tool = _tool_call(request, _anthropic_tool(request))
    if tool is not None:
        block: dict[str, Any] = {"type": "tool_use", "id": _tool_id(), "name": tool, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": part}
            for part in _split(json.dumps(_tool_input(frames)), frames)
        ]
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in reply_words(frames, request)]
        stop = "end_turn"
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": _msg_id(),
                "type": "message",
                "role": "assistant",
                "model": model_id,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": block},
        *({"type": "content_block_delta", "index": 0, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": frames},
        },
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics},
    ]
    return [_chunk(e) for e in events]


def converse(request: dict[str, Any], raw_body: bytes, frames: int, latency_ms: int) -> Reply:
    input_tokens = estimate_tokens(raw_body)
    tool = _tool_call(request, converse_tool(request))
    if tool is not None:
        content: list[dict[str, Any]] = [
            {"toolUse": {"toolUseId": _tool_id(), "name": tool, "input": _tool_input(frames)}}
        ]
        stop = "tool_use"
    else:
        content = [{"text": "".join(reply_words(frames, request)).strip()}]
        stop = "end_turn"
    body = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {
            "inputTokens": input_tokens,
            "outputTokens": frames,
            "totalTokens": input_tokens + frames,
        },
        "metrics": {"latencyMs": latency_ms},
    }
    return Reply(body, input_tokens, frames)


def converse_stream(
    request: dict[str, Any], raw_body: bytes, frames: int, latency_ms: int
) -> list[bytes]:
    input_tokens = estimate_tokens(raw_body)
    tool = _tool_call(request, converse_tool(request))
    out = [event_frame("messageStart", {"role": "assistant"})]
    if tool is not None:
        out.append(
            event_frame(
                "contentBlockStart",
                {
                    "start": {"toolUse": {"toolUseId": _tool_id(), "name": tool}},
                    "contentBlockIndex": 0,
                },
            )
        )
        deltas: list[dict[str, Any]] = [
            {"toolUse": {"input": part}} for part in _split(json.dumps(_tool_input(frames)), frames)
        ]
        stop = "tool_use"
    else:
        deltas = [{"text": w} for w in reply_words(frames, request)]
        stop = "end_turn"
    out += [event_frame("contentBlockDelta", {"delta": d, "contentBlockIndex": 0}) for d in deltas]
    out.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
    out.append(event_frame("messageStop", {"stopReason": stop}))
    out.append(
        event_frame(
            "metadata",
            {
                "usage": {
                    "inputTokens": input_tokens,
                    "outputTokens": frames,
                    "totalTokens": input_tokens + frames,
                },
                "metrics": {"latencyMs": latency_ms},
            },
        )
    )
    return out


def count_tokens(request: dict[str, Any]) -> dict[str, Any]:
    source = request.get("input")
    if not isinstance(source, dict):
        source = {}
    invoke = source.get("invokeModel")
    if isinstance(invoke, dict) and isinstance(invoke.get("body"), str):
        try:
            return {"inputTokens": estimate_tokens(base64.b64decode(invoke["body"]))}
        except ValueError:
            pass
    return {"inputTokens": estimate_tokens(json.dumps(source, sort_keys=True))}
