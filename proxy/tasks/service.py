"""The task service: the one place a task opens, is used, is counted and ends.

``TaskService`` ties the store, the credential broker and the audit log: the
one place a task ends, so that every end (deleted, expired, max_calls,
revoked) drops the task's credentials at once and writes exactly one
``task_ended`` record, whichever process noticed it first. ``sweep`` runs
every ``sweep_interval`` in each process: it ends tasks whose TTL is over and
drops cached credentials of tasks that ended elsewhere (another replica).

Security reasoning: a task's credentials are dropped when it ends; the
refusal itself does not depend on that: every call reads the task state from
the store first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from proxy.audit.log import AuditLog, task_record
from proxy.aws.credentials import CredentialBroker
from proxy.config import LimitSettings
from proxy.errors import ProxyError, TaskRefused
from proxy.policy.revision import PolicyRevision
from proxy.tasks.model import CallRecord, Task, check_usable
from proxy.tasks.store import TaskStore

_log = structlog.get_logger("bedrock_proxy.tasks")


@dataclass(frozen=True)
class TaskService:
    store: TaskStore
    broker: CredentialBroker
    audit: AuditLog
    clock: Callable[[], datetime]
    # What OPA had loaded when a task record was written (as on call records).
    revision: PolicyRevision | None = None
    # Each task is an AssumeRole of its own: one identity's open tasks are capped.
    max_open_per_identity: int = LimitSettings.open_tasks_per_identity

    async def open(self, task: Task, *, request_id: str) -> Task:
        """Store and record ``task``, or Throttled when its identity has too many open."""
        await self.store.create(task, max_open=self.max_open_per_identity)
        self._write("task_opened", request_id=request_id, **task_record(task))
        return task

    def _write(self, event: str, **fields: Any) -> None:
        revision = self.revision.current if self.revision is not None else None
        self.audit.write(event, policy_revision=revision, **fields)

    async def for_call(self, task_id: str, spiffe_id: str) -> Task:
        """The task a call names, if this identity may use it now (else TaskRefused)."""
        now = self.clock()
        task = await self.store.get(task_id)
        if task is not None and task.opened_by == spiffe_id and task.state(now) == "expired":
            await self.end(task_id, "expired")
        return check_usable(task, task_id, spiffe_id, now)

    async def record_call(self, task: Task, spiffe_id: str, call: CallRecord) -> Task:
        """Count an allowed call atomically; the call that reaches max_calls ends the task."""
        try:
            after = await self.store.record_call(task.id, spiffe_id, call, self.clock())
        except TaskRefused:
            if task.state(self.clock()) == "expired":
                await self.end(task.id, "expired")
            raise
        if after.ended_reason == "max_calls" and after.calls == after.max_calls:
            self._write("task_ended", reason="max_calls", **task_record(after))
        return after

    def release(self, task: Task) -> None:
        """Drop the credentials of a task that ended (call after its last call is signed)."""
        # In-flight fetches belong to calls already counted within max_calls: let them finish.
        self.broker.drop_task(task.id, in_flight=False)

    async def end(self, task_id: str, reason: str, *, by: str | None = None) -> Task | None:
        ended = await self.store.end(task_id, reason, self.clock())
        # Drop even when another process ended it first: this process may hold its credentials.
        self.broker.drop_task(task_id)
        if ended is not None:
            self._write("task_ended", reason=reason, ended_by=by, **task_record(ended))
        return ended

    async def sweep(self) -> None:
        now = self.clock()
        for task_id in await self.store.due(now):
            await self.end(task_id, "expired")
        for task_id in self.broker.task_ids():
            task = await self.store.get(task_id)
            if task is None or task.state(now) != "open":
                self.broker.drop_task(task_id)

    async def run_sweeper(self, interval_s: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except ProxyError as exc:
                # Redis down: calls fail closed on their own; keep trying, and say
                # so once per outage rather than once per interval.
                if not failing:
                    _log.warning("task sweep failing", code=exc.code, detail=exc.detail)
                failing = True
            else:
                if failing:
                    _log.warning("task sweep recovered")
                failing = False


@contextlib.asynccontextmanager
async def sweeper(service: TaskService, interval_s: float) -> AsyncIterator[None]:
    """Run ``service.run_sweeper`` for the life of the block."""
    runner = asyncio.get_running_loop().create_task(service.run_sweeper(interval_s))
    try:
        yield
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
