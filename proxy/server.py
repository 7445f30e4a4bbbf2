"""Process model: N worker processes, each with its own event loop, sharing the ports.

Every worker binds its own listening sockets with SO_REUSEPORT, so the kernel
spreads connections across workers. The parent only reserves the ports
(which makes ``:0`` work), starts the workers, writes the ready file once all
of them listen, forwards SIGINT/SIGTERM, and stops every worker if one dies:
a half-dead proxy is worse than a stopped one. Workers also stop if the parent
dies, even by SIGKILL, so no orphan keeps serving on the shared port. uvloop is used when installed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.app import AUDIT, build_admin_app, build_data_app, early_refusal
from proxy.config import Listen, Settings
from proxy.errors import ConfigError
from proxy.identity.svid import TrustBundles, server_ssl_context
from proxy.identity.tls_accept import TlsSite
from proxy.request.malformed import MalformedHttpHandler


def run(settings: Settings, *, workers: int = 1, ready_file: Path | None = None) -> int:
    if workers > 1 and settings.audit_path == "-":
        # Each worker has its own hash chain: on one stdout the chains would mix and
        # lines over PIPE_BUF could interleave, leaving a trail no one can verify.
        raise ConfigError(
            f'audit path "-" (stdout) cannot be shared by {workers} workers: '
            "set [audit] path to a file (each worker writes its own) or run one worker"
        )
    if workers > 1 and settings.task_store == "memory":
        # Each worker would keep its own tasks: a task opened through one is
        # unknown to the others, and max_calls is counted per worker.
        raise ConfigError(
            f'[tasks] store = "memory" keeps task state in one process, so {workers} workers '
            'cannot share it: set [tasks] store = "redis://HOST:6379/0" (or rediss:// for '
            "TLS), shared by every worker, or run one worker"
        )
    reserved = [_reserve(settings.data_listen), _reserve(settings.admin_listen)]
    ports = [sock.getsockname()[1] for sock in reserved]
    ready_read, ready_write = os.pipe()
    # The parent holds the lifeline's write end until it exits, however it exits
    # (even SIGKILL): workers stop at its EOF instead of serving on as orphans.
    lifeline_read, lifeline_write = os.pipe()
    children = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            os.close(lifeline_write)
            code = _worker(settings, ports, ready_write, lifeline_read, index)
            os._exit(code)
        children.append(pid)
    os.close(ready_write)
    os.close(lifeline_read)
    for sock in reserved:
        sock.close()
    try:
        return _supervise(children, ready_read, ports, ready_file)
    finally:
        os.close(lifeline_write)


def _reserve(listen: Listen) -> socket.socket:
    sock = _reuseport_socket(listen.host)
    sock.bind((listen.host, listen.port))
    return sock


def _reuseport_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _listening(host: str, port: int) -> socket.socket:
    sock = _reuseport_socket(host)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _worker(
    settings: Settings, ports: list[int], ready_write: int, lifeline: int, index: int
) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    try:
        _run_loop(_serve_worker(settings, ports, ready_write, lifeline, index))
    except Exception as exc:  # start-up failures: say why, exit non-zero
        print(f"bedrock-proxy worker {os.getpid()}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _run_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


async def _serve_worker(
    settings: Settings, ports: list[int], ready_write: int, lifeline: int, index: int
) -> None:
    bundles = TrustBundles.load(settings.trust_bundles)
    ssl_context = server_ssl_context(settings.server_cert, settings.server_key, bundles)
    # Each worker has its own audit file and hash chain (audit.log, audit-1.log, ...).
    data_app = build_data_app(settings, worker=index)
    # On SIGTERM in-flight streams get shutdown_grace_s to finish (and be audited).
    data_runner = web.AppRunner(
        data_app, handler_cancellation=True, shutdown_timeout=settings.shutdown_grace_s
    )
    admin_runner = web.AppRunner(build_admin_app(data_app))
    await data_runner.setup()
    await admin_runner.setup()
    # Start-up leaves ~1M long-lived objects (botocore models, policies, TLS):
    # freezing them keeps every full collection from rescanning them, and a
    # larger young generation makes collections rarer. Measured: p99 at 80 rps
    # from ~130 ms to ~30 ms, CPU per request unchanged (bench/README.md).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    listeners = [
        (data_runner, settings.data_listen.host, ports[0]),
        (admin_runner, settings.admin_listen.host, ports[1]),
    ]
    # Handshake failures (no, bad or untrusted client certificates) are audited.
    audit = data_app[AUDIT]
    loop = asyncio.get_running_loop()
    for runner, host, port in listeners:
        assert runner.server is not None
        # What aiohttp's HTTP parser refuses is answered and audited like every
        # other refusal of that listener (the runners set no handler options).
        handlers = partial(
            MalformedHttpHandler, runner.server, loop=loop, refuse=early_refusal(runner.app)
        )
        await TlsSite(
            runner,
            _listening(host, port),
            ssl_context=ssl_context,
            on_failure=audit.connection_failed,
            handler_factory=handlers,
        ).start()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_reader(lifeline, _parent_gone, loop, lifeline, stop)
    os.write(ready_write, b"r")
    os.close(ready_write)
    try:
        await stop.wait()
    finally:
        await data_runner.cleanup()
        await admin_runner.cleanup()


def _parent_gone(loop: asyncio.AbstractEventLoop, lifeline: int, stop: asyncio.Event) -> None:
    # Readable means EOF: nothing is ever written to the lifeline.
    loop.remove_reader(lifeline)
    print(
        f"bedrock-proxy worker {os.getpid()}: the parent process is gone, stopping",
        file=sys.stderr,
        flush=True,
    )
    stop.set()


def _supervise(
    children: list[int], ready_read: int, ports: list[int], ready_file: Path | None
) -> int:
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(children, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    ready = 0
    with os.fdopen(ready_read, "rb", buffering=0) as pipe:
        while ready < len(children) and pipe.read(1):
            ready += 1
    if ready == len(children) and ready_file is not None:
        _write_ready(ready_file, ports)
    status = 0 if ready == len(children) else 1
    remaining = set(children)
    while remaining:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        if not stopping:
            # One worker died on its own: stop the others rather than run degraded.
            status = 1
            stopping = True
            _signal_all(list(remaining), signal.SIGTERM)
        elif os.waitstatus_to_exitcode(code) not in (0, -signal.SIGTERM):
            status = 1
    return status


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _write_ready(path: Path, ports: list[int]) -> None:
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({"data_port": ports[0], "admin_port": ports[1], "pid": os.getpid()}))
    tmp.replace(path)
