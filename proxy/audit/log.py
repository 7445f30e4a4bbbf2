"""The audit stream: one chained JSON object per line, written through structlog.

Field names are a contract (docs/audit.md). ``authorized`` is written
before a request is forwarded and ``write_ahead`` returns only once it is
durable under the fsync policy (``always``: fsync per record; ``batch``: the
request waits for the group fsync of its batch); a failure to write or sync
refuses the call (AuditUnavailable), so nothing is ever forwarded unaudited.
Every request ends in exactly one terminal record: ``completed`` once
authorized, otherwise ``denied``.

Every line is a link of a hash chain with signed checkpoints (``audit_chain``);
the chain resumes from the last line of the file after a restart and continues
across rotation. Strings are JSON-escaped with ``ensure_ascii``, so no caller
controlled value can break a line or smuggle control or bidi characters.
Secrets, signatures and raw bodies never appear; the prompt is captured only as
the decision's ``audit_capture`` obligation says. TLS handshake failures are
recorded per connection, like connections refused at a limit or cut at a
deadline, rate-limited per reason so a flood cannot fill the disk nor hide
another reason's records.

No line is longer than ``max_record_bytes``: a record that would be is cut
down before it is chained (``bound.fit``: the largest values outside the
contract fields become a marker, and ``truncated`` names them), so it still
verifies, and a request cannot make the log pay for its own size.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Literal

import structlog

from proxy.audit import ocsf
from proxy.audit.bound import DEFAULT_MAX_RECORD_BYTES, fit
from proxy.audit.chain import (
    CHECKPOINT,
    SEAL_BYTES,
    ChainHead,
    Signer,
    head_of,
    load_signer,
    parse_line,
    seal,
)
from proxy.audit.sinks import AuditSink, FileSink, StdoutSink, worker_path
from proxy.config import Settings
from proxy.context import RequestContext
from proxy.errors import AuditUnavailable, ConfigError, clip
from proxy.policy.decision import Decision, shown_reasons
from proxy.tasks.model import Task

FsyncPolicy = Literal["always", "batch"]
Format = Literal["json", "ocsf"]


class _SinkLogger:
    """structlog's output end: the chained line goes to the sink, then the head advances."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    def info(self, line: bytes, head: ChainHead) -> None:
        self._log._sink.write(line)
        self._log._head = head


