"""The emulated bedrock-runtime listener and the ``/_emulator/`` control API.

Contract, per bedrock request (every path outside ``/_emulator/``):

1. it is recorded (headers as received, first 1 MiB of the body) before
   anything else, so rejected and aborted calls leave a trace too;
2. the route is parsed from the raw wire path (``routes``), then the SigV4
   signature is verified against credentials issued by this emulator's STS
   (``sigv4``), then the credential's session policy must allow the
   operation's IAM action on the model / guardrail ARN (``iam``);
3. the next applicable queued fault, if any, is applied (``faults``);
4. the answer is sent in bedrock's wire format (``responses``); streams go
   out frame by frame with ``frame_delay_s`` between frames, never at once.

Every recorded request ends with exactly one outcome: ``completed``,
``rejected`` (AWS-shaped 4xx from routing, auth, policy or validation),
``fault`` (an injected fault decided the answer) or ``aborted`` (the client
went away before the last frame; ``CancelledError`` is recorded and
re-raised, never swallowed).

Control endpoints are unauthenticated by design (test and demo harness
only) and therefore answer only loopback peers.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from proxy_dev.emulator import responses
from proxy_dev.emulator.errors import AwsError, access_denied, validation
from proxy_dev.emulator.eventstream import exception_frame
from proxy_dev.emulator.faults import Fault, FaultQueue, parse_fault
from proxy_dev.emulator.iam import (
    guardrail_resource,
    model_resource,
    profile_route,
    session_policy_allows,
)
from proxy_dev.emulator.routes import MODEL_ID_RE, Route, parse_route
from proxy_dev.emulator.sigv4 import VerifiedCaller, verify_request
from proxy_dev.emulator.sts import StsLedger

RECORD_BODY_BYTES = 1024 * 1024
MAX_BODY_BYTES = 25_000_000
DEFAULT_SLOW_DELAY_MS = 500
_JSON_BODY_OPS = frozenset(
    {"Converse", "ConverseStream", "CountTokens", "ApplyGuardrail", "StartAsyncInvoke"}
)
_CRED_RE = re.compile(r"Credential=([^/\s,]+)/\d{8}/([^/\s,]+)/")


@dataclass(frozen=True)
class EmulatorSettings:
    frame_delay_s: float = 0.02
    frames: int = 8


@dataclass
class RequestRecord:
    """One bedrock request as seen on the wire.

    Mutable on purpose: it is published when the request arrives and filled
    in while the response streams, so a harness can watch a stream in flight.
    """

    id: str
    method: str
    raw_path: str
    headers: dict[str, str]
    body_b64: str
    body_len: int
    received_at: float
    operation: str | None = None
    model_id: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    verified: bool = False
    outcome: str = "in_progress"
    status: int | None = None
    error_type: str | None = None
    fault: str | None = None
    frames_sent: int = 0
    # SHA-256 of the event-stream bytes written so far: lets a test prove a relay byte-exact.
    stream_sha256: str | None = None
    first_frame_at: float | None = None
    last_frame_at: float | None = None


@dataclass
class EmulatorState:
    settings: EmulatorSettings
    ledger: StsLedger
    faults: FaultQueue
    clock: Callable[[], float] = time.time
    records: list[RequestRecord] = field(default_factory=list)
    async_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)


STATE_KEY = web.AppKey("emulator_state", EmulatorState)


def _error_response(error: AwsError, request_id: str) -> web.Response:
    return web.json_response(
        {"message": error.message},
        status=error.status,
        headers={"x-amzn-ErrorType": error.error_type, "x-amzn-RequestId": request_id},
    )


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise validation(
            "Malformed input request, please reformat your input and try again."
        ) from exc
    if not isinstance(doc, dict):
        raise validation("Malformed input request, please reformat your input and try again.")
    return doc


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def _authorize(route: Route, caller: VerifiedCaller, body: bytes) -> None:
    account = caller.credential.account
    if route.model_id is not None:
        resource = model_resource(route.model_id, caller.region, account)
    elif route.guardrail_id is not None:
        resource = guardrail_resource(route.guardrail_id, caller.region, account)
    elif route.invocation_arn is not None:
        resource = route.invocation_arn
    elif route.operation == "StartAsyncInvoke":
        model_id = _json_body(body).get("modelId")
        if not isinstance(model_id, str) or len(model_id) > 256 or not MODEL_ID_RE.match(model_id):
            raise validation(
                "1 validation error detected: Value at 'modelId' failed to satisfy constraint"
            )
        resource = model_resource(model_id, caller.region, account)
    else:
        resource = "*"
    policy = caller.credential.policy
    checks: list[tuple[str, str, str | None]] = [(resource, caller.region, None)]
    if (route_to := profile_route(resource)) is not None:
        checks.append((*route_to, resource))
    for checked, region, profile in checks:
        if not session_policy_allows(policy, route.action, checked, region, profile_arn=profile):
            raise access_denied(
                f"User: {caller.credential.role_arn} is not authorized to perform: "
                f"{route.action} on resource: {checked} because no session policy allows the "
                f"{route.action} action"
            )


class _Handler:
    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        body = await request.read()
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        record = RequestRecord(
            id=str(uuid.uuid4()),
            method=request.method,
            raw_path=request.raw_path,
            headers=headers,
            body_b64=base64.b64encode(body[:RECORD_BODY_BYTES]).decode("ascii"),
            body_len=len(body),
            received_at=state.clock(),
        )
        scope = _CRED_RE.search(request.headers.get("Authorization", ""))
        if scope is not None:
            record.access_key_id, record.region = scope.group(1), scope.group(2)
        state.records.append(record)
        fault: Fault | None = None
        try:
            route = parse_route(request.method, request.raw_path)
            record.operation, record.model_id = route.operation, route.model_id
            caller = verify_request(
                method=request.method,
                raw_path=request.raw_path,
                headers=request.headers,
                body=body,
                lookup=state.ledger.lookup,
                now=state.clock(),
            )
            record.verified = True
            _authorize(route, caller, body)
            if route.operation in _JSON_BODY_OPS:
                _json_body(body)
            fault = state.faults.take_bedrock(streaming=route.streaming)
            record.fault = fault.kind if fault else None
            response = await self._answer(request, record, route, caller, body, fault)
            if record.outcome == "in_progress":
                record.outcome = "completed"
                record.status = record.status or response.status
        except AwsError as error:
            is_fault = fault is not None and fault.kind in ("throttle", "http5xx")
            record.outcome = "fault" if is_fault else "rejected"
            record.status, record.error_type = error.status, error.error_type
            return _error_response(error, record.id)
        finally:
            # The client went away (cancellation) or the handler failed: the
            # record must still end in exactly one outcome.
            if record.outcome == "in_progress":
                record.outcome = "aborted"
        return response

    async def _answer(
        self,
        request: web.Request,
        record: RequestRecord,
        route: Route,
        caller: VerifiedCaller,
        body: bytes,
        fault: Fault | None,
    ) -> web.StreamResponse:
        settings = self._state.settings
        if fault is not None and fault.kind in ("throttle", "http5xx", "slow") and fault.delay_ms:
            await asyncio.sleep(fault.delay_ms / 1000)
        if fault is not None and fault.kind == "throttle":
            raise AwsError(
                429, "ThrottlingException", "Too many requests, please wait before trying again."
            )
        if fault is not None and fault.kind == "http5xx":
            status = fault.status or 500
            error_type = (
                "ServiceUnavailableException" if status == 503 else "InternalServerException"
            )
            raise AwsError(status, error_type, "The server encountered an internal error.")
        delay = settings.frame_delay_s
        if fault is not None and fault.kind == "slow":
            delay = (fault.delay_ms if fault.delay_ms is not None else DEFAULT_SLOW_DELAY_MS) / 1000
        frames = settings.frames
        latency_ms = int(delay * 1000 * (frames + 4))
        model_id = route.model_id or ""
        headers = {"x-amzn-RequestId": record.id}
        op = route.operation
        if op == "InvokeModel":
            reply = responses.invoke_model(model_id, body, _maybe_json(body), frames)
            headers["X-Amzn-Bedrock-Input-Token-Count"] = str(reply.input_tokens)
            headers["X-Amzn-Bedrock-Output-Token-Count"] = str(reply.output_tokens)
            headers["X-Amzn-Bedrock-Invocation-Latency"] = str(latency_ms)
            return web.json_response(reply.body, headers=headers)
        if op == "InvokeModelWithResponseStream":
            stream = responses.invoke_stream(
                model_id, body, _maybe_json(body), frames, latency_ms, int(delay * 1000)
            )
            headers["X-Amzn-Bedrock-Content-Type"] = "application/json"
            return await self._stream(request, record, stream, delay, fault, headers)
        if op == "Converse":
            reply = responses.converse(_json_body(body), body, frames, latency_ms)
            return web.json_response(reply.body, headers=headers)
        if op == "ConverseStream":
            stream = responses.converse_stream(_json_body(body), body, frames, latency_ms)
            return await self._stream(request, record, stream, delay, fault, headers)
        if op == "CountTokens":
            return web.json_response(responses.count_tokens(_json_body(body)), headers=headers)
        if op == "ApplyGuardrail":
            _json_body(body)
            answer = {"action": "NONE", "outputs": [], "assessments": [], "usage": {}}
            return web.json_response(answer, headers=headers)
        return self._async_invoke(route, caller, body, headers)

    def _async_invoke(
        self, route: Route, caller: VerifiedCaller, body: bytes, headers: dict[str, str]
    ) -> web.Response:
        jobs = self._state.async_jobs
        if route.operation == "StartAsyncInvoke":
            doc = _json_body(body)
            if not isinstance(doc.get("outputDataConfig"), dict):
                raise validation("outputDataConfig is required.")
            arn = (
                f"arn:aws:bedrock:{caller.region}:{caller.credential.account}:"
                f"async-invoke/{uuid.uuid4().hex[:12]}"
            )
            now = _iso(self._state.clock())
            jobs[arn] = {
                "invocationArn": arn,
                "modelArn": model_resource(
                    str(doc["modelId"]), caller.region, caller.credential.account
                ),
                "clientRequestToken": doc.get("clientRequestToken", ""),
                "status": "Completed",
                "submitTime": now,
                "lastModifiedTime": now,
                "endTime": now,
                "outputDataConfig": doc["outputDataConfig"],
            }
            return web.json_response({"invocationArn": arn}, headers=headers)
        if route.operation == "GetAsyncInvoke":
            job = jobs.get(route.invocation_arn or "")
            if job is None:
                raise AwsError(
                    404, "ResourceNotFoundException", "The async invocation was not found."
                )
            return web.json_response(job, headers=headers)
        return web.json_response({"asyncInvokeSummaries": list(jobs.values())}, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        record: RequestRecord,
        frames: list[bytes],
        delay: float,
        fault: Fault | None,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={**headers, "Content-Type": "application/vnd.amazon.eventstream"},
        )
        clock = self._state.clock
        record.status = 200
        sent = hashlib.sha256()

        async def write(data: bytes) -> None:
            await response.write(data)
            sent.update(data)
            record.stream_sha256 = sent.hexdigest()

        try:
            await response.prepare(request)
            for index, frame in enumerate(frames):
                if index > 0:
                    await asyncio.sleep(delay)
                if fault is not None and index == 2 and fault.kind == "exception_frame":
                    await write(
                        exception_frame(fault.exception_type, "Injected by the bedrock emulator.")
                    )
                    record.outcome = "fault"
                    break
                if fault is not None and index == 2 and fault.kind == "reset":
                    record.outcome = "fault"
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                await write(frame)
                record.frames_sent += 1
                record.last_frame_at = clock()
                if record.first_frame_at is None:
                    record.first_frame_at = record.last_frame_at
            await response.write_eof()
        except ConnectionResetError:
            record.outcome = "aborted"
        except asyncio.CancelledError:
            record.outcome = "aborted"
            raise
        return response


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _require_loopback(request: web.Request) -> None:
    try:
        loopback = request.remote is not None and ipaddress.ip_address(request.remote).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise web.HTTPForbidden(text="control endpoints answer loopback peers only")


async def _faults(request: web.Request) -> web.StreamResponse:
    _require_loopback(request)
    queue = request.app[STATE_KEY].faults
    if request.method == "DELETE":
        queue.clear()
        return web.json_response({"cleared": True})
    if request.method == "GET":
        return web.json_response(queue.snapshot())
    try:
        fault, count = parse_fault(await request.json())
    except (ValueError, UnicodeDecodeError):
        return _error_response(validation("fault must be JSON"), str(uuid.uuid4()))
    except AwsError as error:
        return _error_response(error, str(uuid.uuid4()))
    queue.add(fault, count)
    return web.json_response({**asdict(fault), "count": count}, status=201)


async def _requests(request: web.Request) -> web.StreamResponse:
    _require_loopback(request)
    state = request.app[STATE_KEY]
    if request.method == "DELETE":
        state.records.clear()
        return web.json_response({"cleared": True})
    return web.json_response([asdict(r) for r in state.records])


async def _sts_calls(request: web.Request) -> web.StreamResponse:
    _require_loopback(request)
    ledger = request.app[STATE_KEY].ledger
    if request.method == "DELETE":
        ledger.clear_calls()
        return web.json_response({"cleared": True})
    return web.json_response(ledger.calls())


def build_app(state: EmulatorState) -> web.Application:
    # bedrock accepts bodies up to 25 MB; aiohttp's 1 MiB default would turn
    # large-but-valid calls into 413s the real service never sends.
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    app.router.add_route("*", "/_emulator/faults", _faults)
    app.router.add_route("*", "/_emulator/requests", _requests)
    app.router.add_route("*", "/_emulator/sts-calls", _sts_calls)
    app.router.add_route("*", "/{tail:.*}", _Handler(state).handle)
    return app


__all__ = ["EmulatorSettings", "EmulatorState", "RequestRecord", "build_app"]
