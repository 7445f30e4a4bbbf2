"""Credentials stage: short-lived, narrowly scoped STS sessions per task.

Contract
--------
``CredentialBroker.credentials_for(scope)`` returns STS session credentials
for exactly one ``CredentialScope`` (role, identity, task, region, model
scope, actions, classification, duration). The proxy's own AWS credentials
(botocore default chain) are used for ``sts:AssumeRole`` only. Every
assumption carries:

* an inline session policy allowing only ``scope.actions`` on
  ``scope.resource_arns`` with ``aws:RequestedRegion`` pinned to the region,
  so that even a bug further down the pipeline cannot reach another model or
  region with these credentials (a cross-region profile's model is allowed
  only through that profile, and a global profile's with the region
  "unspecified", as IAM evaluates it);
* ``SourceIdentity`` and ``RoleSessionName`` derived deterministically from the
  SPIFFE ID, so CloudTrail ties every Bedrock call to the workload;
* session tags (trust domain, workload, task, classification), not
  transitive, so they do not leak into any further role chaining;
* the shortest duration the policy asked for, clamped to STS limits and the
  configured maximum (role chaining caps at 3600 s).

Security reasoning
------------------
* Names are injective: a canonical SPIFFE ID maps character for character to
  an AWS name; whenever that text is lossy (a character outside the AWS
  charset, not a ``spiffe://`` ID), too short or too long, a hash of the full
  ID is appended after ``=``, a character the verbatim mapping never emits.
  Two workloads therefore never share a session name or source identity.
* A policy that does not fit is an error, never a broader policy.
* Credentials are cached per scope, refreshed ``refresh_margin`` before they
  expire, never returned once expired, and fetched once per scope however
  many requests ask at the same time (single flight), so a burst cannot
  exhaust the STS quota. Failures are not cached.
* ``drop_task`` forgets a task's credentials at once, including fetches still
  in flight: their waiters get an error and their result is not stored. STS
  sessions cannot be revoked, but these credentials never leave the proxy, so
  forgetting them ends their use.
* botocore is synchronous: it runs in an executor, never on the event loop,
  and the app gives it threads of its own (``app._components``), so a flood of
  body-sized work on the other pools can never delay an AssumeRole.
  Its errors are translated here; the caller-facing message never carries
  AWS internals, ``detail`` (for the audit record) does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import math
import re
import string
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from proxy.errors import ConfigError, CredentialsUnavailable

# STS limits (AssumeRole: session name, source identity, tags, durations).
MIN_SESSION_SECONDS = 900
MAX_SESSION_SECONDS = 43200
NAME_MAX_CHARS = 64  # RoleSessionName; SourceIdentity kept to the same safe bound
NAME_MIN_CHARS = 2
POLICY_MAX_CHARS = 2048
TAG_VALUE_MAX_CHARS = 256
MAX_TAGS = 50

_PUBLIC_MESSAGE = "Could not obtain credentials for this call"
_SPIFFE_PREFIX = "spiffe://"
# Characters a canonical SPIFFE ID may contain besides "/" (SPIFFE-ID spec),
# all inside the AWS name charset [\w+=,.@-].
_NAME_SAFE = frozenset(string.ascii_letters + string.digits + "_.-")
_PATH_SEPARATOR = "@"  # never in a SPIFFE ID, so mapping "/" to it stays injective
_HASH_SEPARATOR = "="  # never emitted by the verbatim mapping: hashed names are disjoint
_HASH_CHARS = 16  # 64 bits of SHA-256
_TAG_EXTRA = frozenset("_.:/=+-@")

TAG_TRUST_DOMAIN = "trust-domain"
TAG_WORKLOAD = "workload"
TAG_TASK = "task"
TAG_CLASSIFICATION = "classification"
NO_TASK = "none"


@dataclass(frozen=True)
class CredentialScope:
    """Everything that changes what a session may do; the cache key.

    ``resource_arns`` and ``actions`` are sorted and deduplicated here so that
    equal scopes are equal keys whatever order the caller used.
    """

    role_arn: str
    spiffe_id: str
    trust_domain: str
    workload_path: str
    task_id: str | None
    region: str
    resource_arns: tuple[str, ...]
    actions: tuple[str, ...]
    classification: str
    session_seconds: int
    # The end of the task: no session outlives it (beyond the STS minimum).
    not_after: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "resource_arns", tuple(sorted(set(self.resource_arns))))
        object.__setattr__(self, "actions", tuple(sorted(set(self.actions))))


@dataclass(frozen=True)
class SessionCredentials:
    access_key_id: str
    # Kept out of repr so a stray log line cannot leak them.
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime  # aware, UTC
    role_session_name: str
    source_identity: str
    assumed_role_arn: str


# --- pure part -------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def _fit(readable: str, *, lossy: bool, original: str, limit: int, minimum: int) -> str:
    """``readable`` if it is exact and fits, else a readable head plus a hash of ``original``."""
    if not lossy and minimum <= len(readable) <= limit:
        return readable
    suffix = _HASH_SEPARATOR + _digest(original)
    return readable[: limit - len(suffix)] + suffix


def _aws_name(spiffe_id: str, limit: int) -> str:
    lossy = not spiffe_id.startswith(_SPIFFE_PREFIX)
    rest = spiffe_id if lossy else spiffe_id[len(_SPIFFE_PREFIX) :]
    out: list[str] = []
    for ch in rest:
        if ch == "/":
            out.append(_PATH_SEPARATOR)
        elif ch in _NAME_SAFE:
            out.append(ch)
        else:
            out.append("_")
            lossy = True
    return _fit("".join(out), lossy=lossy, original=spiffe_id, limit=limit, minimum=NAME_MIN_CHARS)


def role_session_name(spiffe_id: str) -> str:
    """``spiffe://example.org/ns/prod`` -> ``example.org@ns@prod`` (hash-suffixed when needed)."""
    return _aws_name(spiffe_id, NAME_MAX_CHARS)


