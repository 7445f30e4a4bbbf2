"""``audit verify``: check hash chains and checkpoint signatures, list open requests.

Pure over the bytes of the files given. Findings come in two kinds:

- tampering (exit 1): a line that is not a chained record, a hash that does
  not match the line (an edited record), a ``prev_hash`` that does not match
  the record before it (an edited-and-rehashed or reordered record), a gap in
  ``seq`` (deleted records), a ``seq`` going backwards (reordered or
  duplicated records), a checkpoint whose signature does not hold (a chain
  rebuilt without the key, or signed by another key than the pinned one), a
  checkpoint signed by another key than the chain's earlier checkpoints (a
  chain rebuilt from some point on with the attacker's own key);
- incomplete (exit 3, when there is no tampering): a chain that does not end
  in its signed final checkpoint (the proxy writes one only when it stops, so
  a live log, a crash and a tail cut back to any earlier point look the same),
  and ``authorized`` records with no terminal record (crash evidence).

Files of one chain may be given in any order (rotation); each file's lines
must be in chain order. A chain whose first file is not given starts at a seq
above 0: that is noted, not failed, so recent files can be checked alone. Its
last file cannot be left out: the final checkpoint is in it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.audit.chain import CHECKPOINT, GENESIS, key_id, parse_line, signature_valid
from proxy.audit.ocsf import to_native

TERMINAL_EVENTS = frozenset({"completed", "denied"})


@dataclass(frozen=True)
class Finding:
    where: str
    kind: str
    message: str
    tampering: bool


@dataclass(frozen=True)
class OpenRequest:
    where: str
    request_id: str
    ts: str | None
    spiffe_id: str | None
    model_id: str | None


@dataclass(frozen=True)
class Report:
    records: int
    chains: dict[str, int]
    checkpoints: int
    findings: list[Finding] = field(default_factory=list)
    open_requests: list[OpenRequest] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def tampered(self) -> bool:
        return any(f.tampering for f in self.findings)

    @property
    def exit_code(self) -> int:
        if self.tampered:
            return 1
        return 3 if self.findings or self.open_requests else 0


@dataclass(frozen=True)
class _Entry:
    where: str
    chain: str
    seq: int
    prev_hash: str
    hash: str
    record: dict[str, Any]


def verify(files: Sequence[tuple[str, bytes]], *, public_key: bytes | None) -> Report:
    findings: list[Finding] = []
    segments: dict[str, list[list[_Entry]]] = {}
    for name, data in files:
        per_chain: dict[str, list[_Entry]] = {}
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line:
                continue
            where = f"{name}:{number}"
            try:
                parsed = parse_line(line)
            except ValueError as exc:
                findings.append(Finding(where, "malformed", f"not a chained record: {exc}", True))
                continue
            if not parsed.intact:
                findings.append(Finding(where, "edited", "hash does not match the record", True))
            record = parsed.record
            entry = _Entry(
                where,
                record["chain"],
                record["seq"],
                record["prev_hash"],
                parsed.claimed_hash,
                record,
            )
            per_chain.setdefault(entry.chain, []).append(entry)
        for chain, entries in per_chain.items():
            segments.setdefault(chain, []).append(entries)

    chains: dict[str, int] = {}
    notes: list[str] = []
    checkpoints = 0
    records: list[_Entry] = []
    for chain, parts in segments.items():
        parts.sort(key=lambda part: part[0].seq)
        ordered = [entry for part in parts for entry in part]
        records.extend(ordered)
        chains[chain] = len(ordered)
        if ordered[0].seq != 0:
            notes.append(f"chain {chain} starts at seq {ordered[0].seq}: earlier files not given")
        findings.extend(_links(ordered))
        valid_through = -1
        chain_key: bytes | None = None
        for entry in ordered:
            if entry.record.get("event") != CHECKPOINT:
                continue
            checkpoints += 1
            if signature_valid(entry.record, public_key):
                key = base64.b64decode(entry.record["public_key"])
                chain_key = chain_key or key
                if key == chain_key:
                    valid_through = entry.seq
                else:
                    # The proxy never changes keys within a chain: without a pinned
                    # key, this is how a suffix rebuilt and re-signed shows.
                    findings.append(
                        Finding(
                            entry.where,
                            "key_changed",
                            f"checkpoint signed by key {key_id(key)}, earlier checkpoints "
                            f"of chain {chain} by key {key_id(chain_key)} (rebuilt chain)",
                            True,
                        )
                    )
            elif entry.record.get("sig") is None and public_key is None:
                # No key configured: edits, deletions and reordering still show in
                # the chain, but a chain rebuilt from scratch cannot be told apart.
                findings.append(
                    Finding(
                        entry.where,
                        "unsigned_checkpoint",
                        "checkpoint is not signed (the proxy ran without audit.signing_key)",
                        False,
                    )
                )
            else:
                findings.append(
                    Finding(
                        entry.where,
                        "bad_signature",
                        "checkpoint signature does not hold (rebuilt chain or unknown key)",
                        True,
                    )
                )
        findings.extend(_unfinished(chain, ordered, valid_through))
    return Report(
        records=len(records),
        chains=chains,
        checkpoints=checkpoints,
        findings=findings,
        open_requests=_open_requests(records),
        notes=notes,
    )


def _unfinished(chain: str, ordered: list[_Entry], valid_through: int) -> list[Finding]:
    """Only the final checkpoint says a chain is whole: a log cut back to an earlier
    checkpoint still has every link and signature in order."""
    why = "the proxy is still running, crashed, or the tail was cut"
    unsealed = [entry for entry in ordered if entry.seq > valid_through]
    if unsealed:
        message = (
            f"chain {chain}: {len(unsealed)} record(s) after the last valid checkpoint "
            f"(seq {valid_through}) are not signed: {why}"
        )
        return [Finding(unsealed[0].where, "unsealed_tail", message, False)]
    last = ordered[-1]
    if last.record.get("event") == CHECKPOINT and last.record.get("final") is True:
        return []
    if last.record.get("reason") == "rotation":
        why = f"its newer files were not given (the newest holds the final checkpoint), {why}"
    message = f"chain {chain} ends at checkpoint seq {last.seq} without its final checkpoint: {why}"
    return [Finding(last.where, "no_final_checkpoint", message, False)]


def _links(ordered: list[_Entry]) -> list[Finding]:
    findings = []
    for before, entry in zip(ordered, ordered[1:], strict=False):
        if entry.seq <= before.seq:
            findings.append(
                Finding(
                    entry.where,
                    "reordered",
                    f"seq {entry.seq} follows seq {before.seq} (reordered or duplicated)",
                    True,
                )
            )
        elif entry.seq > before.seq + 1:
            findings.append(
                Finding(
                    entry.where,
                    "deleted",
                    f"seq {before.seq + 1}..{entry.seq - 1} missing (deleted records)",
                    True,
                )
            )
        elif entry.prev_hash != before.hash:
            findings.append(
                Finding(
                    entry.where,
                    "broken_link",
                    f"prev_hash does not match record seq {before.seq} (edited and rehashed)",
                    True,
                )
            )
    if ordered and ordered[0].seq == 0 and ordered[0].prev_hash != GENESIS:
        findings.append(
            Finding(ordered[0].where, "broken_link", "seq 0 must start at genesis", True)
        )
    return findings


def _open_requests(entries: list[_Entry]) -> list[OpenRequest]:
    authorized: dict[str, OpenRequest] = {}
    finished: set[str] = set()
    for entry in entries:
        native = to_native(entry.record)
        request_id = native.get("request_id")
        if not isinstance(request_id, str):
            continue
        if native.get("event") == "authorized":
            authorized[request_id] = OpenRequest(
                entry.where,
                request_id,
                native.get("ts"),
                native.get("spiffe_id"),
                native.get("model_id"),
            )
        elif native.get("event") in TERMINAL_EVENTS:
            finished.add(request_id)
    return [request for rid, request in authorized.items() if rid not in finished]
