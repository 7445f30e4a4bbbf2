"""proxy.offload: large-body work leaves the loop's thread; small work stays on it."""

from __future__ import annotations

import threading

import pytest

from proxy.offload import OFFLOAD_BYTES, offload_if_large


def _where(*args: object, **kwargs: object) -> tuple[int, tuple[object, ...], dict[str, object]]:
    return threading.get_ident(), args, kwargs


@pytest.mark.parametrize(
    ("size", "inline"), [(0, True), (OFFLOAD_BYTES, True), (OFFLOAD_BYTES + 1, False)]
)
async def test_only_large_work_goes_to_a_thread(size: int, inline: bool) -> None:
    thread, args, kwargs = await offload_if_large(size, _where, 1, "two", size=3, work=4)
    assert (thread == threading.get_ident()) is inline
    # ``size`` and ``work`` are positional-only, so the work's own keywords may use them.
    assert (args, kwargs) == ((1, "two"), {"size": 3, "work": 4})


@pytest.mark.parametrize("size", [1, OFFLOAD_BYTES + 1])
async def test_errors_of_the_work_reach_the_caller(size: int) -> None:
    def fail() -> None:
        raise ValueError("bad body")

    with pytest.raises(ValueError, match="bad body"):
        await offload_if_large(size, fail)
