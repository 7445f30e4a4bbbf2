"""proxy.audit.bound: no audit line is longer than max_record_bytes, whatever its
fields hold; a cut record names what was cut, keeps its contract fields and verifies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit import ocsf
from proxy.audit.bound import (
    CONTRACT_BYTES,
    CONTRACT_FIELDS,
    DEFAULT_MAX_RECORD_BYTES,
    MIN_MAX_RECORD_BYTES,
    fit,
    marker,
    size_of,
)
from proxy.audit.chain import Signer, dumps, generate_key, load_signer
from proxy.audit.log import AuditLog, request_record
from proxy.audit.sinks import FileSink
from proxy.audit.verify import verify
from proxy.config import AuditSettings
from proxy.context import RequestContext

BUDGET = 4096
REQUEST = {
    "ts": "2026-01-01T00:00:00.000000Z",
    "event": "completed",
    "request_id": "5f0c2d1e-0000-4000-8000-000000000001",
    "spiffe_id": "spiffe://example.org/ns/demo/sa/chat",
    "outcome": "ok",
    "decision": {"allow": True, "reasons": [], "reasons_omitted": 0},
    "prompt": {"sha256": "ab" * 32, "captured": None, "truncated": False},
}
# Every field a request record has: the property test fills them all.
RECORD_FIELDS = sorted(request_record(RequestContext()))


def _with(**fields: Any) -> dict[str, Any]:
    return {**REQUEST, **fields}


def _fields_kept(original: dict[str, Any], fitted: dict[str, Any]) -> None:
    for key in CONTRACT_FIELDS & set(original):
        assert key in fitted, key
        if size_of(original[key]) <= CONTRACT_BYTES:
            assert fitted[key] == original[key], key


def test_a_record_that_fits_is_returned_as_it_is() -> None:
    assert fit(REQUEST, BUDGET) is REQUEST
    assert "truncated" not in fit(REQUEST, BUDGET)


def test_the_marker_names_the_size_and_hash_of_the_value_as_written() -> None:
    value = {"captured": "caf\u00e9 " * 10}
    encoded = dumps(value).encode("ascii")
    assert marker(value) == {
        "truncated": True,
        "original_bytes": len(encoded),
        "sha256": hashlib.sha256(encoded).hexdigest(),
    }


BIG = "x" * 100_000


@pytest.mark.parametrize(
    ("fields", "truncated"),
    [
        # One level into an object: prompt.sha256 stays.
        (
            {"prompt": {"sha256": "ab" * 32, "captured": BIG, "truncated": True}},
            ["prompt.captured"],
        ),
        (
            {"decision": {"allow": False, "reasons": [BIG], "reasons_omitted": 0}},
            ["decision.reasons"],
        ),
        ({"error": {"code": "c", "status": 400, "message": "m", "detail": BIG}}, ["error.detail"]),
        ({"tool_calls": [BIG]}, ["tool_calls"]),
        # Largest first, and only as many as needed.
        ({"tool_calls": [BIG], "usage": {"input_tokens": 1, "output_tokens": 2}}, ["tool_calls"]),
        (
            {"tool_calls": [BIG], "response": {"sha256": "cd" * 32, "captured": BIG + BIG}},
            ["response.captured", "tool_calls"],
        ),
        # Many small members: the whole field goes.
        ({"classification": {f"k{i}": "v" * 40 for i in range(2000)}}, ["classification"]),
        # A contract field is cut, not dropped, and stays a string.
        ({"spiffe_id": "spiffe://example.org/" + BIG}, ["spiffe_id"]),
        # Both: the decision keeps its allow, the contract field is cut.
        (
            {
                "spiffe_id": "spiffe://example.org/" + BIG,
                "decision": {"allow": False, "reasons": [BIG], "reasons_omitted": 0},
            },
            ["decision.reasons", "spiffe_id"],
        ),
        ({"model_id": "\U0001f600" * 50_000}, ["model_id"]),
        ({"latency_ms": [1] * 10_000}, ["latency_ms"]),
        # Hundreds of fields: only the contract fields stay.
        ({f"extra_{i}": "e" * 200 for i in range(500)}, ["*"]),
    ],
)
def test_a_record_over_the_budget_is_cut_down_and_says_what_was_cut(
    fields: dict[str, Any], truncated: list[str]
) -> None:
    record = _with(**fields)
    fitted = fit(record, BUDGET)
    assert size_of(fitted) <= BUDGET
    assert fitted["truncated"] == truncated
    _fields_kept(record, fitted)
    json.loads(dumps(fitted))
    for path in truncated:
        key, _, member = path.partition(".")
        if path == "*" or key in CONTRACT_FIELDS:
            continue
        value = fitted[key][member] if member else fitted[key]
        assert value == marker(record[key][member] if member else record[key])
    assert record == _with(**fields)  # the caller's record is not modified


def test_a_cut_contract_string_keeps_its_start_and_says_how_much_was_cut() -> None:
    fitted = fit(_with(spiffe_id="spiffe://example.org/" + BIG), BUDGET)
    assert fitted["spiffe_id"].startswith("spiffe://example.org/xxx")
    assert fitted["spiffe_id"].endswith(" chars]")
    assert size_of(fitted["spiffe_id"]) <= CONTRACT_BYTES


def test_the_render_is_what_is_measured() -> None:
    record = _with(error={"code": "c", "status": 403, "message": BIG[:1500], "detail": None})
    # OCSF repeats error.message twice more: the native record fits, the event does not.
    assert size_of(record) <= BUDGET < size_of(ocsf.to_ocsf(record))
    fitted = fit(record, BUDGET, ocsf.to_ocsf)
    event = ocsf.to_ocsf(fitted)
    assert size_of(event) <= BUDGET
    assert fitted["truncated"] == ["error.message"]
    # OCSF's string fields stay strings (or null); the marker is kept under unmapped.
    assert event["status_detail"] is None and event["api"]["response"]["message"] is None
    assert event["unmapped"]["error"]["message"] == marker(record["error"]["message"])


def test_the_settings_default_is_the_log_default() -> None:
    assert AuditSettings().max_record_bytes == DEFAULT_MAX_RECORD_BYTES


# --- through AuditLog: the line as written, and verify ------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    key = tmp_path_factory.mktemp("key") / "audit.key"
    generate_key(key)
    return load_signer(key)


def _write(path: Path, signer: Signer, records: list[dict[str, Any]], **options: Any) -> None:
    log = AuditLog(FileSink(path), signer=signer, **options)
    try:
        for record in records:
            log.write(record["event"], **{k: v for k, v in record.items() if k != "event"})
    finally:
        log.close()


def _check_log(path: Path, signer: Signer, limit: int) -> list[dict[str, Any]]:
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]
    assert all(len(line) <= limit for line in lines)
    report = verify([(str(path), data)], public_key=signer.public_raw)
    assert report.findings == [] and report.exit_code == 0
    return [ocsf.to_native(json.loads(line)) for line in lines]


@pytest.mark.parametrize("record_format", ["json", "ocsf"])
def test_a_log_with_truncated_records_verifies(
    tmp_path: Path, signer: Signer, record_format: str
) -> None:
    path = tmp_path / "audit.log"
    huge = _with(
        event="denied",
        outcome="denied",
        decision={"allow": False, "reasons": ["r" * 2_000_000], "reasons_omitted": 0},
        error={"code": "policy_denied", "status": 403, "message": "m" * 50_000, "detail": None},
    )
    records = [_with(request_id="small"), huge, _with(request_id="after")]
    limit = MIN_MAX_RECORD_BYTES
    _write(path, signer, records, max_record_bytes=limit, record_format=record_format)
    written = [r for r in _check_log(path, signer, limit) if r.get("request_id")]
    assert [r["request_id"] for r in written] == ["small", REQUEST["request_id"], "after"]
    assert "truncated" not in written[0] and "truncated" not in written[2]
    cut = written[1]
    assert {"decision.reasons", "error.message"} <= set(cut["truncated"])
    assert (cut["event"], cut["outcome"], cut["spiffe_id"]) == (
        "denied",
        "denied",
        REQUEST["spiffe_id"],
    )


# Characters that JSON escapes to 1, 2, 6 and 12 bytes.
_CHARS = st.sampled_from(["a", "\u00e9", '"', "\n", "\u202e", "\U0001f600", "\\"])
_BIG_TEXT = st.builds(lambda c, n: c * n, _CHARS, st.integers(0, 30_000))
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _BIG_TEXT,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=4,
)
# The proxy's error is always an object (OCSF reads its members).
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        name: st.dictionaries(st.text(max_size=8), _VALUES, max_size=4)
        if name == "error"
        else _VALUES
        for name in RECORD_FIELDS
    },
)


@settings(max_examples=40)
@given(
    fields=_FIELDS,
    record_format=st.sampled_from(["json", "ocsf"]),
    limit=st.sampled_from([MIN_MAX_RECORD_BYTES, 100_000, DEFAULT_MAX_RECORD_BYTES]),
)
def test_no_line_is_longer_than_the_limit_whatever_the_fields_hold(
    tmp_path_factory: pytest.TempPathFactory,
    signer: Signer,
    fields: dict[str, Any],
    record_format: str,
    limit: int,
) -> None:
    path = tmp_path_factory.mktemp("log") / "audit.log"
    record = {**REQUEST, **fields}
    _write(
        path,
        signer,
        [record, _with(request_id="next")],
        record_format=record_format,
        max_record_bytes=limit,
    )
    written = [r for r in _check_log(path, signer, limit) if r.get("event") == "completed"]
    assert [r["request_id"] for r in written][-1] == "next"
