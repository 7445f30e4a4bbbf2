"""The audit hash chain and its signed checkpoints (pure: no I/O but key files).

Every record is one JSON line ending in ``"hash":"<sha256 hex>"}``. The hash is
over the exact bytes of the line with that last member removed (``{...}``), so
a verifier needs no JSON canonicalisation: strip the suffix, hash, compare.
Each record carries ``chain`` (the chain it belongs to), ``seq`` (0, 1, 2, ...
within the chain) and ``prev_hash`` (the hash of record ``seq - 1``; sixty-four
zeros for ``seq`` 0), so editing, deleting or reordering a record breaks the
chain at that point. Because ``ensure_ascii`` escapes every quote inside a
string, the suffix can only be the real last member: no caller-controlled value
can forge it.

A ``checkpoint`` record is an ordinary link of the chain that also carries an
Ed25519 signature over ``(chain, seq, prev_hash)``: it vouches for every record
before it. Someone without the private key can recompute every hash after an
edit, but cannot re-sign the checkpoints, so a rebuilt chain fails; records
after the last valid checkpoint are reported as unsealed (a truncated tail and
a crash look the same, and both deserve a look).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from proxy.errors import ConfigError

GENESIS = "0" * 64
CHECKPOINT = "checkpoint"
_DOMAIN = b"bedrock-proxy-audit-checkpoint-v1\n"
_SUFFIX = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
_CHAIN_ID = re.compile(r"[0-9a-f]{16}")
_MAX_SEQ = 2**63 - 1
# The most bytes ``seal`` adds to a record's JSON (chain, seq, prev_hash, hash),
# given a chain id and seq as ``head_of`` accepts them.
SEAL_BYTES = 256


@dataclass(frozen=True)
class ChainHead:
    """Where the chain stands: the last record written (seq -1 before the first)."""

    chain: str
    seq: int
    hash: str
    sealed: bool = False

    @classmethod
    def new(cls) -> ChainHead:
        return cls(chain=os.urandom(8).hex(), seq=-1, hash=GENESIS)


def dumps(obj: Any) -> str:
    """One line of ASCII JSON: no raw control, bidi or line-separator character survives."""
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=str)


def seal(record: dict[str, Any], head: ChainHead) -> tuple[bytes, ChainHead]:
    """Append ``chain``, ``seq``, ``prev_hash`` and ``hash``; return the line and the new head."""
    linked = {**record, "chain": head.chain, "seq": head.seq + 1, "prev_hash": head.hash}
    body = dumps(linked).encode("ascii")
    digest = hashlib.sha256(body).hexdigest()
    line = body[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}'
    sealed = record.get("event") == CHECKPOINT and record.get("final") is True
    return line, ChainHead(head.chain, head.seq + 1, digest, sealed)


@dataclass(frozen=True)
class ParsedLine:
    record: dict[str, Any]
    claimed_hash: str
    actual_hash: str

    @property
    def intact(self) -> bool:
        return self.claimed_hash == self.actual_hash


def parse_line(line: bytes) -> ParsedLine:
    """Split a line into its record and hashes; ValueError if it is not a chained record."""
    match = _SUFFIX.search(line)
    if match is None:
        raise ValueError("line does not end with a hash member")
    body = line[: match.start()] + b"}"
    record = json.loads(body)
    if not isinstance(record, dict) or "hash" in record:
        raise ValueError("line is not a single chained JSON object")
    for key, kind in (("chain", str), ("seq", int), ("prev_hash", str)):
        if not isinstance(record.get(key), kind):
            raise ValueError(f"record has no valid {key}")
    return ParsedLine(record, match.group(1).decode(), hashlib.sha256(body).hexdigest())


def head_of(line: bytes) -> ChainHead:
    """The chain head a previous run left behind, from its last line.

    ValueError for a line that is not a link of a chain this proxy writes, so a
    resumed chain keeps the id and seq sizes ``SEAL_BYTES`` allows for.
    """
    parsed = parse_line(line)
    record = parsed.record
    if not _CHAIN_ID.fullmatch(record["chain"]) or not 0 <= record["seq"] < _MAX_SEQ:
        raise ValueError("the last line's chain id or seq is not one this proxy writes")
    sealed = record.get("event") == CHECKPOINT and record.get("final") is True
    return ChainHead(record["chain"], record["seq"], parsed.claimed_hash, sealed)


def checkpoint_message(chain: str, seq: int, prev_hash: str) -> bytes:
    return _DOMAIN + f"{chain}\n{seq}\n{prev_hash}".encode("ascii")


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> str:
        return key_id(self.public_raw)

    def checkpoint_fields(self, head: ChainHead) -> dict[str, Any]:
        """The signature fields of the checkpoint that will follow ``head``."""
        message = checkpoint_message(head.chain, head.seq + 1, head.hash)
        return {
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public_raw).decode(),
            "sig": base64.b64encode(self.private_key.sign(message)).decode(),
        }


def load_signer(path: Path) -> Signer:
    """An Ed25519 private key (PEM, PKCS#8) from a file; a ConfigError says what is wrong."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"audit.signing_key {path} cannot be loaded: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"audit.signing_key {path} must be an Ed25519 private key")
    return Signer(key)


def generate_key(path: Path) -> Path:
    """Write a new Ed25519 key (0600) and its public key (``PATH.pub``) for verifiers."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def load_public_key(path: Path) -> bytes:
    """Raw Ed25519 public key bytes from a PEM file (as ``generate_key`` exports it)."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signature_valid(record: dict[str, Any], pinned: bytes | None) -> bool:
    """Whether a checkpoint's signature holds, under the pinned key when one is given."""
    try:
        public_raw = base64.b64decode(record["public_key"], validate=True)
        signature = base64.b64decode(record["sig"], validate=True)
        if pinned is not None and public_raw != pinned:
            return False
        Ed25519PublicKey.from_public_bytes(public_raw).verify(
            signature, checkpoint_message(record["chain"], record["seq"], record["prev_hash"])
        )
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False
    return True
