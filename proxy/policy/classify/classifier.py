"""Data classification of a request: what the caller declared, raised by what we detect.

Contract:

- ``declared`` is the ``X-Data-Classification`` header (public < internal <
  confidential < restricted); anything else is a 400. Without the header it
  is the policy's default for the caller (``defaults.py``: the policy
  resolves the caller's registry entry, the proxy never does) and the call
  is marked ``defaulted``, so the policy can judge it at its own default.
- ``detected`` is the highest level of the finding kinds the detectors report
  in every text the model would see; ``effective`` is the highest of declared
  and detected. A caller can raise the level but never lower it.
- Only finding *kinds* leave this module, never matched values, so neither
  OPA nor the audit log ever receives the secret it is being told about.

Detection is ``scan.py`` (over ``detectors.py``); the level map is
``rules.py``, the declared defaults ``defaults.py``.

Cost: the detectors are linear in the text whatever it holds (measured on
adversarial input up to 25 MB by ``bench/detectors.py``), and the scan has a
wall-clock budget (``limits.scan_budget_ms``, default ``SCAN_BUDGET_S``)
checked between texts and inside each one; past it the findings carry
``scan_incomplete``, which the shipped policy treats as restricted. Three
seconds covers the text a model can take (a 1M-token context is ~4 MB; the
densest realistic text, numbers and addresses, scans at ~0.25 s/MB, 4 MB in
~1 s) with room for a busy machine; bytes beyond that are images and documents, reported as
``binary_content`` without being scanned. The scan of a body above a
threshold runs in a body-work process (``offload.Offload``), so the event
loop keeps serving and neither the audit fsync nor STS waits for a scan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.errors import InvalidRequest
from proxy.policy.classify.defaults import DeclaredDefaults
from proxy.policy.classify.rules import (
    BUILTIN_RULES,
    DEFAULT_DECLARED,
    LEVELS,
    ClassificationRules,
    PolicyRules,
    rank,
)
from proxy.policy.classify.scan import NOT_PARSED, scan_body

SCAN_BUDGET_S = 3.0


@dataclass(frozen=True)
class Classification:
    declared: str
    detected: str
    effective: str
    findings: tuple[str, ...] = ()
    # No level was declared: ``declared`` is the default the caller was given.
    defaulted: bool = False

    def to_opa(self) -> dict[str, object]:
        return {
            "declared": self.declared,
            "detected": self.detected,
            "effective": self.effective,
            "findings": list(self.findings),
            "defaulted": self.defaulted,
        }


def classify(
    declared_header: str | None,
    body: bytes,
    *,
    operation: str | None = None,
    default: str = DEFAULT_DECLARED,
    rules: ClassificationRules = BUILTIN_RULES,
    budget_s: float = SCAN_BUDGET_S,
    clock: Callable[[], float] = time.monotonic,
    document: object = None,
) -> Classification:
    """Pure: header, body and rules -> declared, detected, effective and finding kinds.

    ``default`` is the declared level when there is no header (the policy's
    default for the caller). ``document`` is the body's JSON object when the
    caller parsed it already, which saves a second parse of a large body;
    None parses here.
    """
    declared = _declared_level(declared_header, default)
    findings = scan_body(
        body,
        operation=operation,
        deadline=clock() + budget_s,
        clock=clock,
        document=NOT_PARSED if document is None else document,
    )
    return classification_of(declared, declared_header is None, findings, rules)


def classification_of(
    declared: str, defaulted: bool, findings: tuple[str, ...], rules: ClassificationRules
) -> Classification:
    """Pure: a declared level and the finding kinds of a scan -> the classification."""
    detected = max((rules.level_of(k) for k in findings), key=rank, default="public")
    effective = max(declared, detected, key=rank)
    return Classification(declared, detected, effective, findings, defaulted)


def _declared_level(header: str | None, default: str) -> str:
    if header is None:
        return default
    if header not in LEVELS:
        raise InvalidRequest(
            f"X-Data-Classification must be one of {', '.join(LEVELS)}; got {header[:40]!r}"
        )
    return header


@dataclass(frozen=True)
class Declared:
    """The level a request declares (``X-Data-Classification``), or its caller's default."""

    level: str
    defaulted: bool


class Classifier:
    """The policy's side of a classification: declared defaults and the level map.

    The scan itself runs with the rest of the body's reading
    (``dataplane.reading``), in a body-work process when the body is large.
    ``rules`` None and ``defaults`` None (tests only) give the built-in map
    and ``internal`` to every caller.
    """

    def __init__(self, rules: PolicyRules | None, defaults: DeclaredDefaults | None) -> None:
        self._rules = rules
        self._defaults = defaults

    async def declared(self, header: str | None, spiffe_id: str) -> Declared:
        """The declared level (400 for a header that is no level), before any body is read."""
        if header is not None:
            return Declared(_declared_level(header, DEFAULT_DECLARED), False)
        if self._defaults is None:
            return Declared(DEFAULT_DECLARED, True)
        return Declared(await self._defaults.of(spiffe_id), True)

    async def classify(self, declared: Declared, findings: tuple[str, ...]) -> Classification:
        rules = BUILTIN_RULES if self._rules is None else await self._rules.current()
        return classification_of(declared.level, declared.defaulted, findings, rules)
