"""The task plane: ``/v1/tasks`` on the data listener, ``/admin/tasks`` on the admin one.

Contract
--------
Data plane (mTLS, the caller's SVID, decided by ``data.bedrock.authz.decision``):

* ``POST /v1/tasks`` ``{purpose, ttl_seconds, max_calls, models?, classification?,
  tools?}`` -> ``201 {task_id, expires_at, ...}``; operation ``OpenTask``. The
  policy sees the task as it would be (``input.task``). A deny whose reasons
  are all ``invalid_*`` codes (bounds from policy data) is a 400, any other
  deny a 403;
* ``GET /v1/tasks/{id}`` (``GetTask``), ``DELETE /v1/tasks/{id}`` (``EndTask``):
  only the identity that opened the task; anyone else is told it is unknown.

Admin plane (same TLS context, identity read the same way, decided by
``data.bedrock.admin.decision``): ``GET /admin/tasks`` (``ListTasks``) and
``POST /admin/tasks/{id}/revoke`` (``EndTask``, reason ``revoked``).

The task lifecycle itself is ``service.py``; this module is its HTTP face.

Security reasoning
------------------
* Every handler identifies the caller from the verified client certificate
  before reading the body, and asks policy before acting; no decision, no
  action (fail closed, like the data path).
* A data-plane task call takes a token of its identity's rate bucket, the
  one its model calls take (``dataplane/limits.py``), before anything else;
  an identity's open tasks are capped by the task service.
* A task's credentials are dropped when it ends; the refusal itself does not
  depend on that: every call reads the task state from the store first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from proxy.config import Settings
from proxy.context import RequestContext, Target
from proxy.dataplane.limits import CallerLimits
from proxy.errors import (
    InvalidRequest,
    PolicyDenied,
    TaskRefused,
    clip,
)
from proxy.identity.svid import VerifiedIdentities, WorkloadIdentity
from proxy.policy.classify.classifier import classify
from proxy.policy.decision import (
    Decision,
    OpaDecider,
    PolicyQuery,
    build_opa_input,
    denial_message,
)
from proxy.request.headers import check_headers
from proxy.request.operations import Route, split_region_prefix
from proxy.request.region import find_region, resolve_region
from proxy.tasks.model import (
    Task,
    new_task,
    new_task_id,
    parse_open_request,
    unknown_task,
)
from proxy.tasks.service import TaskService

MAX_TASK_BODY_BYTES = 16 * 1024
LIST_LIMIT = 1000
_INVALID_PREFIX = "invalid_"


def task_route(operation: str, method: str, path: str) -> Route:
    return Route(
        operation=operation,
        method=method,
        stream=False,
        model_id=None,
        guardrail=None,
        async_invocation_arn=None,
        wire_path=path,
        wire_query="",
        iam_actions=(),
    )


@dataclass(frozen=True)
class TaskApi:
    settings: Settings
    identities: VerifiedIdentities
    decider: OpaDecider
    admin_decider: OpaDecider
    service: TaskService
    limits: CallerLimits

    # --- data plane -----------------------------------------------------------

    async def open_task(self, request: web.Request, ctx: RequestContext) -> web.Response:
        identity = self._identify(request, ctx, "OpenTask")
        body = await _read_small_body(request)
        ctx.bytes_in = len(body)
        wanted = parse_open_request(body)
        now = self.service.clock()
        task = new_task(wanted, identity.spiffe_id, now, new_task_id())
        _name_task(ctx, task.id)
        await self._authorize(request, ctx, identity, task)
        await self.service.open(task, request_id=ctx.request_id)
        return self._done(ctx, task.to_json(now), status=201)

    async def get_task(self, request: web.Request, ctx: RequestContext) -> web.Response:
        identity = self._identify(request, ctx, "GetTask")
        task = await self._own_task(request, ctx, identity)
        await self._authorize(request, ctx, identity, task)
        return self._done(ctx, task.to_json(self.service.clock()))

    async def end_task(self, request: web.Request, ctx: RequestContext) -> web.Response:
        identity = self._identify(request, ctx, "EndTask")
        task = await self._own_task(request, ctx, identity)
        await self._authorize(request, ctx, identity, task)
        if task.state(self.service.clock()) == "open":
            await self.service.end(task.id, "deleted", by=identity.spiffe_id)
        ended = await self.service.store.get(task.id) or task
        return self._done(ctx, ended.to_json(self.service.clock()))

    # --- admin plane ----------------------------------------------------------

    async def admin_list(self, request: web.Request, ctx: RequestContext) -> web.Response:
        identity = self._identify(request, ctx, "ListTasks", admin=True)
        await self._authorize_admin(request, ctx, identity, None)
        now = self.service.clock()
        tasks = await self.service.store.open_tasks(LIST_LIMIT)
        return self._done(ctx, {"tasks": [task.to_json(now) for task in tasks]})

    async def admin_status(self, request: web.Request, ctx: RequestContext) -> None:
        """Health and metrics: an admin identity allowed ``GetStatus``, else a refusal."""
        identity = self._identify(request, ctx, "GetStatus", admin=True)
        await self._authorize_admin(request, ctx, identity, None)

    async def admin_revoke(self, request: web.Request, ctx: RequestContext) -> web.Response:
        identity = self._identify(request, ctx, "EndTask", admin=True)
        task_id = _name_task(ctx, request.match_info["task_id"])
        task = await self.service.store.get(task_id)
        await self._authorize_admin(request, ctx, identity, task)
        if task is None:
            raise TaskRefused(f"Task {clip(task_id)} is unknown")
        ended = await self.service.end(task_id, "revoked", by=identity.spiffe_id)
        current = ended or await self.service.store.get(task_id) or task
        return self._done(ctx, current.to_json(self.service.clock()))

    # --- shared steps ---------------------------------------------------------

    def _identify(
        self, request: web.Request, ctx: RequestContext, operation: str, *, admin: bool = False
    ) -> WorkloadIdentity:
        ctx.route = task_route(operation, request.method, request.path)
        ctx.identity = self.identities.of_connection(request.transport, self.service.clock())
        if not admin:
            self.limits.take_token(ctx.identity.spiffe_id)
        check_headers(request.headers.items())
        ctx.target = Target(self._region(request, admin=admin), self.settings.default_account)
        return ctx.identity

    def _region(self, request: web.Request, *, admin: bool) -> str | None:
        host, authorization = request.headers.get("Host"), request.headers.get("Authorization")
        default = self.settings.default_region
        if admin:
            # The admin listener calls no region, so it need not name one.
            found = find_region(host, authorization, default)
            return None if found is None else found.name
        path_region, _ = split_region_prefix(request.raw_path.partition("?")[0])
        return resolve_region(host, authorization, default, path_region=path_region).name

    async def _own_task(
        self, request: web.Request, ctx: RequestContext, identity: WorkloadIdentity
    ) -> Task:
        task_id = _name_task(ctx, request.match_info["task_id"])
        task = await self.service.store.get(task_id)
        if task is None or task.opened_by != identity.spiffe_id:
            raise unknown_task(task_id)
        return task

    def _query(
        self, ctx: RequestContext, identity: WorkloadIdentity, task: Task | None
    ) -> dict[str, Any]:
        assert ctx.route is not None and ctx.target is not None
        ctx.classification = classify(task.classification if task else None, b"")
        return build_opa_input(
            PolicyQuery(
                identity=identity,
                route=ctx.route,
                model=None,
                region=ctx.target.region,
                account=ctx.target.account,
                body_bytes=ctx.bytes_in,
                tools=(),
                guardrail=None,
                classification=ctx.classification,
                now=self.service.clock(),
                task=task,
            )
        )

    async def _authorize(
        self, request: web.Request, ctx: RequestContext, identity: WorkloadIdentity, task: Task
    ) -> None:
        decision = ctx.decision = await self.decider.decide(self._query(ctx, identity, task))
        _enforce(decision)

    async def _authorize_admin(
        self,
        request: web.Request,
        ctx: RequestContext,
        identity: WorkloadIdentity,
        task: Task | None,
    ) -> None:
        opa_input = self._query(ctx, identity, task)
        decision = ctx.decision = await self.admin_decider.decide(opa_input)
        _enforce(decision)

    def _done(
        self, ctx: RequestContext, document: dict[str, Any], *, status: int = 200
    ) -> web.Response:
        ctx.authorized = True
        return web.json_response(
            document, status=status, headers={"x-amzn-RequestId": ctx.request_id}
        )


def _name_task(ctx: RequestContext, task_id: str) -> str:
    assert ctx.target is not None, "the caller is identified first"
    ctx.target = replace(ctx.target, task_id=task_id)
    return task_id


def _enforce(decision: Decision) -> None:
    if decision.allow:
        return
    message = denial_message(decision)
    if decision.reasons and all(r.startswith(_INVALID_PREFIX) for r in decision.reasons):
        # Bounds that live in policy data (ttl, max_calls, models): bad input, not a refusal.
        raise InvalidRequest(message)
    raise PolicyDenied(message)


async def _read_small_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_TASK_BODY_BYTES:
        raise InvalidRequest(f"The task request body is larger than {MAX_TASK_BODY_BYTES} bytes")
    body = bytearray()
    while chunk := await request.content.read(MAX_TASK_BODY_BYTES):
        body.extend(chunk)
        if len(body) > MAX_TASK_BODY_BYTES:
            raise InvalidRequest(
                f"The task request body is larger than {MAX_TASK_BODY_BYTES} bytes"
            )
    return bytes(body)
