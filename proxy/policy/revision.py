"""Which policy decided: a digest of the Rego and data OPA has actually loaded.

Read from OPA, never guessed from files on the proxy's disk: the raw text of
every module (``GET /v1/policies``) and the data tree (``GET /v1/data``) with
the rule packages cut out, hashed canonically. OPA loaded with ``--watch``
reloads edits live, so the digest is polled; a record may carry the previous
revision for at most one poll interval after a reload. A failed poll keeps
the last known revision: the decision itself is still OPA's, fail closed.
``/v1/policies`` carries every module's AST (hundreds of KiB), so a poll
only hashes the answers' bytes and decodes them when those changed. The
poller asks through the process's one ``OpaClient`` (``opa.py``) and owns no
session of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from proxy.errors import PolicyUnavailable
from proxy.policy.opa import OpaClient

_DECISION_ID = re.compile(rb'^\{"decision_id":"[^"]*",')


def revision_digest(policies: Iterable[dict[str, Any]], data: Any) -> str:
    """Pure: the revision of these modules and this data tree."""
    # Module text only: the same policy loaded from another path is the same revision.
    modules = sorted(str(p.get("raw")) for p in policies)
    documents = _without_packages(data, [_package_path(p) for p in policies])
    canonical = json.dumps(
        {"modules": modules, "data": documents}, sort_keys=True, separators=(",", ":")
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _package_path(policy: dict[str, Any]) -> tuple[str, ...]:
    terms = policy.get("ast", {}).get("package", {}).get("path", [])
    # The first term is the `data` root itself.
    return tuple(str(term.get("value")) for term in terms[1:])


def _without_packages(data: Any, packages: list[tuple[str, ...]]) -> Any:
    """The data documents only: evaluated rules are a function of modules and data."""
    if not isinstance(data, dict):
        return data
    pruned: dict[str, Any] = {}
    for key, value in data.items():
        below = [p[1:] for p in packages if p and p[0] == key]
        if any(len(p) == 0 for p in below):
            continue
        pruned[key] = _without_packages(value, below) if below else value
    return pruned


class PolicyRevision:
    """Polls OPA every ``interval_s``; ``current`` is the last revision read.

    ``timeout_s`` is this poller's own budget per call (``None``: the client's);
    it is off the request path, so it may wait longer than a decision does.
    """

    def __init__(
        self, opa: OpaClient, *, interval_s: float = 2.0, timeout_s: float | None = None
    ) -> None:
        self._opa = opa
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._poller: asyncio.Task[None] | None = None
        self.current: str | None = None
        self._seen: bytes | None = None

    async def start(self) -> None:
        await self.refresh()
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def refresh(self) -> None:
        try:
            policies_raw = await self._opa.get("/v1/policies", timeout_s=self._timeout_s)
            data_raw = await self._opa.get("/v1/data", timeout_s=self._timeout_s)
        except PolicyUnavailable:
            return
        # With decision logging on, OPA stamps every answer with a fresh id.
        stable = _DECISION_ID.sub(b"{", policies_raw) + b"\0" + _DECISION_ID.sub(b"{", data_raw)
        seen = hashlib.sha256(stable).digest()
        if seen == self._seen:
            return
        try:
            policies = json.loads(policies_raw).get("result") or []
            data = json.loads(data_raw).get("result")
        except (ValueError, AttributeError):
            return
        self.current = revision_digest(policies, data)
        self._seen = seen

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.refresh()
