"""Process model: N worker processes, each with its own event loop, sharing the ports.

Every worker binds its own listening sockets with SO_REUSEPORT, so the kernel
spreads connections across workers. The parent only reserves the ports
(which makes ``:0`` work, and keeps them while any worker restarts), starts
the workers, writes the ready file once all of them listen and forwards
SIGINT/SIGTERM. A worker that dies on its own after start-up (a crash, the
OOM killer) is logged, counted (``bedrock_proxy_worker_deaths_total``) and
started again in its place, with the same index and so the same audit file,
whose chain it resumes; meanwhile the kernel gives new connections to the
workers still listening. Restarts back off (``RestartBackoff``), so a worker
that keeps dying cannot spin the CPU. A worker that fails to start stops
them all: that is a configuration or environment error, which a restart
does not fix. Workers also stop if the parent dies, even by SIGKILL, so no
orphan keeps serving on the shared port. uvloop is used when installed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.app import AUDIT, METRICS, build_admin_app, build_data_app, early_refusal
from proxy.config import ConnectionSettings, Listen, Settings
from proxy.errors import ConfigError
from proxy.identity.svid import TrustBundles, server_ssl_context
from proxy.identity.tls_accept import ConnectionGate, TlsSite
from proxy.metrics import SupervisorMetrics
from proxy.request.deadlines import CutReporter, DeadlineHandler, Deadlines


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
    _raise_open_files_limit(settings)
    reserved = [_reserve(settings.data_listen), _reserve(settings.admin_listen)]
    ports = [sock.getsockname()[1] for sock in reserved]
    ready_read, ready_write = os.pipe()
    # The parent holds the lifeline's write end until it exits, however it exits
    # (even SIGKILL): workers stop at its EOF instead of serving on as orphans. It
    # keeps the read end too, for the workers it restarts.
    lifeline_read, lifeline_write = os.pipe()

    def spawn(index: int, ready: int | None) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(lifeline_write)
                if ready is not None:
                    # Only while the parent still holds it: later the number may be reused.
                    os.close(ready_read)
                code = _worker(settings, ports, ready, lifeline_read, index)
            finally:
                os._exit(code)
        return pid

    supervisor = _Supervisor(spawn, SupervisorMetrics())
    try:
        for index in range(workers):
            supervisor.started(spawn(index, ready_write), index)
        os.close(ready_write)
        return supervisor.run(ready_read, ports, ready_file)
    finally:
        os.close(lifeline_write)
        os.close(lifeline_read)
        for sock in reserved:
            sock.close()


def _raise_open_files_limit(settings: Settings) -> None:
    """Open files up to the hard limit: the connection counts are ours to refuse at, not
    EMFILE's (a worker at EMFILE can accept nothing, not even an admin's scrape)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass  # an unlimited hard limit the kernel does not take: keep the soft one
    # Both listeners, the upstream pool, and room for OPA, Redis, the audit log, ...
    needed = 2 * settings.connections.max_connections + settings.upstream_max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(
            f"bedrock-proxy: warning: at most {soft} open files per process (RLIMIT_NOFILE), "
            f"fewer than the {needed} that [connections] max_connections and [upstream] "
            "max_connections may need; past it new connections wait",
            file=sys.stderr,
            flush=True,
        )


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
    settings: Settings, ports: list[int], ready_write: int | None, lifeline: int, index: int
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
    settings: Settings, ports: list[int], ready_write: int | None, lifeline: int, index: int
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
        ("data", data_runner, settings.data_listen.host, ports[0]),
        ("admin", admin_runner, settings.admin_listen.host, ports[1]),
    ]
    audit, metrics = data_app[AUDIT], data_app[METRICS]

    def connection_cut(peer: str | None, reason: str) -> None:
        # Refused, failed in the handshake, or cut: counted, and recorded at a bounded rate.
        metrics.connection_cut(reason)
        audit.connection_failed(peer, reason)

    for name, runner, host, port in listeners:
        await _site(
            runner,
            _listening(host, port),
            limits=settings.connections,
            ssl_context=ssl_context,
            on_cut=connection_cut,
            observe_open=metrics.connections_open.labels(name).set,
        ).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_reader(lifeline, _parent_gone, loop, lifeline, stop)
    if ready_write is not None:
        os.write(ready_write, b"r")
        os.close(ready_write)
    try:
        await stop.wait()
    finally:
        await data_runner.cleanup()
        await admin_runner.cleanup()


