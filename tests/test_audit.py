"""proxy.audit: one escaped JSON line per record, the DESIGN.md section 7 field
names, and exactly one terminal record per request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import AuditLog, request_record, terminal_record
from proxy.classify import Classification
from proxy.context import RequestContext
from proxy.credentials import CredentialScope, SessionCredentials
from proxy.decision import Decision, Guardrail, Obligations
from proxy.errors import (
    AuditUnavailable,
    ConfigError,
    InvalidRequest,
    PolicyDenied,
    PolicyUnavailable,
    ProxyError,
    UpstreamUnavailable,
)
from proxy.identity import WorkloadIdentity
from proxy.models import parse_model_id
from proxy.observe import Observation
from proxy.operations import parse_route

ACCT = "123456789012"
ROLE = f"arn:aws:iam::{ACCT}:role/bedrock-chat"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"

EVIL = [
    'anthropic.x\n{"event":"completed","outcome":"ok"}',
    "line\rbreak",
    'quote"},{"event":"denied',
    "bidi\u202eevil\u202c",
    "nul\u0000byte",
    "ls\u2028ps\u2029nel\u0085",
    "tab\tbell\u0007esc\u001b[31m",
    "emoji \U0001f600 and lone surrogate-free text",
]


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def audit(audit_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(str(audit_path))
    try:
        yield log
    finally:
        log.close()


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def test_one_json_line_per_record(audit: AuditLog, audit_path: Path) -> None:
    audit.write("authorized", request_id="r1", model_id=HAIKU)
    # Flushed at once: the authorized record is on disk before forwarding.
    assert _records(audit_path)[0]["event"] == "authorized"
    audit.write("completed", request_id="r1", outcome="ok")
    audit.write("denied", request_id="r2", outcome="denied")
    records = _records(audit_path)
    assert [r["event"] for r in records] == ["authorized", "completed", "denied"]
    assert [r["request_id"] for r in records] == ["r1", "r1", "r2"]
    for record in records:
        ts = datetime.fromisoformat(record["ts"])
        assert ts.tzinfo is not None and ts.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - ts) < timedelta(minutes=5)


def test_append_keeps_earlier_records(audit_path: Path) -> None:
    for request_id in ("a", "b"):
        log = AuditLog(str(audit_path))
        try:
            log.write("denied", request_id=request_id)
        finally:
            log.close()
    assert [r["request_id"] for r in _records(audit_path)] == ["a", "b"]


@pytest.mark.parametrize("evil", EVIL)
def test_user_strings_cannot_break_or_forge_lines(
    audit: AuditLog, audit_path: Path, evil: str
) -> None:
    audit.write(
        "authorized",
        request_id="r1",
        model_id=evil,
        task_id=evil,
        classification={"declared": evil},
        tool_calls=[evil],
    )
    raw = audit_path.read_bytes()
    assert raw.isascii()  # ensure_ascii: no bidi, NUL or line separator survives raw
    assert raw.count(b"\n") == 1 and raw.endswith(b"\n")
    for forbidden in (b"\r", b"\x00", b"\x07", b"\x1b", b"\t"):
        assert forbidden not in raw
    (record,) = _records(audit_path)
    assert record["event"] == "authorized"
    assert record["model_id"] == evil
    assert record["tool_calls"] == [evil]
    assert record["classification"] == {"declared": evil}


def test_specific_escapes(audit: AuditLog, audit_path: Path) -> None:
    audit.write("denied", model_id='a"b\nc\u202ed\u0000')
    line = audit_path.read_text()
    assert r'"model_id":"a\"b\nc\u202ed\u0000"' in line


def test_non_json_values_are_stringified(audit: AuditLog, audit_path: Path) -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    audit.write("denied", when=when, path=Path("/x"))
    (record,) = _records(audit_path)
    assert record["when"] == str(when)
    assert record["path"] == "/x"


def test_closed_log_raises_audit_unavailable(audit_path: Path) -> None:
    log = AuditLog(str(audit_path))
    log.write("authorized", request_id="r1")
    log.close()
    with pytest.raises(AuditUnavailable) as info:
        log.write("authorized", request_id="r2")
    assert info.value.status == 503
    assert info.value.code == "audit_unavailable"
    assert [r["request_id"] for r in _records(audit_path)] == ["r1"]


def test_unwritable_path_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audit.path"):
        AuditLog(str(tmp_path / "missing-dir" / "audit.log"))


# --- records built from the request context ---------------------------------

# DESIGN.md section 7. ts/event come from the log itself; outcome, latency_ms
# and ttfb_ms from the terminal record; seq/prev_hash/hash (the hash chain)
# are not produced by this module.
REQUEST_FIELDS = {
    "request_id",
    "decision_id",
    "policy_revision",
    "spiffe_id",
    "owner",
    "task_id",
    "operation",
    "model_id",
    "region",
    "account",
    "classification",
    "decision",
    "obligations",
    "role_arn",
    "role_session_name",
    "source_identity",
    "upstream_status",
    "aws_request_id",
    "bytes_in",
    "bytes_out",
    "usage",
    "tool_calls",
    "stop_reason",
    "prompt",
}
TERMINAL_FIELDS = REQUEST_FIELDS | {"outcome", "latency_ms", "ttfb_ms"}


def _full_context() -> RequestContext:
    route = parse_route("POST", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse")
    identity = WorkloadIdentity(
        spiffe_id="spiffe://example.org/ns/demo/sa/chat",
        trust_domain="example.org",
        path="/ns/demo/sa/chat",
        serial="1f",
        not_after=datetime(2030, 1, 1, tzinfo=UTC),
    )
    obligations = Obligations(ROLE, 900, "hash", Guardrail("gr1", "1"), 512)
    ctx = RequestContext(
        peer="127.0.0.1:5555",
        identity=identity,
        route=route,
        model=parse_model_id(HAIKU, "us-east-1", ACCT),
        region="us-east-1",
        account=ACCT,
        task_id="task-1",
        classification=Classification("confidential", "public", "confidential", ("email",)),
        decision=Decision(True, ("ok",), obligations, "dec-1", "bundle:r1"),
        scope=CredentialScope(
            role_arn=ROLE,
            spiffe_id=identity.spiffe_id,
            trust_domain="example.org",
            workload_path=identity.path,
            task_id="task-1",
            region="us-east-1",
            resource_arns=(f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}",),
            actions=("bedrock:InvokeModel",),
            classification="confidential",
            session_seconds=900,
        ),
        credentials=SessionCredentials(
            access_key_id="ASIAEXAMPLE",
            secret_access_key=SECRET,
            session_token=TOKEN,
            expiration=datetime(2030, 1, 1, tzinfo=UTC),
            role_session_name="spiffe.example.org.chat",
            source_identity="spiffe.example.org.chat",
            assumed_role_arn=f"arn:aws:sts::{ACCT}:assumed-role/bedrock-chat/s",
        ),
        prompt_sha256="ab" * 32,
        bytes_in=100,
        bytes_out=2000,
        authorized=True,
        upstream_status=200,
        aws_request_id="aws-req-1",
        ttfb_ms=12.5,
        observation=Observation(
            input_tokens=10, output_tokens=20, tool_calls=["search"], stop_reason="end_turn"
        ),
        outcome="ok",
    )
    return ctx


def test_request_record_has_every_design_field() -> None:
    record = request_record(_full_context())
    assert REQUEST_FIELDS <= set(record)
    assert record["decision_id"] == "dec-1"
    assert record["policy_revision"] == "bundle:r1"
    assert record["spiffe_id"] == "spiffe://example.org/ns/demo/sa/chat"
    assert record["operation"] == "Converse"
    assert record["model_id"] == HAIKU
    assert record["classification"] == {
        "declared": "confidential",
        "detected": "public",
        "effective": "confidential",
        "findings": ["email"],
    }
    assert record["decision"] == {"allow": True, "reasons": ["ok"]}
    assert record["obligations"]["guardrail"] == {"identifier": "gr1", "version": "1"}
    assert record["role_arn"] == ROLE
    assert record["role_session_name"] == "spiffe.example.org.chat"
    assert record["source_identity"] == "spiffe.example.org.chat"
    assert record["usage"] == {"input_tokens": 10, "output_tokens": 20}
    assert record["tool_calls"] == ["search"]
    assert record["stop_reason"] == "end_turn"
    assert record["prompt"] == {"sha256": "ab" * 32, "captured": None}
    # Secrets never reach the record.
    text = json.dumps(record, default=str)
    assert SECRET not in text and TOKEN not in text


def test_request_record_of_empty_context() -> None:
    ctx = RequestContext()
    record = request_record(ctx)
    assert REQUEST_FIELDS <= set(record)
    assert record["request_id"] == ctx.request_id
    assert record["decision"] is None
    assert record["usage"] is None
    assert record["tool_calls"] == []
    json.dumps(record)  # serialisable without a fallback


@pytest.mark.parametrize(
    ("authorized", "outcome", "error", "event"),
    [
        (True, "ok", None, "completed"),
        (True, "client_aborted", None, "completed"),
        (
            True,
            "upstream_error",
            UpstreamUnavailable("upstream broke", detail="reset"),
            "completed",
        ),
        (True, "audit_unavailable", AuditUnavailable("audit down"), "completed"),
        (False, "denied", PolicyDenied("denied: no task"), "denied"),
        (False, "policy_unavailable", PolicyUnavailable("opa down", detail="timeout"), "denied"),
        (False, "invalid_request", InvalidRequest("bad model id"), "denied"),
    ],
)
def test_terminal_record(
    authorized: bool, outcome: str, error: ProxyError | None, event: str
) -> None:
    ctx = RequestContext(authorized=authorized, outcome=outcome, error=error, ttfb_ms=None)
    name, fields = terminal_record(ctx)
    assert name == event
    assert TERMINAL_FIELDS <= set(fields)
    assert fields["outcome"] == outcome
    assert isinstance(fields["latency_ms"], float) and fields["latency_ms"] >= 0
    if error is None:
        assert "error" not in fields
    else:
        assert fields["error"] == {
            "code": error.code,
            "status": error.status,
            "message": error.message,
            "detail": error.detail,
        }


def test_terminal_record_written_through_the_log(audit: AuditLog, audit_path: Path) -> None:
    name, fields = terminal_record(_full_context())
    audit.write(name, **fields)
    (record,) = _records(audit_path)
    assert {"ts", "event"} | TERMINAL_FIELDS <= set(record)
    assert record["event"] == "completed"
    assert record["outcome"] == "ok"
    assert record["ttfb_ms"] == 12.5
    assert SECRET not in audit_path.read_text()