class AuditLog:
    def __init__(
        self,
        sink: AuditSink,
        *,
        signer: Signer | None = None,
        fsync: FsyncPolicy = "always",
        batch_s: float = 0.005,
        sync_executor: Executor | None = None,
        checkpoint_every: int = 1000,
        record_format: Format = "json",
        connection_records_per_minute: int = 60,
        observe_write: Callable[[float], None] | None = None,
        worker: int = 0,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self._sink = sink
        self._max_record_bytes = max_record_bytes
        self._signer = signer
        self._fsync = fsync
        self._batch_s = batch_s
        # The fsync's own threads (None: the loop's default, tests only): body work
        # and STS calls have theirs, so no flood of either delays a write-ahead record.
        self._sync_executor = sync_executor
        self._checkpoint_every = checkpoint_every
        self._format = record_format
        self._observe_write = observe_write
        self._since_checkpoint = 0
        self._batch: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._connection_budget = ReasonBudget(connection_records_per_minute, 60.0)
        self._logger = structlog.wrap_logger(
            _SinkLogger(self),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                self._render,
            ],
            cache_logger_on_first_use=True,
        )
        self._head, start_event, previous = self._resume()
        self.write(
            start_event,
            worker=worker,
            pid=os.getpid(),
            format=record_format,
            key_id=signer.key_id if signer else None,
            **previous,
        )

    def _resume(self) -> tuple[ChainHead, str, dict[str, Any]]:
        try:
            last = self._sink.last_line()
            if last is None:
                return ChainHead.new(), "chain_start", {}
            head = head_of(last)
        except ValueError:  # not a chained record, or too long to read back
            return ChainHead.new(), "chain_start", {"previous_unchained": True}
        if self._key_changed(last):
            # One chain, one signing key (audit verify holds checkpoints to it): a new
            # key starts a new chain, which names the head of the one it follows.
            previous = {"previous_chain": head.chain, "previous_hash": head.hash}
            return ChainHead.new(), "chain_start", {**previous, "previous_sealed": head.sealed}
        # previous_sealed false: the last run ended without its shutdown checkpoint (crash).
        return head, "chain_resumed", {"previous_sealed": head.sealed}

    def _key_changed(self, last_line: bytes) -> bool:
        """Whether the previous run's last checkpoint was signed by another key than ours."""
        record = parse_line(last_line).record
        if record.get("event") != CHECKPOINT:
            return False  # a crashed run: its key shows only further back; keep the chain
        return record.get("key_id") != (self._signer.key_id if self._signer else None)

    def _render(self, logger: object, method: str, event_dict: Any) -> Any:
        record = {"ts": event_dict.pop("ts"), "event": event_dict.pop("event"), **event_dict}
        line, head = seal(self._shape(record), self._head)
        if len(line) > self._max_record_bytes:
            fitted = fit(record, self._max_record_bytes - SEAL_BYTES, self._shape)
            line, head = seal(self._shape(fitted), self._head)
            structlog.get_logger("bedrock_proxy").warning(
                "audit record truncated",
                record_event=record["event"],
                request_id=fitted.get("request_id"),
                fields=fitted.get("truncated"),
            )
        return (line,), {"head": head}

    def _shape(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record as written: a checkpoint signed, a request record in OCSF if asked."""
        if record["event"] == CHECKPOINT:
            return record | (
                self._signer.checkpoint_fields(self._head)
                if self._signer
                else {"key_id": None, "public_key": None, "sig": None}
            )
        if self._format == "ocsf":
            return ocsf.to_ocsf(record)
        return record

    def write(self, event: str, **fields: Any) -> None:
        started = time.perf_counter()
        try:
            if self._closed:
                raise ValueError("the audit log is closed")
            self._rotate_if_due()
            self._logger.info(event, **fields)
            self._since_checkpoint += 1
            if self._checkpoint_every and self._since_checkpoint >= self._checkpoint_every:
                self._checkpoint("count")
        except (OSError, ValueError) as exc:  # ValueError: closed sink or file
            raise _unavailable(exc) from exc
        finally:
            if self._observe_write is not None:
                self._observe_write(time.perf_counter() - started)

    def _rotate_if_due(self) -> None:
        # The old file ends with a checkpoint, so each file verifies up to its end.
        if self._sink.rotation_due():
            self._checkpoint("rotation")
            self._sink.rotate()

    async def write_ahead(self, event: str, **fields: Any) -> None:
        """Write and return once the record is durable; AuditUnavailable otherwise."""
        self.write(event, **fields)
        if self._fsync == "always":
            await self._sync()
            return
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = batch = loop.create_future()
            batch.add_done_callback(_retrieve)
            loop.call_later(self._batch_s, self._sync_batch, batch)
        await asyncio.shield(self._batch)

    def _sync_batch(self, batch: asyncio.Future[None]) -> None:
        self._batch = None  # later writes join the next batch
        task = asyncio.get_running_loop().create_task(self._sync_into(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync_into(self, batch: asyncio.Future[None]) -> None:
        try:
            await self._sync()
        except AuditUnavailable as exc:
            batch.set_exception(exc)
        else:
            batch.set_result(None)

    async def _sync(self) -> None:
        started = time.perf_counter()
        try:
            # fsync blocks for milliseconds: never on the event loop.
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._sync_executor, self._sink.sync)
        except (OSError, ValueError) as exc:
            raise _unavailable(exc) from exc
        finally:
            if self._observe_write is not None:
                self._observe_write(time.perf_counter() - started)

    def connection_failed(self, peer: str | None, reason: str) -> None:
        """A connection refused, failed in its TLS handshake or cut: at most N records a
        minute for each reason, the rest counted in the reason's next record."""
        allowed, suppressed = self._connection_budget.take(reason, time.monotonic())
        if allowed:
            try:
                self.write("connection", peer=peer, reason=reason, suppressed=suppressed)
            except AuditUnavailable:
                pass  # no request is waiting on this record; refusals come from write_ahead

    def checkpoint(self, reason: str = "time") -> None:
        """Sign the chain so far (nothing to do if no record came since the last one)."""
        if self._since_checkpoint and not self._closed:
            try:
                self._checkpoint(reason)
            except (OSError, ValueError) as exc:
                raise _unavailable(exc) from exc

    def _checkpoint(self, reason: str, *, final: bool = False) -> None:
        self._logger.info(CHECKPOINT, reason=reason, final=final, records=self._since_checkpoint)
        self._since_checkpoint = 0

    async def run_checkpoints(self, interval_s: float) -> None:
        """Checkpoint every ``interval_s`` (and rotate by age) until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if not self._closed:
                    self._rotate_if_due()
                self.checkpoint("time")
            except (OSError, ValueError, AuditUnavailable):
                structlog.get_logger("bedrock_proxy").error("audit checkpoint failed")

    def close(self) -> None:
        """Seal the chain with a final checkpoint, then close the sink."""
        if self._closed:
            return
        try:
            self._checkpoint("shutdown", final=True)
        except (OSError, ValueError):
            structlog.get_logger("bedrock_proxy").error("audit final checkpoint failed")
        finally:
            self._closed = True
            self._sink.close()


class _Budget:
    """A fixed window counter: ``limit`` events per ``window_s``, the excess counted."""

    def __init__(self, limit: int, window_s: float) -> None:
        self._limit, self._window_s = limit, window_s
        self._start, self._used, self._suppressed = float("-inf"), 0, 0

    def take(self, now: float) -> tuple[bool, int]:
        if now - self._start >= self._window_s:
            self._start, self._used = now, 0
        if self._used >= self._limit:
            self._suppressed += 1
            return False, 0
        self._used += 1
        suppressed, self._suppressed = self._suppressed, 0
        return True, suppressed


class ReasonBudget:
    """A ``_Budget`` for each reason: a flood of one kind of failure (anonymous
    handshakes, say) leaves room for the records of every other kind.

    At most ``MAX_REASONS`` reasons get their own (OpenSSL's reasons are a fixed
    but long list); any further ones share one.
    """

    MAX_REASONS = 256

    def __init__(self, limit: int, window_s: float) -> None:
        self._limit, self._window_s = limit, window_s
        self._budgets: dict[str, _Budget] = {}
        self._shared = _Budget(limit, window_s)

    def take(self, reason: str, now: float) -> tuple[bool, int]:
        budget = self._budgets.get(reason)
        if budget is None:
            if len(self._budgets) >= self.MAX_REASONS:
                return self._shared.take(now)
            budget = self._budgets[reason] = _Budget(self._limit, self._window_s)
        return budget.take(now)


def _retrieve(future: asyncio.Future[None]) -> None:
    # A batch whose waiters were all cancelled must not warn "exception never retrieved".
    if not future.cancelled():
        future.exception()


def _unavailable(exc: BaseException) -> AuditUnavailable:
    return AuditUnavailable(
        "The audit log cannot be written; the call was not made",
        detail=f"{type(exc).__name__}: {exc}",
    )


# An identifier from the caller, OPA or Bedrock in a request record: no valid
# SPIFFE ID, model id or ARN is longer, so a valid one is never cut.
MAX_ID_CHARS = 2048
# Tool calls named by the model's answer: as many as a request may declare.
MAX_TOOL_CALLS = 128
MAX_TOOL_CALL_CHARS = 128


def _id(value: str | None) -> str | None:
    return None if value is None else clip(value, MAX_ID_CHARS)


def request_record(ctx: RequestContext) -> dict[str, Any]:
    """The record fields (docs/audit.md) known so far for this request; every string
    that comes from the request, OPA or Bedrock is bounded here."""
    identity, route, decision, scope = ctx.identity, ctx.route, ctx.decision, ctx.scope
    target, credentials, relay = ctx.target, ctx.credentials, ctx.relay
    model = target.model if target else None
    observation = relay.observation if relay else None
    return {
        "request_id": ctx.request_id,
        "decision_id": _id(decision.decision_id) if decision else None,
        "policy_revision": _id(decision.policy_revision) if decision else None,
        "spiffe_id": _id(identity.spiffe_id) if identity else None,
        "owner": _id(decision.owner) if decision else None,
        "task_id": _id(target.task_id) if target else None,
        "operation": route.operation if route else None,
        "model_id": _id(model.id) if model else None,
        "model_arn": _id(model.arn) if model else None,
        "region": target.region if target else None,
        "account": target.account if target else None,
        "classification": ctx.classification.to_opa() if ctx.classification else None,
        "decision": _decision(decision) if decision else None,
        "obligations": decision.obligations.to_audit()
        if decision and decision.obligations
        else None,
        "role_arn": scope.role_arn if scope else None,
        "role_session_name": credentials.role_session_name if credentials else None,
        "source_identity": credentials.source_identity if credentials else None,
        "assumed_role_arn": _id(credentials.assumed_role_arn) if credentials else None,
        "upstream_status": relay.status if relay else None,
        "aws_request_id": _id(relay.aws_request_id) if relay else None,
        "peer": ctx.peer,
        "bytes_in": ctx.bytes_in,
        "bytes_out": relay.bytes_out if relay else 0,
        "usage": observation.usage() if observation else None,
        "tool_calls": [
            clip(name, MAX_TOOL_CALL_CHARS) for name in observation.tool_calls[:MAX_TOOL_CALLS]
        ]
        if observation
        else [],
        "stop_reason": _id(observation.stop_reason) if observation else None,
        "stream_exception": _id(observation.exception) if observation else None,
        "prompt": {
            "sha256": ctx.prompt.sha256,
            "captured": ctx.prompt.captured,
            "truncated": ctx.prompt.truncated,
        }
        if ctx.prompt and ctx.prompt.sha256
        else None,
        "response": relay.capture.record() if relay and relay.capture else None,
    }


def _decision(decision: Decision) -> dict[str, Any]:
    # Bounded as in the deny message: a policy may echo caller input into reasons.
    reasons, omitted = shown_reasons(decision.reasons)
    return {"allow": decision.allow, "reasons": reasons, "reasons_omitted": omitted}


def terminal_record(ctx: RequestContext) -> tuple[str, dict[str, Any]]:
    fields = request_record(ctx)
    if ctx.authorized and fields["prompt"] is not None:
        # One copy a request: the captured prompt is in its ``authorized`` record.
        fields["prompt"] = {**fields["prompt"], "captured": None}
    fields["outcome"] = str(ctx.outcome())
    fields["latency_ms"] = ctx.elapsed_ms()
    fields["ttfb_ms"] = ctx.relay.ttfb_ms if ctx.relay else None
    error = ctx.error or (ctx.relay.error if ctx.relay else None)
    if error is not None:
        fields["error"] = {
            "code": error.code,
            "status": error.status,
            "message": error.message,
            "detail": error.detail,
        }
    return ("completed" if ctx.authorized else "denied"), fields


def task_record(task: Task) -> dict[str, Any]:
    """Fields of ``task_opened`` / ``task_ended`` records (the event adds ``reason``)."""
    opa = task.to_opa()
    return {
        "task_id": task.id,
        "spiffe_id": task.opened_by,
        "purpose": task.purpose,
        "expires_at": opa["expires_at"],
        "max_calls": task.max_calls,
        "calls": task.calls,
        "models_used": opa["models_used"],
        "classifications_seen": opa["classifications_seen"],
        "tools_requested": opa["tools_requested"],
    }


def open_audit_log(
    settings: Settings,
    *,
    worker: int = 0,
    observe_write: Callable[[float], None] | None = None,
    sync_executor: Executor | None = None,
) -> AuditLog:
    """The configured sink and signer; worker n > 0 writes its own file (its own chain)."""
    options = settings.audit
    sink: AuditSink
    try:
        if settings.audit_path == "-":
            sink = StdoutSink()
        else:
            sink = FileSink(
                worker_path(Path(settings.audit_path), worker),
                max_bytes=options.rotate_bytes,
                max_age_s=options.rotate_seconds,
            )
    except OSError as exc:
        raise ConfigError(
            f"audit.path {settings.audit_path} cannot be opened for appending: {exc}"
        ) from exc
    try:
        return AuditLog(
            sink,
            signer=load_signer(options.signing_key) if options.signing_key else None,
            sync_executor=sync_executor,
            fsync="batch" if options.fsync == "batch" else "always",
            batch_s=options.batch_s,
            checkpoint_every=options.checkpoint_every,
            record_format="ocsf" if options.format == "ocsf" else "json",
            connection_records_per_minute=options.connection_records_per_minute,
            observe_write=observe_write,
            worker=worker,
            max_record_bytes=options.max_record_bytes,
        )
    except AuditUnavailable as exc:
        sink.close()
        raise ConfigError(
            f"audit.path {settings.audit_path} cannot be written: {exc.detail}"
        ) from exc
