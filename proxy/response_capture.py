"""What of a response goes into the audit record, per the ``audit_capture`` obligation.

``hash`` keeps the SHA-256 of the bytes relayed to the client (so the SOC can
match a record to what the workload received); ``redacted`` and ``full`` also
keep the text: the body as it came for JSON answers, the generated text put
together from the deltas for event streams (so a value split across two
deltas is still found by the redaction). The text is bounded: the response
itself is never buffered, and past ``CAPTURE_LIMIT_CHARS`` the capture says
``truncated``. ``redacted`` runs the classification detectors once, over the
whole captured text, when the record is written.
"""

from __future__ import annotations

import codecs
import hashlib
from typing import Any

from proxy.redact import redact_text

CAPTURE_LIMIT_CHARS = 32 * 1024


class ResponseCapture:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._hash = hashlib.sha256()
        self._keep_text = mode in ("redacted", "full")
        self._parts: list[str] = []
        self._chars = 0
        self._truncated = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add_bytes(self, chunk: bytes, *, as_text: bool) -> None:
        self._hash.update(chunk)
        if as_text and self._keep_text and not self._truncated:
            self.add_text(self._decoder.decode(chunk))

    def add_text(self, text: str) -> None:
        if not self._keep_text or self._truncated or not text:
            return
        room = CAPTURE_LIMIT_CHARS - self._chars
        if len(text) > room:
            text, self._truncated = text[:room], True
        self._parts.append(text)
        self._chars += len(text)

    def record(self) -> dict[str, Any]:
        captured = None
        if self._keep_text:
            captured = "".join(self._parts)
            if self.mode == "redacted":
                captured = redact_text(captured)
        return {
            "sha256": self._hash.hexdigest(),
            "captured": captured,
            "truncated": self._truncated,
        }
