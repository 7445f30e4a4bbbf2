"""Requests aiohttp's HTTP/1.1 parser refuses, answered like every other refusal.

aiohttp answers a request it cannot parse (a malformed request line, a line
too long, a header with characters HTTP forbids, a repeated Host or
Content-Length, broken body framing) from its request handler, before any
application code runs: in plain text that quotes the peer's bytes, and with
no audit record. ``MalformedHttpHandler`` takes over the one hook aiohttp
gives for that, ``RequestHandler.handle_error``, for parser errors only, and
hands a ``MalformedHttp`` to the ``refuse`` callable it was built with
(``app.early_refusal``: the AWS-shaped answer and the terminal ``denied``
record of every other refusal). The connection is closed after the answer:
the parser has lost its place in the stream.

``malformed_http`` is pure. The caller's message is chosen by the kind of
error and says what to fix; it never copies the parser's text, which quotes
the peer's bytes. The audit ``detail`` holds the kind and, where the error
carries it, llhttp's own fixed reason (``Invalid header value char``).

Broken framing inside a body that a handler is already reading (a bad chunk
size half-way through a chunked body) is refused the same way, through that
body: aiohttp's C parser queues the error as if it were the next request and
never ends the body, so the handler would wait for the rest of it until the
client gave up. ``fail_body`` hands the refusal to the body instead (the
handler's next read raises it), parses nothing more of the connection and
closes it after that answer.

Not rate-limited like handshake failures: the parser only runs after a
successful mTLS handshake, and each refusal closes the connection, so every
record costs the peer a handshake with a trusted certificate; well-formed
requests that are refused write denied records at least as cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import _ErrInfo
from aiohttp.web_request import BaseRequest

from proxy.errors import MalformedHttp, ProxyError

Refuse = Callable[[str | None, ProxyError], web.StreamResponse]

# aiohttp's RFC 9110 singleton headers, spelled for a message.
_SINGLETONS = {
    name.lower(): name
    for name in (
        "Content-Length",
        "Content-Location",
        "Content-Range",
        "Content-Type",
        "ETag",
        "Host",
        "Max-Forwards",
        "Server",
        "Transfer-Encoding",
        "User-Agent",
    )
}
# llhttp's reasons are fixed strings; anything else is not copied.
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9 '`,/-]{0,79}")

_REQUEST_LINE = (
    "The request line is malformed: send METHOD /path HTTP/1.1 with a valid method and "
    "path, ended by CRLF"
)
_HEADER = (
    "A header line is malformed: a name of letters, digits and !#$%&'*+-.^_`|~, a colon, "
    "a value without control characters, and CRLF at the end (no folded lines)"
)
_FRAMING_WORDS = ("Content-Length", "Transfer-Encoding", "chunk")
_FRAMING = (
    "The request body framing is invalid: send one numeric Content-Length, or "
    "Transfer-Encoding: chunked with well-formed chunks, never both"
)


def malformed_http(exc: HttpProcessingError, *, max_headers: int) -> MalformedHttp:
    """The refusal for a parser error: a message that says what to fix, never the peer's bytes."""
    text = exc.message if isinstance(exc.message, str) else ""
    reason = _llhttp_reason(text)
    kind, message = _kind(exc, text, reason, max_headers)
    return MalformedHttp(message, detail=kind if reason is None else f"{kind}: {reason}")


def _kind(
    exc: HttpProcessingError, text: str, reason: str | None, max_headers: int
) -> tuple[str, str]:
    if isinstance(exc, LineTooLong):
        limit = exc.args[1]  # (line, limit, actual size)
        bound = f"{limit} bytes" if isinstance(limit, int) else "the limit"
        return "line_too_long", f"The request line or a header line is longer than {bound}"
    if reason == "Duplicate Content-Length":
        return "duplicate_header", _repeated("Content-Length")
    if text.startswith("Duplicate '"):
        # aiohttp's "Duplicate '<name>' header found.": the name is one of its singletons.
        return "duplicate_header", _repeated(_SINGLETONS.get(text.split("'")[1].lower()))
    if text.startswith("Missing 'Host'"):
        return "missing_host", "The request has no Host header, which HTTP/1.1 requires"
    if text == "Too many headers received":
        return "too_many_headers", f"The request has more than {max_headers} headers"
    if isinstance(exc, BadStatusLine | InvalidURLError):
        return "request_line", _REQUEST_LINE
    # Only picks one of the fixed messages: the text itself is never copied.
    hint = reason or text
    if isinstance(exc, PayloadEncodingError) or any(w in hint for w in _FRAMING_WORDS):
        return "body_framing", _FRAMING
    if "CRLF" in hint:
        return "line_ending", "Every line of the request head must end with CRLF, not a bare LF"
    if isinstance(exc, InvalidHeader) or "header" in hint.lower():
        return "header", _HEADER
    return "malformed", "The request is not valid HTTP/1.1"


def _repeated(name: str | None) -> str:
    header = f"The {name} header" if name else "A header"
    return f"{header} appears more than once; send it once"


def _llhttp_reason(text: str) -> str | None:
    # llhttp errors read "<reason>:\n\n  <the peer's bytes>\n  <pointer>", some
    # behind aiohttp's "Bad status line:\n"; only the reason is kept.
    head, sep, _ = text.removeprefix("Bad status line:\n").partition(":\n\n")
    reason = head.strip()
    return reason if sep and _REASON.fullmatch(reason) else None


class MalformedHttpHandler(web.RequestHandler):
    """aiohttp's request handler, with what its parser refuses answered by ``refuse``."""

    def __init__(self, manager: web.Server, *, refuse: Refuse, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._refuse = refuse
        # The body ended with an error for its handler to answer; nothing after it is parsed.
        self._failed_body: StreamReader | None = None

    def data_received(self, data: bytes) -> None:
        if self._failed_body is not None:
            return
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            message, _ = self._messages[-1]
            if isinstance(message, _ErrInfo) and isinstance(message.exc, HttpProcessingError):
                # The parser gave up inside a body: the error is that body's, not a request.
                refusal = malformed_http(message.exc, max_headers=self.max_headers)
                if self.fail_body(self._unfinished_body(), refusal):
                    self._messages.pop()

    def _unfinished_body(self) -> StreamReader | None:
        if len(self._messages) >= 2:
            return self._messages[-2][1]  # the request parsed just before, not yet handled
        request = self._current_request
        return None if request is None else request.content

    def fail_body(self, body: StreamReader | None, error: ProxyError) -> bool:
        """End ``body``, unfinished and to be read by a handler (running or queued), with
        ``error``: the handler's next read raises it, and the connection closes once that
        request is answered. False when no handler will read it."""
        if body is None or body.is_eof() or self._failed_body is not None:
            return False
        handled = self._current_request is not None and self._current_request.content is body
        if not handled and not any(payload is body for _, payload in self._messages):
            return False
        body.set_exception(error)
        # Once more after the reader's wake-up that these same bytes may have queued (the
        # end of a chunk): aiohttp's read() waits again without looking at the error.
        self._loop.call_soon(body.set_exception, error)
        self._failed_body = body
        return True

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        failed = self._failed_body is not None and request.content is self._failed_body
        if failed:
            resp.force_close()
        answered = await super().finish_response(request, resp, start_time)
        if failed:
            # Now, not after aiohttp's read of the rest of the body: that would raise again.
            self.force_close()
        return answered

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        response = self._refuse(request.remote, malformed_http(exc, max_headers=self.max_headers))
        response.force_close()
        return response
