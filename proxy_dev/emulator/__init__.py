"""Local stand-in for AWS bedrock-runtime and STS, for tests and demos.

One process, two plain-HTTP listeners meant for loopback:

- STS: moto's server on a thread (``sts``), answering AssumeRole with real
  temporary credentials and recording every call;
- bedrock-runtime: an aiohttp app (``bedrock``) that verifies each SigV4
  signature against exactly those credentials, enforces their session policy,
  answers in bedrock's wire formats (event streams included, sent frame by
  frame), and takes injected faults from ``/_emulator/faults``. Given a
  certificate and key it is also served over TLS on a third listener (same
  app, same state), so a benchmark can call it with the TLS settings it uses
  for the proxy.

It is a test double, not a security boundary: the listeners are plain HTTP
and the control API is unauthenticated (loopback peers only). Its value is
that it refuses what AWS would refuse, so the proxy's signing, credential
handling and session-policy scoping are proven against something that says no.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiohttp import web

from proxy_dev.emulator.bedrock import EmulatorSettings, EmulatorState, build_app
from proxy_dev.emulator.faults import FaultQueue
from proxy_dev.emulator.sts import StsLedger, StsServer


def _url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """Server-only TLS (no client certificates): what bedrock-runtime's endpoint offers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


class Emulator:
    """A running emulator; ``close()`` stops both listeners."""

    def __init__(
        self,
        runner: web.AppRunner,
        sts: StsServer,
        state: EmulatorState,
        bedrock_url: str,
        sts_url: str,
        bedrock_tls_url: str | None = None,
    ) -> None:
        self._runner = runner
        self._sts = sts
        self.bedrock_url = bedrock_url
        self.sts_url = sts_url
        self.bedrock_tls_url = bedrock_tls_url

    async def close(self) -> None:
        try:
            await self._runner.cleanup()
        finally:
            # werkzeug's shutdown blocks until its poll loop notices; keep it off the loop.
            await asyncio.to_thread(self._sts.stop)


async def start_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    sts_port: int = 0,
    frame_delay_s: float = 0.02,
    frames: int = 8,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_port: int = 0,
) -> Emulator:
    """Start both listeners; with ``tls_cert``/``tls_key`` bedrock is also served over TLS.

    The TLS listener is an addition, not a replacement: the plain listener
    stays, so existing callers are unaffected, and a benchmark can give direct
    and proxied calls the same TLS settings.
    """
    if frame_delay_s < 0 or frames < 1:
        raise ValueError("frame_delay_s must be >= 0 and frames >= 1")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together")
    tls = None if tls_cert is None or tls_key is None else _server_tls(tls_cert, tls_key)
    faults = FaultQueue()
    ledger = StsLedger()
    state = EmulatorState(
        settings=EmulatorSettings(frame_delay_s=frame_delay_s, frames=frames),
        ledger=ledger,
        faults=faults,
    )
    sts = StsServer(host, sts_port, ledger, faults)
    sts.start()
    runner = web.AppRunner(build_app(state), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        if tls is not None:
            await web.TCPSite(runner, host, tls_port, ssl_context=tls).start()
    except BaseException:
        await runner.cleanup()
        await asyncio.to_thread(sts.stop)
        raise
    bound_port = int(runner.addresses[0][1])
    tls_url = None if tls is None else _url(host, int(runner.addresses[1][1]), "https")
    return Emulator(
        runner, sts, state, _url(host, bound_port), _url(host, sts.port), bedrock_tls_url=tls_url
    )


__all__ = ["Emulator", "start_emulator"]
