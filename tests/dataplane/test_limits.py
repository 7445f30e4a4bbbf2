"""proxy.dataplane.limits: token buckets, requests in flight and body bytes, on an
injected clock; every refusal names its limit, and nothing outlives its request."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import LimitSettings
from proxy.dataplane.limits import (
    GLOBAL_BODY_BYTES,
    IDENTITY_BODY_BYTES,
    IDENTITY_CONCURRENCY,
    IDENTITY_RATE,
    LIMIT_KINDS,
    TASK_CONCURRENCY,
    TASK_RATE,
    ByteBudget,
    CallerLimits,
    InFlight,
    RateLimiter,
    TokenBucket,
)
from proxy.errors import Overloaded, Throttled

CHAT = "spiffe://example.org/ns/demo/sa/chat"
BATCH = "spiffe://example.org/ns/demo/sa/batch"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SMALL = LimitSettings(
    inflight_body_bytes=300,
    inflight_body_bytes_per_identity=200,
    requests_per_second_per_identity=2.0,
    burst_per_identity=3,
    concurrent_requests_per_identity=2,
    requests_per_second_per_task=1.0,
    burst_per_task=2,
    concurrent_requests_per_task=1,
    tracked_callers=100,
)


@pytest.mark.parametrize(
    ("rate", "burst", "takes_at", "waits"),
    [
        # A full burst at once, then one token per 1/rate seconds.
        (2.0, 3, [0, 0, 0, 0], [0, 0, 0, 0.5]),
        (2.0, 3, [0, 0, 0, 0.25], [0, 0, 0, 0.25]),
        (2.0, 3, [0, 0, 0, 0.5, 0.5], [0, 0, 0, 0, 0.5]),
        # Idle time refills up to the burst, never past it.
        (2.0, 3, [0, 0, 0, 100, 100, 100, 100], [0, 0, 0, 0, 0, 0, 0.5]),
        # A refused take costs nothing: the wait shrinks as time passes.
        (1.0, 1, [0, 0, 0.4, 0.9, 1.0], [0, 1.0, 0.6, 0.1, 0]),
        (0.1, 1, [0, 0], [0, 10.0]),
        # A clock that steps back adds nothing and takes nothing.
        (1.0, 1, [5, 4, 6], [0, 1.0, 0]),
    ],
)
def test_token_bucket(rate: float, burst: int, takes_at: list[float], waits: list[float]) -> None:
    bucket = TokenBucket(rate, burst, takes_at[0])
    assert [bucket.take(t) for t in takes_at] == pytest.approx(waits)


def test_rate_buckets_are_kept_per_key_and_bounded() -> None:
    clock = Clock()
    rates: RateLimiter[str] = RateLimiter(1.0, 1, max_keys=100, clock=clock)
    assert rates.take(CHAT) == 0 and rates.take(CHAT) == pytest.approx(1.0)
    assert rates.take(BATCH) == 0  # another key has its own bucket
    # A flood of distinct callers: the table never grows past max_keys.
    for n in range(10_000):
        rates.take(f"spiffe://example.org/flood/{n}")
        assert len(rates) <= 100
    # A forgotten bucket comes back full: what it would be after burst/rate idle seconds.
    assert rates.take(CHAT) == 0


def test_the_least_recently_used_bucket_is_forgotten_first() -> None:
    rates: RateLimiter[str] = RateLimiter(1.0, 1, max_keys=3, clock=Clock())
    for key in ("a", "b", "c"):
        rates.take(key)
    assert rates.take("a") > 0  # used again: now the most recent
    rates.take("d")  # pushes out b, the least recently used
    assert rates.take("a") > 0 and rates.take("c") > 0
    assert rates.take("b") == 0


def test_in_flight_counts_up_to_the_limit_and_forgets_a_key_at_zero() -> None:
    slots: InFlight[str] = InFlight(2)
    assert slots.acquire(CHAT) and slots.acquire(CHAT)
    assert not slots.acquire(CHAT)
    assert slots.acquire(BATCH)
    slots.release(CHAT)
    assert slots.of(CHAT) == 1 and slots.acquire(CHAT)
    for key in (CHAT, CHAT, BATCH):
        slots.release(key)
    assert len(slots) == 0


@pytest.mark.parametrize(
    ("reservations", "refusals", "total"),
    [
        ([(CHAT, 100), (CHAT, 100)], [None, None], 200),
        ([(CHAT, 150), (CHAT, 51)], [None, IDENTITY_BODY_BYTES], 150),
        ([(CHAT, 200), (BATCH, 100), (BATCH, 1)], [None, None, GLOBAL_BODY_BYTES], 300),
        # The identity's own limit is named first: it is the one the caller can act on.
        ([(CHAT, 200), (BATCH, 100), (CHAT, 1)], [None, None, IDENTITY_BODY_BYTES], 300),
        ([(CHAT, 201)], [IDENTITY_BODY_BYTES], 0),
    ],
)
def test_byte_budget(
    reservations: list[tuple[str, int]], refusals: list[str | None], total: int
) -> None:
    budget = ByteBudget(total_limit=300, per_key_limit=200)
    assert [budget.reserve(key, size) for key, size in reservations] == refusals
    assert budget.total == total
    for (key, size), refused in zip(reservations, refusals, strict=True):
        if refused is None:
            budget.release(key, size)
    assert budget.total == 0 and len(budget) == 0


def test_the_rate_of_an_identity_is_refused_with_its_wait() -> None:
    clock = Clock()
    limits = CallerLimits(SMALL, clock=clock)
    for _ in range(3):
        with limits.enter(CHAT, None):
            pass
    with pytest.raises(Throttled) as caught:
        with limits.enter(CHAT, None):
            pass
    refusal = caught.value
    assert (refusal.status, refusal.error_type, refusal.detail) == (
        429,
        "ThrottlingException",
        IDENTITY_RATE,
    )
    assert refusal.retry_after_s == pytest.approx(0.5)
    assert "2 requests a second (bursts of 3)" in refusal.message
    with limits.enter(BATCH, None):  # another identity is not affected
        pass
    clock.now += 0.5
    with limits.enter(CHAT, None):
        pass


def test_a_task_has_its_own_rate_under_its_identitys() -> None:
    clock = Clock()
    limits = CallerLimits(SMALL, clock=clock)
    for _ in range(2):
        with limits.enter(CHAT, "task-1"):
            pass
    with pytest.raises(Throttled) as caught:
        with limits.enter(CHAT, "task-1"):
            pass
    assert caught.value.detail == TASK_RATE and "Task task-1" in caught.value.message
    assert caught.value.retry_after_s == pytest.approx(1.0)
    # The identity's bucket was charged for every attempt: it is now out as well.
    with pytest.raises(Throttled) as caught:
        with limits.enter(CHAT, "task-2"):
            pass
    assert caught.value.detail == IDENTITY_RATE
    # One identity's task id is not another's.
    with limits.enter(BATCH, "task-1"):
        pass


def test_concurrency_slots_are_held_for_the_block_and_given_back_however_it_ends() -> None:
    limits = CallerLimits(replace(SMALL, burst_per_identity=100, burst_per_task=100))
    with limits.enter(CHAT, "task-1"):
        with pytest.raises(Throttled) as caught:
            with limits.enter(CHAT, "task-1"):
                pass
        assert caught.value.detail == TASK_CONCURRENCY
        with limits.enter(CHAT, None):
            with pytest.raises(Throttled) as caught:
                with limits.enter(CHAT, "task-2"):
                    pass
            assert caught.value.detail == IDENTITY_CONCURRENCY
            with limits.enter(BATCH, "task-1"):
                pass
    # An error inside the block gives the slots back too.
    with pytest.raises(RuntimeError):
        with limits.enter(CHAT, "task-1"):
            raise RuntimeError("the stream broke")
    assert len(limits.identity_slots) == len(limits.task_slots) == 0
    with limits.enter(CHAT, "task-1"), limits.enter(CHAT, None):
        pass


def test_body_bytes_are_reserved_as_read_and_given_back_at_the_end() -> None:
    limits = CallerLimits(replace(SMALL, burst_per_identity=100))
    with limits.enter(CHAT, None) as first:
        for _ in range(3):
            first.reserve(50)  # chunk by chunk, as a chunked body arrives
        assert limits.body_bytes.of(CHAT) == 150 and first.reserved == 150
        with limits.enter(CHAT, None) as second:
            with pytest.raises(Throttled) as caught:
                second.reserve(51)
            assert caught.value.detail == IDENTITY_BODY_BYTES
            assert "limits.inflight_body_bytes_per_identity" in caught.value.message
            assert second.reserved == 0  # a refused reservation holds nothing
        with limits.enter(BATCH, None) as other:
            other.reserve(150)
            with pytest.raises(Overloaded) as overloaded:
                other.reserve(1)
            assert (overloaded.value.status, overloaded.value.detail) == (503, GLOBAL_BODY_BYTES)
            assert overloaded.value.retry_after_s >= 1
    assert limits.body_bytes.total == 0 and len(limits.body_bytes) == 0


def test_every_refusal_names_a_known_limit() -> None:
    assert {IDENTITY_RATE, TASK_RATE, IDENTITY_CONCURRENCY, TASK_CONCURRENCY} <= LIMIT_KINDS
    assert {IDENTITY_BODY_BYTES, GLOBAL_BODY_BYTES} <= LIMIT_KINDS


_STEP = st.tuples(
    st.sampled_from([CHAT, BATCH, "spiffe://example.org/c"]),
    st.sampled_from([None, "task-1", "task-2"]),
    st.lists(st.integers(0, 120), max_size=4),
    st.booleans(),
)


@given(st.lists(_STEP, max_size=30), st.lists(st.floats(0, 2), max_size=30))
def test_nothing_outlives_its_request(steps: list, pauses: list[float]) -> None:
    """Whatever callers do, in any nesting, every count is back to zero at the end."""
    clock = Clock()
    limits = CallerLimits(SMALL, clock=clock)
    _nest(limits, clock, steps, pauses)
    assert limits.body_bytes.total == 0 and len(limits.body_bytes) == 0
    assert len(limits.identity_slots) == len(limits.task_slots) == 0
    assert len(limits.identity_rate) <= SMALL.tracked_callers


def _nest(limits: CallerLimits, clock: Clock, steps: list, pauses: list[float]) -> None:
    if not steps:
        return
    (spiffe_id, task_id, chunks, fail), rest = steps[0], steps[1:]
    clock.now += pauses[0] if pauses else 0.1
    nested = False
    try:
        with limits.enter(spiffe_id, task_id) as lease:
            for size in chunks:
                lease.reserve(size)
            assert limits.body_bytes.total <= SMALL.inflight_body_bytes
            assert limits.body_bytes.of(spiffe_id) <= SMALL.inflight_body_bytes_per_identity
            # The rest of the steps run while this request is in flight.
            nested = True
            _nest(limits, clock, rest, pauses[1:])
            if fail:
                raise LookupError
    except (Throttled, Overloaded, LookupError):
        pass
    if not nested:
        _nest(limits, clock, rest, pauses[1:])


class Recorded:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def in_flight(self, requests: int, body_bytes: int) -> None:
        self.seen.append((requests, body_bytes))


def test_the_gauges_follow_what_is_in_flight() -> None:
    gauges = Recorded()
    limits = CallerLimits(SMALL, gauges=gauges)
    with limits.enter(CHAT, None) as lease:
        lease.reserve(40)
        with limits.enter(BATCH, "task-1") as other:
            other.reserve(10)
        lease.reserve(5)
    assert gauges.seen == [(1, 0), (1, 40), (2, 40), (2, 50), (1, 40), (1, 45), (0, 0)]