def source_identity(spiffe_id: str) -> str:
    """Same mapping as the session name; 64 chars is the safe side of the documented limit.

    Never starts with ``aws:``: the mapping never emits ``:``.
    """
    return _aws_name(spiffe_id, NAME_MAX_CHARS)


def _tag_value(value: str) -> str:
    lossy = False
    out: list[str] = []
    for ch in value:
        if ch in _TAG_EXTRA or unicodedata.category(ch)[0] in "LZN":
            out.append(ch)
        else:
            out.append("_")
            lossy = True
    return _fit("".join(out), lossy=lossy, original=value, limit=TAG_VALUE_MAX_CHARS, minimum=0)


def session_tags(scope: CredentialScope) -> list[dict[str, str]]:
    """Session tags for CloudTrail and for IAM conditions (e.g. deny by task)."""
    pairs = (
        (TAG_TRUST_DOMAIN, scope.trust_domain),
        (TAG_WORKLOAD, scope.workload_path),
        (TAG_TASK, scope.task_id if scope.task_id is not None else NO_TASK),
        (TAG_CLASSIFICATION, scope.classification),
    )
    return [{"Key": key, "Value": _tag_value(value)} for key, value in pairs]


# Actions IAM cannot scope to a resource: the only ones allowed on "*".
_UNSCOPED_ACTIONS = frozenset({"bedrock:ListAsyncInvokes"})

# The one wildcard allowed: the region of a foundation model reached through a profile.
_ROUTED_MODEL = re.compile(r"^arn:aws(-us-gov|-cn)?:bedrock:\*::foundation-model/[^*?]+$")
# A global profile's model: no region in the ARN, and IAM evaluates it with
# aws:RequestedRegion "unspecified".
_GLOBAL_MODEL = re.compile(r"^arn:aws(-us-gov|-cn)?:bedrock:::foundation-model/[^*?]+$")


def session_policy(scope: CredentialScope) -> str:
    """The inline session policy, compact JSON; raises rather than broadening."""
    if not scope.actions or not scope.resource_arns:
        raise CredentialsUnavailable(
            _PUBLIC_MESSAGE, detail="session policy needs at least one action and one resource"
        )
    region_bound = {"StringEquals": {"aws:RequestedRegion": scope.region}}
    if scope.resource_arns == ("*",) and set(scope.actions) <= _UNSCOPED_ACTIONS:
        # Listing has no resource-level permission in IAM; the region still binds it.
        statements = [
            {"Effect": "Allow", "Action": list(scope.actions), "Resource": "*",
             "Condition": region_bound}
        ]  # fmt: skip
    else:
        statements = _scoped_statements(scope)
    text = json.dumps({"Version": "2012-10-17", "Statement": statements}, separators=(",", ":"))
    if len(text) > POLICY_MAX_CHARS:
        raise CredentialsUnavailable(
            _PUBLIC_MESSAGE,
            detail=(
                f"session policy is {len(text)} chars, over the STS limit of {POLICY_MAX_CHARS} "
                f"({len(scope.resource_arns)} resources); refusing to broaden it"
            ),
        )
    return text


