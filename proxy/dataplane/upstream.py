"""Send the signed request upstream and stream the answer back as it arrives.

One pooled aiohttp client session per process. The response is relayed chunk
by chunk through ``web.StreamResponse`` for every operation (never read whole),
with the observer fed after each write so it cannot delay the bytes. Upstream
errors pass through unchanged (status, AWS error headers, body). If the client
goes away, the upstream response is closed at once, which aborts the upstream
request instead of letting it run on unpaid-for.

The pool is bounded: at most ``max_connections`` requests upstream at once,
``max_connections_per_host`` to one host (one region's endpoint), so a slow
region cannot take every connection. A request that finds the pool full
waits for a place at most the connect timeout, then is refused with 503
``Overloaded`` (detail ``upstream_connections``): the proxy is at its limit,
Bedrock was not asked. ``UpstreamPool`` keeps that count itself, because
aiohttp's connector answers a wait for a free connection with the same
timeout error as a host that cannot be reached (502), and keeps its own
limits only as a backstop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.aws.signing import returnable_headers
from proxy.dataplane.observe import Observation, ResponseObserver
from proxy.dataplane.response_capture import ResponseCapture
from proxy.errors import Outcome, Overloaded, UpstreamUnavailable

UPSTREAM_CONNECTIONS = "upstream_connections"


@dataclass(frozen=True)
class Outgoing:
    """The signed request, exactly as it goes upstream."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass
class RelayResult:
    """What the relay observed; filled as the response streams, final when it ends.

    Mutable on purpose: a client that goes away mid-stream still leaves what was
    seen so far (status, bytes, first-byte time) for the audit record.
    """

    capture: ResponseCapture | None = None
    status: int | None = None
    aws_request_id: str | None = None
    ttfb_ms: float | None = None
    bytes_out: int = 0
    observation: Observation | None = None
    outcome: Outcome = Outcome.CLIENT_ABORTED
    error: UpstreamUnavailable | None = field(default=None)


class UpstreamPool:
    """Requests upstream at once, in all and per host; a place is waited for ``wait_s``."""

    def __init__(self, max_total: int, max_per_host: int, wait_s: float) -> None:
        self._max_total, self._max_per_host, self._wait_s = max_total, max_per_host, wait_s
        self._in_use = 0
        self._per_host: Counter[str] = Counter()
        self._freed = asyncio.Event()

    @property
    def in_use(self) -> int:
        return self._in_use

    @asynccontextmanager
    async def place(self, host: str) -> AsyncIterator[None]:
        """Hold a place for one request to ``host``; Overloaded if none frees up in time."""
        try:
            async with asyncio.timeout(self._wait_s):
                while self._in_use >= self._max_total or self._per_host[host] >= self._max_per_host:
                    await self._freed.wait()
        except TimeoutError:
            raise Overloaded(
                "The proxy has no free connection to Bedrock; retry shortly",
                detail=UPSTREAM_CONNECTIONS,
            ) from None
        # No await between the check and the count: nothing else runs in between.
        self._in_use += 1
        self._per_host[host] += 1
        try:
            yield
        finally:
            self._in_use -= 1
            self._per_host[host] -= 1
            if not self._per_host[host]:
                del self._per_host[host]
            # Every waiter checks again; a fresh event for the next wait.
            self._freed.set()
            self._freed = asyncio.Event()


class Upstream:
    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int = 1024,
        max_connections_per_host: int = 512,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._limits = (max_connections, max_connections_per_host)
        self._pool = UpstreamPool(max_connections, max_connections_per_host, connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        limit, limit_per_host = self._limits
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(
                limit=limit, limit_per_host=limit_per_host, enable_cleanup_closed=True
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def relay(
        self, request: web.Request, outgoing: Outgoing, result: RelayResult
    ) -> web.StreamResponse:
        """Send ``outgoing`` and stream the answer to ``request``, recording into ``result``."""
        assert self._session is not None, "Upstream.start() was not awaited"
        url = URL(outgoing.url, encoded=True)
        async with self._pool.place(url.host or ""):
            sent_at = time.monotonic()
            try:
                upstream = await self._session.request(
                    outgoing.method, url, headers=dict(outgoing.headers), data=outgoing.body
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamUnavailable(
                    "Bedrock could not be reached", detail=f"{type(exc).__name__}: {exc}"
                ) from exc
            try:
                return await self._stream_back(request, upstream, sent_at, result)
            finally:
                # close(), not release(): an unfinished upstream body must be aborted.
                upstream.close()

    async def _stream_back(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        sent_at: float,
        result: RelayResult,
    ) -> web.StreamResponse:
        result.status = upstream.status
        result.aws_request_id = upstream.headers.get("x-amzn-RequestId")
        observer = ResponseObserver(
            upstream.headers.get("Content-Type", ""), upstream.headers, result.capture
        )
        result.observation = observer.observation
        response = web.StreamResponse(
            status=upstream.status, headers=returnable_headers(upstream.headers)
        )
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit():
            response.content_length = int(length)
        try:
            await response.prepare(request)
            while chunk := await self._read(upstream):
                if result.ttfb_ms is None:
                    result.ttfb_ms = round((time.monotonic() - sent_at) * 1000, 3)
                await response.write(chunk)
                result.bytes_out += len(chunk)
                observer.feed(chunk)
            await response.write_eof()
        except ConnectionResetError:
            return response  # the client went away: outcome stays client_aborted
        except UpstreamUnavailable as exc:
            # Upstream broke mid-body: nothing AWS-shaped can be sent any more, so
            # the client connection is cut to make the truncation visible.
            result.outcome, result.error = Outcome.UPSTREAM_ERROR, exc
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            observer.finish()
        failed = upstream.status >= 400 or observer.observation.exception is not None
        result.outcome = Outcome.UPSTREAM_ERROR if failed else Outcome.OK
        return response

    @staticmethod
    async def _read(upstream: aiohttp.ClientResponse) -> bytes:
        try:
            return await upstream.content.readany()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                "Bedrock closed the response early", detail=f"{type(exc).__name__}: {exc}"
            ) from exc
