"""The policy decision: build OPA's input, ask OPA, read its answer strictly.

``build_opa_input`` and ``parse_decision`` are pure; ``OpaDecider`` is the thin
I/O shell that asks through the process's one ``OpaClient`` (``opa.py``: one
keep-alive session, one timeout per query, no retries, every transport failure
already translated to PolicyUnavailable).

Fail closed: OPA unreachable, slow, non-200 or not JSON -> PolicyUnavailable
(503). An answer without a result object is malformed -> PolicyUnavailable.
A result whose ``allow`` is anything but the boolean ``true`` is a deny. An
obligation the proxy does not know, or a malformed one, denies the call: it
is never silently ignored.

The reasons are the policy author's, but a policy may echo the caller's input
into them (one reason per tool, say): the deny message and the audit record
show at most ``MAX_REASONS_SHOWN`` of them, each at most ``MAX_REASON_CHARS``
long, and say how many were left out (``shown_reasons``, ``denial_message``),
so a request cannot make its refusal grow with its own size. OPA's decision
log, joined by the decision id, keeps them all.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proxy.errors import ObligationUnenforceable, PolicyUnavailable, clip
from proxy.identity.svid import WorkloadIdentity
from proxy.policy.classify.classifier import Classification
from proxy.policy.opa import OpaClient
from proxy.policy.revision import PolicyRevision
from proxy.request.models import ModelRef
from proxy.request.operations import Route
from proxy.tasks.model import Task

DECISION_PACKAGE = "bedrock.authz"
DECISION_RULE = "decision"
# Body-free: what refuses a caller whatever its body says (checked before the body is read).
ADMISSION_RULE = "admission"
AUDIT_CAPTURE = ("none", "hash", "redacted", "full")
MAX_REASONS_SHOWN = 5
MAX_REASON_CHARS = 256
# Matched with fullmatch: "$" would also accept a trailing newline.
_ROLE_ARN = re.compile(r"arn:aws(-us-gov|-cn)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}", re.ASCII)
_GUARDRAIL_VERSION = re.compile(r"[1-9][0-9]{0,7}|DRAFT")
# botocore's GuardrailIdentifier pattern, without the empty string and with the
# partition suffix narrowed from [^:] to [a-z-]: the value becomes an HTTP header
# on InvokeModel, so nothing else may pass.
_GUARDRAIL_ID = re.compile(
    r"[a-z0-9]+|arn:aws(-[a-z-]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:guardrail/[a-z0-9]+"
)


@dataclass(frozen=True)
class Guardrail:
    identifier: str
    version: str


@dataclass(frozen=True)
class Obligations:
    role_arn: str
    session_seconds: int
    audit_capture: str = "none"
    guardrail: Guardrail | None = None
    max_output_tokens: int | None = None

    def to_audit(self) -> dict[str, object]:
        return {
            "role_arn": self.role_arn,
            "session_seconds": self.session_seconds,
            "audit_capture": self.audit_capture,
            "guardrail": None
            if self.guardrail is None
            else {"identifier": self.guardrail.identifier, "version": self.guardrail.version},
            "max_output_tokens": self.max_output_tokens,
        }


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...]
    obligations: Obligations | None
    decision_id: str
    policy_revision: str | None
    owner: str | None = None


@dataclass(frozen=True)
class PolicyQuery:
    """Everything the policy sees about one call."""

    identity: WorkloadIdentity
    route: Route
    model: ModelRef | None
    # None only on the admin listener, which calls no region (context.Target).
    region: str | None
    account: str | None
    body_bytes: int
    tools: tuple[str, ...]
    guardrail: Guardrail | None
    classification: Classification
    now: datetime
    async_output: AsyncOutput | None = None
    task: Task | None = None
    # Where the body carries tools the proxy could not read (request.tools.DeclaredTools).
    tools_unreadable: tuple[str, ...] = ()
    bedrock_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AsyncOutput:
    """Where StartAsyncInvoke would write its results: policy decides if that may leave."""

    s3_uri: str | None
    bucket_owner: str | None


def build_opa_input(query: PolicyQuery) -> dict[str, Any]:
    """The OPA input document of docs/opa.md (keys are a contract)."""
    route = query.route
    return {
        "identity": query.identity.to_opa(),
        "request": {
            "operation": route.operation,
            "method": route.method,
            "path": route.wire_path,
            "region": query.region,
            "account": query.account,
            "model": None if query.model is None else query.model.to_opa(),
            "resource": None if route.resource is None else route.resource.to_opa(),
            "body_bytes": query.body_bytes,
            "tools": list(query.tools),
            "tools_unreadable": list(query.tools_unreadable),
            "stream": route.stream,
            "guardrail": None
            if query.guardrail is None
            else {"identifier": query.guardrail.identifier, "version": query.guardrail.version},
            "bedrock_headers": dict(query.bedrock_headers),
            "async_output": None
            if query.async_output is None
            else {
                "s3_uri": query.async_output.s3_uri,
                "bucket_owner": query.async_output.bucket_owner,
            },
        },
        "classification": query.classification.to_opa(),
        "task": None if query.task is None else query.task.to_opa(),
        "time": query.now.isoformat().replace("+00:00", "Z"),
    }


def shown_reasons(reasons: Sequence[str]) -> tuple[list[str], int]:
    """The first ``MAX_REASONS_SHOWN`` reasons, each clipped, and how many were left out."""
    shown = [clip(reason, MAX_REASON_CHARS) for reason in reasons[:MAX_REASONS_SHOWN]]
    return shown, max(0, len(reasons) - MAX_REASONS_SHOWN)


def denial_message(decision: Decision) -> str:
    """The 403 (or 400) message of a deny: its reasons, bounded, and the decision id."""
    shown, omitted = shown_reasons(decision.reasons)
    reasons = "; ".join(shown) + (f" ... and {omitted} more" if omitted else "")
    return f"Denied by policy: {reasons} (decision {clip(decision.decision_id)})"


def parse_decision(
    answer: object,
    *,
    fallback_id: str,
    revision: str | None = None,
    obligations_required: bool = True,
) -> Decision:
    """Read OPA's ``/v1/data`` answer; anything short of a well-typed allow denies.

    ``obligations_required=False`` is for decisions that assume no AWS role (the
    admin plane): an allow then carries ``obligations=None``.
    """
    if not isinstance(answer, Mapping):
        raise PolicyUnavailable("The policy service gave no usable answer", detail="not an object")
    decision_id = _text(answer.get("decision_id")) or fallback_id
    revision = _revision(answer.get("provenance")) or revision
    result = answer.get("result")
    if not isinstance(result, Mapping):
        raise PolicyUnavailable(
            "The policy service gave no usable answer",
            detail=f"decision {decision_id}: result is undefined or not an object",
        )
    reasons = tuple(r for r in result.get("reasons") or () if isinstance(r, str))
    owner = _text(result.get("owner"))
    if result.get("allow") is not True:
        if "allow" not in result or not isinstance(result.get("allow"), bool):
            reasons += ("policy_error: the decision has no boolean 'allow'",)
        reasons = reasons or ("denied by policy",)
        return Decision(False, reasons, None, decision_id, revision, owner)
    if not obligations_required:
        return Decision(True, reasons, None, decision_id, revision, owner)
    obligations = parse_obligations(result.get("obligations"), decision_id)
    return Decision(True, reasons, obligations, decision_id, revision, owner)


def parse_obligations(raw: object, decision_id: str) -> Obligations:
    def refuse(why: str) -> ObligationUnenforceable:
        return ObligationUnenforceable(
            f"Policy obligation cannot be enforced: {why} (decision {decision_id})"
        )

    if not isinstance(raw, Mapping):
        raise refuse("obligations missing")
    unknown = set(raw) - {
        "role_arn",
        "session_seconds",
        "audit_capture",
        "guardrail",
        "max_output_tokens",
    }
    if unknown:
        raise refuse(f"unknown obligation(s) {sorted(unknown)}")
    role_arn = raw.get("role_arn")
    if not isinstance(role_arn, str) or not _ROLE_ARN.fullmatch(role_arn):
        raise refuse("role_arn is missing or not an IAM role ARN")
    seconds = raw.get("session_seconds", 900)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 900 <= seconds <= 43200:
        raise refuse("session_seconds must be an integer from 900 to 43200")
    capture = raw.get("audit_capture", "none")
    if capture not in AUDIT_CAPTURE:
        raise refuse(f"audit_capture must be one of {', '.join(AUDIT_CAPTURE)}")
    max_tokens = raw.get("max_output_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise refuse("max_output_tokens must be a positive integer")
    return Obligations(
        role_arn=role_arn,
        session_seconds=seconds,
        audit_capture=str(capture),
        guardrail=_guardrail(raw.get("guardrail"), refuse),
        max_output_tokens=max_tokens,
    )


def _guardrail(raw: object, refuse: Any) -> Guardrail | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise refuse("guardrail must be an object")
    identifier, version = raw.get("identifier"), raw.get("version")
    if (
        not isinstance(identifier, str)
        or not 0 < len(identifier) <= 2048
        or not _GUARDRAIL_ID.fullmatch(identifier)
    ):
        raise refuse("guardrail.identifier must be a guardrail id or ARN")
    if not isinstance(version, str) or not _GUARDRAIL_VERSION.fullmatch(version):
        raise refuse("guardrail.version must be a version number or DRAFT")
    return Guardrail(identifier, version)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _revision(provenance: object) -> str | None:
    if not isinstance(provenance, Mapping):
        return None
    bundles = provenance.get("bundles")
    if isinstance(bundles, Mapping) and bundles:
        return ",".join(
            f"{name}:{info.get('revision', '')}"
            for name, info in sorted(bundles.items())
            if isinstance(info, Mapping)
        )
    return _text(provenance.get("revision"))


class OpaDecider:
    """Asks OPA for ``data.<package>.<rule>``; the client's timeout bounds every ask."""

    def __init__(
        self,
        opa: OpaClient,
        *,
        package: str = DECISION_PACKAGE,
        rule: str = DECISION_RULE,
        revision: PolicyRevision | None = None,
        undefined_allows: bool = False,
    ) -> None:
        self._opa = opa
        # Only the runtime decision yields obligations (the admin plane assumes no
        # role; the admission check only refuses).
        self._package, self._rule = package, rule
        # A rule the policy may leave undefined (admission): undefined refuses nothing.
        self._undefined_allows = undefined_allows
        self._obligations_required = (package, rule) == (DECISION_PACKAGE, DECISION_RULE)
        # One revision poller per process, shared by every decider asking the same OPA.
        self._revision = revision

    async def decide(self, opa_input: dict[str, Any]) -> Decision:
        fallback_id = f"proxy-{uuid.uuid4()}"
        answer = await self._opa.query(f"{self._package}.{self._rule}", opa_input)
        revision = None if self._revision is None else self._revision.current
        if self._undefined_allows and isinstance(answer, Mapping) and "result" not in answer:
            # A policy without an admission rule refuses nothing early; the full
            # decision, which must be defined, still decides every call.
            return Decision(True, (), None, fallback_id, revision)
        return parse_decision(
            answer,
            fallback_id=fallback_id,
            revision=revision,
            obligations_required=self._obligations_required,
        )
