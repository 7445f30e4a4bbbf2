"""Classification rules: the level of each finding kind.

The finding-kind -> level map is policy data, read from OPA (``GET
/v1/data/bedrock/classification``, through the process's one ``OpaClient``)
at start-up and every ``ttl_s`` after; a failed refresh keeps the last good
map. A kind the map does not name counts as ``restricted``: fail closed. The
policy recomputes the level from the finding kinds itself, so a stale map in
the proxy can never let a call through that current policy would refuse.
A workload's default declared level is not in this document: it depends on
how the registry resolves the caller, which only the policy does
(``defaults.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog

from proxy.errors import PolicyUnavailable
from proxy.policy.classify.detectors import (
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_KEY,
    BINARY_CONTENT,
    EMAIL,
    HIGH_ENTROPY_TOKEN,
    IBAN,
    JWT,
    PAYMENT_CARD,
    PHONE,
    PRIVATE_KEY,
    SCAN_INCOMPLETE,
    US_SSN,
)
from proxy.policy.opa import OpaClient

CLASSIFICATION_REF = "bedrock.classification"
LEVELS = ("public", "internal", "confidential", "restricted")
# An unlabelled call is treated as internal data: most prompts carry some.
DEFAULT_DECLARED = "internal"

# The shipped policy's map (policies/bedrock/data.json finding_levels); used
# only when the policy publishes no classification document at all.
BUILTIN_LEVELS: Mapping[str, str] = MappingProxyType(
    {
        EMAIL: "confidential",
        PHONE: "confidential",
        US_SSN: "restricted",
        PAYMENT_CARD: "restricted",
        IBAN: "confidential",
        AWS_ACCESS_KEY_ID: "restricted",
        AWS_SECRET_KEY: "restricted",
        PRIVATE_KEY: "restricted",
        JWT: "restricted",
        HIGH_ENTROPY_TOKEN: "restricted",
        BINARY_CONTENT: "confidential",
        SCAN_INCOMPLETE: "restricted",
    }
)

_log = structlog.get_logger("bedrock_proxy.classify")
# Keys of the classification document that earlier proxies read (docs/opa.md).
_LEGACY_DEFAULTS = frozenset({"workload_defaults", "default_declared"})


def rank(level: str) -> int:
    return LEVELS.index(level)


@dataclass(frozen=True)
class ClassificationRules:
    """Policy data: the level of each finding kind."""

    levels: Mapping[str, str] = field(default_factory=lambda: BUILTIN_LEVELS)

    def level_of(self, kind: str) -> str:
        return self.levels.get(kind, "restricted")


BUILTIN_RULES = ClassificationRules()


def rules_from_policy(document: object) -> ClassificationRules:
    """``data.bedrock.classification`` -> rules; ValueError when malformed."""
    if not isinstance(document, Mapping):
        raise ValueError("classification document is not an object")
    raw = document.get("levels", {})
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and v in LEVELS for k, v in raw.items()
    ):
        raise ValueError("classification.levels must map strings to levels")
    return ClassificationRules(MappingProxyType(dict(raw)))


class PolicyRules:
    """Reads ``data.bedrock.classification`` from OPA; keeps the last good copy.

    No document at all (a policy without the package) means the built-in map;
    a malformed one or an unreachable OPA keeps what was last read, since the
    decision itself will then fail closed anyway.
    """

    def __init__(
        self,
        opa: OpaClient,
        *,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opa = opa
        self._ttl_s = ttl_s
        self._clock = clock
        self._rules = BUILTIN_RULES
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.current()

    async def current(self) -> ClassificationRules:
        if self._fresh():
            return self._rules
        async with self._lock:
            if not self._fresh():
                await self._refresh()
        return self._rules

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl_s

    async def _refresh(self) -> None:
        # Retry at the next TTL either way, so a down OPA is not asked per request.
        self._fetched_at = self._clock()
        try:
            answer = await self._opa.document(CLASSIFICATION_REF)
            document = answer.get("result") if isinstance(answer, dict) else None
            self._rules = BUILTIN_RULES if document is None else rules_from_policy(document)
            if isinstance(document, Mapping) and _LEGACY_DEFAULTS & document.keys():
                # Read by exact SPIFFE ID only, they ignored "/*" registrations.
                _log.warning(
                    "classification document keys not read; define declared_default instead",
                    keys=sorted(_LEGACY_DEFAULTS & document.keys()),
                )
        except PolicyUnavailable as exc:
            _log.warning("classification rules not refreshed", error=exc.code, detail=exc.detail)
        except ValueError as exc:
            _log.warning("classification rules not refreshed", error=type(exc).__name__)
