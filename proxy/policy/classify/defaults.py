"""The declared level of a call without ``X-Data-Classification``, as the policy resolves it.

Contract
--------
``DeclaredDefaults.of(spiffe_id)`` is the policy's answer to ``POST
/v1/data/bedrock/classification/declared_default`` with the input
``{"identity": {"spiffe_id": ...}}``. The policy resolves the caller's
workload entry the way authorization does (exact key, else the longest
whole-segment ``/*`` pattern) and reads its ``default_classification``; the
proxy holds no copy of the registry and matches no pattern itself, so it
cannot resolve an identity differently from the policy. The classifier asks
only for calls that carry no header.

* Cached per (SPIFFE ID, policy revision from ``PolicyRevision.current``): an
  edited default takes effect once the revision poller has seen the edit.
  While no revision is known, nothing is cached, since nothing would tell a
  stale answer from a fresh one.
* At most ``max_entries`` answers, least recently used evicted first, so a
  flood of distinct identities cannot grow memory.
* One query per key however many calls wait for it (single flight); a
  failure is not cached, so the next call asks again.
* Fail closed: an OPA failure, or an answer that is not a level, is
  ``PolicyUnavailable`` (503), never a guessed default. A policy that does
  not define the rule at all (no ``result``) declares no defaults, which
  means ``internal``, the documented default.
* Only the SPIFFE ID is sent: the answer is cached per SPIFFE ID, so the
  policy must not be able to make it depend on anything else.

Security reasoning: the decision does not rely on this cache being fresh.
The call is marked ``defaulted`` and the policy raises its effective level to
its own ``declared_default``, so a stale answer can misreport ``declared`` in
the audit record for one poll interval but never lower what policy judges.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from functools import partial

from proxy.errors import PolicyUnavailable
from proxy.policy.classify.rules import DEFAULT_DECLARED, LEVELS
from proxy.policy.opa import OpaClient
from proxy.policy.revision import PolicyRevision

DECLARED_DEFAULT_REF = "bedrock.classification.declared_default"
# Far more identities than one proxy serves; a few hundred KiB at most.
MAX_ENTRIES = 4096
_UNUSABLE = "The policy service gave no usable answer"

_Key = tuple[str, str | None]


def declared_default_from(answer: object) -> str:
    """Pure: OPA's answer -> the declared level; ``PolicyUnavailable`` when it is none."""
    if not isinstance(answer, Mapping):
        raise PolicyUnavailable(_UNUSABLE, detail="declared_default: the answer is not an object")
    if "result" not in answer:
        return DEFAULT_DECLARED
    level = answer["result"]
    if not isinstance(level, str) or level not in LEVELS:
        raise PolicyUnavailable(
            _UNUSABLE, detail=f"declared_default is not a level: {str(level)[:40]!r}"
        )
    return level


class DeclaredDefaults:
    """The policy's declared default per identity, cached per policy revision."""

    def __init__(
        self, opa: OpaClient, revision: PolicyRevision, *, max_entries: int = MAX_ENTRIES
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._opa = opa
        self._revision = revision
        self._max_entries = max_entries
        self._cache: OrderedDict[_Key, str] = OrderedDict()
        self._inflight: dict[_Key, asyncio.Task[str]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    async def of(self, spiffe_id: str) -> str:
        key = (spiffe_id, self._revision.current)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        flight = self._inflight.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_task(self._ask(spiffe_id))
            self._inflight[key] = flight
            flight.add_done_callback(partial(self._settle, key))
        try:
            # shield: a waiter that goes away must not cancel the query the others await.
            return await asyncio.shield(flight)
        except PolicyUnavailable as exc:
            # A fresh instance per waiter: they must not share one traceback.
            raise PolicyUnavailable(exc.message, detail=exc.detail) from exc

    async def _ask(self, spiffe_id: str) -> str:
        answer = await self._opa.query(DECLARED_DEFAULT_REF, {"identity": {"spiffe_id": spiffe_id}})
        return declared_default_from(answer)

    def _settle(self, key: _Key, task: asyncio.Task[str]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        # exception() also marks it retrieved when every waiter has gone away.
        if task.cancelled() or task.exception() is not None or key[1] is None:
            return
        self._cache[key] = task.result()
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
