"""The one client for OPA's REST API in a process: the policy boundary.

Everything that asks OPA goes through one ``OpaClient``: the decider
(``POST /v1/data/bedrock/authz/decision``, and ``bedrock/admin``), the
classification rules (``GET /v1/data/bedrock/classification``) and the
revision poller (``GET /v1/policies`` and ``GET /v1/data``). So there is one
aiohttp session per process, whose pooled keep-alive connections every caller
shares, one timeout policy, and one place (``OpaClient._call``) where a
transport error, a timeout, an HTTP status other than 200 or an answer that
is not JSON becomes ``PolicyUnavailable``. What that means is the caller's
business: the decider fails closed (503); the rules and the revision poller
keep what they last read.

Every call runs under ``asyncio.timeout``: the budget covers waiting for a
pooled connection, connecting, sending and reading the whole answer. It is
``opa.timeout_ms`` unless the caller passes its own (the revision poller, off
the request path, allows itself at least a second). No retries: the timeout
is the whole budget. ``PolicyUnavailable.message`` never carries library
error text; ``detail`` (audit and logs only) does.

Why not opa-python-client (3.0.0): its ``AsyncOpaClient`` builds its own
session, either in the private ``_init_session`` or by ``async with`` around
the client's whole life; it takes no session to share, fixes one total
timeout for the session at construction (no per-call budget), retries with
backoff unless told not to, and returns only decoded JSON, while the
revision poller hashes raw bytes so that it decodes ``/v1/policies`` (every
module's AST, hundreds of KiB) only when they changed. Using it for the
decision alone would keep a second session and a second error mapping, so
the proxy talks to OPA with aiohttp directly and no longer depends on it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from proxy.errors import PolicyUnavailable

T = TypeVar("T")

# A rule reference such as ``bedrock.authz.decision``: plain Rego identifiers
# only, so the reference can never reach outside ``/v1/data``.
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)
_UNAVAILABLE = "The policy service is unavailable; the call was not made"
_SLOW = "The policy service did not answer in time; the call was not made"


def data_path(ref: str) -> str:
    """Pure: ``bedrock.authz.decision`` -> ``/v1/data/bedrock/authz/decision``."""
    if not _REF.fullmatch(ref):
        raise ValueError(f"not a Rego reference: {ref!r}")
    return "/v1/data/" + ref.replace(".", "/")


class OpaClient:
    """One keep-alive session to OPA; every failure is ``PolicyUnavailable``."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self._base = url.rstrip("/")
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # The budget is asyncio.timeout per call, so the session sets none of its own.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> OpaClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def query(
        self, ref: str, opa_input: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> object:
        """``POST /v1/data/<ref>`` with ``{"input": ...}``: OPA's answer, decoded."""
        return await self._call(
            "POST", data_path(ref), {"input": opa_input}, timeout_s, parse=json.loads
        )

    async def document(self, ref: str, *, timeout_s: float | None = None) -> object:
        """``GET /v1/data/<ref>``, no input: OPA's answer, decoded."""
        return await self._call("GET", data_path(ref), None, timeout_s, parse=json.loads)

    async def get(self, path: str, *, timeout_s: float | None = None) -> bytes:
        """``GET <path>`` (e.g. ``/v1/policies``): the answer's raw bytes."""
        return await self._call("GET", path, None, timeout_s, parse=bytes)

    async def _call(
        self,
        method: str,
        path: str,
        payload: object,
        timeout_s: float | None,
        *,
        parse: Callable[[bytes], T],
    ) -> T:
        assert self._session is not None, "OpaClient.start() was not awaited"
        budget = self._timeout_s if timeout_s is None else timeout_s
        what = f"{method} {path}"
        if self._session.closed:
            # A call that outlives shutdown: aiohttp would raise RuntimeError.
            raise PolicyUnavailable(_UNAVAILABLE, detail=f"opa client closed before {what}")
        try:
            async with (
                asyncio.timeout(budget),
                self._session.request(method, self._base + path, json=payload) as response,
            ):
                # Read even a refusal to the end, so its connection goes back to the pool.
                raw = await response.read()
            if response.status != 200:
                raise PolicyUnavailable(
                    _UNAVAILABLE, detail=f"opa answered HTTP {response.status} to {what}"
                )
            return parse(raw)
        except TimeoutError as exc:
            raise PolicyUnavailable(_SLOW, detail=f"opa timeout after {budget}s on {what}") from exc
        except aiohttp.ClientError as exc:
            raise PolicyUnavailable(
                _UNAVAILABLE, detail=f"opa transport error on {what}: {type(exc).__name__}: {exc}"
            ) from exc
        except ValueError as exc:
            raise PolicyUnavailable(
                _UNAVAILABLE, detail=f"opa answer to {what} is not JSON: {type(exc).__name__}"
            ) from exc
