"""The data-plane request pipeline: one call from mTLS identity to streamed answer.

``DataPlane.handle`` is the list of stages; each returns a typed result that
the next takes, and ``handle`` keeps each result on the RequestContext for
the audit record:

    identify, route, task id -> limits (rate, concurrency: held to the end)
    -> locate (region, model) -> admission (OPA, body-free)
    -> admit (body within the limit and the byte budgets, parsed once)
    -> task -> inspect (classification, tools, guardrail, prompt hash)
    -> decide (OPA) -> authorize (count the task call) -> prepare (obligations,
    STS credentials, SigV4) -> audit ``authorized`` -> forward (relay)

Every stage either returns or raises a ProxyError; ``error_middleware`` in
app.py turns the error into an AWS-shaped answer and writes the terminal audit
record. The caller's rate and concurrency are checked before anything else
is done for it, so a caller over them costs no policy question, body read,
parse or STS call; a declared body over the limit is refused before policy
is asked, and body bytes are reserved against the in-flight budgets before
they are read (``limits.py``). Nothing is forwarded before ``authorized`` is
written.

Every stage whose work grows with the body (parse, hash, classification scan,
obligations, prompt capture, SigV4) goes through ``offload.if_large``: a large
body is worked on in the body-work pool, so one 20 MB call does not stall the
others, and a flood of them waits for that pool only, never for the audit
writer's or the STS client's threads.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from proxy.audit.log import AuditLog, request_record
from proxy.aws.credentials import CredentialBroker, CredentialScope, SessionCredentials
from proxy.aws.signing import sign_request
from proxy.config import Settings
from proxy.context import PromptRecord, RequestContext, Target
from proxy.dataplane.limits import CallerLimits, Lease
from proxy.dataplane.response_capture import ResponseCapture
from proxy.dataplane.upstream import Outgoing, RelayResult, Upstream
from proxy.errors import (
    BodyTooLarge,
    InvalidRequest,
    PolicyDenied,
)
from proxy.identity.svid import VerifiedIdentities, WorkloadIdentity
from proxy.metrics import Metrics
from proxy.offload import Offload
from proxy.policy.classify.classifier import Classification, Classifier
from proxy.policy.decision import (
    AsyncOutput,
    Decision,
    Guardrail,
    Obligations,
    OpaDecider,
    PolicyQuery,
    build_opa_input,
    denial_message,
)
from proxy.policy.obligations import apply_obligations, prompt_capture
from proxy.request.body import read_document
from proxy.request.headers import bedrock_headers, check_headers
from proxy.request.models import ModelRef, parse_model_id
from proxy.request.operations import MAX_GUARDRAIL_ID_LENGTH, Route, parse_route
from proxy.request.region import resolve_region
from proxy.request.tools import DeclaredTools, declared_tools
from proxy.tasks.model import CallRecord, Task
from proxy.tasks.service import TaskService

_TASK_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Bedrock's own maxima (botocore's GuardrailIdentifier, GuardrailVersion, S3Uri,
# AccountId): a longer value, which Bedrock would refuse anyway, is refused
# before it is copied into the policy input.
_MAX_GUARDRAIL_VERSION_CHARS = 8
_MAX_S3_URI_CHARS = 1024
_MAX_ACCOUNT_CHARS = 12
# What the admission check shows policy in place of a body: nothing found yet.
# Only reasons no body can change are read from that answer (authz.rego admission).
_NO_BODY = Classification("public", "public", "public")
_NO_FIPS_UPSTREAM = (
    "This request asks for the FIPS endpoint (Host bedrock-runtime-fips.*), but the proxy's "
    "upstream (upstream.url) has no FIPS form; it is not sent to a non-FIPS endpoint"
)


@dataclass(frozen=True)
class Located:
    """Where the call goes, read from its path and headers before any body."""

    target: Target
    # The allow-listed headers, each sent once: what policy judges is what is forwarded.
    forwarded: Mapping[str, str]


@dataclass(frozen=True)
class Admitted:
    """The request as read, before any policy: bounded body, its JSON, where it goes."""

    body: bytes
    document: dict[str, Any] | None
    target: Target
    # The allow-listed headers, each sent once: what policy judges is what is forwarded.
    forwarded: Mapping[str, str]


@dataclass(frozen=True)
class Inspected:
    """Everything policy judges that is read from the body."""

    classification: Classification
    tools: DeclaredTools
    guardrail: Guardrail | None
    async_output: AsyncOutput | None
    prompt_sha256: str


@dataclass(frozen=True)
class Prepared:
    """The request with its obligations applied, and what the audit obligation keeps."""

    headers: dict[str, str]
    body: bytes
    prompt: PromptRecord
    capture: ResponseCapture | None


@dataclass(frozen=True)
class DataPlane:
    settings: Settings
    identities: VerifiedIdentities
    decider: OpaDecider
    # Body-free: asked before the body is read (data.bedrock.authz.admission).
    admission: OpaDecider
    broker: CredentialBroker
    upstream: Upstream
    audit: AuditLog
    tasks: TaskService
    metrics: Metrics
    classifier: Classifier
    offload: Offload
    limits: CallerLimits
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def handle(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        identity = ctx.identity = self.identities.of_connection(request.transport, self.clock())
        route = ctx.route = parse_route(request.method, request.raw_path)
        task_id = _task_id(request.headers.get("X-Task-Id"))
        # Held until the response has been relayed: a stream is a request in flight.
        with self.limits.enter(identity.spiffe_id, task_id) as lease:
            return await self.serve(request, ctx, identity, route, task_id, lease)

    async def serve(
        self,
        request: web.Request,
        ctx: RequestContext,
        identity: WorkloadIdentity,
        route: Route,
        task_id: str | None,
        lease: Lease,
    ) -> web.StreamResponse:
        located = await self.locate(request, route, task_id)
        ctx.target = located.target
        await self.admission_check(ctx, identity, route, located)
        admitted = await self.admit(request, route, located, lease)
        ctx.target, ctx.bytes_in = admitted.target, len(admitted.body)
        task = await self._task(admitted.target.task_id, identity.spiffe_id)
        inspected = await self.inspect(request, identity, route, admitted)
        ctx.classification = inspected.classification
        ctx.prompt = PromptRecord(inspected.prompt_sha256)
        decision = ctx.decision = await self.decide(identity, route, admitted, inspected, task)
        obligations, task = await self.authorize(decision, identity, admitted, inspected, task)
        prepared = await self.prepare(request, route, admitted, inspected, obligations)
        ctx.prompt = prepared.prompt
        ctx.scope = self._scope(identity, route, admitted.target, inspected, obligations, task)
        ctx.credentials = await self.broker.credentials_for(ctx.scope)
        outgoing = await self.sign(route, admitted.target, prepared, ctx.credentials)
        if task is not None and task.ended_reason is not None:
            # This was the task's last call: it is signed, so its credentials can go now.
            self.tasks.release(task)
        # Write-ahead: durable (per the fsync policy) before a byte goes upstream.
        await self.audit.write_ahead("authorized", **request_record(ctx))
        ctx.authorized = True
        ctx.relay = RelayResult(capture=prepared.capture)
        return await self.forward(request, route, outgoing, ctx.relay)

    async def locate(self, request: web.Request, route: Route, task_id: str | None) -> Located:
        """Where the call goes, from its path and headers alone: no body is read yet."""
        forwarded = check_headers(request.headers.items())
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes")
        region = resolve_region(
            request.headers.get("Host"),
            request.headers.get("Authorization"),
            self.settings.default_region,
            path_region=route.region,
            resource=route.resource,
        )
        if region.fips and self.settings.upstream_fips_url is None:
            raise InvalidRequest(_NO_FIPS_UPSTREAM)
        model = (
            None
            if route.model_id is None
            else parse_model_id(route.model_id, region.name, self.settings.default_account)
        )
        account = _account(route, model, self.settings.default_account)
        return Located(Target(region.name, account, model, task_id, fips=region.fips), forwarded)

    async def admission_check(
        self, ctx: RequestContext, identity: WorkloadIdentity, route: Route, located: Located
    ) -> None:
        """Refuse a caller the policy refuses whatever its body says, before the body is read."""
        target = located.target
        query = PolicyQuery(
            identity=identity,
            route=route,
            model=target.model,
            region=target.region,
            account=target.account,
            body_bytes=0,
            tools=(),
            guardrail=None,
            classification=_NO_BODY,
            now=self.clock(),
            bedrock_headers=bedrock_headers(located.forwarded),
        )
        admission = await self.admission.decide(build_opa_input(query))
        if not admission.allow:
            ctx.decision = admission
            raise PolicyDenied(denial_message(admission))

    async def admit(
        self, request: web.Request, route: Route, located: Located, lease: Lease
    ) -> Admitted:
        """The body within its limits, parsed once; a body-named model completes the target."""
        body = await _read_body(request, self.settings.max_body_bytes, lease)
        document = await self.offload.if_large(
            len(body),
            read_document,
            route.operation,
            body,
            max_containers=self.settings.limits.max_json_containers,
        )
        target = located.target
        if route.operation == "StartAsyncInvoke":
            assert target.region is not None, "the data plane always resolves a region"
            model = _body_model(document, target.region, self.settings.default_account)
            account = _account(route, model, self.settings.default_account)
            target = replace(target, model=model, account=account)
        return Admitted(body, document, target, located.forwarded)

    async def inspect(
        self,
        request: web.Request,
        identity: WorkloadIdentity,
        route: Route,
        admitted: Admitted,
    ) -> Inspected:
        body, document = admitted.body, admitted.document
        # First: a request refused for its tools costs no classification scan.
        tools = await self.offload.if_large(len(body), declared_tools, route.operation, document)
        classification = await self.classifier.classify(
            request.headers.get("X-Data-Classification"),
            body,
            operation=route.operation,
            spiffe_id=identity.spiffe_id,
            document=document,
        )
        return Inspected(
            classification=classification,
            tools=tools,
            guardrail=_requested_guardrail(route, admitted.forwarded, document),
            async_output=_async_output(route, document),
            prompt_sha256=await self.offload.if_large(len(body), _sha256, body),
        )

    async def decide(
        self,
        identity: WorkloadIdentity,
        route: Route,
        admitted: Admitted,
        inspected: Inspected,
        task: Task | None,
    ) -> Decision:
        target = admitted.target
        query = PolicyQuery(
            identity=identity,
            route=route,
            model=target.model,
            region=target.region,
            account=target.account,
            body_bytes=len(admitted.body),
            tools=inspected.tools.names,
            tools_unreadable=inspected.tools.unreadable,
            guardrail=inspected.guardrail,
            classification=inspected.classification,
            now=self.clock(),
            async_output=inspected.async_output,
            task=task,
            bedrock_headers=bedrock_headers(admitted.forwarded),
        )
        started = time.monotonic()
        decision = await self.decider.decide(build_opa_input(query))
        self.metrics.decision_seconds.observe(time.monotonic() - started)
        return decision

    async def authorize(
        self,
        decision: Decision,
        identity: WorkloadIdentity,
        admitted: Admitted,
        inspected: Inspected,
        task: Task | None,
    ) -> tuple[Obligations, Task | None]:
        """An allow with its obligations, and the task with this call counted; else refuse."""
        if not decision.allow or decision.obligations is None:
            raise PolicyDenied(denial_message(decision))
        if task is not None:
            # Atomic check-and-count: concurrent calls cannot overrun max_calls.
            model = admitted.target.model
            call = CallRecord(
                model.id if model else None,
                inspected.classification.effective,
                inspected.tools.names,
            )
            task = await self.tasks.record_call(task, identity.spiffe_id, call)
        return decision.obligations, task

    async def prepare(
        self,
        request: web.Request,
        route: Route,
        admitted: Admitted,
        inspected: Inspected,
        obligations: Obligations,
    ) -> Prepared:
        """Apply the obligations to the request; keep what the audit obligation asks for."""
        headers, body = await self.offload.if_large(
            len(admitted.body),
            apply_obligations,
            route,
            admitted.target.model,
            dict(admitted.forwarded),
            admitted.body,
            obligations,
            # Edited in place, not read again here; an empty body reads as {} for the
            # policy but is no JSON object to edit.
            admitted.document if admitted.body else None,
        )
        capture = obligations.audit_capture
        keep_hash, captured, truncated = await self.offload.if_large(
            len(body), prompt_capture, capture, route.operation, body
        )
        return Prepared(
            headers=headers,
            body=body,
            prompt=PromptRecord(
                inspected.prompt_sha256 if keep_hash else None, captured, truncated
            ),
            capture=None if capture == "none" else ResponseCapture(capture),
        )

    async def sign(
        self,
        route: Route,
        target: Target,
        prepared: Prepared,
        credentials: SessionCredentials,
    ) -> Outgoing:
        assert target.region is not None, "admit resolves the region"
        url = self.settings.upstream_base(target.region, fips=target.fips) + route.wire_target
        signed = await self.offload.if_large(
            len(prepared.body),
            sign_request,
            method=route.method,
            url=url,
            headers=prepared.headers,
            body=prepared.body,
            credentials=credentials,
            region=target.region,
        )
        return Outgoing(route.method, url, signed, prepared.body)

    async def forward(
        self, request: web.Request, route: Route, outgoing: Outgoing, result: RelayResult
    ) -> web.StreamResponse:
        started = time.monotonic()
        try:
            return await self.upstream.relay(request, outgoing, result)
        finally:
            self.metrics.upstream_seconds.labels(route.operation).observe(
                time.monotonic() - started
            )

    def _scope(
        self,
        identity: WorkloadIdentity,
        route: Route,
        target: Target,
        inspected: Inspected,
        obligations: Obligations,
        task: Task | None,
    ) -> CredentialScope:
        assert target.region is not None, "admit resolves the region"
        return CredentialScope(
            role_arn=obligations.role_arn,
            spiffe_id=identity.spiffe_id,
            trust_domain=identity.trust_domain,
            workload_path=identity.path,
            task_id=target.task_id,
            region=target.region,
            resource_arns=_resource_arns(route, target.model, target.region, target.account),
            actions=route.iam_actions,
            classification=inspected.classification.effective,
            session_seconds=obligations.session_seconds,
            not_after=task.expires_at if task else None,
        )

    async def _task(self, task_id: str | None, spiffe_id: str) -> Task | None:
        if task_id is None:
            return None
        return await self.tasks.for_call(task_id, spiffe_id)


async def _read_body(request: web.Request, limit: int, lease: Lease) -> bytes:
    too_large = BodyTooLarge(f"The request body is larger than the limit of {limit} bytes")
    declared = request.content_length  # at most the limit: ``locate`` checked it
    if declared is not None:
        # Reserved before a byte is read: a body the budget cannot hold is never buffered.
        lease.reserve(declared)
    # Chunked bodies have no length up front: count while reading, stop at the limit.
    body = bytearray()
    while chunk := await request.content.read(64 * 1024):
        if declared is None:
            lease.reserve(len(chunk))
        body.extend(chunk)
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _body_model(document: dict[str, Any] | None, region: str, account: str | None) -> ModelRef:
    """StartAsyncInvoke names its model in the body, not the path."""
    model_id = (document or {}).get("modelId")
    if not isinstance(model_id, str):
        raise InvalidRequest("StartAsyncInvoke needs a modelId string in the body")
    return parse_model_id(model_id, region, account)


def _account(route: Route, model: ModelRef | None, default: str | None) -> str | None:
    """The target account: the one an ARN names (the model's, else the path's
    guardrail or invocation), else the configured default."""
    if model is not None and model.account is not None:
        return model.account
    if route.resource is not None:
        return route.resource.account
    return default


def _async_output(route: Route, document: dict[str, Any] | None) -> AsyncOutput | None:
    if route.operation != "StartAsyncInvoke":
        return None
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


def _task_id(header: str | None) -> str | None:
    if header is None:
        return None
    if not _TASK_ID.match(header):
        raise InvalidRequest("X-Task-Id must be 1-128 characters of [A-Za-z0-9._:-]")
    return header


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


def _resource_arns(
    route: Route, model: ModelRef | None, region: str, account: str | None
) -> tuple[str, ...]:
    """The ARNs the STS session may touch: the model (and a profile's models) only."""
    if model is not None:
        arns = {model.arn} if model.arn else set()
        if model.geo is not None and model.foundation_id is not None:
            # A cross-region profile routes to the model in the regions of its geography.
            fm_region = "" if model.geo == "global" else "*"
            arns.add(f"arn:aws:bedrock:{fm_region}::foundation-model/{model.foundation_id}")
        return tuple(sorted(arns))
    if route.async_invocation_arn is not None:
        return (route.async_invocation_arn,)
    if route.operation == "ListAsyncInvokes":
        # IAM has no resource-level permission for listing: "*" is the only scope.
        return ("*",)
    if route.guardrail is not None:
        identifier = route.guardrail[0]
        if identifier.startswith("arn:"):
            return (identifier,)
        return (f"arn:aws:bedrock:{region}:{account or '*'}:guardrail/{identifier}",)
    raise InvalidRequest(f"{route.operation} names no resource the proxy can scope credentials to")
