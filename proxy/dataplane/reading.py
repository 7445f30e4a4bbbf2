"""Everything the policy judges that is read from a request body: one job, one parse.

``read_body`` is pure and takes and returns only small, picklable values, so
the data plane runs it inline for a small body and in a body-work process
(``offload.Offload.in_process``) for a large one: the parse, the tool
reading and the classification scan of a hostile 20 MB body then use a core
of their own and never the event loop's GIL. Only the facts leave the job
(finding kinds, tool names, the body's model id, guardrail and output
location, the body's hash), never the parsed document, which can outweigh the
body many times over. A later edit by an obligation parses the same bytes
again with the same parser (``edit_body``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.errors import InvalidRequest
from proxy.policy.classify.scan import scan_body
from proxy.policy.decision import AsyncOutput, Guardrail, Obligations
from proxy.policy.obligations import apply_obligations, prompt_capture
from proxy.request.body import read_document
from proxy.request.models import ModelRef
from proxy.request.operations import MAX_GUARDRAIL_ID_LENGTH, Route
from proxy.request.tools import DeclaredTools, declared_tools

# Bedrock's own maxima (botocore's GuardrailIdentifier, GuardrailVersion, S3Uri,
# AccountId): a longer value, which Bedrock would refuse anyway, is refused
# before it is copied into the policy input.
_MAX_GUARDRAIL_VERSION_CHARS = 8
_MAX_S3_URI_CHARS = 1024
_MAX_ACCOUNT_CHARS = 12


@dataclass(frozen=True)
class BodyReading:
    """What one parse of the body tells the policy."""

    tools: DeclaredTools
    findings: tuple[str, ...]
    guardrail: Guardrail | None
    async_output: AsyncOutput | None
    # StartAsyncInvoke names its model in the body, not the path.
    model_id: str | None
    sha256: str


def read_body(
    route: Route,
    forwarded: Mapping[str, str],
    body: bytes,
    *,
    max_containers: int,
    scan_budget_s: float,
) -> BodyReading:
    """The body parsed once (or refused: ``AmbiguousBody``, ``JsonTooComplex``, ...) and read.

    Tools are read before the scan, so a body refused for its tools costs no
    scan. The scan's budget starts when the job does, not when it was queued.
    """
    operation = route.operation
    document = read_document(operation, body, max_containers=max_containers)
    tools = declared_tools(operation, document)
    model_id = _body_model_id(document) if operation == "StartAsyncInvoke" else None
    guardrail = _requested_guardrail(route, forwarded, document)
    async_output = _async_output(document) if operation == "StartAsyncInvoke" else None
    findings = scan_body(
        body, operation=operation, deadline=time.monotonic() + scan_budget_s, document=document
    )
    return BodyReading(
        tools, findings, guardrail, async_output, model_id, hashlib.sha256(body).hexdigest()
    )


def edit_body(
    route: Route,
    model: ModelRef | None,
    headers: dict[str, str],
    body: bytes,
    obligations: Obligations,
    *,
    max_containers: int,
) -> tuple[dict[str, str], bytes | None, tuple[bool, str | None, bool]]:
    """The obligations applied (parsing the body again, with the parse ``read_body``
    used, only if an edit needs it; None: the body is unchanged, so no copy comes
    back from a worker process) and the audit capture of the prompt as sent."""
    headers, edited = apply_obligations(
        route, model, headers, body, obligations, max_containers=max_containers
    )
    capture = prompt_capture(obligations.audit_capture, route.operation, edited)
    return headers, None if edited is body else edited, capture


def touches_body(obligations: Obligations) -> bool:
    """Whether ``edit_body`` has body-sized work to do for these obligations."""
    edits = obligations.guardrail is not None or bool(obligations.max_output_tokens)
    return edits or obligations.audit_capture in ("redacted", "full")


def _body_model_id(document: dict[str, Any] | None) -> str:
    model_id = (document or {}).get("modelId")
    if not isinstance(model_id, str):
        raise InvalidRequest("StartAsyncInvoke needs a modelId string in the body")
    return model_id


def _async_output(document: dict[str, Any] | None) -> AsyncOutput:
    config = (document or {}).get("outputDataConfig")
    s3 = config.get("s3OutputDataConfig") if isinstance(config, dict) else None
    if not isinstance(s3, dict) or not isinstance(s3.get("s3Uri"), str):
        raise InvalidRequest("StartAsyncInvoke needs outputDataConfig.s3OutputDataConfig.s3Uri")
    owner = s3.get("bucketOwner")
    if len(s3["s3Uri"]) > _MAX_S3_URI_CHARS:
        raise InvalidRequest(f"The s3Uri is longer than {_MAX_S3_URI_CHARS} characters")
    if isinstance(owner, str) and len(owner) > _MAX_ACCOUNT_CHARS:
        raise InvalidRequest("The bucketOwner must be a 12-digit account id")
    return AsyncOutput(s3["s3Uri"], owner if isinstance(owner, str) else None)


def _requested_guardrail(
    route: Route, forwarded: Mapping[str, str], document: dict[str, Any] | None
) -> Guardrail | None:
    if route.guardrail is not None:
        return Guardrail(*route.guardrail)
    identifier = forwarded.get("x-amzn-bedrock-guardrailidentifier")
    version: str | None = forwarded.get("x-amzn-bedrock-guardrailversion", "")
    config = (document or {}).get("guardrailConfig")
    if identifier is None and isinstance(config, dict):
        identifier = config.get("guardrailIdentifier")
        raw = config.get("guardrailVersion", "")
        # Not str() of anything: that of a list could be as large as the body.
        version = str(raw) if isinstance(raw, str | int) else None
    if not isinstance(identifier, str):
        return None
    if (
        version is None
        or len(identifier) > MAX_GUARDRAIL_ID_LENGTH
        or len(version) > _MAX_GUARDRAIL_VERSION_CHARS
    ):
        raise InvalidRequest(
            f"The guardrail identifier must be at most {MAX_GUARDRAIL_ID_LENGTH} characters "
            f"and its version a string of at most {_MAX_GUARDRAIL_VERSION_CHARS}"
        )
    return Guardrail(identifier, version)
