"""proxy.request.deadlines on real sockets, under asyncio and uvloop: a request head
that does not finish in time and a body that stops arriving are cut and reported;
a slow but steady client, a keep-alive pause and the proxy's own flow control are not.

Deadlines are fractions of a second; every client socket has a 5 s timeout, so a
deadline that never fires fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import pytest
import uvloop
from aiohttp import web

from proxy.errors import ProxyError
from proxy.request.deadlines import BODY_IDLE_TIMEOUT, HEADER_TIMEOUT, DeadlineHandler, Deadlines

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
LOOPS: dict[str, Runner] = {"asyncio": asyncio.run, "uvloop": uvloop.run}
DEADLINES = Deadlines(header_s=0.4, body_idle_s=0.4)
HEAD = b"POST /read HTTP/1.1\r\nHost: a\r\n"


async def _read(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.read()
    except ProxyError as error:  # as app.error_middleware answers it
        return web.Response(status=error.status, text=error.code)
    return web.Response(text=f"read {len(body)}")


async def _late(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(1.0)  # the proxy busy elsewhere: the body waits in flow control
    return await _read(request)


async def _refuse(request: web.Request) -> web.StreamResponse:
    return web.Response(status=403, text="refused before the body")


def _unused_refuse(peer: str | None, error: ProxyError) -> web.Response:
    raise AssertionError(f"the parser refused a well-formed request: {error.detail}")


def serve(loop: str, client: Callable[[int], Any]) -> tuple[Any, list[str]]:
    """Run ``client(port)`` in a thread against a DeadlineHandler server; its result and
    the reasons of the cuts reported."""

    async def main() -> tuple[Any, list[str]]:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/read", _read)
        app.router.add_post("/late", _late)
        app.router.add_post("/refuse", _refuse)
        runner = web.AppRunner(app)
        await runner.setup()
        assert runner.server is not None
        cuts: list[str] = []
        running = asyncio.get_running_loop()
        handlers = partial(
            DeadlineHandler,
            runner.server,
            loop=running,
            refuse=_unused_refuse,
            deadlines=DEADLINES,
            on_cut=lambda peer, reason: cuts.append(reason),
            keepalive_timeout=5.0,
        )
        server = await running.create_server(handlers, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(client, port), cuts
        finally:
            server.close()
            await runner.cleanup()

    result: tuple[Any, list[str]] = LOOPS[loop](main())
    return result


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


CUT_BEFORE_A_HEAD: dict[str, Callable[[socket.socket], None]] = {
    "nothing sent": lambda sock: None,
    "half the headers": lambda sock: sock.sendall(HEAD),
    "a byte at a time, never the end": lambda sock: _trickle(sock, HEAD + b"X-Slow: " + b"a" * 40),
}


def _trickle(sock: socket.socket, data: bytes) -> None:
    for index in range(len(data)):
        try:
            sock.send(data[index : index + 1])
        except OSError:
            return  # cut while still sending: what the test waits for
        time.sleep(0.05)


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("case", sorted(CUT_BEFORE_A_HEAD))
def test_a_head_that_does_not_finish_in_time_is_cut(loop: str, case: str) -> None:
    def client(port: int) -> tuple[bytes, float]:
        with _connect(port) as sock:
            started = time.monotonic()
            CUT_BEFORE_A_HEAD[case](sock)
            return _until_closed(sock), time.monotonic() - started

    (answer, took), cuts = serve(loop, client)
    assert (answer, cuts) == (b"", [HEADER_TIMEOUT])
    assert took < 4.0, "cut at the deadline, not at the client's timeout"


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_body_that_stops_is_answered_408_and_the_connection_closed(loop: str) -> None:
    def client(port: int) -> bytes:
        with _connect(port) as sock:
            sock.sendall(HEAD + b"Content-Length: 10\r\n\r\nabc")
            return _until_closed(sock)

    answer, cuts = serve(loop, client)
    assert _status(answer) == 408 and answer.endswith(b"request_timeout")
    assert b"Connection: close" in answer
    assert cuts == [BODY_IDLE_TIMEOUT]


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_body_stalled_after_the_answer_is_cut(loop: str) -> None:
    def client(port: int) -> bytes:
        with _connect(port) as sock:
            sock.sendall(b"POST /refuse HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
            return _until_closed(sock)

    answer, cuts = serve(loop, client)
    assert _status(answer) == 403
    assert cuts == [BODY_IDLE_TIMEOUT], "aiohttp drains the rest; a silence ends that too"


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_slow_but_steady_body_and_a_keepalive_pause_are_served(loop: str) -> None:
    def client(port: int) -> list[bytes]:
        answers = []
        with _connect(port) as sock:
            body = b"x" * 16
            sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body))
            _trickle(sock, body)  # 0.8 s in all, never 0.4 s of silence
            answers.append(sock.recv(65536))
            time.sleep(0.8)  # between requests: keep-alive's time, not the head's
            sock.sendall(HEAD + b"Content-Length: 2\r\n\r\nok")
            answers.append(sock.recv(65536))
        return answers

    answers, cuts = serve(loop, client)
    assert [_status(a) for a in answers] == [200, 200]
    assert answers[0].endswith(b"read 16") and answers[1].endswith(b"read 2")
    assert cuts == []


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_the_proxy_holding_reading_back_is_not_the_clients_silence(loop: str) -> None:
    body = b"y" * (4 * 1024 * 1024)

    def client(port: int) -> bytes:
        with _connect(port) as sock:
            # The handler waits 1 s before it reads: past the buffer, reading pauses.
            sock.sendall(
                b"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            sock.sendall(body)
            return sock.recv(65536)

    answer, cuts = serve(loop, client)
    assert _status(answer) == 200 and answer.endswith(b"read %d" % len(body))
    assert cuts == []
