"""Wiring only: build the components from Settings, serve the listeners.

The one place where errors become responses is ``error_middleware``: every
ProxyError is turned into an AWS-shaped answer (status, ``x-amzn-ErrorType``,
JSON ``message``) that SDKs raise as their usual exceptions, and every request,
whatever happened, leaves exactly one terminal audit record from its
``finally``. Library error text never reaches the caller; it goes into the
audit record as ``detail``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web

from proxy.audit import AuditLog, terminal_record
from proxy.config import Settings
from proxy.context import RequestContext
from proxy.credentials import CredentialBroker, make_sts_client
from proxy.decision import OpaDecider
from proxy.errors import AuditUnavailable, ProxyError, UnknownOperation
from proxy.identity import TrustBundles, VerifiedIdentities
from proxy.pipeline import DataPlane
from proxy.upstream import Upstream

DATA_PLANE = web.AppKey("data_plane", DataPlane)
AUDIT = web.AppKey("audit", AuditLog)
CONTEXT = "bedrock_proxy.context"
_log = structlog.get_logger("bedrock_proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: ProxyError, request_id: str) -> web.Response:
    return web.json_response(
        {"message": error.message},
        status=error.status,
        headers={"x-amzn-ErrorType": error.error_type, "x-amzn-RequestId": request_id},
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = RequestContext(peer=request.remote)
    request[CONTEXT] = ctx
    try:
        return await handler(request)
    except ProxyError as error:
        ctx.error, ctx.outcome = error, error.outcome
        return error_response(error, ctx.request_id)
    except web.HTTPException as exc:
        # aiohttp's own refusals (e.g. malformed request line) in AWS shape.
        refusal = UnknownOperation(exc.reason) if exc.status == 404 else ProxyError(exc.reason)
        refusal.status = exc.status
        ctx.error, ctx.outcome = refusal, "invalid_request"
        return error_response(refusal, ctx.request_id)
    except asyncio.CancelledError:
        ctx.outcome = ctx.outcome or "client_aborted"
        raise
    except Exception as exc:
        _log.exception("unhandled error", request_id=ctx.request_id)
        ctx.error = ProxyError("Internal error in the proxy", detail=type(exc).__name__)
        ctx.outcome = "internal_error"
        return error_response(ctx.error, ctx.request_id)
    finally:
        _write_terminal(request.app[AUDIT], ctx)


def _write_terminal(audit: AuditLog, ctx: RequestContext) -> None:
    event, fields = terminal_record(ctx)
    try:
        audit.write(event, **fields)
    except AuditUnavailable:
        _log.error("audit write failed for terminal record", request_id=ctx.request_id)


async def handle_data_plane(request: web.Request) -> web.StreamResponse:
    return await request.app[DATA_PLANE].handle(request, request[CONTEXT])


def build_data_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_route("*", "/{tail:.*}", handle_data_plane)
    app.cleanup_ctx.append(_components(settings))
    return app


def _components(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def setup(app: web.Application) -> AsyncIterator[None]:
        audit = AuditLog(settings.audit_path)
        decider = OpaDecider(settings.opa_url, timeout_s=settings.opa_timeout_s)
        upstream = Upstream(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
        )
        sts = make_sts_client(
            region=settings.sts_region,
            endpoint_url=settings.sts_endpoint,
            connect_timeout=settings.sts_timeout_s,
            read_timeout=settings.sts_timeout_s,
        )
        broker = CredentialBroker(
            sts,
            clock=lambda: datetime.now(UTC),
            max_session_seconds=settings.max_session_seconds,
        )
        await decider.start()
        await upstream.start()
        app[AUDIT] = audit
        app[DATA_PLANE] = DataPlane(
            settings=settings,
            identities=VerifiedIdentities(TrustBundles.load(settings.trust_bundles)),
            decider=decider,
            broker=broker,
            upstream=upstream,
            audit=audit,
        )
        yield
        await upstream.close()
        await decider.close()
        audit.close()

    return setup


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_admin_app() -> web.Application:
    """The admin listener: separate socket, separate identity set; health only for now."""
    app = web.Application()
    app.router.add_get("/healthz", handle_health)
    return app
