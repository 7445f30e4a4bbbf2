"""Task state: one small interface, in memory (one process) or in Redis (shared).

Contract
--------
``TaskStore`` keeps tasks and their running chain context:

* ``create(task, max_open=N)``: stores the task unless its identity already
  has ``N`` open tasks, which is ``Throttled`` (429, ``detail`` ``open_tasks``,
  retry when the soonest of them expires); open means not ended and not
  expired, so an ended or expired task stops counting at once, swept or not;
* ``get(task_id) -> Task | None``;
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
* Each task costs an AssumeRole of its own, so the open tasks of one identity
  are capped, or one workload could spend the account's STS quota for all.
  The count is checked and the task stored in one step (one Lua script in
  Redis, so the cap holds across replicas), against an index of each
  identity's tasks that is pruned of ended and expired ones as it is read:
  the work is proportional to the cap, not to the tasks in the store.
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

from proxy.errors import StateUnavailable, TaskRefused, Throttled, clip
from proxy.tasks.model import (
    CallRecord,
    Task,
    task_from_mapping,
    task_to_mapping,
    to_ms,
    unknown_task,
)

RETENTION_SECONDS = 86400
_PUBLIC_MESSAGE = "Task state is unavailable; the call was not made"


class TaskStore(Protocol):
    async def create(self, task: Task, *, max_open: int | None = None) -> None: ...

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
        return unknown_task(task_id)
    if why == "expired":
        return TaskRefused(f"Task {shown} has expired")
    return TaskRefused(f"Task {shown} has ended ({clip(why, 64)})")


def _too_many_open(
    open_count: int, max_open: int, soonest_expiry_ms: int, now_ms: int
) -> Throttled:
    return Throttled(
        f"This identity has {open_count} tasks open, the most it may have "
        f"({max_open}, tasks.max_open_per_identity); end one (DELETE /v1/tasks/{{task_id}}) "
        "or wait until one expires",
        retry_after_s=max(1.0, (soonest_expiry_ms - now_ms) / 1000),
        detail="open_tasks",
    )


class MemoryTaskStore:
    """One process, one event loop: no await between check and update."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        # Each identity's tasks that were open when last looked at.
        self._open_by: dict[str, set[str]] = {}

    async def create(self, task: Task, *, max_open: int | None = None) -> None:
        self._prune(task.opened_at)
        owned = self._open_by.setdefault(task.opened_by, set())
        owned -= {i for i in owned if self._tasks[i].state(task.opened_at) != "open"}
        if max_open is not None and len(owned) >= max_open:
            soonest = min(to_ms(self._tasks[i].expires_at) for i in owned)
            raise _too_many_open(len(owned), max_open, soonest, to_ms(task.opened_at))
        self._tasks[task.id] = task
        owned.add(task.id)

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
        self._open_by.clear()

    def _prune(self, now: datetime) -> None:
        # On create only: the store stays bounded by the tasks of the retention window.
        horizon = to_ms(now) - RETENTION_SECONDS * 1000
        for task_id in [t.id for t in self._tasks.values() if to_ms(t.expires_at) < horizon]:
            owner = self._tasks.pop(task_id).opened_by
            owned = self._open_by.get(owner)
            if owned is not None:
                owned.discard(task_id)
                if not owned:
                    del self._open_by[owner]


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

# KEYS[1] task hash, KEYS[2] open-task index, KEYS[3] the identity's task index
# (task id -> expiry ms); ARGV: now ms, max open (0: no cap), task id, expiry ms,
# hash expiry ms, task key prefix, then the hash's fields and values. The tasks
# of the identity's index are read by a key built here: one Redis, no cluster.
_CREATE = """
local owned = KEYS[3]
redis.call('ZREMRANGEBYSCORE', owned, '-inf', ARGV[1])
local max_open = tonumber(ARGV[2])
if max_open > 0 then
  for _, id in ipairs(redis.call('ZRANGE', owned, 0, -1)) do
    local task = ARGV[6] .. id
    if redis.call('EXISTS', task) == 0 or redis.call('HEXISTS', task, 'ended_reason') == 1 then
      redis.call('ZREM', owned, id)
    end
  end
  local open = redis.call('ZCARD', owned)
  if open >= max_open then
    return {'full', open, redis.call('ZRANGE', owned, 0, 0, 'WITHSCORES')[2]}
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', owned, ARGV[4], ARGV[3])
-- The index goes when the last of its tasks expires.
redis.call('PEXPIREAT', owned, redis.call('ZRANGE', owned, -1, -1, 'WITHSCORES')[2])
return {'ok'}
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
        self._create: Callable[..., Awaitable[Any]] = self._redis.register_script(_CREATE)

    def _key(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}"

    async def create(self, task: Task, *, max_open: int | None = None) -> None:
        now_ms, expires_ms = to_ms(task.opened_at), to_ms(task.expires_at)
        fields = [item for pair in task_to_mapping(task).items() for item in pair]
        args = [
            now_ms,
            max_open or 0,
            task.id,
            expires_ms,
            expires_ms + RETENTION_SECONDS * 1000,
            self._key(""),
            *fields,
        ]
        keys = [self._key(task.id), self._open_index, f"{self._prefix}open_by:{task.opened_by}"]
        async with _guard("create"):
            answer = await self._create(keys=keys, args=args)
        if answer[0] == "full":
            assert max_open is not None
            raise _too_many_open(int(answer[1]), max_open, int(float(answer[2])), now_ms)

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
