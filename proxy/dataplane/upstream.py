"""Send the signed request upstream and stream the answer back as it arrives.

One pooled aiohttp client session per process. The response is relayed chunk
by chunk through ``web.StreamResponse`` for every operation (never read whole),
with the observer fed after each write so it cannot delay the bytes. Upstream
errors pass through unchanged (status, AWS error headers, body). If the client
goes away, the upstream response is closed at once, which aborts the upstream
request instead of letting it run on unpaid-for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.aws.signing import returnable_headers
from proxy.dataplane.observe import Observation, ResponseObserver
from proxy.dataplane.response_capture import ResponseCapture
from proxy.errors import Outcome, UpstreamUnavailable


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


class Upstream:
    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
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
        sent_at = time.monotonic()
        try:
            upstream = await self._session.request(
                outgoing.method,
                URL(outgoing.url, encoded=True),
                headers=dict(outgoing.headers),
                data=outgoing.body,
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
