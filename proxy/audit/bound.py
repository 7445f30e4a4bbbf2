"""The size bound of one audit record (``audit.max_record_bytes``); pure.

Contract
--------
``fit(record, budget, render)`` returns ``record`` itself when the JSON of
``render(record)`` (compact ASCII, as written) is at most ``budget`` bytes.
Otherwise it returns a copy that fits, in which values were replaced by the
marker ``{"truncated": true, "original_bytes": N, "sha256": H}`` (N and H of
the value's JSON as the line would have carried it, so a copy kept elsewhere,
OPA's decision log or the client's own, can be matched) and whose top-level
``truncated`` names what was replaced (``["prompt.captured"]``). The steps,
each taken only if the previous one was not enough:

1. values outside the contract fields, one level into objects (``prompt.captured``
   rather than all of ``prompt``, so its ``sha256`` stays), largest first, only
   as many as needed;
2. whole fields outside the contract, largest first, if that is enough;
3. contract fields: a string is cut to at most ``CONTRACT_BYTES`` of JSON (with
   ``clip``'s marker, so it stays a string), any other value over that is
   replaced by the marker; then whole fields as in 2, as many as still needed;
4. every field outside the contract is dropped (``truncated: ["*"]``): only a
   record with hundreds of fields could get here.

Security reasoning
------------------
Every field a caller can influence is bounded where it is made (reasons,
messages, identifiers, captures), but a record is assembled from many of them
and from upstream answers: this bound holds whatever the fields hold, so no
request can make one line, and so the disk and whoever ships the log, pay for
its size. The contract fields (``CONTRACT_FIELDS``: who, what, which request,
how it ended) are never the ones dropped, so a truncated record still joins
and counts. The record stays one JSON object and is chained like any other:
truncation happens before ``seal``, so ``audit verify`` checks the line as
written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from proxy.audit.chain import dumps
from proxy.errors import clip

DEFAULT_MAX_RECORD_BYTES = 256 * 1024
# Room for step 3's worst case: every contract field at CONTRACT_BYTES, plus the
# markers of the rest and the OCSF envelope.
MIN_MAX_RECORD_BYTES = 32 * 1024
MAX_MAX_RECORD_BYTES = 64 * 1024 * 1024
CONTRACT_BYTES = 512
TRUNCATED = "truncated"
DROPPED_ALL = "*"

CONTRACT_FIELDS = frozenset(
    {
        # every record
        "ts",
        "event",
        # authorized, completed, denied
        "request_id",
        "decision_id",
        "policy_revision",
        "spiffe_id",
        "owner",
        "task_id",
        "operation",
        "model_id",
        "model_arn",
        "region",
        "account",
        "role_arn",
        "role_session_name",
        "source_identity",
        "assumed_role_arn",
        "upstream_status",
        "aws_request_id",
        "peer",
        "bytes_in",
        "bytes_out",
        "stop_reason",
        "stream_exception",
        "outcome",
        "latency_ms",
        "ttfb_ms",
        # task_opened, task_ended
        "expires_at",
        "max_calls",
        "calls",
        "reason",
        "ended_by",
        # chain_start, chain_resumed, checkpoint, connection
        "worker",
        "pid",
        "format",
        "key_id",
        "previous_sealed",
        "previous_chain",
        "previous_hash",
        "previous_unchained",
        "final",
        "records",
        "public_key",
        "sig",
        "suppressed",
    }
)

Render = Callable[[dict[str, Any]], dict[str, Any]]


def _same(record: dict[str, Any]) -> dict[str, Any]:
    return record


def size_of(value: Any) -> int:
    """Bytes of ``value`` in a line: ``dumps`` is ASCII, so characters are bytes."""
    return len(dumps(value))


def marker(value: Any) -> dict[str, Any]:
    encoded = dumps(value).encode("ascii")
    return {
        "truncated": True,
        "original_bytes": len(encoded),
        "sha256": hashlib.sha256(encoded).hexdigest(),
    }


def fit(record: dict[str, Any], budget: int, render: Render = _same) -> dict[str, Any]:
    """``record`` if its rendered JSON is at most ``budget`` bytes, else a copy that is."""
    excess = size_of(render(record)) - budget
    if excess <= 0:
        return record
    cut = _Cut(record)
    for step in (cut.values, cut.fields_if_enough, cut.contract, cut.fields, cut.drop):
        step(excess)
        fitted = cut.record()
        excess = size_of(render(fitted)) - budget
        if excess <= 0:
            break
    return fitted


class _Cut:
    """A record being cut down; the original is never modified."""

    def __init__(self, record: dict[str, Any]) -> None:
        self._original = record
        self._fields = {k: v for k, v in record.items() if k != TRUNCATED}
        self._paths: list[str] = []

    def record(self) -> dict[str, Any]:
        if not self._paths:
            return dict(self._fields)
        return {**self._fields, TRUNCATED: list(self._paths)}

    def _others(self) -> list[str]:
        return [key for key in self._fields if key not in CONTRACT_FIELDS]

    def values(self, excess: int) -> None:
        candidates: list[tuple[int, str, str | None]] = []
        for key in self._others():
            value = self._fields[key]
            if isinstance(value, dict) and value:
                candidates += [(_saving(v), key, member) for member, v in value.items()]
            else:
                candidates.append((_saving(value), key, None))
        needed = excess
        for saving, key, member in sorted(candidates, key=lambda c: c[0], reverse=True):
            if needed <= 0 or saving <= 0:
                break
            path = key if member is None else f"{key}.{member}"
            if member is None:
                self._fields[key] = marker(self._original[key])
            else:
                self._fields[key] = {
                    **self._fields[key],
                    member: marker(self._original[key][member]),
                }
            self._paths.append(path)
            # The path joins the top-level list, which costs its own bytes.
            needed -= saving - size_of(path) - 1

    def fields_if_enough(self, excess: int) -> None:
        # When the contract fields are what is too large, whole fields would be
        # lost for nothing: cut the contract first (step 3).
        if sum(max(0, _saving(self._fields[key])) for key in self._others()) >= excess:
            self.fields(excess)

    def fields(self, excess: int) -> None:
        candidates = [(_saving(self._fields[key]), key) for key in self._others()]
        needed = excess
        for saving, key in sorted(candidates, reverse=True):
            if needed <= 0 or saving <= 0:
                break
            self._fields[key] = marker(self._original[key])
            self._paths = [p for p in self._paths if p.split(".", 1)[0] != key] + [key]
            needed -= saving

    def contract(self, excess: int) -> None:
        for key in [k for k in self._fields if k in CONTRACT_FIELDS]:
            value = self._fields[key]
            if size_of(value) <= CONTRACT_BYTES:
                continue
            self._fields[key] = _clipped(value) if isinstance(value, str) else marker(value)
            self._paths.append(key)

    def drop(self, excess: int) -> None:
        for key in self._others():
            del self._fields[key]
        self._paths = [DROPPED_ALL]


def _saving(value: Any) -> int:
    """Bytes saved by replacing ``value`` with its marker (not positive for small values)."""
    size = size_of(value)
    return size - _MARKER_BYTES - len(str(size))


# A marker's bytes but the digits of original_bytes.
_MARKER_BYTES = size_of(marker(None)) - len(str(size_of(None)))


def _clipped(text: str) -> str:
    # clip counts characters; a character may take up to 12 bytes escaped.
    limit = CONTRACT_BYTES
    while size_of(shown := clip(text, limit)) > CONTRACT_BYTES and limit > 32:
        limit //= 2
    return shown
