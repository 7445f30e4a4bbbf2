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
~1 s) with room for the GIL shared by two scanning threads and the event
loop; bytes beyond that are images and documents, reported as
``binary_content`` without being scanned. A body above a threshold is
classified on the body-work pool (``Offload``), so the event loop keeps
serving and neither the audit fsync nor STS waits for a scan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.errors import InvalidRequest
from proxy.offload import Offload
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
    detected = max((rules.level_of(k) for k in findings), key=rank, default="public")
    effective = max(declared, detected, key=rank)
    return Classification(declared, detected, effective, findings, declared_header is None)


def _declared_level(header: str | None, default: str) -> str:
    if header is None:
        return default
    if header not in LEVELS:
        raise InvalidRequest(
            f"X-Data-Classification must be one of {', '.join(LEVELS)}; got {header[:40]!r}"
        )
    return header


class Classifier:
    """Classifies a request, on ``offload``'s pool when its body is large.

    ``defaults`` None (tests only) gives every caller ``internal``.
    """

    def __init__(
        self,
        rules: PolicyRules | None,
        defaults: DeclaredDefaults | None,
        *,
        offload: Offload,
        budget_s: float = SCAN_BUDGET_S,
    ) -> None:
        self._rules = rules
        self._defaults = defaults
        self._offload = offload
        self._budget_s = budget_s

    async def classify(
        self,
        declared_header: str | None,
        body: bytes,
        *,
        operation: str,
        spiffe_id: str,
        document: object = None,
    ) -> Classification:
        rules = BUILTIN_RULES if self._rules is None else await self._rules.current()
        default = DEFAULT_DECLARED
        if declared_header is None and self._defaults is not None:
            default = await self._defaults.of(spiffe_id)
        return await self._offload.if_large(
            len(body),
            classify,
            declared_header,
            body,
            operation=operation,
            default=default,
            rules=rules,
            budget_s=self._budget_s,
            document=document,
        )
