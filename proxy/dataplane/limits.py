"""What one caller may make this proxy hold: requests per second, requests in
flight, and request body bytes in flight, per SPIFFE ID and per task.

Contract
--------
``CallerLimits.enter(spiffe_id, task_id)`` is a context manager taken right
after the caller is identified, before its body is read. On entry it takes a
token from the identity's bucket and the task's (``X-Task-Id``), then a slot
of each one's concurrency; any that is out raises ``Throttled`` (429, with
the seconds until a token is back as ``retry_after_s``). Inside, the
``Lease`` it yields reserves body bytes as they are read
(``Lease.reserve``): past the identity's budget ``Throttled``, past the
process's ``Overloaded`` (503). On exit, however the block ends (answer,
refusal, error, the client gone), every slot and byte is given back.

Each refusal's ``detail`` is the stable name of the limit (``LIMIT_KINDS``):
the audit record's ``error.detail`` and the metrics' ``limit`` label. After
every change the ``LimitGauges`` given are told the requests and body bytes
now in flight.

Security reasoning
------------------
* Cheap refusal first: a caller over its rate or concurrency costs a bucket
  update and an audit record, never a body read, a parse, OPA or STS. Body
  bytes are reserved before they are read (the whole ``Content-Length``) or
  as each chunk arrives (chunked), so the budget bounds what is buffered,
  not what was already buffered.
* Every attempt costs a token, refused or not: retrying harder only delays
  the caller's own next success.
* State is bounded whatever callers do. Rate buckets are kept in an LRU of
  ``tracked_callers`` entries (identities and tasks apart, so a flood of task
  ids cannot push out identities); forgetting a bucket only gives that caller
  a full burst again, which it would have had after ``burst / rate`` idle
  seconds. Concurrency and byte counts exist only for requests in flight and
  are dropped at zero, so they are bounded by what is in flight.
* Everything here is per worker process and needs no lock: it is only
  touched from the event loop, with no ``await`` between a check and its
  update. With ``--workers N`` every count is N times as large in all.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

from proxy.config import LimitSettings
from proxy.errors import Overloaded, Throttled, clip

IDENTITY_RATE = "identity_rate"
IDENTITY_CONCURRENCY = "identity_concurrency"
TASK_RATE = "task_rate"
TASK_CONCURRENCY = "task_concurrency"
IDENTITY_BODY_BYTES = "identity_body_bytes"
GLOBAL_BODY_BYTES = "global_body_bytes"
OPEN_TASKS = "open_tasks"  # counted by the task store (proxy/tasks), named here with the rest
LIMIT_KINDS = frozenset(
    {
        IDENTITY_RATE,
        IDENTITY_CONCURRENCY,
        TASK_RATE,
        TASK_CONCURRENCY,
        IDENTITY_BODY_BYTES,
        GLOBAL_BODY_BYTES,
        OPEN_TASKS,
    }
)
# A slot or budget comes back when some request ends: no better hint than soon.
_RETRY_WHEN_FREED_S = 1.0

K = TypeVar("K", bound=Hashable)


class LimitGauges(Protocol):
    def in_flight(self, requests: int, body_bytes: int) -> None: ...


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; full when made."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float) -> float:
        """0.0 with one token taken, else the seconds until one is there (none taken)."""
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.stamp = max(self.stamp, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter(Generic[K]):
    """One token bucket per key, at most ``max_keys`` of them (least recently used go)."""

    def __init__(
        self, rate: float, burst: int, *, max_keys: int, clock: Callable[[], float]
    ) -> None:
        self._rate, self._burst, self._max_keys, self._clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def take(self, key: K) -> float:
        """0.0 with a token of ``key``'s bucket taken, else the seconds to wait."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


