"""The audit stream: one JSON object per line, written through structlog.

Field names are a contract (DESIGN.md section 7). ``authorized`` is written
and flushed before a request is forwarded; a failure to write refuses the
call (AuditUnavailable), so nothing is ever forwarded unaudited. Every request
ends in exactly one terminal record: ``completed`` once authorized, otherwise
``denied``. Strings are JSON-escaped with ``ensure_ascii``, so no caller
controlled value can break a line or smuggle control or bidi characters.
Secrets, signatures and raw bodies never appear; the prompt is captured only
as the decision's ``audit_capture`` obligation says.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import structlog

from proxy.context import RequestContext
from proxy.errors import AuditUnavailable, ConfigError


class AuditLog:
    def __init__(self, path: str) -> None:
        self._owned: TextIO | None = None
        if path == "-":
            stream: TextIO = sys.stdout
        else:
            try:
                stream = self._owned = open(path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise ConfigError(
                    f"audit.path {path} cannot be opened for appending: {exc}"
                ) from exc
        self._logger = structlog.wrap_logger(
            structlog.WriteLogger(stream),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                structlog.processors.JSONRenderer(serializer=_dumps),
            ],
            cache_logger_on_first_use=True,
        )

    def write(self, event: str, **fields: Any) -> None:
        try:
            self._logger.info(event, **fields)
        except (OSError, ValueError) as exc:  # ValueError: write to a closed file
            raise AuditUnavailable(
                "The audit log cannot be written; the call was not made",
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=str)


def request_record(ctx: RequestContext) -> dict[str, Any]:
    """The DESIGN.md section 7 fields known so far for this request."""
    identity, route, decision, scope = ctx.identity, ctx.route, ctx.decision, ctx.scope
    observation = ctx.observation
    credentials = ctx.credentials
    return {
        "request_id": ctx.request_id,
        "decision_id": decision.decision_id if decision else None,
        "policy_revision": decision.policy_revision if decision else None,
        "spiffe_id": identity.spiffe_id if identity else None,
        "owner": decision.owner if decision else None,
        "task_id": ctx.task_id,
        "operation": route.operation if route else None,
        "model_id": ctx.model.id if ctx.model else None,
        "region": ctx.region,
        "account": ctx.account,
        "classification": ctx.classification.to_opa() if ctx.classification else None,
        "decision": {"allow": decision.allow, "reasons": list(decision.reasons)}
        if decision
        else None,
        "obligations": decision.obligations.to_audit()
        if decision and decision.obligations
        else None,
        "role_arn": scope.role_arn if scope else None,
        "role_session_name": credentials.role_session_name if credentials else None,
        "source_identity": credentials.source_identity if credentials else None,
        "assumed_role_arn": credentials.assumed_role_arn if credentials else None,
        "upstream_status": ctx.upstream_status,
        "aws_request_id": ctx.aws_request_id,
        "peer": ctx.peer,
        "bytes_in": ctx.bytes_in,
        "bytes_out": ctx.bytes_out,
        "usage": observation.usage() if observation else None,
        "tool_calls": list(observation.tool_calls) if observation else [],
        "stop_reason": observation.stop_reason if observation else None,
        "stream_exception": observation.exception if observation else None,
        "prompt": {"sha256": ctx.prompt_sha256, "captured": ctx.prompt_captured}
        if ctx.prompt_sha256
        else None,
    }


def terminal_record(ctx: RequestContext) -> tuple[str, dict[str, Any]]:
    fields = request_record(ctx)
    fields["outcome"] = ctx.outcome
    fields["latency_ms"] = ctx.elapsed_ms()
    fields["ttfb_ms"] = ctx.ttfb_ms
    if ctx.error is not None:
        fields["error"] = {
            "code": ctx.error.code,
            "status": ctx.error.status,
            "message": ctx.error.message,
            "detail": ctx.error.detail,
        }
    return ("completed" if ctx.authorized else "denied"), fields
