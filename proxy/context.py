"""The per-request record: what each stage established, kept for the audit record.

Stages are pure or thin and return typed results; only the request's handler
(``dataplane/pipeline.py``, ``tasks/api.py``) stores those results here, and
only ``outcome`` decides how the request ended, from what is stored. The
audit record (``audit/log.py``) is built from these typed values, so what the
SOC reads is exactly what the stages decided.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from proxy.aws.credentials import CredentialScope, SessionCredentials
from proxy.dataplane.upstream import RelayResult
from proxy.errors import Outcome, ProxyError
from proxy.identity.svid import WorkloadIdentity
from proxy.policy.classify.classifier import Classification
from proxy.policy.decision import Decision
from proxy.request.models import ModelRef
from proxy.request.operations import Route


@dataclass(frozen=True)
class Target:
    """Where the call goes and under which task, as read from the caller's request."""

    # Always a region on the data listener; None only on an admin route that
    # names none when aws.default_region is not set (it calls no region).
    region: str | None
    account: str | None
    model: ModelRef | None = None
    task_id: str | None = None
    # The caller asked for the FIPS endpoint (Host bedrock-runtime-fips.*).
    fips: bool = False


@dataclass(frozen=True)
class PromptRecord:
    """What the audit obligation keeps of the prompt: its hash, and a capture."""

    sha256: str | None
    captured: str | None = None
    # The capture was cut at its limit (policy/obligations.py).
    truncated: bool = False


@dataclass
class RequestContext:
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)
    peer: str | None = None
    identity: WorkloadIdentity | None = None
    route: Route | None = None
    target: Target | None = None
    bytes_in: int = 0
    classification: Classification | None = None
    prompt: PromptRecord | None = None
    decision: Decision | None = None
    scope: CredentialScope | None = None
    credentials: SessionCredentials | None = None
    authorized: bool = False
    relay: RelayResult | None = None
    error: ProxyError | None = None
    aborted: bool = False

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 3)

    def outcome(self) -> Outcome:
        """How the request ended: the one place that decides it."""
        if self.error is not None:
            return self.error.outcome
        if self.relay is not None:
            return self.relay.outcome
        if self.aborted:
            return Outcome.CLIENT_ABORTED
        return Outcome.OK if self.authorized else Outcome.INTERNAL_ERROR
