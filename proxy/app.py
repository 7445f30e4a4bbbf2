"""Wiring only: build the components from Settings, serve the listeners.

The one place where errors become responses is ``error_middleware``: every
ProxyError is turned into an AWS-shaped answer (status, ``x-amzn-ErrorType``,
JSON ``message``) that SDKs raise as their usual exceptions, and every request,
whatever happened, leaves exactly one terminal audit record from its
``finally``. Library error text never reaches the caller; it goes into the
audit record as ``detail``. What aiohttp's HTTP parser refuses never reaches
the middleware; ``early_refusal`` gives it the same answer and record
(``proxy/request/malformed.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import structlog
from aiohttp import hdrs, web

from proxy.audit.log import AuditLog, open_audit_log, terminal_record
from proxy.aws.credentials import CredentialBroker, make_sts_client
from proxy.config import Settings
from proxy.context import RequestContext
from proxy.dataplane.limits import CallerLimits
from proxy.dataplane.pipeline import DataPlane
from proxy.dataplane.upstream import Upstream
from proxy.errors import AuditUnavailable, ProxyError, RetryLater, http_refusal
from proxy.identity.svid import TrustBundles, VerifiedIdentities
from proxy.metrics import Metrics
from proxy.offload import Offload
from proxy.policy.classify.classifier import Classifier
from proxy.policy.classify.defaults import DeclaredDefaults
from proxy.policy.classify.rules import PolicyRules
from proxy.policy.decision import ADMISSION_RULE, OpaDecider
from proxy.policy.opa import OpaClient
from proxy.policy.revision import PolicyRevision
from proxy.tasks.api import TaskApi
from proxy.tasks.service import TaskService, sweeper
from proxy.tasks.store import open_store

DATA_PLANE = web.AppKey("data_plane", DataPlane)
TASK_API = web.AppKey("task_api", TaskApi)
DATA_APP = web.AppKey("data_app", web.Application)
AUDIT = web.AppKey("audit", AuditLog)
METRICS = web.AppKey("metrics", Metrics)
CONTEXT = web.RequestKey("context", RequestContext)
ADMIN_PACKAGE = "bedrock.admin"
_log = structlog.get_logger("bedrock_proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Unbranded(web.Response):
    """A response without aiohttp's Server header, also where aiohttp runs no
    on_response_prepare: the answer to a request its parser refused (aiohttp#6463)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


def error_response(error: ProxyError, request_id: str) -> web.Response:
    headers = {"x-amzn-ErrorType": error.error_type, "x-amzn-RequestId": request_id}
    if isinstance(error, RetryLater):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return _Unbranded(
        text=json.dumps({"message": error.message}),
        content_type="application/json",
        status=error.status,
        headers=headers,
    )


def early_refusal(app: web.Application) -> Callable[[str | None, ProxyError], web.Response]:
    """For refusals made before ``app`` runs (aiohttp's HTTP parser): the answer and the
    terminal record that ``error_middleware`` gives every other refusal."""

    def refuse(peer: str | None, error: ProxyError) -> web.Response:
        ctx = RequestContext(peer=peer, error=error)
        _write_terminal(app[AUDIT], ctx, app[METRICS])
        return error_response(error, ctx.request_id)

    return refuse


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = RequestContext(peer=request.remote)
    request[CONTEXT] = ctx
    try:
        return await handler(request)
    except ProxyError as error:
        ctx.error = error
        return error_response(error, ctx.request_id)
    except web.HTTPException as exc:
        ctx.error = http_refusal(exc.status, exc.reason)
        return error_response(ctx.error, ctx.request_id)
    except asyncio.CancelledError:
        ctx.aborted = True
        raise
    except Exception as exc:
        _log.exception("unhandled error", request_id=ctx.request_id)
        ctx.error = ProxyError("Internal error in the proxy", detail=type(exc).__name__)
        return error_response(ctx.error, ctx.request_id)
    finally:
        _write_terminal(request.app[AUDIT], ctx, request.app[METRICS])


def _write_terminal(audit: AuditLog, ctx: RequestContext, metrics: Metrics) -> None:
    event, fields = terminal_record(ctx)
    metrics.observe_terminal(fields)
    try:
        audit.write(event, **fields)
    except AuditUnavailable:
        _log.error("audit write failed for terminal record", request_id=ctx.request_id)


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp names itself and Python, with versions: nothing to match against known bugs.
    response.headers.popall(hdrs.SERVER, None)


async def handle_data_plane(request: web.Request) -> web.StreamResponse:
    return await request.app[DATA_PLANE].handle(request, request[CONTEXT])


def build_data_app(settings: Settings, *, worker: int = 0) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app.on_response_prepare.append(_no_server_header)
    app[METRICS] = Metrics()
    # The task routes first: the catch-all below takes everything else. Each is
    # also served under /region/<region>, the endpoint an application names its
    # region with (docs/api.md#region), so one endpoint URL serves all its calls.
    for prefix in ("", "/region/{region}"):
        app.router.add_post(f"{prefix}/v1/tasks", _task_handler("open_task"))
        app.router.add_get(f"{prefix}/v1/tasks/{{task_id}}", _task_handler("get_task"))
        app.router.add_delete(f"{prefix}/v1/tasks/{{task_id}}", _task_handler("end_task"))
    app.router.add_route("*", "/{tail:.*}", handle_data_plane)
    app.cleanup_ctx.append(_components(settings, worker))
    return app


def _components(
    settings: Settings, worker: int
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def setup(app: web.Application) -> AsyncIterator[None]:
        # Every start is followed by its close on the stack: a failure half-way
        # through start-up closes what already started, in reverse order.
        async with contextlib.AsyncExitStack() as stack:
            # Each kind of off-loop work has its own threads, shut down after the
            # components that use them: a flood of heavy bodies queues behind itself
            # and never delays a write-ahead record's fsync or an AssumeRole.
            body_pool = stack.enter_context(
                ThreadPoolExecutor(settings.body_work_threads, thread_name_prefix="body-work")
            )
            audit_pool = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="audit"))
            sts_pool = stack.enter_context(ThreadPoolExecutor(4, thread_name_prefix="sts"))
            metrics = app[METRICS]
            offload = Offload(
                body_pool,
                processes=settings.body_work_processes,
                per_caller=settings.body_work_per_identity,
                on_process_death=metrics.body_work_deaths.inc,
            )
            stack.callback(offload.close)
            identities = VerifiedIdentities(TrustBundles.load(settings.trust_bundles))
            audit = open_audit_log(
                settings,
                worker=worker,
                observe_write=metrics.audit_write_seconds.observe,
                sync_executor=audit_pool,
            )
            stack.callback(audit.close)
            opa = await stack.enter_async_context(
                OpaClient(settings.opa_url, timeout_s=settings.opa_timeout_s)
            )
            # Off the request path: the poller may wait longer than a decision does.
            revision = PolicyRevision(opa, timeout_s=max(settings.opa_timeout_s, 1.0))
            await revision.start()
            stack.push_async_callback(revision.close)
            classification_rules = PolicyRules(opa)
            await classification_rules.start()
            upstream = Upstream(
                connect_timeout_s=settings.upstream_connect_timeout_s,
                read_timeout_s=settings.upstream_read_timeout_s,
                max_connections=settings.upstream_max_connections,
                max_connections_per_host=settings.upstream_max_connections_per_host,
            )
            await upstream.start()
            stack.push_async_callback(upstream.close)
            sts = make_sts_client(
                region=settings.sts_region,
                endpoint_url=settings.sts_endpoint,
                connect_timeout=settings.sts_timeout_s,
                read_timeout=settings.sts_timeout_s,
            )
            for event in ("after-call.sts.AssumeRole", "after-call-error.sts.AssumeRole"):
                sts.meta.events.register(event, metrics.sts_hook)
            broker = CredentialBroker(
                sts,
                clock=lambda: datetime.now(UTC),
                max_session_seconds=settings.max_session_seconds,
                executor=sts_pool,
            )
            store = open_store(settings.task_store, timeout_s=settings.task_store_timeout_s)
            stack.push_async_callback(store.close)
            tasks = TaskService(
                store,
                broker,
                audit,
                clock=lambda: datetime.now(UTC),
                revision=revision,
                max_open_per_identity=settings.limits.open_tasks_per_identity,
            )
            # One per worker: every count is the process's (docs/api.md#limits).
            limits = CallerLimits(settings.limits, gauges=metrics)
            decider = OpaDecider(opa, revision=revision)
            admission = OpaDecider(
                opa, rule=ADMISSION_RULE, revision=revision, undefined_allows=True
            )
            admin_decider = OpaDecider(opa, package=ADMIN_PACKAGE, revision=revision)
            app[AUDIT] = audit
            app[DATA_PLANE] = DataPlane(
                settings=settings,
                identities=identities,
                decider=decider,
                admission=admission,
                broker=broker,
                upstream=upstream,
                audit=audit,
                tasks=tasks,
                metrics=metrics,
                classifier=Classifier(classification_rules, DeclaredDefaults(opa, revision)),
                offload=offload,
                limits=limits,
            )
            app[TASK_API] = TaskApi(settings, identities, decider, admin_decider, tasks, limits)
            checkpoints = asyncio.create_task(
                audit.run_checkpoints(settings.audit.checkpoint_seconds)
            )
            stack.push_async_callback(stop, checkpoints)
            await stack.enter_async_context(sweeper(tasks, settings.task_sweep_interval_s))
            yield

    async def stop(task: asyncio.Task[None]) -> None:
        # asyncio.wait, not awaiting the task: a cancellation of the shutdown itself
        # must propagate, not be swallowed as the task's own.
        task.cancel()
        await asyncio.wait([task])

    return setup