class InFlight(Generic[K]):
    """Requests in flight per key, at most ``limit`` each; a key at zero is forgotten."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._counts: dict[K, int] = {}

    def acquire(self, key: K) -> bool:
        count = self._counts.get(key, 0)
        if count >= self.limit:
            return False
        self._counts[key] = count + 1
        self.total += 1
        return True

    def release(self, key: K) -> None:
        self.total -= 1
        count = self._counts[key] - 1
        if count:
            self._counts[key] = count
        else:
            del self._counts[key]

    def of(self, key: K) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)


class ByteBudget:
    """Bytes held per key and in all, each under its limit; a key at zero is forgotten."""

    def __init__(self, total_limit: int, per_key_limit: int) -> None:
        self.total_limit, self.per_key_limit = total_limit, per_key_limit
        self.total = 0
        self._held: dict[str, int] = {}

    def reserve(self, key: str, size: int) -> str | None:
        """None with ``size`` bytes reserved for ``key``, else the limit it would break."""
        if size == 0:
            return None
        held = self._held.get(key, 0)
        if held + size > self.per_key_limit:
            return IDENTITY_BODY_BYTES
        if self.total + size > self.total_limit:
            return GLOBAL_BODY_BYTES
        self._held[key] = held + size
        self.total += size
        return None

    def release(self, key: str, size: int) -> None:
        if size == 0:
            return
        held = self._held[key] - size
        if held:
            self._held[key] = held
        else:
            del self._held[key]
        self.total -= size

    def of(self, key: str) -> int:
        return self._held.get(key, 0)

    def __len__(self) -> int:
        return len(self._held)


class Lease:
    """One request's body bytes, reserved as they are read and given back at its end."""

    def __init__(self, budget: ByteBudget, spiffe_id: str, changed: Callable[[], None]) -> None:
        self._budget, self._spiffe_id, self._changed = budget, spiffe_id, changed
        self.reserved = 0

    def reserve(self, size: int) -> None:
        """Hold ``size`` more bytes of body, or refuse the request (nothing reserved)."""
        refused = self._budget.reserve(self._spiffe_id, size)
        if refused == IDENTITY_BODY_BYTES:
            raise Throttled(
                "This identity's requests in flight hold as many body bytes as it may "
                f"({self._budget.per_key_limit}, limits.inflight_body_bytes_per_identity); "
                "retry when one of them has ended",
                retry_after_s=_RETRY_WHEN_FREED_S,
                detail=IDENTITY_BODY_BYTES,
            )
        if refused == GLOBAL_BODY_BYTES:
            raise Overloaded(
                "The proxy holds as many request body bytes as it may "
                f"({self._budget.total_limit}, limits.inflight_body_bytes); retry shortly",
                retry_after_s=_RETRY_WHEN_FREED_S,
                detail=GLOBAL_BODY_BYTES,
            )
        self.reserved += size
        self._changed()

    def release(self) -> None:
        self._budget.release(self._spiffe_id, self.reserved)
        self.reserved = 0


class CallerLimits:
    """The data plane's limits per SPIFFE ID and per task, for one worker process."""

    def __init__(
        self,
        settings: LimitSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        gauges: LimitGauges | None = None,
    ) -> None:
        self.settings = settings
        self._gauges = gauges
        tracked = settings.tracked_callers
        self.identity_rate: RateLimiter[str] = RateLimiter(
            settings.requests_per_second_per_identity,
            settings.burst_per_identity,
            max_keys=tracked,
            clock=clock,
        )
        self.task_rate: RateLimiter[tuple[str, str]] = RateLimiter(
            settings.requests_per_second_per_task,
            settings.burst_per_task,
            max_keys=tracked,
            clock=clock,
        )
        self.identity_slots: InFlight[str] = InFlight(settings.concurrent_requests_per_identity)
        self.task_slots: InFlight[tuple[str, str]] = InFlight(settings.concurrent_requests_per_task)
        self.body_bytes = ByteBudget(
            settings.inflight_body_bytes, settings.inflight_body_bytes_per_identity
        )

    @contextlib.contextmanager
    def enter(self, spiffe_id: str, task_id: str | None) -> Iterator[Lease]:
        """The request's rate tokens and slots, held for the block, or ``Throttled``."""
        task = None if task_id is None else (spiffe_id, task_id)
        self._take_tokens(spiffe_id, task)
        with contextlib.ExitStack() as held:
            held.callback(self._report)  # runs last, once everything is given back
            if not self.identity_slots.acquire(spiffe_id):
                raise self._busy("This identity", self.identity_slots, IDENTITY_CONCURRENCY)
            held.callback(self.identity_slots.release, spiffe_id)
            if task is not None:
                if not self.task_slots.acquire(task):
                    raise self._busy(f"Task {clip(task[1])}", self.task_slots, TASK_CONCURRENCY)
                held.callback(self.task_slots.release, task)
            lease = Lease(self.body_bytes, spiffe_id, self._report)
            held.callback(lease.release)
            self._report()
            yield lease

    def _report(self) -> None:
        if self._gauges is not None:
            self._gauges.in_flight(self.identity_slots.total, self.body_bytes.total)

    def take_token(self, spiffe_id: str) -> None:
        """The identity's rate alone (the task API's calls): a token, or ``Throttled``."""
        self._take_tokens(spiffe_id, None)

    def _take_tokens(self, spiffe_id: str, task: tuple[str, str] | None) -> None:
        wait = self.identity_rate.take(spiffe_id)
        if wait:
            raise _too_fast(
                "This identity",
                self.settings.requests_per_second_per_identity,
                self.settings.burst_per_identity,
                wait,
                IDENTITY_RATE,
            )
        if task is None:
            return
        wait = self.task_rate.take(task)
        if wait:
            raise _too_fast(
                f"Task {clip(task[1])}",
                self.settings.requests_per_second_per_task,
                self.settings.burst_per_task,
                wait,
                TASK_RATE,
            )

    @staticmethod
    def _busy(who: str, slots: InFlight[K], kind: str) -> Throttled:
        return Throttled(
            f"{who} already has {slots.limit} requests in flight, the most it may have; "
            "retry when one of them has ended",
            retry_after_s=_RETRY_WHEN_FREED_S,
            detail=kind,
        )


def _too_fast(who: str, rate: float, burst: int, wait: float, kind: str) -> Throttled:
    return Throttled(
        f"{who} sends more than {rate:g} requests a second (bursts of {burst}); "
        f"retry in {math.ceil(wait)} s",
        retry_after_s=wait,
        detail=kind,
    )
