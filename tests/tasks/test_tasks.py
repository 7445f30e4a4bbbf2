"""Pure task rules: body validation, lifecycle, OPA view."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
import structlog.testing

from proxy.audit.log import AuditLog
from proxy.aws.credentials import CredentialBroker
from proxy.errors import InvalidRequest, StateUnavailable, TaskRefused
from proxy.tasks.model import CallRecord, TaskRequest, check_usable, new_task, parse_open_request
from proxy.tasks.service import TaskService, sweeper
from proxy.tasks.store import MemoryTaskStore

NOW = datetime(2025, 1, 1, tzinfo=UTC)
CHAT = "spiffe://example.org/ns/demo/sa/chat"
OK = {"purpose": "p", "ttl_seconds": 600, "max_calls": 3}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "JSON object"),
        (b"[]", "JSON object"),
        (b"{", "not valid JSON"),
        (json.dumps({**OK, "extra": 1}).encode(), "Unknown field(s) 'extra'"),
        (
            json.dumps({"purpose": "p"}).encode(),
            "Missing required field(s): ttl_seconds, max_calls",
        ),
        (json.dumps({**OK, "ttl_seconds": True}).encode(), "ttl_seconds must be an integer"),
        (json.dumps({**OK, "ttl_seconds": 600.5}).encode(), "ttl_seconds must be an integer"),
        (json.dumps({**OK, "ttl_seconds": 59}).encode(), "ttl_seconds must be from 60 to 43200"),
        (json.dumps({**OK, "ttl_seconds": 43201}).encode(), "ttl_seconds must be from 60"),
        (json.dumps({**OK, "max_calls": 0}).encode(), "max_calls must be from 1"),
        (json.dumps({**OK, "purpose": "x" * 257}).encode(), "purpose is 257 characters"),
        (json.dumps({**OK, "purpose": "a\nb"}).encode(), "control characters"),
        (json.dumps({**OK, "models": "m"}).encode(), "models must be a list"),
        (json.dumps({**OK, "tools": [1]}).encode(), "tools must contain"),
        (json.dumps({**OK, "classification": "secret"}).encode(), "classification must be one of"),
    ],
)
def test_bad_bodies(body: bytes, needle: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_open_request(body)
    assert needle in caught.value.message


def test_good_body() -> None:
    body = json.dumps(
        {**OK, "models": ["b", "a", "a"], "tools": ["t"], "classification": "restricted"}
    )
    assert parse_open_request(body.encode()) == TaskRequest(
        "p", 600, 3, ("a", "b"), "restricted", ("t",)
    )


def make_task(max_calls: int = 2) -> object:
    return new_task(TaskRequest("p", 60, max_calls), CHAT, NOW, "task-1")


@pytest.mark.parametrize(
    ("owner", "offset", "ended", "needle"),
    [
        ("spiffe://example.org/other", 0, None, "unknown or was not opened"),
        (CHAT, 60, None, "has expired"),
        (CHAT, 0, "revoked", "has ended (revoked)"),
    ],
)
def test_unusable_tasks(owner: str, offset: int, ended: str | None, needle: str) -> None:
    task = new_task(TaskRequest("p", 60, 2), CHAT, NOW, "task-1")
    if ended:
        task = task.ended(ended, NOW)
    with pytest.raises(TaskRefused) as caught:
        check_usable(task, "task-1", owner, NOW + timedelta(seconds=offset))
    assert needle in caught.value.message


HUGE_ID = "task-" + "f" * 1_000_000


@pytest.mark.parametrize(
    ("task_id", "owner", "offset", "ended", "shown"),
    [
        ("task-1", "spiffe://example.org/other", 0, None, "Task task-1 is unknown"),
        (HUGE_ID, "spiffe://example.org/other", 0, None, "...[+999896 chars] is unknown"),
        (HUGE_ID, CHAT, 60, None, "...[+999896 chars] has expired"),
        (HUGE_ID, CHAT, 0, "revoked", "...[+999896 chars] has ended (revoked)"),
    ],
)
def test_a_refused_task_id_is_shown_cut(
    task_id: str, owner: str, offset: int, ended: str | None, shown: str
) -> None:
    task = new_task(TaskRequest("p", 60, 2), CHAT, NOW, task_id)
    if ended:
        task = task.ended(ended, NOW)
    with pytest.raises(TaskRefused) as caught:
        check_usable(task, task_id, owner, NOW + timedelta(seconds=offset))
    assert shown in caught.value.message
    assert len(caught.value.message) < 250


@pytest.mark.parametrize("store_id", ["task-1", HUGE_ID])
async def test_the_store_shows_a_refused_task_id_cut(store_id: str) -> None:
    with pytest.raises(TaskRefused) as caught:
        await MemoryTaskStore().record_call(store_id, CHAT, CallRecord(None, "internal", ()), NOW)
    assert len(caught.value.message) < 250


def test_unknown_task_fields_are_shown_cut() -> None:
    body = json.dumps({**OK, **{f"{c}" * 100_000: 1 for c in "abcdefgh"}}).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_open_request(body)
    assert caught.value.message.startswith("Unknown field(s) 'aaaa")
    assert len(caught.value.message) < 600


def test_chain_context_grows_and_max_calls_ends() -> None:
    task = new_task(TaskRequest("p", 60, 2), CHAT, NOW, "task-1")
    assert check_usable(task, "task-1", CHAT, NOW) is task
    task = task.with_call(CallRecord("m1", "internal", ("t",)), NOW)
    assert (task.calls, task.ended_reason) == (1, None)
    task = task.with_call(CallRecord("m2", "restricted", ()), NOW)
    assert task.ended_reason == "max_calls"
    opa = task.to_opa()
    assert opa["models_used"] == ["m1", "m2"]
    assert opa["classifications_seen"] == ["internal", "restricted"]
    assert opa["tools_requested"] == ["t"] and opa["ttl_seconds"] == 60


class _FlakyStore(MemoryTaskStore):
    """A memory store whose sweep query fails for a while, as Redis does when down."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.sweeps = 0
        self.recovered_twice = asyncio.Event()

    async def due(self, now: datetime) -> list[str]:
        self.sweeps += 1
        if self.sweeps == self.failures + 2:
            self.recovered_twice.set()
        if self.sweeps <= self.failures:
            raise StateUnavailable("Task state is unavailable", detail="redis down")
        return await super().due(now)


async def test_sweeper_reports_an_outage_once_and_its_end() -> None:
    store = _FlakyStore(failures=5)
    broker = CredentialBroker(object(), clock=lambda: datetime.now(UTC))
    service = TaskService(store, broker, cast(AuditLog, None), clock=lambda: datetime.now(UTC))
    with structlog.testing.capture_logs() as logs:
        async with sweeper(service, 0.001), asyncio.timeout(10):
            await store.recovered_twice.wait()
    events = [entry["event"] for entry in logs if entry["event"].startswith("task sweep")]
    assert events == ["task sweep failing", "task sweep recovered"]
