"""Which AWS region a data-plane call is for.

Contract (docs/api.md): the region comes from the ``Host`` header when
it reads ``bedrock-runtime[-fips].<region>[.<anything>][:port]``, else from the
credential scope of an incoming SigV4 ``Authorization`` header, else from the
configured default. The result always matches AWS region syntax.

Security reasoning:

- The region is a policy input and scopes the STS session policy, so it is
  caller-chosen data like the model id: it is validated, never trusted.
- The caller's SigV4 signature is *not* verified (callers authenticate with
  mTLS and the header is stripped before forwarding); only the region is read
  from its credential scope, because SDKs put the region there.
- A source that clearly names a region but names it badly is an error
  (``InvalidRequest``), not a silent fall-back to the default: a typo must not
  turn into a call in another region. A Host that merely starts with
  ``bedrock-runtime.`` but whose next label is not region-shaped (for example
  the Kubernetes service name ``bedrock-runtime.ai-gateway.svc``) does not
  name a region at all, so resolution moves on to the next source.
"""

from __future__ import annotations

import re

from proxy.errors import InvalidRequest

# Commercial, GovCloud, China, ISO and EU sovereign regions, from botocore's
# partition ``regionRegex`` values, tightened to ASCII lower case.
_REGION = re.compile(r"(?:[a-z]{2}(?:-gov|-iso[a-z]?)?|eusc-[a-z]{2})-[a-z]+-[0-9]{1,2}")

# A Host label "names a region" when it ends in -<digits>, the one feature every
# region has and ordinary DNS labels after "bedrock-runtime." rarely do.
_REGION_SHAPED = re.compile(r".*-[0-9]+")

_RUNTIME_LABELS = frozenset({"bedrock-runtime", "bedrock-runtime-fips"})
_SIGV4_SCHEME = "AWS4-HMAC-SHA256"


def is_region(value: str) -> bool:
    """True when ``value`` has the syntax of an AWS region (not whether it exists)."""
    return _REGION.fullmatch(value) is not None


def resolve_region(host: str | None, authorization: str | None, default: str) -> str:
    """Return the region for a request; raise ``InvalidRequest`` on a malformed one.

    ``default`` comes from validated configuration, so a bad one is a bug
    (``ValueError``), not a caller error.
    """
    if not is_region(default):
        raise ValueError(f"default region {default!r} is not an AWS region")
    if host:
        region = _region_from_host(host)
        if region is not None:
            return region
    if authorization:
        region = _region_from_authorization(authorization)
        if region is not None:
            return region
    return default


def _region_from_host(host: str) -> str | None:
    # Host names are case-insensitive; regions are written in lower case.
    name = host.strip().lower()
    if name.startswith("["):
        return None  # IPv6 literal: no region in it
    name = name.partition(":")[0]
    labels = name.split(".")
    if len(labels) < 2 or labels[0] not in _RUNTIME_LABELS:
        return None
    candidate = labels[1]
    if _REGION_SHAPED.fullmatch(candidate) is None:
        return None
    if not is_region(candidate):
        raise InvalidRequest(
            "The Host header names a region that is not a valid AWS region "
            "(expected bedrock-runtime.<region>..., e.g. bedrock-runtime.us-east-1.amazonaws.com)",
            detail=f"host={host[:256]!r}",
        )
    return candidate


def _region_from_authorization(authorization: str) -> str | None:
    scheme, _, params = authorization.strip().partition(" ")
    # Bearer tokens (Bedrock API keys) and SigV4a carry no region in a scope.
    if scheme != _SIGV4_SCHEME:
        return None
    credential: str | None = None
    for param in params.split(","):
        key, sep, value = param.strip().partition("=")
        if sep and key == "Credential":
            credential = value
            break
    # Credential=AKID/DATE/REGION/SERVICE/aws4_request
    parts = credential.split("/") if credential is not None else []
    if len(parts) != 5 or parts[4] != "aws4_request" or not is_region(parts[2]):
        raise InvalidRequest(
            "The SigV4 Authorization header has a malformed credential scope; expected "
            "Credential=<key>/<yyyymmdd>/<region>/bedrock/aws4_request with a valid region",
            detail=f"credential={(credential or '')[:256]!r}",
        )
    return parts[2]
