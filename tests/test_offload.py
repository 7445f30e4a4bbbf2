"""proxy.offload: large-body work goes off the loop (processes or threads); small work stays."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxy.errors import InvalidRequest, Overloaded
from proxy.offload import BODY_WORK_NICENESS, OFFLOAD_BYTES, Offload

_REQUEST = contextvars.ContextVar("request", default="none")
LARGE = OFFLOAD_BYTES + 1


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="body-work")
    yield executor
    executor.shutdown(wait=True)


@pytest.fixture
async def offload(pool: ThreadPoolExecutor) -> AsyncIterator[Offload]:
    deaths: list[None] = []
    work = Offload(pool, processes=2, per_caller=1, on_process_death=lambda: deaths.append(None))
    work.deaths = deaths  # type: ignore[attr-defined]
    yield work
    work.close()


def _where(*args: object, **kwargs: object) -> tuple[str, tuple[object, ...], dict[str, object]]:
    return threading.current_thread().name, args, kwargs


# Module level: work sent to a body-work process must pickle.
def _process(*args: object, **kwargs: object) -> tuple[int, int, tuple[object, ...], dict]:
    return os.getpid(), os.nice(0), args, kwargs


def _refuse(message: str) -> None:
    raise InvalidRequest(message, detail="the detail")


def _die() -> None:
    os._exit(3)


def _wait_for(path: str) -> int:
    """Holds its process until ``path`` exists: a job that is still running."""
    while not os.path.exists(path):
        threading.Event().wait(0.01)
    return os.getpid()


@pytest.mark.parametrize(
    ("size", "thread"),
    [(0, "MainThread"), (OFFLOAD_BYTES, "MainThread"), (LARGE, "body-work_0")],
)
async def test_only_large_work_goes_to_the_pool(offload: Offload, size: int, thread: str) -> None:
    name, args, kwargs = await offload.if_large(size, _where, 1, "two", size=3, work=4)
    assert name == thread
    # ``size`` and ``work`` are positional-only, so the work's own keywords may use them.
    assert (args, kwargs) == ((1, "two"), {"size": 3, "work": 4})


@pytest.mark.parametrize("size", [0, OFFLOAD_BYTES])
async def test_small_work_runs_inline_not_in_a_process(offload: Offload, size: int) -> None:
    pid, niceness, args, kwargs = await offload.in_process(size, "a", _process, 1, work=2)
    assert (pid, niceness, args, kwargs) == (os.getpid(), os.nice(0), (1,), {"work": 2})


async def test_large_work_runs_in_a_process_of_lower_priority(offload: Offload) -> None:
    pid, niceness, args, kwargs = await offload.in_process(LARGE, "a", _process, b"x", caller=1)
    assert pid != os.getpid()
    assert niceness == min(19, os.nice(0) + BODY_WORK_NICENESS)
    assert (args, kwargs) == ((b"x",), {"caller": 1})


@pytest.mark.parametrize("size", [1, LARGE])
async def test_refusals_of_the_work_reach_the_caller_whole(offload: Offload, size: int) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await offload.in_process(size, "a", _refuse, "bad body")
    assert (refused.value.message, refused.value.detail, refused.value.status) == (
        "bad body",
        "the detail",
        400,
    )


async def test_one_caller_waits_for_its_own_job_not_for_others(
    offload: Offload, tmp_path: Path
) -> None:
    release = str(tmp_path / "release")
    first = asyncio.ensure_future(offload.in_process(LARGE, "heavy", _wait_for, release))
    second = asyncio.ensure_future(offload.in_process(LARGE, "heavy", _process))
    # Another caller is served by the second process while "heavy" holds its one slot.
    async with asyncio.timeout(60):  # a hang guard, not a measurement
        other = await offload.in_process(LARGE, "other", _process)
    assert other[0] != os.getpid()
    assert not first.done() and not second.done()
    Path(release).touch()  # noqa: ASYNC240 - a test's marker file, not request I/O
    async with asyncio.timeout(60):
        held_by, (second_pid, *_) = await asyncio.gather(first, second)
    assert held_by != os.getpid() and second_pid != os.getpid()


async def test_a_process_that_dies_fails_its_job_and_the_pool_starts_afresh(
    offload: Offload,
) -> None:
    with pytest.raises(Overloaded) as refused:
        await offload.in_process(LARGE, "a", _die)
    assert refused.value.status == 503 and "retry" in refused.value.message
    assert offload.deaths == [None]  # type: ignore[attr-defined]
    pid, *_ = await offload.in_process(LARGE, "a", _process)
    assert pid != os.getpid()


async def test_the_request_context_goes_with_the_work(offload: Offload) -> None:
    _REQUEST.set("req-1")
    assert await offload.if_large(LARGE, _REQUEST.get) == "req-1"


async def test_work_of_a_cancelled_request_that_no_thread_took_never_runs(
    offload: Offload,
) -> None:
    release, ran = threading.Event(), threading.Event()
    busy = asyncio.ensure_future(offload.if_large(LARGE, release.wait))
    queued = asyncio.ensure_future(offload.if_large(LARGE, ran.set))
    await asyncio.sleep(0)
    queued.cancel()
    release.set()
    assert await busy is True
    with pytest.raises(asyncio.CancelledError):
        await queued
    # One worker, first in first out: the cancelled job would have run by now.
    await offload.if_large(LARGE, lambda: None)
    assert not ran.is_set()
