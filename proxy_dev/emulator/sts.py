"""The emulator's STS: moto's server behind a thin WSGI wrapper.

Contract: every STS action is answered by moto unchanged (AssumeRole needs no
pre-created role: moto mints keys for any role ARN). The wrapper only looks
at ``AssumeRole``: it records the call (role, session name, source identity,
duration, parsed session policy, tags), refuses it with AWS's 403
``AccessDenied`` XML while an ``sts_deny`` fault is queued, rejects session
policies AWS would reject (over 2048 characters, not a JSON object), and,
when moto answers 200, reads the issued credentials from moto's own answer
into the ``StsLedger``.

Why the ledger is filled from the wire answer rather than moto's backend
globals: moto's backends are process-wide, so two emulators in one process
would accept each other's keys; the ledger is per emulator and holds exactly
what this STS told its caller. The bedrock listener trusts nothing else.
"""

from __future__ import annotations

import datetime
import io
import json
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from proxy_dev.emulator.faults import FaultQueue
from proxy_dev.emulator.sigv4 import IssuedCredential

MAX_POLICY_CHARS = 2048
MAX_FORM_BYTES = 1024 * 1024
_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"


@dataclass(frozen=True)
class StsCall:
    role_arn: str | None
    role_session_name: str | None
    source_identity: str | None
    duration: int | None
    policy: Any
    tags: dict[str, str]
    access_key_id: str | None
    status: int


class StsLedger:
    """Credentials this STS issued and the AssumeRole calls it saw (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credentials: dict[str, IssuedCredential] = {}
        self._calls: list[StsCall] = []

    def issue(self, credential: IssuedCredential) -> None:
        with self._lock:
            self._credentials[credential.access_key_id] = credential

    def lookup(self, access_key_id: str) -> IssuedCredential | None:
        with self._lock:
            return self._credentials.get(access_key_id)

    def record(self, call: StsCall) -> None:
        with self._lock:
            self._calls.append(call)

    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(c) for c in self._calls]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()


def _error_xml(code: str, message: str) -> bytes:
    root = ET.Element("ErrorResponse", xmlns="https://sts.amazonaws.com/doc/2011-06-15/")
    error = ET.SubElement(root, "Error")
    ET.SubElement(error, "Type").text = "Sender"
    ET.SubElement(error, "Code").text = code
    ET.SubElement(error, "Message").text = message
    ET.SubElement(root, "RequestId").text = str(uuid.uuid4())
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _tags(params: dict[str, str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    index = 1
    while f"Tags.member.{index}.Key" in params:
        tags[params[f"Tags.member.{index}.Key"]] = params.get(f"Tags.member.{index}.Value", "")
        index += 1
    return tags


def _credential_from_answer(
    body: bytes, role_arn: str, policy: Any, source_identity: str | None
) -> IssuedCredential | None:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    creds = root.find(f"{_NS}AssumeRoleResult/{_NS}Credentials")
    if creds is None:
        return None
    fields = {child.tag.removeprefix(_NS): child.text or "" for child in creds}
    try:
        expiration = datetime.datetime.fromisoformat(fields["Expiration"])
        return IssuedCredential(
            access_key_id=fields["AccessKeyId"],
            secret_access_key=fields["SecretAccessKey"],
            session_token=fields["SessionToken"],
            expiration=expiration.timestamp(),
            role_arn=role_arn,
            policy=policy if isinstance(policy, dict) else None,
            source_identity=source_identity,
        )
    except (KeyError, ValueError):
        return None


def wrap_sts_app(app: WSGIApplication, ledger: StsLedger, faults: FaultQueue) -> WSGIApplication:
    def send(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
        start_response(status, [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def wrapped(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(min(length, MAX_FORM_BYTES)) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        merged = {
            **parse_qs(environ.get("QUERY_STRING", "")),
            **parse_qs(body.decode("utf-8", "replace")),
        }
        params = {k: v[0] for k, v in merged.items()}
        if params.get("Action") != "AssumeRole":
            return app(environ, start_response)

        role_arn = params.get("RoleArn")
        source_identity = params.get("SourceIdentity")
        raw_policy = params.get("Policy")
        policy: Any = None
        call_fields: dict[str, Any] = {
            "role_arn": role_arn,
            "role_session_name": params.get("RoleSessionName"),
            "source_identity": source_identity,
            "duration": int(params["DurationSeconds"])
            if params.get("DurationSeconds", "").isdigit()
            else None,
            "tags": _tags(params),
        }
        refusal: tuple[int, str, str, str] | None = None
        if raw_policy is not None:
            try:
                policy = json.loads(raw_policy)
            except ValueError:
                policy = raw_policy
            if len(raw_policy) > MAX_POLICY_CHARS:
                refusal = (
                    400,
                    "400 Bad Request",
                    "ValidationError",
                    "1 validation error detected: Value at 'policy' failed to satisfy "
                    f"constraint: Member must have length less than or equal to {MAX_POLICY_CHARS}",
                )
            elif not isinstance(policy, dict):
                refusal = (
                    400,
                    "400 Bad Request",
                    "MalformedPolicyDocument",
                    "Syntax errors in policy.",
                )
        if refusal is None and faults.take_sts_deny():
            refusal = (
                403,
                "403 Forbidden",
                "AccessDenied",
                f"User is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
            )
        if refusal is not None:
            ledger.record(
                StsCall(**call_fields, policy=policy, access_key_id=None, status=refusal[0])
            )
            return send(start_response, refusal[1], _error_xml(refusal[2], refusal[3]))

        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        result = app(environ, capture)
        try:
            answer = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status_code = int(str(captured.get("status", "500")).split()[0])
        credential = (
            _credential_from_answer(answer, role_arn or "", policy, source_identity)
            if status_code == 200
            else None
        )
        if credential is not None:
            ledger.issue(credential)
        ledger.record(
            StsCall(
                **call_fields,
                policy=policy,
                access_key_id=credential.access_key_id if credential else None,
                status=status_code,
            )
        )
        start_response(
            captured.get("status", "500 Internal Server Error"), captured.get("headers", [])
        )
        return [answer]

    return wrapped


class _QuietHandler(MotoRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Access logs of a test double are noise on the demo terminal.
        return None


class StsServer:
    """moto's STS on its own thread, so its backend lives in this process."""

    def __init__(self, host: str, port: int, ledger: StsLedger, faults: FaultQueue) -> None:
        app = wrap_sts_app(DomainDispatcherApplication(create_backend_app), ledger, faults)
        self._server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=_QuietHandler
        )
        # A short poll interval keeps close() (werkzeug's shutdown waits one poll) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="emulator-sts", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
