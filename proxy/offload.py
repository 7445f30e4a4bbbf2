"""Work proportional to a request body runs off the event loop once the body is large.

One event loop serves every connection, so parsing, hashing, scanning,
re-serialising or signing a 20 MB body on it would hold up every other
request for as long as that takes. Above ``OFFLOAD_BYTES`` such work runs on
the ``Offload``'s own executor; at or below it runs inline, because a thread
hop costs more than the work does.

The executor is the body work's alone: a small fixed pool the app owns
(``app._components``), never the loop's default executor. The audit writer's
fsync and the STS client's AssumeRole each have their own pool too, so a
flood of heavy bodies queues behind itself and never delays a write-ahead
record or a credential fetch. Each job is bounded: the body limit bounds its
size, the classification budget its scan.

A worker thread helps only while it lets the GIL go: Python bytecode does at
every switch interval and hashlib does while it hashes, but one long C call
(``re``, ``json``) keeps the GIL to its end and stalls the loop's thread just
the same. Such work is cut into pieces: ``request.body.parse_strict``
hands the GIL over between JSON objects, ``detectors._search`` between windows.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import ParamSpec, TypeVar

OFFLOAD_BYTES = 256 * 1024

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Offload:
    """Runs body-sized work inline when the body is small, on ``executor`` when large."""

    def __init__(self, executor: Executor, *, threshold: int = OFFLOAD_BYTES) -> None:
        self._executor = executor
        self._threshold = threshold

    async def if_large(
        self, size: int, work: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """``work(*args, **kwargs)``: inline when ``size`` is small, in a pool thread when large.

        The request's context variables (log binding) go with it into the thread,
        as ``asyncio.to_thread`` would carry them. If the request is cancelled
        before a thread takes the job it never runs; once running it finishes
        (bounded, see above) and the result is dropped.
        """
        if size <= self._threshold:
            return work(*args, **kwargs)
        call = partial(contextvars.copy_context().run, work, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)
