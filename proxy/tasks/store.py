"""Task state: one small interface, in memory (one process) or in Redis (shared).

Contract
--------
``TaskStore`` keeps tasks and their running chain context:

* ``create(task)``; ``get(task_id) -> Task | None``;
* ``record_call(task_id, spiffe_id, call, now) -> Task``: atomically checks
  that the task exists, belongs to ``spiffe_id``, has not ended or expired and
  has calls left, then counts the call and adds its model, classification and
  tools; the call that reaches ``max_calls`` ends the task (reason
  ``max_calls``). Refusals raise ``TaskRefused``;
* ``end(task_id, reason, now) -> Task | None``: ends an open task and returns
  it; ``None`` when it is unknown or already ended, so exactly one caller
  (across every process) sees the transition and writes ``task_ended``;
* ``due(now)``: ids of tasks whose TTL is over but that nobody ended yet;
* ``open_tasks(limit)``: the open tasks, soonest expiry first.

Security reasoning
------------------
* Counters must be exact under concurrency across replicas, or ``max_calls``
  is a suggestion. ``MemoryTaskStore`` never awaits inside a check-and-update,
  so one event loop makes it atomic; ``RedisTaskStore`` does each
  check-and-update in one Lua script, which Redis runs atomically.
* Redis unreachable, slow or answering nonsense is ``StateUnavailable``
  (503): without state the proxy cannot know a task was revoked, so it fails
  closed. Every command runs under the configured timeout, without retries.
* Ended tasks are kept for a retention period (Redis key expiry) so that a
  late call gets "ended (reason)" rather than "unknown".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from proxy.errors import StateUnavailable, TaskRefused, clip
from proxy.tasks.model import CallRecord, Task, task_from_mapping, task_to_mapping, to_ms

RETENTION_SECONDS = 86400
_PUBLIC_MESSAGE = "Task state is unavailable; the call was not made"


class TaskStore(Protocol):
    async def create(self, task: Task) -> None: ...

    async def get(self, task_id: str) -> Task | None: ...

    async def record_call(
        self, task_id: str, spiffe_id: str, call: CallRecord, now: datetime
    ) -> Task: ...

    async def end(self, task_id: str, reason: str, now: datetime) -> Task | None: ...

    async def due(self, now: datetime) -> list[str]: ...

    async def open_tasks(self, limit: int) -> list[Task]: ...

    async def close(self) -> None: ...


def _refusal(task_id: str, why: str) -> TaskRefused:
    shown = clip(task_id)
    if why == "unknown":
        return TaskRefused(f"Task {shown} is unknown or was not opened by this identity")
    if why == "expired":
        return TaskRefused(f"Task {shown} has expired")
    return TaskRefused(f"Task {shown} has ended ({clip(why, 64)})")


class MemoryTaskStore:
    """One process, one event loop: no await between check and update."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    async def create(self, task: Task) -> None:
        self._prune(task.opened_at)
        self._tasks[task.id] = task

    async def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    async def record_call(
        self, task_id: str, spiffe_id: str, call: CallRecord, now: datetime
    ) -> Task:
        task = self._tasks.get(task_id)
        if task is None or task.opened_by != spiffe_id:
            raise _refusal(task_id, "unknown")
        state = task.state(now)
        if state != "open":
            raise _refusal(task_id, "expired" if state == "expired" else str(task.ended_reason))
        task = self._tasks[task_id] = task.with_call(call, now)
        return task

    async def end(self, task_id: str, reason: str, now: datetime) -> Task | None:
        task = self._tasks.get(task_id)
        if task is None or task.ended_reason is not None:
            return None
        task = self._tasks[task_id] = task.ended(reason, now)
        return task

    async def due(self, now: datetime) -> list[str]:
        return [t.id for t in self._tasks.values() if t.state(now) == "expired"]

    async def open_tasks(self, limit: int) -> list[Task]:
        live = [t for t in self._tasks.values() if t.ended_reason is None]
        return sorted(live, key=lambda t: t.expires_at)[:limit]

    async def close(self) -> None:
        self._tasks.clear()

    def _prune(self, now: datetime) -> None:
        # On create only: the store stays bounded by the tasks of the retention window.
        horizon = to_ms(now) - RETENTION_SECONDS * 1000
        for task_id in [t.id for t in self._tasks.values() if to_ms(t.expires_at) < horizon]:
            del self._tasks[task_id]


