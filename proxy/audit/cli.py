"""``bedrock-proxy audit verify|tail|keygen``: the SOC's view of the audit stream.

``tail`` prints a table for people or JSON lines for tools, filtered by
identity, outcome, model and time, and can follow the live file across
rotation. Every value printed in the table is re-escaped (JSON string escapes,
ASCII only), so a model id full of terminal escapes or bidi overrides shows as
text and cannot repaint the analyst's screen. ``verify`` prints findings and
open requests and exits 0 (intact, and every chain closed by its final
checkpoint: the proxy stopped cleanly), 1 (tampering) or 3 (incomplete: a
chain without its final checkpoint, as in the log of a running proxy, or
requests without a terminal record).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from proxy.audit.chain import dumps, generate_key, load_public_key
from proxy.audit.ocsf import to_native
from proxy.audit.verify import verify

_HIDDEN = frozenset({"chain_start", "chain_resumed", "checkpoint"})
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class TailFilter:
    identity: str | None = None
    outcome: str | None = None
    model: str | None = None
    since: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if record.get("event") in _HIDDEN:
            return False
        if self.identity is not None and record.get("spiffe_id") != self.identity:
            return False
        if self.outcome is not None and record.get("outcome") != self.outcome:
            return False
        if self.model is not None and self.model not in str(record.get("model_id") or ""):
            return False
        if self.since is not None:
            try:
                if datetime.fromisoformat(str(record.get("ts"))) < self.since:
                    return False
            except ValueError:
                return False
        return True


def parse_since(text: str, now: datetime) -> datetime:
    """``10m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC if no zone is given)."""
    relative = _RELATIVE.match(text)
    try:
        if relative:
            return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        when = datetime.fromisoformat(text)
    except OverflowError as exc:
        raise ValueError(f"--since {text!r}: too far back") from exc
    except ValueError as exc:
        raise ValueError(f"--since {text!r}: use 10m, 2h, 1d or an ISO 8601 time") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def safe(value: object) -> str:
    """A value as printable ASCII: control, bidi and escape characters shown escaped."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else dumps(value)
    return json.dumps(text, ensure_ascii=True)[1:-1]


COLUMNS = (
    "ts",
    "event",
    "outcome",
    "spiffe_id",
    "operation",
    "model_id",
    "status",
    "ms",
    "tokens",
    "request_id",
)


def table_row(record: dict[str, Any]) -> list[str]:
    usage = record.get("usage") or {}
    tokens = (
        f"{usage.get('input_tokens')}/{usage.get('output_tokens')}"
        if isinstance(usage, dict) and usage
        else None
    )
    if record.get("event") == "connection":
        return [
            safe(record.get("ts")),
            "connection",
            safe(record.get("reason")),
            safe(record.get("peer")),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ]
    return [
        safe(record.get("ts")),
        safe(record.get("event")),
        safe(record.get("outcome")),
        safe(record.get("spiffe_id")),
        safe(record.get("operation")),
        safe(record.get("model_id")),
        safe(record.get("upstream_status")),
        safe(record.get("latency_ms")),
        safe(tokens),
        safe(record.get("request_id")),
    ]


def _records(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield to_native(record)


def _file_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from (line.rstrip(b"\n") for line in handle if line.strip())


def _follow(path: Path, stop: Callable[[], bool]) -> Iterator[bytes]:
    """New lines of ``path`` as they come, reopening it when it is rotated."""
    handle = path.open("rb")
    handle.seek(0, os.SEEK_END)
    identity = os.fstat(handle.fileno()).st_ino
    pending = b""
    try:
        while not stop():
            chunk = handle.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    yield pending.rstrip(b"\n")
                    pending = b""
                continue
            try:
                rotated = os.stat(path).st_ino != identity
            except FileNotFoundError:
                rotated = False
            if rotated:
                handle.close()
                handle = path.open("rb")
                identity = os.fstat(handle.fileno()).st_ino
                continue
            time.sleep(0.2)
    finally:
        handle.close()


def run_tail(
    files: Sequence[Path],
    *,
    follow: bool,
    selector: TailFilter,
    as_json: bool,
    out: TextIO = sys.stdout,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    if not as_json:
        out.write("  ".join(COLUMNS) + "\n")
    lines: Iterator[bytes] = (line for path in files for line in _file_lines(path))
    if follow:
        lines = _follow(files[-1], stop)
    for record in _records(lines):
        if selector.matches(record):
            out.write((dumps(record) if as_json else "  ".join(table_row(record))) + "\n")
            out.flush()
    return 0


def run_verify(
    files: Sequence[Path], *, public_key: Path | None, as_json: bool, out: TextIO = sys.stdout
) -> int:
    pinned = load_public_key(public_key) if public_key else None
    report = verify([(str(path), path.read_bytes()) for path in files], public_key=pinned)
    if as_json:
        out.write(
            dumps(
                {
                    "records": report.records,
                    "chains": report.chains,
                    "checkpoints": report.checkpoints,
                    "key_pinned": pinned is not None,
                    "findings": [vars(f) for f in report.findings],
                    "open_requests": [vars(r) for r in report.open_requests],
                    "notes": report.notes,
                    "exit_code": report.exit_code,
                }
            )
            + "\n"
        )
        return report.exit_code
    for finding in report.findings:
        label = "TAMPERED" if finding.tampering else "UNSEALED"
        out.write(f"{label} {safe(finding.where)} {finding.kind}: {safe(finding.message)}\n")
    for request in report.open_requests:
        out.write(
            f"OPEN {safe(request.where)} request {safe(request.request_id)} authorized at "
            f"{safe(request.ts)} by {safe(request.spiffe_id)} for {safe(request.model_id)} "
            "has no terminal record\n"
        )
    for note in report.notes:
        out.write(f"NOTE {safe(note)}\n")
    if pinned is None:
        out.write("NOTE no --public-key: signatures checked against the key in the log itself\n")
    verdict = {0: "OK", 1: "TAMPERED", 3: "INCOMPLETE"}[report.exit_code]
    out.write(
        f"{verdict}: {report.records} records in {len(report.chains)} chain(s), "
        f"{report.checkpoints} checkpoint(s)\n"
    )
    return report.exit_code


def run_keygen(path: Path, out: TextIO = sys.stdout) -> int:
    public = generate_key(path)
    out.write(f"{path}\n{public}\n")
    return 0