def _scoped_statements(scope: CredentialScope) -> list[dict[str, Any]]:
    routed = [arn for arn in scope.resource_arns if _ROUTED_MODEL.match(arn)]
    global_models = [arn for arn in scope.resource_arns if _GLOBAL_MODEL.match(arn)]
    direct = [arn for arn in scope.resource_arns if arn not in routed + global_models]
    profiles = [arn for arn in direct if ":inference-profile/" in arn]
    wildcards = [v for v in (*scope.actions, *direct) if "*" in v or "?" in v]
    if wildcards or ((routed or global_models) and not profiles):
        raise CredentialsUnavailable(
            _PUBLIC_MESSAGE,
            detail=(
                "session policy refuses wildcards and profile-routed models without their "
                f"profile: {wildcards or routed or global_models!r}"
            ),
        )

    def allow(resources: list[str], condition: dict[str, Any]) -> dict[str, Any]:
        return {"Effect": "Allow", "Action": list(scope.actions), "Resource": resources,
                "Condition": {"StringEquals": condition}}  # fmt: skip

    # A profile sends the call on to its model (in any region of its geography, or
    # in no named region for a global profile): allowed only through the profile.
    through_profile = {"bedrock:InferenceProfileArn": profiles}
    statements = [allow(direct, {"aws:RequestedRegion": scope.region})]
    if routed:
        statements.append(allow(routed, through_profile))
    if global_models:
        statements.append(
            allow(global_models, {"aws:RequestedRegion": "unspecified", **through_profile})
        )
    return statements


def duration_seconds(
    scope: CredentialScope, max_session_seconds: int, now: datetime | None = None
) -> int:
    """Policy's duration, never past the task's end, within [900 s, the configured cap]."""
    upper = min(MAX_SESSION_SECONDS, max_session_seconds, scope.session_seconds)
    if scope.not_after is not None and now is not None:
        upper = min(upper, math.floor((scope.not_after - now).total_seconds()))
    return max(MIN_SESSION_SECONDS, upper)


def assume_role_params(
    scope: CredentialScope, max_session_seconds: int, now: datetime | None = None
) -> dict[str, Any]:
    """The exact AssumeRole request for a scope."""
    return {
        "RoleArn": scope.role_arn,
        "RoleSessionName": role_session_name(scope.spiffe_id),
        "SourceIdentity": source_identity(scope.spiffe_id),
        "Policy": session_policy(scope),
        "Tags": session_tags(scope),
        "DurationSeconds": duration_seconds(scope, max_session_seconds, now),
    }


def _parse_response(response: Mapping[str, Any], params: Mapping[str, Any]) -> SessionCredentials:
    try:
        creds = response["Credentials"]
        expiration = creds["Expiration"]
        if not isinstance(expiration, datetime) or expiration.tzinfo is None:
            raise TypeError("Expiration is not an aware datetime")
        return SessionCredentials(
            access_key_id=str(creds["AccessKeyId"]),
            secret_access_key=str(creds["SecretAccessKey"]),
            session_token=str(creds["SessionToken"]),
            expiration=expiration.astimezone(UTC),
            role_session_name=params["RoleSessionName"],
            source_identity=params["SourceIdentity"],
            assumed_role_arn=str(response["AssumedRoleUser"]["Arn"]),
        )
    except (KeyError, TypeError) as exc:
        raise CredentialsUnavailable(
            _PUBLIC_MESSAGE, detail=f"malformed AssumeRole response: {exc!r}"
        ) from exc


# --- I/O shell -------------------------------------------------------------


def make_sts_client(
    *, region: str, endpoint_url: str | None, connect_timeout: float, read_timeout: float
) -> Any:
    """A botocore STS client on the default credential chain that fails fast.

    ``total_max_attempts=1`` (not ``max_attempts``, which counts retries): the
    request is waiting, and the caller answers 503 rather than stalling.
    """
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    session = botocore.session.get_session()
    return session.create_client(
        "sts", region_name=region, endpoint_url=endpoint_url, config=config
    )


@dataclass
class _Flight:
    """One AssumeRole in progress, shared by every caller of its scope."""

    task: asyncio.Task[SessionCredentials]
    revoked: bool = False


