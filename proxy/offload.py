"""Work proportional to a request body runs off the event loop once the body is large.

One event loop serves every connection, so parsing, hashing, scanning,
re-serialising or signing a 20 MB body on it would hold up every other
request for as long as that takes. Above ``OFFLOAD_BYTES`` such work runs in
the loop's default executor; at or below it runs inline, because a thread hop
costs more than the work does.

A worker thread helps only while it lets the GIL go: Python bytecode does at
every switch interval and hashlib does while it hashes, but one long C call
(``re``, ``json``) keeps the GIL to its end and stalls the loop's thread just
the same. Such work is cut into pieces: ``parse_json`` here,
``classify._search`` for the detectors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

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


def parse_json(body: bytes) -> Any:
    """``json.loads`` that lets the GIL go between JSON objects.

    The C parser holds the GIL for the whole document (~300 ms for 15 MB of
    small content blocks). A Python-level hook runs at the end of every object,
    and there the interpreter can hand the GIL to the loop's thread; it costs
    next to nothing. A huge array of bare scalars has no object to stop at and
    is still parsed in one piece: no Bedrock body has that shape, and the body
    limit bounds it.
    """
    return json.loads(body, object_hook=_handover)


def _handover(document: dict[str, Any]) -> dict[str, Any]:
    return document
