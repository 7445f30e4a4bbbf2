"""TLS termination that knows when a handshake fails.

asyncio and uvloop report a failed server-side TLS handshake only in debug
logging and never to the application, so a flood of bad or missing client
certificates would leave no trace for the SOC. Here the site runs its own
accept loop: each accepted socket (peer address known) is handed to
``loop.connect_accepted_socket`` with the TLS context, which returns once the
handshake is done or raises why it failed; a failure is reported with the
peer and a reason, a success is served by aiohttp's request handler as usual.

A failed handshake also answers the client with OpenSSL's alert (TLS 1.3
``certificate_required`` for a missing certificate, ``unknown_ca``,
``certificate_expired``, ...), so SDKs say why instead of "EOF" or "server
disconnected". asyncio and uvloop drop that alert: when ``do_handshake``
fails they close the socket without flushing what OpenSSL queued for the
peer (CPython gh-98078). ``AlertingSSLObject`` (the context's
``sslobject_class``) therefore holds the failure back once, answering "want
read", which makes the transport send the queued alert; the next handshake
step (the peer's next bytes, its close, or the handshake timeout) ends the
connection, and the failure it records is the one reported.

The loop also holds the line on how many connections a listener has: a
``ConnectionGate`` counts them, in all and per peer address, from accept
(handshakes in progress included, since those are what an anonymous flood
is made of) until the connection ends. Past either count a new connection is
closed at once, before any TLS work, and reported like a failed handshake
(``max_connections``, ``max_connections_per_peer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from aiohttp import web

HANDSHAKE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = "max_connections"
MAX_CONNECTIONS_PER_PEER = "max_connections_per_peer"

FailureReporter = Callable[[str | None, str], None]


def handshake_failure_reason(exc: BaseException) -> str:
    """A short, stable reason from OpenSSL's words; never the peer's bytes."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate_verify_failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or "ssl_error").lower()
    if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
        return "handshake_timeout"
    if isinstance(exc, ConnectionError):
        return "connection_closed_during_handshake"
    return type(exc).__name__


class _Handshake:
    """What the SSL object inside one connection's transport saw go wrong."""

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: ssl.SSLError | None = None


# Set by the accept loop's task for each connection; the transport's callbacks
# run in copies of that task's context (asyncio and uvloop alike).
_HANDSHAKE: ContextVar[_Handshake | None] = ContextVar("tls_handshake", default=None)


class AlertingSSLObject(ssl.SSLObject):
    """An SSLObject whose failed handshake lets the transport send the alert first."""

    _failure: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError):
            raise
        except ssl.SSLError as exc:
            handshake = _HANDSHAKE.get()
            if handshake is None:
                raise
            self._failure = handshake.failure = exc
            # "Want read" makes asyncio/uvloop flush OpenSSL's queued output
            # (the alert) before waiting; a fatal error would drop it.
            raise ssl.SSLWantReadError("handshake failed; alert queued for the peer") from exc


class TooManyConnections(Exception):
    """A connection the gate refuses; ``reason`` names the count it would exceed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionGate:
    """The connections one listener of this worker holds, in all and per peer address.

    Bookkeeping only, no I/O. Per-peer entries exist only while that peer has
    a connection open, so the table is never larger than ``max_total``.
    """

    def __init__(
        self,
        max_total: int,
        max_per_peer: int,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self._max_total, self._max_per_peer = max_total, max_per_peer
        self._observe = observe
        self._open = 0
        self._per_peer: dict[str, int] = {}

    @property
    def open(self) -> int:
        return self._open

    def enter(self, host: str) -> Slot:
        """A slot for one more connection from ``host``; TooManyConnections past a count."""
        if self._open >= self._max_total:
            raise TooManyConnections(MAX_CONNECTIONS)
        held = self._per_peer.get(host, 0)
        if held >= self._max_per_peer:
            raise TooManyConnections(MAX_CONNECTIONS_PER_PEER)
        self._per_peer[host] = held + 1
        self._changed(+1)
        return Slot(self, host)

    def _leave(self, host: str) -> None:
        held = self._per_peer[host] - 1
        if held:
            self._per_peer[host] = held
        else:
            del self._per_peer[host]
        self._changed(-1)

    def _changed(self, delta: int) -> None:
        self._open += delta
        if self._observe is not None:
            self._observe(self._open)


class Slot:
    """One connection's place in its gate; ``release`` gives it back, once."""

    __slots__ = ("_gate", "_host")

    def __init__(self, gate: ConnectionGate, host: str) -> None:
        self._gate: ConnectionGate | None = gate
        self._host = host

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._leave(self._host)


