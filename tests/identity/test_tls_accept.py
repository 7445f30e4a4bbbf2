"""The TLS accept loop on real sockets, under asyncio and uvloop: a refused
handshake reaches the client as OpenSSL's alert (not a bare close) and the
connection record names the reason; past the gate's counts a connection is
reset at accept, and every connection gives its place back however it ends."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from proxy.identity.svid import TrustBundles, server_ssl_context
from proxy.identity.tls_accept import ConnectionGate, Slot, TlsSite, TooManyConnections
from tests import certs

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
LOOPS: dict[str, Runner] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@dataclass(frozen=True)
class Pki:
    root: Path
    ca: certs.CertPair
    server: certs.CertPair


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = certs.make_ca(tmp_path / "ca")
    return Pki(tmp_path, ca, certs.server_cert(ca.dir))


@dataclass(frozen=True)
class Client:
    """A blocking client: handshake, one request, read the answer."""

    ca: Path
    cert: certs.CertPair | None = None
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    silent: bool = False  # finish the handshake, then neither send nor read nor close

    def __call__(self, port: int) -> str:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.maximum_version = self.max_version
        if self.cert is not None:
            context.load_cert_chain(self.cert.cert, self.cert.key)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            try:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    if self.silent:
                        time.sleep(1.5)
                        return "silent"
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    return tls.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
            except ssl.SSLError as exc:
                return f"alert {exc.reason}"


def serve_once(
    run: Runner, pki: Pki, client: Client, handshake_timeout_s: float = 10.0
) -> tuple[str, list[str]]:
    """Serve one TlsSite on 127.0.0.1:0, run ``client`` against it; its answer and the
    handshake failures the site reported."""

    async def main() -> tuple[str, list[str]]:
        app = web.Application()
        app.router.add_get("/", _ok)
        runner = web.AppRunner(app)
        await runner.setup()
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        listening.setblocking(False)
        port = listening.getsockname()[1]
        failures: list[str] = []
        reported = asyncio.Event()

        def on_failure(peer: str | None, reason: str) -> None:
            failures.append(reason)
            reported.set()

        bundles = TrustBundles.load({certs.DEFAULT_TRUST_DOMAIN: pki.ca.cert})
        context = server_ssl_context(pki.server.cert, pki.server.key, bundles)
        site = TlsSite(
            runner,
            listening,
            ssl_context=context,
            on_failure=on_failure,
            handshake_timeout_s=handshake_timeout_s,
        )
        await site.start()
        try:
            answer = await asyncio.to_thread(client, port)
            if answer.startswith("alert"):
                await asyncio.wait_for(reported.wait(), 5)
            return answer, failures
        finally:
            await runner.cleanup()

    result: tuple[str, list[str]] = run(main())
    return result


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


# case -> (client, what the client reads, the reason the site reports)
REFUSED: dict[str, tuple[Callable[[Pki], Client], str, str]] = {
    "no certificate, TLS 1.3": (
        lambda p: Client(p.ca.cert),
        "alert TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "peer_did_not_return_a_certificate",
    ),
    "no certificate, TLS 1.2": (
        lambda p: Client(p.ca.cert, max_version=ssl.TLSVersion.TLSv1_2),
        "alert SSLV3_ALERT_HANDSHAKE_FAILURE",
        "peer_did_not_return_a_certificate",
    ),
    "unknown CA": (
        lambda p: Client(p.ca.cert, certs.svid_from_unknown_ca(p.root / "rogue")),
        "alert TLSV1_ALERT_UNKNOWN_CA",
        "certificate_verify_failed: unable to get local issuer certificate",
    ),
    "expired": (
        lambda p: Client(p.ca.cert, certs.expired_svid(p.ca.dir)),
        "alert SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "certificate_verify_failed: certificate has expired",
    ),
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_handshake_sends_the_alert(pki: Pki, loop: str, case: str) -> None:
    make, answer, reason = REFUSED[case]
    assert serve_once(LOOPS[loop], pki, make(pki)) == (answer, [reason])


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_valid_certificate_is_served(pki: Pki, loop: str) -> None:
    client = Client(pki.ca.cert, certs.good_svid(pki.ca.dir))
    assert serve_once(LOOPS[loop], pki, client) == ("HTTP/1.1 200 OK", [])


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_peer_that_ignores_the_alert_is_cut_at_the_timeout_with_the_real_reason(
    pki: Pki, loop: str
) -> None:
    client = Client(pki.ca.cert, silent=True)
    answer, failures = serve_once(LOOPS[loop], pki, client, handshake_timeout_s=0.5)
    assert (answer, failures) == ("silent", ["peer_did_not_return_a_certificate"])


def test_the_gate_refuses_past_the_total_and_past_one_peers_count() -> None:
    seen: list[int] = []
    gate = ConnectionGate(3, 2, observe=seen.append)
    first = gate.enter("10.0.0.1")
    gate.enter("10.0.0.1")
    with pytest.raises(TooManyConnections) as per_peer:
        gate.enter("10.0.0.1")
    assert per_peer.value.reason == "max_connections_per_peer"
    gate.enter("10.0.0.2")
    with pytest.raises(TooManyConnections) as total:
        gate.enter("10.0.0.3")
    assert total.value.reason == "max_connections"
    first.release()
    first.release()  # given back once, however often released
    assert gate.open == 2
    gate.enter("10.0.0.3")
    assert seen == [1, 2, 3, 2, 3]


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=200))
def test_the_gate_never_holds_more_than_its_counts_and_forgets_idle_peers(
    steps: list[tuple[bool, int]],
) -> None:
    gate = ConnectionGate(6, 2)
    held: list[tuple[int, Slot]] = []
    for enter, peer in steps:
        if enter:
            try:
                held.append((peer, gate.enter(f"10.0.0.{peer}")))
            except TooManyConnections:
                by_peer = sum(1 for p, _ in held if p == peer)
                assert len(held) == 6 or by_peer == 2
        elif held:
            held.pop(peer % len(held))[1].release()
        assert gate.open == len(held) <= 6
        assert all(sum(1 for p, _ in held if p == q) <= 2 for q in range(6))
    for _, slot in held:
        slot.release()
    assert gate.open == 0
    assert gate._per_peer == {}


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _handshake(pki: Pki, raw: socket.socket, cert: certs.CertPair | None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    tls: ssl.SSLSocket | None = None
    try:
        tls = context.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 200 OK")
    except BaseException:
        (tls or raw).close()
        raise
    return tls


def _is_reset(raw: socket.socket) -> bool:
    try:
        return raw.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize(
    ("max_total", "max_per_peer", "reason"),
    [(1, 1, "max_connections"), (5, 1, "max_connections_per_peer")],
)
def test_past_a_count_a_connection_is_reset_at_accept_and_reported(
    pki: Pki, loop: str, max_total: int, max_per_peer: int, reason: str
) -> None:
    svid = certs.good_svid(pki.ca.dir)

    async def main() -> tuple[list[str], int]:
        gate = ConnectionGate(max_total, max_per_peer)
        failures: list[str] = []
        runner, port = await _site(pki, gate, lambda peer, why: failures.append(why))
        try:

            def clients() -> None:
                held = _handshake(pki, _connect(port), svid)
                refused = _connect(port)
                assert _is_reset(refused), "closed before any TLS"
                refused.close()
                held.close()
                deadline = time.monotonic() + 5
                while gate.open and time.monotonic() < deadline:
                    time.sleep(0.01)
                # The place came back when the connection ended: the next one is served.
                _handshake(pki, _connect(port), svid).close()

            await asyncio.to_thread(clients)
            return failures, gate.open
        finally:
            await runner.cleanup()

    failures, _ = LOOPS[loop](main())
    assert failures == [reason]


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_failed_or_timed_out_handshake_gives_its_place_back(pki: Pki, loop: str) -> None:
    async def main() -> tuple[list[str], int]:
        gate = ConnectionGate(1, 1)
        failures: list[str] = []
        runner, port = await _site(
            pki, gate, lambda peer, why: failures.append(why), handshake_timeout_s=0.3
        )
        try:

            def clients() -> None:
                with pytest.raises(ssl.SSLError):
                    _handshake(pki, _connect(port), None)  # no certificate: the alert
                with _connect(port) as silent:  # never says hello: the handshake timeout
                    assert _is_reset(silent)
                _handshake(pki, _connect(port), certs.good_svid(pki.ca.dir)).close()
                deadline = time.monotonic() + 5
                while gate.open and time.monotonic() < deadline:
                    time.sleep(0.01)

            await asyncio.to_thread(clients)
            return failures, gate.open
        finally:
            await runner.cleanup()

    failures, still_open = LOOPS[loop](main())
    assert failures == ["peer_did_not_return_a_certificate", "handshake_timeout"]
    assert still_open == 0


async def _site(
    pki: Pki,
    gate: ConnectionGate,
    on_failure: Callable[[str | None, str], None],
    handshake_timeout_s: float = 10.0,
) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app)
    await runner.setup()
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    listening.setblocking(False)
    bundles = TrustBundles.load({certs.DEFAULT_TRUST_DOMAIN: pki.ca.cert})
    await TlsSite(
        runner,
        listening,
        ssl_context=server_ssl_context(pki.server.cert, pki.server.key, bundles),
        on_failure=on_failure,
        handshake_timeout_s=handshake_timeout_s,
        gate=gate,
    ).start()
    return runner, listening.getsockname()[1]
