"""proxy.audit.log: one escaped JSON line per record, the docs/audit.md field
names, and exactly one terminal record per request."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxy import cli
from proxy.audit import ocsf, sinks
from proxy.audit.chain import Signer, generate_key, load_signer
from proxy.audit.cli import TailFilter, parse_since, run_tail, run_verify, safe
from proxy.audit.log import (
    AuditLog,
    ReasonBudget,
    open_audit_log,
    request_record,
    terminal_record,
)
from proxy.audit.sinks import FileSink
from proxy.audit.verify import verify
from proxy.aws.credentials import CredentialScope, SessionCredentials
from proxy.config import AuditSettings
from proxy.context import PromptRecord, RequestContext, Target
from proxy.dataplane.observe import Observation
from proxy.dataplane.upstream import RelayResult
from proxy.errors import (
    AuditUnavailable,
    ConfigError,
    InvalidRequest,
    Outcome,
    PolicyDenied,
    PolicyUnavailable,
    ProxyError,
    UpstreamUnavailable,
)
from proxy.identity.svid import WorkloadIdentity
from proxy.policy.classify.classifier import Classification
from proxy.policy.decision import Decision, Guardrail, Obligations
from proxy.request.models import parse_model_id
from proxy.request.operations import parse_route

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


LOG_EVENTS = {"chain_start", "chain_resumed", "checkpoint", "connection"}


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    key = tmp_path_factory.mktemp("key") / "audit.key"
    generate_key(key)
    return load_signer(key)


def open_log(path: Path, signer: Signer | None = None, **options: Any) -> AuditLog:
    return AuditLog(FileSink(path), signer=signer, **options)


@pytest.fixture
def audit(audit_path: Path, signer: Signer) -> Iterator[AuditLog]:
    log = open_log(audit_path, signer)
    try:
        yield log
    finally:
        log.close()


def _all(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def _records(path: Path) -> list[dict[str, Any]]:
    return [r for r in _all(path) if r["event"] not in LOG_EVENTS]


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
        log = open_log(audit_path)
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
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")  # chain_start + the record
    for forbidden in (b"\r", b"\x00", b"\x07", b"\x1b", b"\t"):
        assert forbidden not in raw
    (record,) = _records(audit_path)
    assert record["event"] == "authorized"
    assert record["model_id"] == evil
    assert record["tool_calls"] == [evil]
    assert record["classification"] == {"declared": evil}


def test_specific_escapes(audit: AuditLog, audit_path: Path) -> None:
    audit.write("denied", model_id='a"b\nc\u202ed\u0000')
    line = audit_path.read_text().splitlines()[-1]
    assert r'"model_id":"a\"b\nc\u202ed\u0000"' in line


def test_non_json_values_are_stringified(audit: AuditLog, audit_path: Path) -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    audit.write("denied", when=when, path=Path("/x"))
    (record,) = _records(audit_path)
    assert record["when"] == str(when)
    assert record["path"] == "/x"


def test_closed_log_raises_audit_unavailable(audit_path: Path) -> None:
    log = open_log(audit_path)
    log.write("authorized", request_id="r1")
    log.close()
    with pytest.raises(AuditUnavailable) as info:
        log.write("authorized", request_id="r2")
    assert info.value.status == 503
    assert info.value.code == "audit_unavailable"
    assert [r["request_id"] for r in _records(audit_path)] == ["r1"]


def test_unwritable_path_is_a_start_up_error(tmp_path: Path) -> None:
    settings: Any = SimpleNamespace(
        audit_path=str(tmp_path / "missing-dir" / "audit.log"), audit=AuditSettings()
    )
    with pytest.raises(ConfigError, match="audit.path"):
        open_audit_log(settings)


# --- records built from the request context ---------------------------------

# docs/audit.md. ts/event come from the log itself; outcome, latency_ms
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
        target=Target("us-east-1", ACCT, parse_model_id(HAIKU, "us-east-1", ACCT), "task-1"),
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
        prompt=PromptRecord("ab" * 32),
        bytes_in=100,
        authorized=True,
        relay=RelayResult(
            status=200,
            aws_request_id="aws-req-1",
            ttfb_ms=12.5,
            bytes_out=2000,
            observation=Observation(
                input_tokens=10, output_tokens=20, tool_calls=["search"], stop_reason="end_turn"
            ),
            outcome=Outcome.OK,
        ),
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
        "defaulted": False,
    }
    assert record["decision"] == {"allow": True, "reasons": ["ok"], "reasons_omitted": 0}
    assert record["obligations"]["guardrail"] == {"identifier": "gr1", "version": "1"}
    assert record["role_arn"] == ROLE
    assert record["role_session_name"] == "spiffe.example.org.chat"
    assert record["source_identity"] == "spiffe.example.org.chat"
    assert record["usage"] == {"input_tokens": 10, "output_tokens": 20}
    assert record["tool_calls"] == ["search"]
    assert record["stop_reason"] == "end_turn"
    assert record["prompt"] == {"sha256": "ab" * 32, "captured": None, "truncated": False}
    # Secrets never reach the record.
    text = json.dumps(record, default=str)
    assert SECRET not in text and TOKEN not in text


@pytest.mark.parametrize(
    ("reasons", "shown", "omitted"),
    [
        ((), [], 0),
        (("a", "b"), ["a", "b"], 0),
        (tuple(f"r{i}" for i in range(17)), [f"r{i}" for i in range(5)], 12),
        (("z" * 100_000,), ["z" * 238 + "...[+99762 chars]"], 0),
        (("t",) * 50_000, ["t"] * 5, 49_995),
    ],
)
def test_request_record_bounds_the_reasons_and_counts_the_rest(
    reasons: tuple[str, ...], shown: list[str], omitted: int
) -> None:
    ctx = RequestContext(decision=Decision(False, reasons, None, "d", None))
    record = request_record(ctx)
    assert record["decision"] == {"allow": False, "reasons": shown, "reasons_omitted": omitted}


def test_the_captured_prompt_is_in_the_authorized_record_only() -> None:
    ctx = _full_context()
    ctx.prompt = PromptRecord("ab" * 32, "p" * 32768, truncated=True)
    authorized = request_record(ctx)
    assert authorized["prompt"] == {"sha256": "ab" * 32, "captured": "p" * 32768, "truncated": True}
    _, completed = terminal_record(ctx)
    assert completed["prompt"] == {"sha256": "ab" * 32, "captured": None, "truncated": True}


HUGE = "h" * 1_000_000
CUT = "h" * 2029 + "...[+997971 chars]"


@pytest.mark.parametrize(
    ("ctx", "field", "value"),
    [
        (RequestContext(target=Target("us-east-1", ACCT, None, HUGE)), "task_id", CUT),
        (RequestContext(decision=Decision(False, (), None, HUGE, None)), "decision_id", CUT),
        (RequestContext(decision=Decision(False, (), None, "d", HUGE)), "policy_revision", CUT),
        (RequestContext(decision=Decision(False, (), None, "d", None, HUGE)), "owner", CUT),
        (
            RequestContext(relay=RelayResult(observation=Observation(stop_reason=HUGE))),
            "stop_reason",
            CUT,
        ),
        (
            RequestContext(relay=RelayResult(observation=Observation(exception=HUGE))),
            "stream_exception",
            CUT,
        ),
        (RequestContext(relay=RelayResult(aws_request_id=HUGE)), "aws_request_id", CUT),
        (
            RequestContext(
                relay=RelayResult(observation=Observation(tool_calls=["t" * 10_000] * 1000))
            ),
            "tool_calls",
            ["t" * 111 + "...[+9889 chars]"] * 128,
        ),
        (RequestContext(target=Target("us-east-1", ACCT, None, "task-1")), "task_id", "task-1"),
    ],
)
def test_request_record_bounds_every_identifier(
    ctx: RequestContext, field: str, value: object
) -> None:
    assert request_record(ctx)[field] == value


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
    ("ctx", "outcome", "event"),
    [
        (RequestContext(authorized=True, relay=RelayResult(outcome=Outcome.OK)), "ok", "completed"),
        # A relay that never finished: the client went away mid-stream.
        (RequestContext(authorized=True, relay=RelayResult()), "client_aborted", "completed"),
        (RequestContext(aborted=True), "client_aborted", "denied"),
        (
            RequestContext(
                authorized=True,
                relay=RelayResult(
                    outcome=Outcome.UPSTREAM_ERROR,
                    error=UpstreamUnavailable("upstream broke", detail="reset"),
                ),
            ),
            "upstream_error",
            "completed",
        ),
        (
            RequestContext(authorized=True, error=AuditUnavailable("audit down")),
            "audit_unavailable",
            "completed",
        ),
        (RequestContext(error=PolicyDenied("denied: no task")), "denied", "denied"),
        (
            RequestContext(error=PolicyUnavailable("opa down", detail="timeout")),
            "policy_unavailable",
            "denied",
        ),
        (RequestContext(error=InvalidRequest("bad model id")), "invalid_request", "denied"),
        (RequestContext(error=ProxyError("bug", detail="KeyError")), "internal_error", "denied"),
        # Neither refused nor authorized: the handler skipped a stage, which is a bug.
        (RequestContext(), "internal_error", "denied"),
    ],
)
def test_terminal_record(ctx: RequestContext, outcome: str, event: str) -> None:
    name, fields = terminal_record(ctx)
    assert name == event
    assert TERMINAL_FIELDS <= set(fields)
    assert fields["outcome"] == outcome
    assert outcome in {o.value for o in Outcome}
    assert isinstance(fields["latency_ms"], float) and fields["latency_ms"] >= 0
    error = ctx.error or (ctx.relay.error if ctx.relay else None)
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


# --- hash chain, checkpoints and verify --------------------------------------


def _chained_log(path: Path, signer: Signer, requests: int = 6, every: int = 4) -> None:
    log = open_log(path, signer, checkpoint_every=every)
    try:
        for n in range(requests):
            log.write("authorized", request_id=f"r{n}", model_id=HAIKU)
            log.write("completed", request_id=f"r{n}", outcome="ok")
    finally:
        log.close()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _report(path: Path, signer: Signer, lines: list[bytes] | None = None) -> Any:
    data = b"".join(line + b"\n" for line in lines) if lines is not None else path.read_bytes()
    return verify([(str(path), data)], public_key=signer.public_raw)


def test_intact_chain_verifies(audit_path: Path, signer: Signer) -> None:
    _chained_log(audit_path, signer)
    report = _report(audit_path, signer)
    assert report.findings == [] and report.open_requests == []
    assert report.exit_code == 0
    assert report.checkpoints == 4  # every 4 records: 13 records -> 3, plus the final one
    records = _all(audit_path)
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert records[-1]["event"] == "checkpoint" and records[-1]["final"] is True


def _kinds(report: Any) -> list[str]:
    return [f.kind for f in report.findings]


def test_a_log_cut_back_to_a_mid_chain_checkpoint_is_incomplete(
    audit_path: Path, signer: Signer
) -> None:
    _chained_log(audit_path, signer)
    lines = _lines(audit_path)
    # Every link and signature up to this checkpoint still holds: only the missing
    # final checkpoint tells the cut apart from a proxy that stopped.
    cut = max(n for n, line in enumerate(lines[:-1]) if b'"event":"checkpoint"' in line)
    report = _report(audit_path, signer, lines[: cut + 1])
    assert _kinds(report) == ["no_final_checkpoint"]
    (finding,) = report.findings
    assert not report.tampered and report.exit_code == 3
    assert finding.where == f"{audit_path}:{cut + 1}"
    assert "without its final checkpoint" in finding.message
    assert "still running, crashed, or the tail was cut" in finding.message


def test_the_log_of_a_running_proxy_is_incomplete(audit_path: Path, signer: Signer) -> None:
    log = open_log(audit_path, signer, checkpoint_every=1000)
    log.write("authorized", request_id="r1")
    log.write("completed", request_id="r1", outcome="ok")
    assert _kinds(_report(audit_path, signer)) == ["unsealed_tail"]
    log.checkpoint()  # a timed checkpoint: signed, but not the final one
    report = _report(audit_path, signer)
    assert _kinds(report) == ["no_final_checkpoint"] and report.exit_code == 3
    log.close()
    assert _report(audit_path, signer).exit_code == 0


def test_stopped_restarted_and_stopped_again_verifies(audit_path: Path, signer: Signer) -> None:
    _chained_log(audit_path, signer, requests=2)
    _chained_log(audit_path, signer, requests=2)
    records = _all(audit_path)
    assert records[-1]["final"] is True
    assert sum(r.get("final") is True for r in records) == 2  # the first run's is mid-chain
    report = _report(audit_path, signer)
    assert report.findings == [] and report.exit_code == 0


def test_a_checkpoint_under_another_key_than_the_chain_is_tampering(
    audit_path: Path, signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chained_log(audit_path, signer, requests=2)
    generate_key(tmp_path / "other.key")
    # The chain continued under another key (the proxy itself starts a new chain
    # then): what rebuilding its tail and re-signing with one's own key looks like
    # to a verifier with no pinned key.
    monkeypatch.setattr(AuditLog, "_key_changed", lambda self, last_line: False)
    _chained_log(audit_path, load_signer(tmp_path / "other.key"), requests=2)
    report = verify([(str(audit_path), audit_path.read_bytes())], public_key=None)
    assert "key_changed" in _kinds(report)
    assert report.tampered and report.exit_code == 1


def _edit(lines: list[bytes]) -> list[bytes]:
    lines[2] = lines[2].replace(b'"outcome":"ok"', b'"outcome":"denied"')
    return lines


def _rehash_from(lines: list[bytes], start: int) -> list[bytes]:
    """What an attacker without the key can do: recompute every hash after an edit."""
    import hashlib

    from proxy.audit.chain import parse_line

    out = lines[:start]
    prev = parse_line(out[-1]).claimed_hash
    for line in lines[start:]:
        record = parse_line(line).record
        record["prev_hash"] = prev
        body = json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode()
        prev = hashlib.sha256(body).hexdigest()
        out.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}')
    return out


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        (_edit, "edited"),
        (lambda lines: lines[:4] + lines[5:], "deleted"),
        (lambda lines: lines[:3] + [lines[4], lines[3]] + lines[5:], "reordered"),
        (lambda lines: lines[:-3], "unsealed_tail"),
        (lambda lines: _rehash_from(_edit(lines), 2), "bad_signature"),
        (lambda lines: lines[:3] + [b'{"event":"completed"}'] + lines[3:], "malformed"),
    ],
)
def test_each_tampering_kind_is_detected(
    audit_path: Path, signer: Signer, tamper: Any, kind: str
) -> None:
    _chained_log(audit_path, signer)
    report = _report(audit_path, signer, tamper(_lines(audit_path)))
    assert kind in {f.kind for f in report.findings}
    assert report.exit_code == (3 if kind == "unsealed_tail" else 1)


def test_rebuilt_chain_with_another_key_fails_when_pinned(
    audit_path: Path, signer: Signer, tmp_path: Path
) -> None:
    generate_key(tmp_path / "other.key")
    _chained_log(audit_path, load_signer(tmp_path / "other.key"))
    pinned = _report(audit_path, signer)
    assert pinned.exit_code == 1 and "bad_signature" in {f.kind for f in pinned.findings}
    unpinned = verify([(str(audit_path), audit_path.read_bytes())], public_key=None)
    assert unpinned.exit_code == 0


def test_crash_leaves_an_open_request_and_resume_continues_the_chain(
    audit_path: Path, signer: Signer
) -> None:
    log = open_log(audit_path, signer, checkpoint_every=100)
    log.write("authorized", request_id="crashed")
    # No close(): as after SIGKILL. The next run resumes the same chain.
    second = open_log(audit_path, signer, checkpoint_every=100)
    second.write("denied", request_id="later")
    second.close()
    records = _all(audit_path)
    assert records[2]["event"] == "chain_resumed" and records[2]["previous_sealed"] is False
    assert len({r["chain"] for r in records}) == 1
    report = _report(audit_path, signer)
    assert [r.request_id for r in report.open_requests] == ["crashed"]
    assert not report.tampered and report.exit_code == 3


def test_resume_after_a_last_line_of_several_megabytes_continues_the_chain(
    audit_path: Path, signer: Signer
) -> None:
    # A run allowed the largest records crashed right after writing an 8 MB one.
    first = open_log(audit_path, signer, max_record_bytes=64 * 1024 * 1024)
    first.write("authorized", request_id="huge", prompt={"captured": "p" * 8_000_000})
    assert len(_lines(audit_path)[-1]) > 8_000_000
    second = open_log(audit_path, signer)
    second.write("denied", request_id="later")
    second.close()
    records = _all(audit_path)
    huge, resumed = records[1], records[2]
    assert resumed["event"] == "chain_resumed" and resumed["previous_sealed"] is False
    assert (resumed["chain"], resumed["seq"]) == (huge["chain"], huge["seq"] + 1)
    assert resumed["prev_hash"] == huge["hash"]
    report = _report(audit_path, signer)
    assert not report.tampered and len(report.chains) == 1
    assert [r.request_id for r in report.open_requests] == ["huge"]


@pytest.mark.parametrize(
    "last",
    [
        b'{"event":"x","chain":"'
        + b"c" * 5000
        + b'","seq":1,"prev_hash":"'
        + b"0" * 64
        + b'","hash":"'
        + b"1" * 64
        + b'"}',
        b'{"event":"x","chain":"0123456789abcdef","seq":'
        + b"9" * 400
        + b',"prev_hash":"'
        + b"0" * 64
        + b'","hash":"'
        + b"1" * 64
        + b'"}',
        b"not a record",
    ],
)
def test_a_last_line_this_proxy_did_not_write_starts_a_new_chain(
    audit_path: Path, signer: Signer, last: bytes
) -> None:
    audit_path.write_bytes(last + b"\n")
    log = open_log(audit_path, signer)
    log.close()
    start = json.loads(_lines(audit_path)[-2])
    assert start["event"] == "chain_start" and start["previous_unchained"] is True
    assert len(start["chain"]) == 16 and start["seq"] == 0


def test_a_last_line_too_long_to_read_back_starts_a_new_chain(
    audit_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = open_log(audit_path, signer, max_record_bytes=64 * 1024 * 1024)
    first.write("authorized", request_id="huge", prompt={"captured": "p" * 2_000_000})
    monkeypatch.setattr(sinks, "MAX_RESUME_LINE_BYTES", 1_000_000)
    second = open_log(audit_path, signer)
    second.close()
    start = _all(audit_path)[2]
    assert start["event"] == "chain_start" and start["previous_unchained"] is True


def test_a_new_signing_key_starts_a_new_chain_that_names_the_old_one(
    audit_path: Path, signer: Signer, tmp_path: Path
) -> None:
    generate_key(tmp_path / "next.key")
    rotated = load_signer(tmp_path / "next.key")
    first = open_log(audit_path, signer)
    first.write("denied", request_id="before")
    first.close()
    second = open_log(audit_path, rotated)
    second.write("denied", request_id="after")
    second.close()
    records = _all(audit_path)
    old_chain, new_start = records[0]["chain"], records[3]
    assert new_start["event"] == "chain_start" and new_start["chain"] != old_chain
    assert new_start["previous_chain"] == old_chain
    assert new_start["previous_hash"] == records[2]["hash"]  # the old chain's final checkpoint
    # Each chain is sealed under its own key: nothing looks tampered.
    report = verify([(str(audit_path), audit_path.read_bytes())], public_key=None)
    assert report.exit_code == 0, report.findings


def test_rotation_continues_the_chain(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(FileSink(path, max_bytes=600), signer=signer, checkpoint_every=1000)
    for n in range(8):
        log.write("denied", request_id=f"r{n}", outcome="denied")
    log.close()
    files = sorted(tmp_path.glob("audit.log*"))
    assert len(files) > 2
    for order in (files, list(reversed(files)), files[1:] + files[:1]):
        report = verify([(str(f), f.read_bytes()) for f in order], public_key=signer.public_raw)
        assert report.exit_code == 0, report.findings
        assert len(report.chains) == 1
    one = verify([(str(path), path.read_bytes())], public_key=signer.public_raw)
    assert one.notes and not one.tampered and one.exit_code == 0
    # Without the newest file the chain ends at a rotation checkpoint.
    older = [f for f in files if f != path]
    report = verify([(str(f), f.read_bytes()) for f in older], public_key=signer.public_raw)
    assert _kinds(report) == ["no_final_checkpoint"] and report.exit_code == 3
    assert "newer files were not given" in report.findings[0].message


async def test_batch_fsync_holds_the_writer_until_synced(audit_path: Path) -> None:
    synced: list[int] = []
    sink = FileSink(audit_path)
    original = sink.sync

    def counting_sync() -> None:
        original()
        synced.append(1)

    sink.sync = counting_sync  # type: ignore[method-assign]
    log = AuditLog(sink, fsync="batch", batch_s=0.02)
    await asyncio.gather(*(log.write_ahead("authorized", request_id=f"r{n}") for n in range(5)))
    assert synced == [1]  # five write-aheads, one group fsync
    log.close()


async def test_write_ahead_refuses_when_the_sink_breaks(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = open_log(path)
    await log.write_ahead("authorized", request_id="ok")
    path.unlink()
    path.mkdir()  # the path can no longer be reopened as a file
    with pytest.raises(AuditUnavailable):
        await log.write_ahead("authorized", request_id="refused")


def test_connection_records_are_rate_limited(audit_path: Path) -> None:
    log = open_log(audit_path, connection_records_per_minute=3)
    for _ in range(10):
        log.connection_failed("10.0.0.1", "tlsv1 alert unknown ca")
    log.close()
    connections = [r for r in _all(audit_path) if r["event"] == "connection"]
    assert len(connections) == 3
    assert connections[0]["peer"] == "10.0.0.1"


# --- OCSF --------------------------------------------------------------------


def test_ocsf_mapping_keeps_its_promises(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(FileSink(path), signer=signer, record_format="ocsf")
    name, fields = terminal_record(_full_context())
    log.write(name, **fields)
    log.close()
    (event,) = [r for r in _all(path) if r.get("class_uid") == 6003]
    assert event["category_uid"] == 6 and event["type_uid"] == 600399
    assert event["activity_name"] == "completed"
    assert event["status_id"] == 1 and event["status"] == "Success"
    assert event["actor"]["user"]["uid"] == "spiffe://example.org/ns/demo/sa/chat"
    assert event["api"]["operation"] == "Converse"
    assert event["api"]["service"]["name"] == "bedrock-runtime"
    assert event["api"]["response"]["code"] == 200
    assert event["resources"][0]["uid"].startswith("arn:aws:bedrock:us-east-1::foundation-model/")
    assert event["src_endpoint"]["ip"] == "127.0.0.1:5555"
    assert event["cloud"] == {"provider": "AWS", "region": "us-east-1", "account": {"uid": ACCT}}
    assert isinstance(event["time"], int)
    assert event["unmapped"]["usage"] == {"input_tokens": 10, "output_tokens": 20}
    assert event["unmapped"]["aws_request_id"] == "aws-req-1"
    native = ocsf.to_native(event)
    assert {k: native[k] for k in ("event", "request_id", "outcome", "model_id")} == {
        k: fields.get(k, name) for k in ("event", "request_id", "outcome", "model_id")
    }
    assert verify([(str(path), path.read_bytes())], public_key=signer.public_raw).exit_code == 0


# --- tail ----------------------------------------------------------------------


def test_tail_filters_and_escapes(audit_path: Path, signer: Signer) -> None:
    log = open_log(audit_path, signer)
    log.write(
        "denied",
        request_id="a",
        spiffe_id="spiffe://x/a",
        outcome="denied",
        model_id="evil\u001b[2J\u202e",
        ts_hint=1,
    )
    log.write("completed", request_id="b", spiffe_id="spiffe://x/b", outcome="ok", model_id=HAIKU)
    log.close()
    out = io.StringIO()
    run_tail(
        [audit_path], follow=False, selector=TailFilter(outcome="denied"), as_json=False, out=out
    )
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text and "\\u001b" in text
    assert "spiffe://x/a" in text and "spiffe://x/b" not in text
    out = io.StringIO()
    run_tail(
        [audit_path],
        follow=False,
        selector=TailFilter(identity="spiffe://x/b"),
        as_json=True,
        out=out,
    )
    assert [json.loads(line)["request_id"] for line in out.getvalue().splitlines()] == ["b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", datetime(2024, 1, 1, 11, 50, tzinfo=UTC)),
        ("2h", datetime(2024, 1, 1, 10, 0, tzinfo=UTC)),
        ("2024-01-01T09:00:00", datetime(2024, 1, 1, 9, 0, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, datetime(2024, 1, 1, 12, 0, tzinfo=UTC)) == expected


@pytest.mark.parametrize("text", ["999999999d", "99999999999d", "10", "yesterday"])
def test_bad_since_is_a_usage_error(
    text: str, audit_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit_path.write_text("")
    assert cli.main(["audit", "tail", "--since", text, str(audit_path)]) == 2
    assert f"--since {text!r}" in capsys.readouterr().err


def test_verify_command_exit_codes(audit_path: Path, tmp_path: Path) -> None:
    public = generate_key(tmp_path / "verify.key")
    _chained_log(audit_path, load_signer(tmp_path / "verify.key"))
    command = ["audit", "verify", "--public-key", str(public), str(audit_path)]
    assert cli.main(command) == 0
    audit_path.write_bytes(b"".join(line + b"\n" for line in _lines(audit_path)[:-1]))
    assert cli.main(command) == 3
    out = io.StringIO()
    assert run_verify([audit_path], public_key=public, as_json=False, out=out) == 3
    text = out.getvalue()
    assert "UNSEALED" in text and "the tail was cut" in text
    assert text.splitlines()[-1].startswith("INCOMPLETE: ")


@pytest.mark.parametrize(("value", "shown"), [(None, "-"), ("a\nb", "a\\nb"), (3, "3")])
def test_safe(value: object, shown: str) -> None:
    assert safe(value) == shown


def test_a_log_without_a_signing_key_is_unsealed_not_tampered(
    audit_path: Path, signer: Signer
) -> None:
    log = open_log(audit_path, None, checkpoint_every=2)
    try:
        log.write("authorized", request_id="r1", model_id=HAIKU)
        log.write("completed", request_id="r1", outcome="ok")
    finally:
        log.close()
    unpinned = verify([(str(audit_path), audit_path.read_bytes())], public_key=None)
    kinds = {f.kind for f in unpinned.findings}
    assert "unsigned_checkpoint" in kinds and "bad_signature" not in kinds
    assert unpinned.exit_code == 3
    # Whoever pins a key expects signatures: a missing one is then a failure.
    assert _report(audit_path, signer).exit_code == 1


def test_connection_records_are_rate_limited_per_reason(audit_path: Path) -> None:
    log = open_log(audit_path, connection_records_per_minute=2)
    for _ in range(10):
        log.connection_failed("10.0.0.1", "peer_did_not_return_a_certificate")
    log.connection_failed("10.0.0.2", "header_timeout")
    log.close()
    connections = [r for r in _all(audit_path) if r["event"] == "connection"]
    # The flood of one reason leaves the other's record in.
    assert [r["reason"] for r in connections] == [
        "peer_did_not_return_a_certificate",
        "peer_did_not_return_a_certificate",
        "header_timeout",
    ]


def test_a_reasons_next_record_counts_what_its_window_dropped() -> None:
    budget = ReasonBudget(2, 60.0)
    taken = [budget.take("header_timeout", now) for now in (0, 1, 2, 3, 4)]
    assert taken == [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert budget.take("body_idle_timeout", 5) == (True, 0), "another reason, another budget"
    assert budget.take("header_timeout", 60) == (True, 3), "the next window says what was dropped"
    assert budget.take("header_timeout", 61) == (True, 0)


def test_reasons_past_the_table_share_one_budget() -> None:
    budget = ReasonBudget(1, 60.0)
    for index in range(ReasonBudget.MAX_REASONS):
        assert budget.take(f"reason {index}", 0) == (True, 0)
    assert budget.take("one more", 0) == (True, 0)
    assert budget.take("and another", 0) == (False, 0)