class CredentialBroker:
    """Cache of STS sessions keyed by ``CredentialScope`` with single-flight refresh.

    ``clock`` must return an aware UTC datetime. Use from one event loop.
    """

    def __init__(
        self,
        sts_client: Any,
        *,
        clock: Callable[[], datetime],
        refresh_margin: timedelta = timedelta(minutes=5),
        max_session_seconds: int = 3600,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if not MIN_SESSION_SECONDS <= max_session_seconds <= MAX_SESSION_SECONDS:
            raise ConfigError(
                f"max_session_seconds must be between {MIN_SESSION_SECONDS} and "
                f"{MAX_SESSION_SECONDS}, got {max_session_seconds}"
            )
        # A margin as long as the shortest session would make every fresh
        # credential stale at once: one STS call per request.
        if not timedelta(0) <= refresh_margin < timedelta(seconds=MIN_SESSION_SECONDS):
            raise ConfigError(
                f"refresh_margin must be between 0 and {MIN_SESSION_SECONDS} seconds, "
                f"got {refresh_margin}"
            )
        self._sts = sts_client
        self._clock = clock
        self._margin = refresh_margin
        self._max_session_seconds = max_session_seconds
        self._executor = executor
        self._cache: dict[CredentialScope, SessionCredentials] = {}
        self._inflight: dict[CredentialScope, _Flight] = {}
        self._sts_calls = 0

    @property
    def sts_calls(self) -> int:
        return self._sts_calls

    async def credentials_for(self, scope: CredentialScope) -> SessionCredentials:
        cached = self._cache.get(scope)
        if cached is not None and cached.expiration - self._margin > self._clock():
            return cached
        flight = self._inflight.get(scope)
        if flight is None:
            flight = _Flight(asyncio.get_running_loop().create_task(self._assume(scope)))
            self._inflight[scope] = flight
            flight.task.add_done_callback(partial(self._settle, scope, flight))
        try:
            # shield: a waiter that goes away must not cancel the fetch the others await.
            creds = await asyncio.shield(flight.task)
        except CredentialsUnavailable as exc:
            # A fresh instance per waiter: they must not share one traceback.
            raise CredentialsUnavailable(exc.message, detail=exc.detail) from exc
        if flight.revoked:
            raise CredentialsUnavailable(
                _PUBLIC_MESSAGE,
                detail=f"task {scope.task_id!r} ended while credentials were fetched",
            )
        if creds.expiration <= self._clock():
            raise CredentialsUnavailable(
                _PUBLIC_MESSAGE,
                detail=f"STS returned credentials already expired at {creds.expiration.isoformat()}"
                " (clock skew?)",
            )
        return creds

    def task_ids(self) -> set[str]:
        """Tasks that hold cached or in-flight credentials here (for the task sweeper)."""
        scopes = [*self._cache, *self._inflight]
        return {scope.task_id for scope in scopes if scope.task_id is not None}

    def drop_task(self, task_id: str, *, in_flight: bool = True) -> int:
        """Forget every credential of ``task_id`` at once, in-flight ones included.

        ``in_flight=False`` leaves fetches running for calls already allowed (the
        task's last call ended it); what they cache is swept with the task.
        """
        dropped = {scope for scope in self._cache if scope.task_id == task_id}
        for scope in dropped:
            del self._cache[scope]
        for scope in [s for s in self._inflight if in_flight and s.task_id == task_id]:
            self._inflight.pop(scope).revoked = True
            dropped.add(scope)
        return len(dropped)

    async def _assume(self, scope: CredentialScope) -> SessionCredentials:
        params = assume_role_params(scope, self._max_session_seconds, self._clock())
        loop = asyncio.get_running_loop()
        self._sts_calls += 1
        try:
            response = await loop.run_in_executor(
                self._executor, partial(self._sts.assume_role, **params)
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise CredentialsUnavailable(
                _PUBLIC_MESSAGE,
                detail=f"STS AssumeRole {error.get('Code', '?')}: {error.get('Message', '')}",
            ) from exc
        except BotoCoreError as exc:
            raise CredentialsUnavailable(
                _PUBLIC_MESSAGE, detail=f"STS AssumeRole {type(exc).__name__}: {exc}"
            ) from exc
        return _parse_response(response, params)

    def _settle(
        self, scope: CredentialScope, flight: _Flight, task: asyncio.Task[SessionCredentials]
    ) -> None:
        if self._inflight.get(scope) is flight:
            del self._inflight[scope]
        # exception() also marks it retrieved when every waiter has gone away.
        if task.cancelled() or task.exception() is not None or flight.revoked:
            return
        now = self._clock()
        # Prune here, once per STS call, so scopes never asked for again do not pile up.
        for stale in [s for s, c in self._cache.items() if c.expiration <= now]:
            del self._cache[stale]
        self._cache[scope] = task.result()
