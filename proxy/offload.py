"""Work proportional to a request body runs off the event loop once the body is large.

One event loop serves every connection, so parsing, scanning or hashing a
20 MB body on it would hold up every other request for as long as that takes.
At or below ``OFFLOAD_BYTES`` such work runs inline, because a hop costs more
than the work does; above it:

- ``in_process``: pure-Python work (parse, tool reading, classification scan,
  obligation edits) runs in the body-work *processes*. A thread would not do:
  Python bytecode and long C calls (``re``, ``json``) hold the GIL, and the
  event loop's thread would wait for it at every hand-over (measured: a soak
  of hostile bodies took legitimate p99 from 17 ms to 1.7 s with two such
  threads). The processes run at a lower CPU priority than the loop, so a
  flood of heavy bodies slows heavy bodies, not every caller. Each caller
  (SPIFFE ID) has at most ``per_caller`` jobs in them at a time: one caller's
  bodies queue behind each other, not beside everyone else's.
- ``if_large``: work that lets the GIL go (hashlib while it hashes, as SigV4
  does) runs on the body-work threads, since the body need not be copied to
  another process for it.

The pools are the body work's alone: the audit writer's fsync and the STS
client's AssumeRole each have their own threads (``app._components``), so a
flood of heavy bodies never delays a write-ahead record or a credential fetch.
Each job is bounded: the body limit bounds its size, the scan budget its scan,
and the in-flight body budgets (``dataplane.limits``) how many wait.
"""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import ParamSpec, TypeVar

import structlog

from proxy.errors import Overloaded

OFFLOAD_BYTES = 64 * 1024
# How much less CPU priority the body-work processes have than the event loop.
BODY_WORK_NICENESS = 10
# Imported once by the fork server, so each new body-work process starts warm.
_PRELOAD = ["proxy.dataplane.reading"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_log = structlog.get_logger("bedrock_proxy.offload")


class Offload:
    """Runs body-sized work inline when the body is small, off the loop when large."""

    def __init__(
        self,
        threads: Executor,
        *,
        processes: int,
        per_caller: int = 1,
        threshold: int = OFFLOAD_BYTES,
        on_process_death: Callable[[], None] = lambda: None,
    ) -> None:
        self._threads = threads
        self._process_count = processes
        self._per_caller = per_caller
        self._threshold = threshold
        self._on_process_death = on_process_death
        self._processes: ProcessPoolExecutor | None = None
        self._callers: dict[str, _CallerSlots] = {}

    async def if_large(
        self, size: int, work: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """``work(*args, **kwargs)``: inline when ``size`` is small, in a pool thread when large.

        For work that lets the GIL go. The request's context variables (log
        binding) go with it into the thread. If the request is cancelled before
        a thread takes the job it never runs; once running it finishes (bounded,
        see above) and the result is dropped.
        """
        if size <= self._threshold:
            return work(*args, **kwargs)
        call = partial(contextvars.copy_context().run, work, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    async def in_process(
        self,
        size: int,
        caller: str,
        work: Callable[_P, _R],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _R:
        """``work(*args, **kwargs)``: inline when ``size`` is small, else in a body-work
        process once ``caller`` has a slot there.

        ``work`` must be a module-level function whose arguments and result pickle;
        its exceptions (``ProxyError``s) come back as raised. A process that dies
        mid-job (killed, out of memory) fails the job with ``Overloaded`` (503,
        which SDKs retry) and the pool is started afresh for the next one.
        """
        if size <= self._threshold:
            return work(*args, **kwargs)
        slots = self._callers.get(caller)
        if slots is None:
            slots = self._callers[caller] = _CallerSlots(self._per_caller)
        slots.users += 1
        try:
            async with slots.semaphore:
                pool = self._pool()
                job = pool.submit(partial(work, *args, **kwargs))
                try:
                    return await asyncio.wrap_future(job)
                except BrokenProcessPool as exc:
                    self._restart(pool)
                    raise Overloaded(
                        "The proxy's body-inspection process stopped while reading this "
                        "request; retry it",
                        detail=f"body-work process pool broken: {exc}",
                    ) from exc
        finally:
            slots.users -= 1
            if slots.users == 0:
                del self._callers[caller]

    def close(self) -> None:
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)
            self._processes = None

    def _pool(self) -> ProcessPoolExecutor:
        # Started on first use: a proxy that never sees a large body starts no process.
        if self._processes is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_PRELOAD)
            self._processes = ProcessPoolExecutor(
                self._process_count, mp_context=context, initializer=_lower_priority
            )
        return self._processes

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        if self._processes is broken:
            _log.error("body_work_process_died")
            self._on_process_death()
            self._processes = None
            broken.shutdown(wait=False, cancel_futures=True)


class _CallerSlots:
    def __init__(self, per_caller: int) -> None:
        self.semaphore = asyncio.Semaphore(per_caller)
        self.users = 0


def _lower_priority() -> None:
    os.nice(BODY_WORK_NICENESS)
