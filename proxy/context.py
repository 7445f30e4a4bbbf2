"""The per-request context that flows through the pipeline stages.

Each stage fills the fields it owns; the audit record is built from this one
object, so what the SOC reads is exactly what the stages decided.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from proxy.aws.credentials import CredentialScope, SessionCredentials
from proxy.dataplane.observe import Observation
from proxy.dataplane.response_capture import ResponseCapture
from proxy.errors import ProxyError
from proxy.identity.svid import WorkloadIdentity
from proxy.policy.classify.classifier import Classification
from proxy.policy.decision import Decision
from proxy.request.models import ModelRef
from proxy.request.operations import Route


@dataclass
class RequestContext:
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)
    peer: str | None = None
    identity: WorkloadIdentity | None = None
    route: Route | None = None
    model: ModelRef | None = None
    region: str | None = None
    account: str | None = None
    task_id: str | None = None
    classification: Classification | None = None
    decision: Decision | None = None
    scope: CredentialScope | None = None
    credentials: SessionCredentials | None = None
    prompt_sha256: str | None = None
    prompt_captured: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    authorized: bool = False
    upstream_status: int | None = None
    aws_request_id: str | None = None
    ttfb_ms: float | None = None
    observation: Observation | None = None
    response_capture: ResponseCapture | None = None
    error: ProxyError | None = None
    outcome: str | None = None

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 3)
