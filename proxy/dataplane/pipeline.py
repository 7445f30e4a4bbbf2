"""The data-plane request pipeline: one call from mTLS identity to streamed answer.

``DataPlane.handle`` is the list of stages; each returns a typed result that
the next takes, and ``handle`` keeps each result on the RequestContext for
the audit record:

    identify, route, task id -> limits (rate, concurrency: held to the end)
    -> locate (region, model) -> admission (OPA, body-free) -> task
    -> admit (body within the limit and the byte budgets)
    -> inspect (one parse: classification, tools, guardrail, prompt hash)
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

Every stage whose work grows with the body goes through ``offload``: for a
large body the parse, classification scan, obligations and prompt capture run
in a body-work process (``reading.py``), SigV4's hashing in a body-work
thread, so one 20 MB call does not stall the others, and a flood of them waits
for those pools only, never for the audit writer's or the STS client's
threads.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from aiohttp import web

from proxy.audit.log import AuditLog, request_record
from proxy.aws.credentials import CredentialBroker, CredentialScope, SessionCredentials
from proxy.aws.signing import sign_request
from proxy.config import Settings
from proxy.context import PromptRecord, RequestContext, Target
from proxy.dataplane.limits import CallerLimits, Lease
from proxy.dataplane.reading import BodyReading, edit_body, read_body, touches_body
from proxy.dataplane.response_capture import ResponseCapture
from proxy.dataplane.upstream import Outgoing, RelayResult, Upstream
from proxy.errors import BodyTooLarge, InvalidRequest, PolicyDenied
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
from proxy.request.headers import bedrock_headers, check_headers
from proxy.request.models import ModelRef, parse_model_id
from proxy.request.operations import Route, parse_route
from proxy.request.region import resolve_region
from proxy.request.tools import DeclaredTools
from proxy.tasks.model import CallRecord, Task
from proxy.tasks.service import TaskService

_TASK_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
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
    """The request as read, before any policy: the bounded body, where it goes."""

    body: bytes
    target: Target
    # The allow-listed headers, each sent once: what policy judges is what is forwarded.
    forwarded: Mapping[str, str]


@dataclass(frozen=True)
class Inspected:
    """Everything policy judges that is read from the body."""

    # The located target, completed by the body's model (StartAsyncInvoke).
    target: Target
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
        # A task the caller may not use is refused before its body is read.
        task = await self._task(task_id, identity.spiffe_id)
        admitted = await self.admit(request, located, lease)
        ctx.bytes_in = len(admitted.body)
        inspected = await self.inspect(request, identity, route, admitted)
        ctx.target, ctx.classification = inspected.target, inspected.classification
        ctx.prompt = PromptRecord(inspected.prompt_sha256)
        decision = ctx.decision = await self.decide(identity, route, admitted, inspected, task)
        obligations, task = await self.authorize(decision, identity, inspected, task)
        prepared = await self.prepare(identity, route, admitted, inspected, obligations)
        ctx.prompt = prepared.prompt
        ctx.scope = self._scope(identity, route, inspected, obligations, task)
        ctx.credentials = await self.broker.credentials_for(ctx.scope)
        outgoing = await self.sign(route, inspected.target, prepared, ctx.credentials)
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

    async def admit(self, request: web.Request, located: Located, lease: Lease) -> Admitted:
        """The body, within its limit and the in-flight byte budgets."""
        body = await _read_body(request, self.settings.max_body_bytes, lease)
        return Admitted(body, located.target, located.forwarded)

    async def inspect(
        self,
        request: web.Request,
        identity: WorkloadIdentity,
        route: Route,
        admitted: Admitted,
    ) -> Inspected:
        """One parse of the body and everything policy judges in it (``reading.py``)."""
        declared = await self.classifier.declared(
            request.headers.get("X-Data-Classification"), identity.spiffe_id
        )
        reading: BodyReading = await self.offload.in_process(
            len(admitted.body),
            identity.spiffe_id,
            read_body,
            route,
            admitted.forwarded,
            admitted.body,
            max_containers=self.settings.limits.max_json_containers,
            scan_budget_s=self.settings.scan_budget_s,
        )
        target = admitted.target
        if reading.model_id is not None:
            assert target.region is not None, "the data plane always resolves a region"
            model = parse_model_id(reading.model_id, target.region, self.settings.default_account)
            account = _account(route, model, self.settings.default_account)
            target = replace(target, model=model, account=account)
        return Inspected(
            target=target,
            classification=await self.classifier.classify(declared, reading.findings),
            tools=reading.tools,
            guardrail=reading.guardrail,
            async_output=reading.async_output,
            prompt_sha256=reading.sha256,
        )

    async def decide(
        self,
        identity: WorkloadIdentity,
        route: Route,
        admitted: Admitted,
        inspected: Inspected,
        task: Task | None,
    ) -> Decision:
        target = inspected.target
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
        inspected: Inspected,
        task: Task | None,
    ) -> tuple[Obligations, Task | None]:
        """An allow with its obligations, and the task with this call counted; else refuse."""
        if not decision.allow or decision.obligations is None:
            raise PolicyDenied(denial_message(decision))
        if task is not None:
            # Atomic check-and-count: concurrent calls cannot overrun max_calls.
            model = inspected.target.model
            call = CallRecord(
                model.id if model else None,
                inspected.classification.effective,
                inspected.tools.names,
            )
            task = await self.tasks.record_call(task, identity.spiffe_id, call)
        return decision.obligations, task

    async def prepare(
        self,
        identity: WorkloadIdentity,
        route: Route,
        admitted: Admitted,
        inspected: Inspected,
        obligations: Obligations,
    ) -> Prepared:
        """Apply the obligations to the request; keep what the audit obligation asks for."""
        headers, edited, (keep_hash, captured, truncated) = await self.offload.in_process(
            len(admitted.body) if touches_body(obligations) else 0,
            identity.spiffe_id,
            edit_body,
            route,
            inspected.target.model,
            dict(admitted.forwarded),
            admitted.body,
            obligations,
            max_containers=self.settings.limits.max_json_containers,
        )
        capture = obligations.audit_capture
        return Prepared(
            headers=headers,
            body=admitted.body if edited is None else edited,
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
        inspected: Inspected,
        obligations: Obligations,
        task: Task | None,
    ) -> CredentialScope:
        target = inspected.target
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


def _account(route: Route, model: ModelRef | None, default: str | None) -> str | None:
    """The target account: the one an ARN names (the model's, else the path's
    guardrail or invocation), else the configured default."""
    if model is not None and model.account is not None:
        return model.account
    if route.resource is not None:
        return route.resource.account
    return default


def _task_id(header: str | None) -> str | None:
    if header is None:
        return None
    if not _TASK_ID.match(header):
        raise InvalidRequest("X-Task-Id must be 1-128 characters of [A-Za-z0-9._:-]")
    return header


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
