"""Both stores behave the same; Redis is a real redis-server started here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.errors import StateUnavailable, TaskRefused
from proxy.tasks.model import CallRecord, TaskRequest, new_task
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
