"""proxy.offload: large-body work leaves the loop's thread; small work stays on it."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import pytest

from proxy.offload import OFFLOAD_BYTES, offload_if_large, parse_json


def _where(*args: object, **kwargs: object) -> tuple[int, tuple[object, ...], dict[str, object]]:
    return threading.get_ident(), args, kwargs


@pytest.mark.parametrize(
    ("size", "inline"), [(0, True), (OFFLOAD_BYTES, True), (OFFLOAD_BYTES + 1, False)]
)
async def test_only_large_work_goes_to_a_thread(size: int, inline: bool) -> None:
    thread, args, kwargs = await offload_if_large(size, _where, 1, "two", size=3, work=4)
    assert (thread == threading.get_ident()) is inline
    # ``size`` and ``work`` are positional-only, so the work's own keywords may use them.
    assert (args, kwargs) == ((1, "two"), {"size": 3, "work": 4})


@pytest.mark.parametrize("size", [1, OFFLOAD_BYTES + 1])
async def test_errors_of_the_work_reach_the_caller(size: int) -> None:
    def fail() -> None:
        raise ValueError("bad body")

    with pytest.raises(ValueError, match="bad body"):
        await offload_if_large(size, fail)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"a": {"b": [{"c": 1}, {"c": 2.5}], "d": null}, "a2": true}',
        b'{"k": 1, "k": 2}',
        '{"t": "caf\\u00e9 \u2603"}'.encode(),
        '{"t": "x"}'.encode("utf-16"),
        b"[1, 2, 3]",
    ],
)
def test_parse_json_reads_what_json_loads_reads(body: bytes) -> None:
    assert parse_json(body) == json.loads(body)


@pytest.mark.parametrize("body", [b"{", b'{"a": }', b"\xff{}"])
def test_parse_json_refuses_what_json_loads_refuses(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(body)


async def test_the_loop_runs_while_a_large_document_is_parsed_in_a_thread() -> None:
    """json's C parser alone would hold the GIL, and so the loop, for the whole document."""
    body = json.dumps({"content": [{"text": "words"} for _ in range(300_000)]}).encode()
    window: list[int] = []
    turns: list[int] = []

    def parse() -> Any:
        window.append(time.perf_counter_ns())
        try:
            return parse_json(body)
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