class _Held(asyncio.Protocol):
    """A connection's own protocol, with its slot given back when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, slot: Slot) -> None:
        self._inner, self._slot = inner, slot

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._slot.release()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class TlsSite(web.BaseSite):
    """Like aiohttp's SockSite, with the handshake done where its outcome is seen."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext,
        on_failure: FailureReporter,
        handler_factory: Callable[[], asyncio.BaseProtocol] | None = None,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        gate: ConnectionGate | None = None,
    ) -> None:
        super().__init__(runner)
        self._sock = sock
        ssl_context.sslobject_class = AlertingSSLObject
        self._tls = ssl_context
        self._on_failure = on_failure
        self._handler_factory = handler_factory
        self._handshake_timeout_s = handshake_timeout_s
        # Without one: counted, never refused.
        self._gate = gate or ConnectionGate(sys.maxsize, sys.maxsize)
        host, port = sock.getsockname()[:2]
        self._name = f"https://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        # Default: the runner's own aiohttp request handlers.
        handler_factory = self._handler_factory or self._runner.server
        assert handler_factory is not None
        accept_loop = _AcceptLoop(
            self._sock,
            handler_factory,
            self._tls,
            self._on_failure,
            self._handshake_timeout_s,
            self._gate,
        )
        accept_loop.start()
        self._server = accept_loop  # type: ignore[assignment]  # BaseSite only calls close()


class _AcceptLoop:
    def __init__(
        self,
        sock: socket.socket,
        handler_factory: Callable[[], asyncio.BaseProtocol],
        tls: ssl.SSLContext,
        on_failure: FailureReporter,
        handshake_timeout_s: float,
        gate: ConnectionGate,
    ) -> None:
        self._sock = sock
        self._handler_factory = handler_factory
        self._tls = tls
        self._on_failure = on_failure
        self._handshake_timeout_s = handshake_timeout_s
        self._gate = gate
        self._task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for handshake in self._handshakes:
            handshake.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, address = await loop.sock_accept(self._sock)
            except OSError:
                # EMFILE and friends: back off instead of spinning.
                await asyncio.sleep(0.1)
                continue
            slot = self._admit(connection, address)
            if slot is None:
                continue
            handshake = loop.create_task(self._handshake(connection, address, slot))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshakes.discard)

    def _admit(self, connection: socket.socket, address: Any) -> Slot | None:
        host = address[0] if isinstance(address, tuple) and address else ""
        try:
            return self._gate.enter(str(host))
        except TooManyConnections as refused:
            # A reset, not a FIN: no TIME_WAIT left on our side for each refused connection.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()
            self._on_failure(_peer(address), refused.reason)
            return None

    async def _handshake(self, connection: socket.socket, address: Any, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        handshake = _Handshake()
        _HANDSHAKE.set(handshake)
        served = False
        try:
            await loop.connect_accepted_socket(
                lambda: _Held(self._protocol(), slot),
                connection,
                ssl=self._tls,
                ssl_handshake_timeout=self._handshake_timeout_s,
            )
            served = True
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            connection.close()
            # After the alert the peer usually just closes: report why it was sent.
            reason = handshake_failure_reason(handshake.failure or exc)
            self._on_failure(_peer(address), reason)
        finally:
            if not served:
                slot.release()  # no connection was made, so none will be lost

    def _protocol(self) -> asyncio.Protocol:
        protocol = self._handler_factory()
        assert isinstance(protocol, asyncio.Protocol), "a stream protocol serves HTTP"
        return protocol


def _peer(address: Any) -> str | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None
