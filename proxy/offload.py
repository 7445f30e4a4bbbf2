"""Work proportional to a request body runs off the event loop once the body is large.

One event loop serves every connection, so parsing, hashing, scanning,
re-serialising or signing a 20 MB body on it would hold up every other
request for as long as that takes. Above ``OFFLOAD_BYTES`` such work runs in
the loop's default executor; at or below it runs inline, because a thread hop
costs more than the work does.

A worker thread helps only while it lets the GIL go: Python bytecode does at
every switch interval and hashlib does while it hashes, but one long C call
(``re``, ``json``) keeps the GIL to its end and stalls the loop's thread just
the same. Such work is cut into pieces: ``request.body.parse_strict``
hands the GIL over between JSON objects, ``detectors._search`` between windows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

OFFLOAD_BYTES = 256 * 1024

_P = ParamSpec("_P")
_R = TypeVar("_R")


async def offload_if_large(
    size: int, work: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
) -> _R:
    """``work(*args, **kwargs)`` inline when ``size`` is small, in a worker thread when large.

    ``asyncio.to_thread`` carries the request's context variables (log binding)
    into the thread. If the request is cancelled meanwhile the thread still
    finishes its work, which the body limit bounds, and the result is dropped.
    """
    if size > OFFLOAD_BYTES:
        return await asyncio.to_thread(work, *args, **kwargs)
    return work(*args, **kwargs)
