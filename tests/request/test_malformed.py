"""proxy.request.malformed: what aiohttp's parser refuses, as a refusal a person can act on.

The errors come from aiohttp's own request parsers (the C one the server uses
and the pure-Python one), fed the bytes a client would send; ``ZQX`` marks the
peer's bytes, which must never reach the message or the audit detail.
"""

from __future__ import annotations

import asyncio
import socket
import time
from functools import partial

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy

from proxy.errors import MalformedHttp, Outcome, ProxyError
from proxy.request.malformed import MalformedHttpHandler, malformed_http

PARSERS = {"c": HttpRequestParserC, "python": HttpRequestParserPy}
GET = b"GET / HTTP/1.1\r\nHost: a\r\n"
FRAMING = "Content-Length, or Transfer-Encoding: chunked"

# case -> (bytes sent, kind in the detail (either parser's, "|" between), words in the message)
CASES: dict[str, tuple[bytes, str, str]] = {
    "repeated Host": (GET + b"Host: ZQX\r\n\r\n", "duplicate_header", "The Host header appears"),
    "repeated Host, other case": (GET + b"hOsT: ZQX\r\n\r\n", "duplicate_header", "The Host"),
    "repeated Content-Type": (
        GET + b"Content-Type: a\r\nContent-Type: ZQX\r\nContent-Length: 0\r\n\r\n",
        "duplicate_header",
        "The Content-Type header appears more than once",
    ),
    "repeated Content-Length": (
        b"POST /ZQX HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "duplicate_header",
        "The Content-Length header appears more than once",
    ),
    "no Host": (b"GET /ZQX HTTP/1.1\r\n\r\n", "missing_host", "no Host header"),
    "request line without target": (b"GETZQX\r\nHost: a\r\n\r\n", "request_line", "METHOD /path"),
    "invalid method": (b"G@TZQX / HTTP/1.1\r\nHost: a\r\n\r\n", "request_line", "METHOD /path"),
    "invalid version": (b"GET /ZQX HTTP/9.x\r\nHost: a\r\n\r\n", "request_line", "HTTP/1.1"),
    "space in the target": (b"GET /a ZQX HTTP/1.1\r\nHost: a\r\n\r\n", "request_line", "path"),
    "bare LF": (b"GET /ZQX HTTP/1.1\nHost: a\n\n", "request_line|line_ending", "CRLF"),
    "TLS on the HTTP port": (b"\x16\x03\x01\x00ZQX\r\n\r\n", "request_line", "METHOD"),
    "request line too long": (
        b"GET /ZQX" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        "line_too_long",
        "longer than 8190 bytes",
    ),
    "header value too long": (
        GET + b"X-Long: ZQX" + b"a" * 9000 + b"\r\n\r\n",
        "line_too_long",
        "longer than 8190 bytes",
    ),
    "control character in a header name": (GET + b"X-ZQX\x01: v\r\n\r\n", "header", "a colon"),
    "NUL in a header value": (GET + b"X-Bad: ZQX\x00w\r\n\r\n", "header", "control characters"),
    "header line without a colon": (GET + b"ZQXNoColon\r\n\r\n", "header", "a colon"),
    "folded header line": (GET + b"X-A: b\r\n ZQX\r\n\r\n", "header", "no folded lines"),
    "too many headers": (
        GET + b"".join(b"X-ZQX%d: v\r\n" % i for i in range(200)) + b"\r\n",
        "too_many_headers",
        "more than 128 headers",
    ),
    "Content-Length not a number": (
        GET.replace(b"GET", b"POST") + b"Content-Length: ZQX\r\n\r\n",
        "body_framing",
        FRAMING,
    ),
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: ZQX\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "body_framing",
        FRAMING,
    ),
    "Transfer-Encoding not chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ZQX\r\n\r\n",
        "body_framing",
        FRAMING,
    ),
}


