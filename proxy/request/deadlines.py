"""Deadlines on what a client sends: its request headers and its request body.

aiohttp's request handler has one timer, keep-alive, which only closes a
connection that waits between requests. A client that sends half its
headers, or its headers and then part of a body, holds the connection (and a
handler waiting on the body) for as long as it likes. ``DeadlineHandler``
adds two deadlines, with one timer per connection:

* ``header_timeout``: the request head (request line and headers) is
  complete within ``header_s`` of the connection's start (its TLS handshake
  done) or of the first byte of a keep-alive connection's next request. The
  idle time between requests is keep-alive's, not this.
* ``body_idle_timeout``: while a request body is unfinished, no silence
  longer than ``body_idle_s``. Time during which the proxy itself holds
  reading back (flow control, because the handler has not read what came)
  is not the client's silence and does not count.

Past the header deadline the connection is cut: there is no request to
answer. Past the body deadline, a handler that is running gets
``RequestTimeout`` from its next read of the body (a 408, and a terminal
record with outcome ``client_timeout``) and the connection closes after that
answer; a body aiohttp drains after the request was answered, or one of a
request pipelined behind another, is cut with its connection. Every cut is
reported to ``on_cut`` with the peer and a stable reason (counted in metrics,
recorded at a bounded rate), never with the peer's bytes.

Reads attributes of aiohttp's RequestHandler (``_messages``,
``_request_count``, ``_waiter``, the reading-paused flags) that are not
public API; aiohttp is pinned, and the tests drive these paths through real
sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import streams, web

from proxy.errors import RequestTimeout
from proxy.request.malformed import MalformedHttpHandler, Refuse

HEADER_TIMEOUT = "header_timeout"
BODY_IDLE_TIMEOUT = "body_idle_timeout"

CutReporter = Callable[[str | None, str], None]


@dataclass(frozen=True)
class Deadlines:
    header_s: float
    body_idle_s: float


class DeadlineHandler(MalformedHttpHandler):
    """aiohttp's request handler with deadlines on the request head and the body's silences."""

    def __init__(
        self,
        manager: web.Server,
        *,
        refuse: Refuse,
        deadlines: Deadlines,
        on_cut: CutReporter,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, refuse=refuse, **kwargs)
        self._deadlines = deadlines
        self._on_cut = on_cut
        self._peer: str | None = None
        self._head_due: float | None = None
        self._body: streams.StreamReader | None = None
        self._body_seen = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple) and len(address) >= 2:
            self._peer = f"{address[0]}:{address[1]}"
        super().connection_made(transport)
        self._expect_head(self._loop.time())

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Between requests: aiohttp waits for the next one (not in a handler, not
        # draining a body). A byte then starts the next request's head.
        between = self._waiter is not None and not self._waiter.done()
        parsed = self._request_count
        super().data_received(data)
        now = self._loop.time()
        if self._request_count != parsed:
            self._head_due = None
            self._track_body(now)
        elif between and data and self._head_due is None:
            self._expect_head(now)
        if self._body is not None:
            self._body_seen = now

    def _expect_head(self, now: float) -> None:
        self._head_due = now + self._deadlines.header_s
        self._schedule(self._head_due)

    def _track_body(self, now: float) -> None:
        if not self._messages:
            return  # the parser's refusal went to the body being read (fail_body)
        _, payload = self._messages[-1]
        if not payload.is_eof():
            self._body, self._body_seen = payload, now
            self._schedule(now + self._deadlines.body_idle_s)

    def _schedule(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return  # the earlier check reschedules itself as needed
            timer.cancel()
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        now = self._loop.time()
        if self._head_due is not None:
            if now >= self._head_due:
                self._cut(HEADER_TIMEOUT)
                return
            self._schedule(self._head_due)
        body = self._body
        if body is None:
            return
        if body.is_eof() or body.exception() is not None:
            self._body = None
            return
        if self._reading_paused or self._buffer_paused:
            # The proxy holds reading back: the client may be waiting for us.
            self._body_seen = now
        due = self._body_seen + self._deadlines.body_idle_s
        if now < due:
            self._schedule(due)
            return
        self._body = None
        silence = f"{self._deadlines.body_idle_s:g}"
        stalled = RequestTimeout(
            f"The request body stopped arriving: nothing came for {silence} seconds",
            detail=f"body idle for {silence} s",
        )
        if self.fail_body(body, stalled):
            self._on_cut(self._peer, BODY_IDLE_TIMEOUT)
        else:
            self._cut(BODY_IDLE_TIMEOUT)

    def _cut(self, reason: str) -> None:
        self._on_cut(self._peer, reason)
        if self.transport is not None:
            # A stalled peer is owed no orderly TLS close; abort frees the socket now.
            self.transport.abort()
        self.force_close()
