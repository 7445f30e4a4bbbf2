"""Fault injection queue shared by the emulated bedrock and STS listeners.

Contract: ``POST /_emulator/faults`` adds ``count`` uses of one ``Fault``;
each matching request consumes one use, in the order faults were queued.
``throttle``, ``http5xx`` and ``slow`` apply to any bedrock request;
``exception_frame`` and ``reset`` only make sense mid-stream, so they are
consumed only by streaming operations (a non-streaming call leaves them
queued); ``sts_deny`` is consumed only by STS AssumeRole calls. Faults are
consumed only by requests that passed authentication, as AWS throttles only
callers it recognised.

The queue is read from the aiohttp loop and from moto's WSGI threads, hence
the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from proxy_dev.emulator.errors import validation

KINDS = ("throttle", "http5xx", "exception_frame", "reset", "slow", "sts_deny")
STREAM_ONLY = frozenset({"exception_frame", "reset"})
STREAM_EXCEPTIONS = frozenset(
    {
        "throttlingException",
        "validationException",
        "modelStreamErrorException",
        "internalServerException",
        "serviceUnavailableException",
        "modelTimeoutException",
    }
)
MAX_DELAY_MS = 600_000


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int | None = None
    delay_ms: int | None = None
    exception_type: str = "throttlingException"


def _opt_int(doc: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise validation(f"'{key}' must be an integer in [{low}, {high}]")
    return value


def parse_fault(doc: Any) -> tuple[Fault, int]:
    """Validate a control-endpoint document into (fault, count)."""
    if not isinstance(doc, dict):
        raise validation("fault must be a JSON object")
    unknown = set(doc) - {"kind", "count", "status", "delay_ms", "exception_type"}
    if unknown:
        raise validation(f"unknown fault fields: {sorted(unknown)}")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise validation(f"'kind' must be one of {list(KINDS)}")
    count = _opt_int(doc, "count", 1, 1_000_000) or 1
    status = _opt_int(doc, "status", 400, 599)
    delay_ms = _opt_int(doc, "delay_ms", 0, MAX_DELAY_MS)
    exception_type = doc.get("exception_type", "throttlingException")
    if exception_type not in STREAM_EXCEPTIONS:
        raise validation(f"'exception_type' must be one of {sorted(STREAM_EXCEPTIONS)}")
    return Fault(kind, status, delay_ms, exception_type), count


class FaultQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[Fault, int]] = []

    def add(self, fault: Fault, count: int) -> None:
        with self._lock:
            self._entries.append((fault, count))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**asdict(f), "remaining": n} for f, n in self._entries]

    def _take(self, applies: Callable[[Fault], bool]) -> Fault | None:
        with self._lock:
            for index, (fault, remaining) in enumerate(self._entries):
                if applies(fault):
                    if remaining <= 1:
                        del self._entries[index]
                    else:
                        self._entries[index] = (fault, remaining - 1)
                    return fault
        return None

    def take_bedrock(self, *, streaming: bool) -> Fault | None:
        return self._take(
            lambda f: f.kind != "sts_deny" and (streaming or f.kind not in STREAM_ONLY)
        )

    def take_sts_deny(self) -> bool:
        return self._take(lambda f: f.kind == "sts_deny") is not None