def parse(parser: str, data: bytes) -> HttpProcessingError:
    async def feed() -> HttpProcessingError:
        loop = asyncio.get_running_loop()
        request_parser = PARSERS[parser](
            BaseProtocol(loop),
            loop,
            2**16,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=128,
        )
        with pytest.raises(HttpProcessingError) as refused:
            request_parser.feed_data(data)
        return refused.value

    return asyncio.run(feed())


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_parser_refusal_says_what_to_fix_without_the_peers_bytes(
    parser: str, case: str
) -> None:
    data, kind, words = CASES[case]
    error = malformed_http(parse(parser, data), max_headers=128)
    assert isinstance(error, MalformedHttp)
    assert (error.status, error.error_type, error.code) == (
        400,
        "ValidationException",
        "malformed_http",
    )
    assert error.outcome is Outcome.INVALID_REQUEST
    assert words in error.message
    assert error.detail is not None and error.detail.split(":")[0] in kind.split("|")
    for text in (error.message, error.detail):
        assert "ZQX" not in text and "\\x" not in text
        assert len(text) <= 300


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        # llhttp's fixed reason is kept; what follows it quotes the peer.
        (
            "Invalid header value char:\n\n  b'X: \\x00'\n     ^",
            "header: Invalid header value char",
        ),
        (
            "Bad status line:\n  Invalid minor version:\n\n  b'...'",
            "malformed: Invalid minor version",
        ),
        # No llhttp layout, or not llhttp's words: nothing is copied.
        ("Invalid header value char", "header"),
        ("Got more than 10 bytes when reading: b'ZQX'.", "malformed"),
        ("<script>:\n\n  b'ZQX'", "malformed"),
        ("x" * 81 + ":\n\n  b'ZQX'", "malformed"),
    ],
)
def test_only_llhttps_own_reason_reaches_the_detail(text: str, detail: str) -> None:
    error = malformed_http(HttpProcessingError(code=400, message=text), max_headers=128)
    assert error.detail == detail


# --- broken framing inside a body ---------------------------------------------

CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _read_body(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.read()
    except ProxyError as error:  # as app.error_middleware answers it
        return web.Response(status=error.status, text=f"{error.code} {error.detail}")
    return web.Response(text=f"read {len(body)}")


def _serve(sends: list[bytes]) -> bytes:
    """A MalformedHttpHandler server; the client sends each of ``sends`` 0.2 s apart and
    reads until the server closes (at most 5 s: the client's own timeout)."""

    async def main() -> bytes:
        app = web.Application()
        app.router.add_post("/", _read_body)
        runner = web.AppRunner(app)
        await runner.setup()
        assert runner.server is not None
        loop = asyncio.get_running_loop()

        def refuse(peer: str | None, error: ProxyError) -> web.Response:
            return web.Response(status=error.status, text=f"refused {error.detail}")

        handlers = partial(MalformedHttpHandler, runner.server, loop=loop, refuse=refuse)
        server = await loop.create_server(handlers, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                for data in sends:
                    sock.sendall(data)
                    time.sleep(0.2)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                return answer

        try:
            return await asyncio.to_thread(client)
        finally:
            server.close()
            await runner.cleanup()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("sends", "refused"),
    [
        # The handler is reading when the broken chunk comes: its read raises the refusal.
        ([CHUNKED_HEAD + b"5\r\nhello\r\n", b"zz\r\nZQX\r\n"], b"malformed_http body_framing"),
        # The end of a chunk (which wakes the reader) and the broken one in one packet.
        ([CHUNKED_HEAD + b"5\r\nhello", b"\r\nzz\r\nZQX\r\n"], b"malformed_http body_framing"),
        # All in one packet: llhttp refuses the whole, before any request exists.
        ([CHUNKED_HEAD + b"5\r\nhello\r\nzz\r\nZQX\r\n"], b"refused body_framing"),
    ],
    ids=["while reading", "with the end of a chunk", "in one packet"],
)
def test_broken_framing_inside_a_body_is_refused_at_once(
    sends: list[bytes], refused: bytes
) -> None:
    started = time.monotonic()
    answer = _serve(sends)
    assert time.monotonic() - started < 4, "answered at once, not at the client's timeout"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 400 " in head.split(b"\r\n")[0]
    assert body.startswith(refused)
    assert answer.count(b"HTTP/1.") == 1, "one answer: the refusal is not queued as a request"
    assert b"ZQX" not in answer
