"""What of a response goes into the audit record, per the ``audit_capture`` obligation.

``hash`` keeps the SHA-256 of the bytes relayed to the client (so the SOC can
match a record to what the workload received); ``redacted`` and ``full`` also
keep the text: the body as it came for JSON answers, the generated text put
together from the deltas for event streams (so a value split across two
deltas is still found by the redaction). The text is bounded: the response
itself is never buffered, and past ``CAPTURE_LIMIT_CHARS`` the capture says
``truncated``.

``redacted`` runs the classification detectors once, when the record is
written, over the captured text plus ``SCAN_MARGIN_CHARS`` beyond the limit,
and only then cuts at the limit, so a value straddling the cut is redacted
whole rather than kept in part. A complete JSON body is redacted as a
document (string escapes decoded, as for the prompt); a body cut short is
redacted as text with its JSON escapes decoded first, so ``\\u0040`` cannot
hide an address either way.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from typing import Any

from proxy.policy.classify.redaction import redact_text, redacted_capture

CAPTURE_LIMIT_CHARS = 32 * 1024
SCAN_MARGIN_CHARS = 4 * 1024

_JSON_ESCAPE = re.compile(r'\\(?:u[0-9a-fA-F]{4}|["\\/bfnrt])')


class ResponseCapture:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._hash = hashlib.sha256()
        self._keep_text = mode in ("redacted", "full")
        self._parts: list[str] = []
        self._chars = 0
        self._body = False  # a JSON (or other) body rather than generated stream text
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add_bytes(self, chunk: bytes, *, as_text: bool) -> None:
        self._hash.update(chunk)
        if as_text and self._keep_text and not self._full():
            self._body = True
            self.add_text(self._decoder.decode(chunk))

    def add_text(self, text: str) -> None:
        if not self._keep_text or not text:
            return
        room = CAPTURE_LIMIT_CHARS + SCAN_MARGIN_CHARS - self._chars
        if room > 0:
            self._parts.append(text[:room])
        self._chars += len(text)  # past the window only the count grows

    def record(self) -> dict[str, Any]:
        captured = None
        if self._keep_text:
            text = "".join(self._parts)
            if self.mode == "redacted":
                text = self._redacted(text)
            captured = text[:CAPTURE_LIMIT_CHARS]
        return {
            "sha256": self._hash.hexdigest(),
            "captured": captured,
            "truncated": self._chars > CAPTURE_LIMIT_CHARS,
        }

    def _full(self) -> bool:
        return self._chars > CAPTURE_LIMIT_CHARS + SCAN_MARGIN_CHARS

    def _redacted(self, text: str) -> str:
        if self._body and not self._full():
            return redacted_capture(text.encode("utf-8"), None)
        if self._body:
            text = _JSON_ESCAPE.sub(_unescape, text)
        return redact_text(text)


def _unescape(match: re.Match[str]) -> str:
    decoded: str = json.loads(f'"{match.group(0)}"')
    return decoded
