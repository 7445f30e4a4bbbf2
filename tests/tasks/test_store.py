"""Both stores behave the same; Redis is a real redis-server started here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.errors import StateUnavailable, TaskRefused, Throttled
from proxy.tasks.model import CallRecord, Task, TaskRequest, new_task
from proxy.tasks.store import MemoryTaskStore, RedisTaskStore, TaskStore
from tests.e2e.test_tasks import RedisServer

NOW = datetime.now(UTC).replace(microsecond=0)  # Redis expires keys by wall clock
CHAT = "spiffe://example.org/ns/demo/sa/chat"
CALL = CallRecord("m", "internal", ("t",))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    if request.param == "memory":
        memory = MemoryTaskStore()
        yield memory
        return
    server = RedisServer(tmp_path)
    redis = RedisTaskStore(server.url, timeout_s=1.0)
    try:
        yield redis
    finally:
        await redis.close()
        server.stop()


async def test_concurrent_calls_are_counted_exactly(store: TaskStore) -> None:
    await store.create(new_task(TaskRequest("p", 600, 30), CHAT, NOW, "task-1"))

    async def one() -> bool:
        try:
            await store.record_call("task-1", CHAT, CALL, NOW)
        except TaskRefused:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(50)))
    task = await store.get("task-1")
    assert results.count(True) == 30 and task is not None
    assert (task.calls, task.ended_reason, task.models_used) == (30, "max_calls", ("m",))


async def test_lifecycle(store: TaskStore) -> None:
    await store.create(new_task(TaskRequest("p", 60, 5), CHAT, NOW, "task-1"))
    with pytest.raises(TaskRefused, match="unknown"):
        await store.record_call("task-1", "spiffe://example.org/other", CALL, NOW)
    assert [t.id for t in await store.open_tasks(10)] == ["task-1"]
    later = NOW + timedelta(seconds=61)
    assert await store.due(later) == ["task-1"]
    with pytest.raises(TaskRefused, match="expired"):
        await store.record_call("task-1", CHAT, CALL, later)
    ended = await store.end("task-1", "expired", later)
    assert ended is not None and ended.ended_reason == "expired"
    assert await store.end("task-1", "revoked", later) is None  # exactly one transition
    assert await store.due(later) == [] and await store.open_tasks(10) == []


async def test_redis_down_is_state_unavailable(redis_server: RedisServer) -> None:
    redis = RedisTaskStore(redis_server.url, timeout_s=0.3)
    try:
        await redis.create(new_task(TaskRequest("p", 60, 5), CHAT, NOW, "task-1"))
        redis_server.stop()
        with pytest.raises(StateUnavailable) as caught:
            await redis.get("task-1")
        assert caught.value.status == 503 and "redis get" in (caught.value.detail or "")
    finally:
        await redis.close()


OTHER = "spiffe://example.org/ns/demo/sa/other"


def _task(owner: str, task_id: str, at: datetime = NOW, max_calls: int = 5) -> Task:
    return new_task(TaskRequest("p", 600, max_calls), owner, at, task_id)


async def test_open_tasks_of_one_identity_are_capped(store: TaskStore) -> None:
    for n in range(2):
        await store.create(_task(CHAT, f"task-{n}"), max_open=2)
    with pytest.raises(Throttled) as caught:
        await store.create(_task(CHAT, "task-x", NOW + timedelta(seconds=100)), max_open=2)
    refusal = caught.value
    assert (refusal.status, refusal.error_type, refusal.detail) == (
        429,
        "ThrottlingException",
        "open_tasks",
    )
    assert "2 tasks open" in refusal.message and "tasks.max_open_per_identity" in refusal.message
    # Retry when the soonest of them expires.
    assert refusal.retry_after_s == pytest.approx(500, abs=1)
    assert await store.get("task-x") is None
    # Another identity has its own count; no cap, no count.
    await store.create(_task(OTHER, "task-o"), max_open=2)
    await store.create(_task(CHAT, "task-uncapped"))


async def test_ended_and_expired_tasks_stop_counting(store: TaskStore) -> None:
    await store.create(_task(CHAT, "task-0"), max_open=2)
    await store.create(_task(CHAT, "task-1", max_calls=1), max_open=2)
    await store.end("task-0", "deleted", NOW)
    await store.create(_task(CHAT, "task-2"), max_open=2)
    # The last call ends a task (max_calls): it stops counting.
    await store.record_call("task-1", CHAT, CALL, NOW)
    await store.create(_task(CHAT, "task-3"), max_open=2)
    with pytest.raises(Throttled):
        await store.create(_task(CHAT, "task-4"), max_open=2)
    # Past their TTL, whether or not anything swept them.
    later = NOW + timedelta(seconds=601)
    await store.create(_task(CHAT, "task-5", later), max_open=2)
    await store.create(_task(CHAT, "task-6", later), max_open=2)
    assert {t.id for t in await store.open_tasks(10)} >= {"task-5", "task-6"}


async def test_the_cap_holds_under_concurrent_opens(store: TaskStore) -> None:
    async def one(n: int) -> bool:
        try:
            await store.create(_task(CHAT, f"task-{n}"), max_open=5)
        except Throttled:
            return False
        return True

    results = await asyncio.gather(*(one(n) for n in range(40)))
    assert results.count(True) == 5
