"""The TLS accept loop on real sockets, under asyncio and uvloop: a refused
handshake reaches the client as OpenSSL's alert (not a bare close) and the
connection record names the reason."""

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

from proxy.identity import tls_accept
from proxy.identity.svid import TrustBundles, server_ssl_context
from proxy.identity.tls_accept import TlsSite
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


def serve_once(run: Runner, pki: Pki, client: Client) -> tuple[str, list[str]]:
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
    pki: Pki, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_accept, "HANDSHAKE_TIMEOUT_S", 0.5)
    answer, failures = serve_once(LOOPS[loop], pki, Client(pki.ca.cert, silent=True))
    assert (answer, failures) == ("silent", ["peer_did_not_return_a_certificate"])
