"""proxy.offload: large-body work goes to the pool it is given; small work stays on the loop."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.offload import OFFLOAD_BYTES, Offload

_REQUEST = contextvars.ContextVar("request", default="none")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="body-work")
    yield executor
    executor.shutdown(wait=True)


def _where(*args: object, **kwargs: object) -> tuple[str, tuple[object, ...], dict[str, object]]:
    return threading.current_thread().name, args, kwargs


@pytest.mark.parametrize(
    ("size", "thread"),
    [(0, "MainThread"), (OFFLOAD_BYTES, "MainThread"), (OFFLOAD_BYTES + 1, "body-work_0")],
)
async def test_only_large_work_goes_to_the_pool(
    pool: ThreadPoolExecutor, size: int, thread: str
) -> None:
    name, args, kwargs = await Offload(pool).if_large(size, _where, 1, "two", size=3, work=4)
    assert name == thread
    # ``size`` and ``work`` are positional-only, so the work's own keywords may use them.
    assert (args, kwargs) == ((1, "two"), {"size": 3, "work": 4})


@pytest.mark.parametrize("size", [1, OFFLOAD_BYTES + 1])
async def test_errors_of_the_work_reach_the_caller(pool: ThreadPoolExecutor, size: int) -> None:
    def fail() -> None:
        raise ValueError("bad body")

    with pytest.raises(ValueError, match="bad body"):
        await Offload(pool).if_large(size, fail)


async def test_the_request_context_goes_with_the_work(pool: ThreadPoolExecutor) -> None:
    _REQUEST.set("req-1")
    assert await Offload(pool).if_large(OFFLOAD_BYTES + 1, _REQUEST.get) == "req-1"


async def test_work_of_a_cancelled_request_that_no_thread_took_never_runs(
    pool: ThreadPoolExecutor,
) -> None:
    offload = Offload(pool)
    release, ran = threading.Event(), threading.Event()
    busy = asyncio.ensure_future(offload.if_large(OFFLOAD_BYTES + 1, release.wait))
    queued = asyncio.ensure_future(offload.if_large(OFFLOAD_BYTES + 1, ran.set))
    await asyncio.sleep(0)
    queued.cancel()
    release.set()
    assert await busy is True
    with pytest.raises(asyncio.CancelledError):
        await queued
    # One worker, first in first out: the cancelled job would have run by now.
    await Offload(pool).if_large(OFFLOAD_BYTES + 1, lambda: None)
    assert not ran.is_set()
