"""Tasks (docs/api.md, the task API): the typed task, its lifecycle rules, the POST body.

Contract
--------
``parse_open_request(body)`` turns the ``POST /v1/tasks`` body into a
``TaskRequest`` or raises ``InvalidRequest`` (400) with a message a person can
act on: unknown fields, missing purpose, non-integer or out-of-range
``ttl_seconds`` / ``max_calls``, oversized purpose, malformed lists.
``new_task`` makes the ``Task`` that policy is asked about (operation
``OpenTask``); ``check_usable`` is the one rule for "may this identity use this
task now", raising ``TaskRefused`` (403) with the reason.

Security reasoning
------------------
* A task belongs to exactly one SPIFFE ID (``opened_by``). Someone else's task
  is refused exactly like any other unusable task, so a caller learns nothing
  from probing other ids; the ids are 128-bit random anyway.
* Expiry is judged against the proxy's clock on every call, never cached: a
  task is dead the second its TTL is over, whether or not anything swept it.
* The hard bounds here are the proxy's own; policy (``tasks.rego``) narrows
  them per deployment. A body the proxy cannot represent exactly (floats,
  booleans as numbers, unknown keys) is refused rather than coerced.
* The agent-chain context (calls, models used, classifications seen, tools
  requested) only grows; ``with_call`` is the single place it changes.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.errors import InvalidRequest, TaskRefused, clip
from proxy.policy.classify.rules import LEVELS

MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 43200  # the longest STS session; a longer task could not be served
MAX_CALLS_LIMIT = 1_000_000
MAX_PURPOSE_CHARS = 256
MAX_LIST_ITEMS = 32
MAX_ITEM_CHARS = 2048
TASK_ID_PREFIX = "task-"
_FIELDS = {"purpose", "ttl_seconds", "max_calls", "models", "classification", "tools"}
_REQUIRED = ("purpose", "ttl_seconds", "max_calls")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")


@dataclass(frozen=True)
class TaskRequest:
    """A validated ``POST /v1/tasks`` body."""

    purpose: str
    ttl_seconds: int
    max_calls: int
    models: tuple[str, ...] = ()
    classification: str = "internal"
    tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallRecord:
    """What one allowed call adds to its task's chain context."""

    model_id: str | None
    classification: str
    tools: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    id: str
    purpose: str
    opened_by: str
    opened_at: datetime
    expires_at: datetime
    max_calls: int
    models: tuple[str, ...]
    classification: str
    tools: tuple[str, ...]
    calls: int = 0
    models_used: tuple[str, ...] = ()
    classifications_seen: tuple[str, ...] = ()
    tools_requested: tuple[str, ...] = ()
    ended_reason: str | None = None
    ended_at: datetime | None = None

    def state(self, now: datetime) -> str:
        """``open``, ``ended`` (with ``ended_reason``) or ``expired`` (TTL over, not yet swept)."""
        if self.ended_reason is not None:
            return "ended"
        return "expired" if now >= self.expires_at else "open"

    def with_call(self, call: CallRecord, now: datetime) -> Task:
        """The task after one more call; ends it with ``max_calls`` when that was the last."""
        calls = self.calls + 1
        return replace(
            self,
            calls=calls,
            models_used=_add(self.models_used, [call.model_id] if call.model_id else []),
            classifications_seen=_add(self.classifications_seen, [call.classification]),
            tools_requested=_add(self.tools_requested, call.tools),
            ended_reason="max_calls" if calls >= self.max_calls else None,
            ended_at=now if calls >= self.max_calls else None,
        )

    def ended(self, reason: str, now: datetime) -> Task:
        return replace(self, ended_reason=reason, ended_at=now)

    def to_opa(self) -> dict[str, Any]:
        """The ``task`` of the OPA input (docs/opa.md, keys only added)."""
        return {
            "id": self.id,
            "purpose": self.purpose,
            "opened_by": self.opened_by,
            "opened_at": _iso(self.opened_at),
            "expires_at": _iso(self.expires_at),
            "ttl_seconds": int((self.expires_at - self.opened_at).total_seconds()),
            "calls": self.calls,
            "max_calls": self.max_calls,
            "models": list(self.models),
            "classification": self.classification,
            "tools": list(self.tools),
            "models_used": list(self.models_used),
            "classifications_seen": list(self.classifications_seen),
            "tools_requested": list(self.tools_requested),
        }

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The API view: the OPA view plus the lifecycle state."""
        document = self.to_opa()
        document["task_id"] = self.id
        document["state"] = self.state(now)
        document["ended_reason"] = self.ended_reason or (
            "expired" if self.state(now) == "expired" else None
        )
        document["ended_at"] = _iso(self.ended_at) if self.ended_at else None
        return document


def new_task_id() -> str:
    return TASK_ID_PREFIX + secrets.token_hex(16)


def new_task(request: TaskRequest, opened_by: str, now: datetime, task_id: str) -> Task:
    return Task(
        id=task_id,
        purpose=request.purpose,
        opened_by=opened_by,
        opened_at=now,
        expires_at=now + timedelta(seconds=request.ttl_seconds),
        max_calls=request.max_calls,
        models=request.models,
        classification=request.classification,
        tools=request.tools,
    )


def unknown_task(task_id: str) -> TaskRefused:
    """The one refusal for a task that does not exist or is someone else's: the two are
    told apart to nobody, so a task id cannot be probed."""
    return TaskRefused(f"Task {clip(task_id)} is unknown or was not opened by this identity")


def check_usable(task: Task | None, task_id: str, spiffe_id: str, now: datetime) -> Task:
    """The task if ``spiffe_id`` may use it now; else TaskRefused with the reason."""
    if task is None or task.opened_by != spiffe_id:
        # Someone else's task answers like an unknown one: no oracle for task ids.
        raise unknown_task(task_id)
    state = task.state(now)
    if state == "expired":
        raise TaskRefused(f"Task {clip(task_id)} has expired (at {_iso(task.expires_at)})")
    if state == "ended":
        raise TaskRefused(f"Task {clip(task_id)} has ended ({task.ended_reason})")
    return task


def parse_open_request(body: bytes) -> TaskRequest:
    try:
        document = json.loads(body) if body.strip() else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("The task request body is not valid JSON") from exc
    if not isinstance(document, dict):
        raise InvalidRequest(
            "The task request body must be a JSON object with purpose, ttl_seconds, max_calls"
        )
    unknown = sorted(set(document) - _FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unknown field(s) {', '.join(repr(clip(name, 64)) for name in unknown[:5])}; "
            f"allowed: {', '.join(sorted(_FIELDS))}"
        )
    missing = [name for name in _REQUIRED if name not in document]
    if missing:
        raise InvalidRequest(f"Missing required field(s): {', '.join(missing)}")
    classification = document.get("classification", "internal")
    if classification not in LEVELS:
        raise InvalidRequest(f"classification must be one of {', '.join(LEVELS)}")
    return TaskRequest(
        purpose=_purpose(document["purpose"]),
        ttl_seconds=_integer(
            document["ttl_seconds"], "ttl_seconds", MIN_TTL_SECONDS, MAX_TTL_SECONDS
        ),
        max_calls=_integer(document["max_calls"], "max_calls", 1, MAX_CALLS_LIMIT),
        models=_names(document.get("models", []), "models"),
        classification=str(classification),
        tools=_names(document.get("tools", []), "tools"),
    )


def task_from_mapping(raw: Mapping[str, Any]) -> Task:
    """Inverse of ``task_to_mapping``: what a store keeps, back into a Task."""
    return Task(
        id=str(raw["id"]),
        purpose=str(raw["purpose"]),
        opened_by=str(raw["opened_by"]),
        opened_at=_from_ms(int(raw["opened_ms"])),
        expires_at=_from_ms(int(raw["expires_ms"])),
        max_calls=int(raw["max_calls"]),
        models=tuple(json.loads(raw["models"])),
        classification=str(raw["classification"]),
        tools=tuple(json.loads(raw["tools"])),
        calls=int(raw["calls"]),
        models_used=tuple(json.loads(raw["models_used"])),
        classifications_seen=tuple(json.loads(raw["classifications_seen"])),
        tools_requested=tuple(json.loads(raw["tools_requested"])),
        ended_reason=raw.get("ended_reason") or None,
        ended_at=_from_ms(int(raw["ended_ms"])) if raw.get("ended_ms") else None,
    )


def task_to_mapping(task: Task) -> dict[str, str]:
    """A flat string mapping (a Redis hash); lists as JSON, times as epoch milliseconds."""
    mapping = {
        "id": task.id,
        "purpose": task.purpose,
        "opened_by": task.opened_by,
        "opened_ms": str(to_ms(task.opened_at)),
        "expires_ms": str(to_ms(task.expires_at)),
        "max_calls": str(task.max_calls),
        "models": json.dumps(list(task.models)),
        "classification": task.classification,
        "tools": json.dumps(list(task.tools)),
        "calls": str(task.calls),
        "models_used": json.dumps(list(task.models_used)),
        "classifications_seen": json.dumps(list(task.classifications_seen)),
        "tools_requested": json.dumps(list(task.tools_requested)),
    }
    if task.ended_reason is not None:
        mapping["ended_reason"] = task.ended_reason
        mapping["ended_ms"] = str(to_ms(task.ended_at or task.expires_at))
    return mapping


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _add(existing: tuple[str, ...], new: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(existing).union(new)))


def _purpose(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("purpose must be a non-empty string")
    if len(value) > MAX_PURPOSE_CHARS:
        raise InvalidRequest(
            f"purpose is {len(value)} characters; the limit is {MAX_PURPOSE_CHARS}"
        )
    if not _PRINTABLE.fullmatch(value):
        raise InvalidRequest("purpose must not contain control characters")
    return value


def _integer(value: object, name: str, low: int, high: int) -> int:
    # bool is an int subclass and 1.0 is a float: neither is an exact integer here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be from {low} to {high}, got {value}")
    return value


def _names(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS:
        raise InvalidRequest(f"{name} must be a list of at most {MAX_LIST_ITEMS} strings")
    for item in value:
        if (
            not isinstance(item, str)
            or not 0 < len(item) <= MAX_ITEM_CHARS
            or not _PRINTABLE.fullmatch(item)
        ):
            raise InvalidRequest(f"{name} must contain non-empty printable strings only")
    return tuple(sorted(set(value)))