def _site(
    runner: web.AppRunner,
    sock: socket.socket,
    *,
    limits: ConnectionSettings,
    ssl_context: ssl.SSLContext,
    on_cut: CutReporter,
    observe_open: Callable[[int], None],
) -> TlsSite:
    """A listener's TlsSite with every [connections] limit and deadline applied."""
    assert runner.server is not None
    # What aiohttp's HTTP parser refuses is answered and audited like every other
    # refusal of that listener. The handlers are built here, not by the runner, so
    # every handler option is passed here.
    handlers = partial(
        DeadlineHandler,
        runner.server,
        loop=asyncio.get_running_loop(),
        refuse=early_refusal(runner.app),
        deadlines=Deadlines(limits.header_timeout_s, limits.body_idle_timeout_s),
        on_cut=on_cut,
        keepalive_timeout=limits.keepalive_timeout_s,
        max_line_size=limits.max_request_line_bytes,
        max_field_size=limits.max_header_line_bytes,
        max_headers=limits.max_headers,
    )
    return TlsSite(
        runner,
        sock,
        ssl_context=ssl_context,
        on_failure=on_cut,
        handler_factory=handlers,
        handshake_timeout_s=limits.handshake_timeout_s,
        # Each listener has its own counts: a flood on one leaves the other be.
        gate=ConnectionGate(
            limits.max_connections, limits.max_connections_per_peer, observe=observe_open
        ),
    )


def _parent_gone(loop: asyncio.AbstractEventLoop, lifeline: int, stop: asyncio.Event) -> None:
    # Readable means EOF: nothing is ever written to the lifeline.
    loop.remove_reader(lifeline)
    print(
        f"bedrock-proxy worker {os.getpid()}: the parent process is gone, stopping",
        file=sys.stderr,
        flush=True,
    )
    stop.set()


@dataclass
class RestartBackoff:
    """How long to wait before a dead worker is started again.

    ``base_s`` after a worker that had run for ``stable_s``; doubled for each
    death that follows a shorter run, up to ``max_s``. A worker that crashes
    at once therefore costs a fork every ``max_s`` at most, not a busy loop.
    """

    base_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 60.0
    _quick_deaths: dict[int, int] = field(default_factory=dict)

    def delay(self, index: int, ran_s: float) -> float:
        quick = 0 if ran_s >= self.stable_s else self._quick_deaths.get(index, 0) + 1
        self._quick_deaths[index] = quick
        return min(self.max_s, self.base_s * 2**quick)


class _Supervisor:
    """The parent's loop: wait for workers, restart those that die, stop on a signal."""

    def __init__(
        self,
        spawn: Callable[[int, int | None], int],
        metrics: SupervisorMetrics,
        backoff: RestartBackoff | None = None,
    ) -> None:
        self._spawn = spawn
        self._metrics = metrics
        self._backoff = backoff or RestartBackoff()
        self._children: dict[int, tuple[int, float]] = {}  # pid -> (index, started at)
        self._due: dict[int, float] = {}  # index -> when it is started again
        self._stopping = False
        self._status = 0

    def started(self, pid: int, index: int) -> None:
        self._children[pid] = (index, time.monotonic())

    def run(self, ready_read: int, ports: list[int], ready_file: Path | None) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        expected = len(self._children)
        ready = 0
        with os.fdopen(ready_read, "rb", buffering=0) as pipe:
            while ready < expected and pipe.read(1):
                ready += 1
        if ready == expected:
            if ready_file is not None:
                _write_ready(ready_file, ports)
        else:
            # A worker could not start: a restart would fail the same way.
            self._status = 1
            self._stop(signal.SIGTERM, None)
        while self._children or (self._due and not self._stopping):
            waited = self._wait()
            if waited is not None:
                self._ended(*waited)
            self._restart_due()
        return self._status

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True
        self._due.clear()
        _signal_all(list(self._children), signal.SIGTERM)

    def _wait(self) -> tuple[int, int] | None:
        """The next worker that ended and its wait status; None when a restart is due first."""
        if not self._due or self._stopping:
            try:
                return os.wait()
            except ChildProcessError:
                self._children.clear()
                return None
        # A restart is pending: poll, so that it happens on time and a signal is seen.
        deadline = min(self._due.values(), default=0.0)  # a signal may just have cleared it
        while time.monotonic() < deadline and not self._stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid:
                return pid, status
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return None

    def _ended(self, pid: int, status: int) -> None:
        if pid not in self._children:
            return
        index, started_at = self._children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if self._stopping:
            if code not in (0, -signal.SIGTERM):
                self._status = 1
            return
        ran_s = time.monotonic() - started_at
        cause = _cause(code)
        delay = self._backoff.delay(index, ran_s)
        self._metrics.worker_died(pid, cause)
        print(
            f"bedrock-proxy: worker {index} (pid {pid}) died ({cause}) after {ran_s:.1f} s; "
            f"starting it again in {delay:g} s",
            file=sys.stderr,
            flush=True,
        )
        self._due[index] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, due in sorted(self._due.items()):
            if due <= now and not self._stopping:
                self._due.pop(index, None)
                pid = self._spawn(index, None)
                self.started(pid, index)
                if self._stopping:
                    # The signal came between the fork and now: this one was not told.
                    _signal_all([pid], signal.SIGTERM)
                print(
                    f"bedrock-proxy: worker {index} started again as pid {pid}",
                    file=sys.stderr,
                    flush=True,
                )


def _cause(code: int) -> str:
    """A closed set of label values: a signal's name, or the exit status."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal_{-code}"
    return f"exit_{code}"


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
