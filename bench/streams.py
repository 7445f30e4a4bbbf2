"""ConverseStream timings (TTFB, inter-frame gaps, frame counts) and open-stream memory.

An asyncio aiohttp client with the same TLS settings for both targets (dev
CA, client SVID). Frames are counted with botocore's event-stream parser and
timed when each frame is complete, so "time to first byte" here is the time
to the first whole event, which is what an SDK can act on. Direct streams
are signed per request (outside the timed part).
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from botocore.eventstream import EventStreamBuffer
from yarl import URL

from bench.load import Request
from bench.stack import ClientTls


@dataclass(frozen=True)
class StreamSample:
    status: int
    ttfb_s: float
    gaps_s: tuple[float, ...]
    frames: int


def client_ssl(tls: ClientTls) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def session(tls: ClientTls, limit: int = 0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_ssl(tls), limit=limit),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


async def one_stream(http: aiohttp.ClientSession, request: Request) -> StreamSample:
    # encoded=True: yarl would otherwise turn %3A back into ":" and break the signature.
    buffer = EventStreamBuffer()
    times: list[float] = []
    sent = time.perf_counter()
    async with http.post(
        URL(request.url, encoded=True), data=request.body, headers=dict(request.headers)
    ) as answer:
        if answer.status != 200:
            raise RuntimeError(f"stream answered {answer.status}: {(await answer.read())[:300]!r}")
        async for chunk in answer.content.iter_any():
            now = time.perf_counter()
            buffer.add_data(chunk)
            times.extend(now for _ in buffer)
        status = answer.status
    gaps = tuple(b - a for a, b in zip(times, times[1:], strict=False))
    return StreamSample(status, (times[0] - sent) if times else -1.0, gaps, len(times))


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50": round(at(0.50) * 1000, 3),
        "p90": round(at(0.90) * 1000, 3),
        "p99": round(at(0.99) * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


def summarize(samples: Sequence[StreamSample]) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200 and s.frames > 0]
    return {
        "streams": len(samples),
        "ok": len(ok),
        "ttfb_ms": _percentiles([s.ttfb_s for s in ok]),
        "gap_ms": _percentiles([g for s in ok for g in s.gaps_s]),
        "frames_per_stream": sorted({s.frames for s in samples}),
        "frames_total": sum(s.frames for s in samples),
        "mean_frames": round(statistics.fmean(s.frames for s in samples), 2) if samples else 0,
    }


async def compare(
    tls: ClientTls,
    direct: Callable[[], Request],
    proxied: Callable[[], Request],
    *,
    rounds: int,
    concurrency: int,
) -> dict[str, Any]:
    """Alternate direct and proxied batches so drift hits both alike."""
    results: dict[str, list[StreamSample]] = {"direct": [], "proxy": []}
    async with session(tls) as http:
        # Warm both paths (connections, the proxy's credential cache) outside the figures.
        await one_stream(http, direct())
        await one_stream(http, proxied())
        for _ in range(rounds):
            for name, make in (("direct", direct), ("proxy", proxied)):
                batch = [make() for _ in range(concurrency)]
                results[name].extend(await asyncio.gather(*(one_stream(http, r) for r in batch)))
    direct_summary, proxy_summary = summarize(results["direct"]), summarize(results["proxy"])
    return {
        "direct": direct_summary,
        "proxy": proxy_summary,
        "added_ms": {
            "ttfb_p50": round(
                proxy_summary["ttfb_ms"]["p50"] - direct_summary["ttfb_ms"]["p50"], 3
            ),
            "ttfb_p99": round(
                proxy_summary["ttfb_ms"]["p99"] - direct_summary["ttfb_ms"]["p99"], 3
            ),
            "gap_p50": round(proxy_summary["gap_ms"]["p50"] - direct_summary["gap_ms"]["p50"], 3),
            "gap_p99": round(proxy_summary["gap_ms"]["p99"] - direct_summary["gap_ms"]["p99"], 3),
        },
        "frames_in_equals_frames_out": (
            direct_summary["frames_per_stream"] == proxy_summary["frames_per_stream"]
            and direct_summary["ok"] == direct_summary["streams"]
            and proxy_summary["ok"] == proxy_summary["streams"]
        ),
    }


async def hold_open(
    tls: ClientTls,
    request: Request,
    count: int,
    *,
    settle_timeout_s: float,
    measure: Callable[[], int],
    ramp: int = 50,
) -> dict[str, Any]:
    """Open ``count`` slow streams, wait until each has its first frame, read RSS, drop them.

    Streams are opened in waves of ``ramp`` (a wave's streams must have their
    first frame before more are started): a thousand handshakes and decisions
    at the same instant would measure a connection storm, not what an open
    stream costs.
    """
    first = asyncio.Semaphore(0)
    opening = asyncio.Semaphore(ramp)
    held: list[aiohttp.ClientResponse] = []
    opened = 0

    async def slow(http: aiohttp.ClientSession) -> None:
        nonlocal opened
        buffer = EventStreamBuffer()
        async with opening:
            await _open_one(http, buffer)
        await asyncio.Event().wait()  # hold it open until cancelled

    async def _open_one(http: aiohttp.ClientSession, buffer: EventStreamBuffer) -> None:
        nonlocal opened
        answer = await http.post(
            URL(request.url, encoded=True), data=request.body, headers=dict(request.headers)
        )
        if answer.status != 200:
            # An AWS-shaped error body is not an event stream: report it as such.
            body = (await answer.read())[:300]
            raise RuntimeError(f"stream answered {answer.status}: {body!r}")
        async for chunk in answer.content.iter_any():
            buffer.add_data(chunk)
            if any(True for _ in buffer):
                opened += 1
                first.release()
                held.append(answer)  # the stream stays open; the session closes it
                return

    async with session(tls) as http:
        tasks = [asyncio.create_task(slow(http)) for _ in range(count)]
        deadline = time.monotonic() + settle_timeout_s
        got = 0
        while got < count and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(first.acquire(), deadline - time.monotonic())
                got += 1
            except TimeoutError:
                break
        rss = measure()
        errors = [repr(t.exception()) for t in tasks if t.done() and t.exception() is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for answer in held:
            answer.close()
    return {
        "streams": count,
        "open_with_first_frame": opened,
        "failed": len(errors),
        "first_error": errors[0][:300] if errors else None,
        "rss_bytes": rss,
    }