def _admin_status(inner: Handler) -> Handler:
    """/healthz and /metrics: admin identities only (``GetStatus``), like every admin route."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request[CONTEXT]
        await request.app[TASK_API].admin_status(request, ctx)
        response = await inner(request)
        ctx.authorized = True
        return response

    return handle


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _task_handler(name: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        method: Callable[[web.Request, RequestContext], Awaitable[web.StreamResponse]] = getattr(
            request.app[TASK_API], name
        )
        return await method(request, request[CONTEXT])

    return handle


def build_admin_app(data_app: web.Application) -> web.Application:
    """The admin listener: separate socket, admin identities, decided by bedrock.admin.

    Every route, /healthz and /metrics included, goes through the same error
    mapping and terminal audit record as the data plane: runtime identities
    never reach the admin plane, and every admin call is on the record.
    """
    app = web.Application(middlewares=[error_middleware])
    app.on_response_prepare.append(_no_server_header)
    app[DATA_APP] = data_app
    app[METRICS] = data_app[METRICS]
    app.router.add_get("/healthz", _admin_status(_health))
    app.router.add_get("/metrics", _admin_status(data_app[METRICS].handle))
    app.router.add_get("/admin/tasks", _task_handler("admin_list"))
    app.router.add_post("/admin/tasks/{task_id}/revoke", _task_handler("admin_revoke"))
    app.cleanup_ctx.append(_share_components)
    return app


async def _share_components(app: web.Application) -> AsyncIterator[None]:
    # The data app is set up first (server.py), so its components exist here:
    # one audit log, one task store and broker behind both listeners.
    app[AUDIT] = app[DATA_APP][AUDIT]
    app[TASK_API] = app[DATA_APP][TASK_API]
    yield