# KEYS[1] task hash, KEYS[2] open-task index; ARGV: spiffe id, now ms, model id
# ("" for none), classification, tools (JSON list), task id.
_RECORD_CALL = """
local key = KEYS[1]
local t = redis.call('HMGET', key, 'opened_by', 'ended_reason', 'expires_ms', 'calls', 'max_calls')
if not t[1] or t[1] ~= ARGV[1] then return {'refused', 'unknown'} end
if t[2] then return {'refused', t[2]} end
if tonumber(ARGV[2]) >= tonumber(t[3]) then return {'refused', 'expired'} end
local calls = tonumber(t[4]) + 1
if calls > tonumber(t[5]) then return {'refused', 'max_calls'} end
local function add(field, items)
  local current = cjson.decode(redis.call('HGET', key, field))
  local seen = {}
  for _, v in ipairs(current) do seen[v] = true end
  for _, v in ipairs(items) do
    if not seen[v] then table.insert(current, v); seen[v] = true end
  end
  table.sort(current)
  if #current == 0 then
    redis.call('HSET', key, field, '[]')
  else
    redis.call('HSET', key, field, cjson.encode(current))
  end
end
redis.call('HSET', key, 'calls', calls)
if ARGV[3] ~= '' then add('models_used', {ARGV[3]}) end
add('classifications_seen', {ARGV[4]})
add('tools_requested', cjson.decode(ARGV[5]))
if calls >= tonumber(t[5]) then
  redis.call('HSET', key, 'ended_reason', 'max_calls', 'ended_ms', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[6])
end
return {'ok', redis.call('HGETALL', key)}
"""

# KEYS[1] task hash, KEYS[2] open-task index; ARGV: reason, now ms, task id.
_END = """
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return {'missing'} end
if redis.call('HEXISTS', key, 'ended_reason') == 1 then return {'already'} end
redis.call('HSET', key, 'ended_reason', ARGV[1], 'ended_ms', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return {'ended', redis.call('HGETALL', key)}
"""


class RedisTaskStore:
    """Tasks in Redis hashes, open tasks in a sorted set scored by expiry (ms)."""

    def __init__(self, url: str, *, timeout_s: float, prefix: str = "bedrock-proxy:") -> None:
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # The request is waiting: one attempt, then fail closed.
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._prefix = prefix
        self._open_index = prefix + "open"
        self._record_call: Callable[..., Awaitable[Any]] = self._redis.register_script(_RECORD_CALL)
        self._end: Callable[..., Awaitable[Any]] = self._redis.register_script(_END)

    def _key(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}"

    async def create(self, task: Task) -> None:
        key = self._key(task.id)
        async with _guard("create"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=task_to_mapping(task))
                pipe.pexpireat(key, to_ms(task.expires_at) + RETENTION_SECONDS * 1000)
                pipe.zadd(self._open_index, {task.id: to_ms(task.expires_at)})
                await pipe.execute()

    async def get(self, task_id: str) -> Task | None:
        async with _guard("get"):
            raw = await self._redis.hgetall(self._key(task_id))
        return _task_or_none(raw)

    async def record_call(
        self, task_id: str, spiffe_id: str, call: CallRecord, now: datetime
    ) -> Task:
        args = [
            spiffe_id,
            to_ms(now),
            call.model_id or "",
            call.classification,
            json.dumps(list(call.tools)),
            task_id,
        ]
        async with _guard("record_call"):
            answer = await self._record_call(keys=[self._key(task_id), self._open_index], args=args)
        if answer[0] != "ok":
            raise _refusal(task_id, str(answer[1]))
        return _task_from_pairs(answer[1])

    async def end(self, task_id: str, reason: str, now: datetime) -> Task | None:
        async with _guard("end"):
            answer = await self._end(
                keys=[self._key(task_id), self._open_index], args=[reason, to_ms(now), task_id]
            )
        return _task_from_pairs(answer[1]) if answer[0] == "ended" else None

    async def due(self, now: datetime) -> list[str]:
        async with _guard("due"):
            ids = await self._redis.zrangebyscore(
                self._open_index, "-inf", to_ms(now), start=0, num=100
            )
        return [str(task_id) for task_id in ids]

    async def open_tasks(self, limit: int) -> list[Task]:
        async with _guard("open_tasks"):
            ids = await self._redis.zrange(self._open_index, 0, limit - 1)
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hgetall(self._key(task_id))
                raws = await pipe.execute()
        return [task for task in map(_task_or_none, raws) if task is not None]

    async def close(self) -> None:
        await self._redis.aclose()


@asynccontextmanager
async def _guard(operation: str) -> AsyncIterator[None]:
    """Translate every Redis failure, at this one boundary, into StateUnavailable."""
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise StateUnavailable(
            _PUBLIC_MESSAGE, detail=f"redis {operation}: {type(exc).__name__}: {exc}"
        ) from exc


def _task_from_pairs(pairs: list[Any]) -> Task:
    return _decode(dict(zip(pairs[::2], pairs[1::2], strict=True)))


def _task_or_none(raw: dict[str, Any]) -> Task | None:
    return _decode(raw) if raw else None


def _decode(raw: dict[str, Any]) -> Task:
    try:
        return task_from_mapping(raw)
    except (KeyError, ValueError, TypeError) as exc:
        raise StateUnavailable(_PUBLIC_MESSAGE, detail=f"malformed task in redis: {exc!r}") from exc


def open_store(url: str, *, timeout_s: float) -> TaskStore:
    """``memory`` or a ``redis://`` / ``rediss://`` URL (config validated it)."""
    if url == "memory":
        return MemoryTaskStore()
    return RedisTaskStore(url, timeout_s=timeout_s)
