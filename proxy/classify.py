"""Data classification of a request: what the caller declared, raised by what we detect.

The caller's ``X-Data-Classification`` can raise the level but never lower it:
``effective`` is the highest of declared and detected. Only finding *kinds*
ever leave this module, never matched values. Detectors are a seam for now
(nothing is detected yet), so ``detected`` is always ``public``.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.errors import InvalidRequest

LEVELS = ("public", "internal", "confidential", "restricted")
# An unlabelled call is treated as internal data: most prompts carry some.
DEFAULT_DECLARED = "internal"


@dataclass(frozen=True)
class Classification:
    declared: str
    detected: str
    effective: str
    findings: tuple[str, ...] = ()

    def to_opa(self) -> dict[str, object]:
        return {
            "declared": self.declared,
            "detected": self.detected,
            "effective": self.effective,
            "findings": list(self.findings),
        }


def classify(declared_header: str | None, body: bytes) -> Classification:
    declared = _declared_level(declared_header)
    detected = "public"
    effective = max(declared, detected, key=LEVELS.index)
    return Classification(declared, detected, effective)


def _declared_level(header: str | None) -> str:
    if header is None:
        return DEFAULT_DECLARED
    if header not in LEVELS:
        raise InvalidRequest(
            f"X-Data-Classification must be one of {', '.join(LEVELS)}; got {header[:40]!r}"
        )
    return header
