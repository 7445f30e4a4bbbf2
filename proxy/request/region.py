"""Which AWS region a data-plane call is for, and whether its FIPS endpoint.

Contract (docs/api.md#region): a request names its region in up to three
places: the path prefix ``/region/<region>`` (read by the route parser), the
``Host`` header when it reads ``bedrock-runtime[-fips].<region>[.<anything>]
[:port]``, and the credential scope of an incoming SigV4 ``Authorization``
header. Every place that names one must name the same; when none does, the
configured default applies, and without one the call is refused.
``resolve_region`` returns a ``Region`` of AWS region syntax or raises
``InvalidRequest``; ``find_region`` is the same without the refusal, for
routes that call no region (the admin listener).

Security reasoning:

- The region is a policy input and scopes the STS session policy, so it is
  caller-chosen data like the model id: it is validated, never trusted.
- A request that names two regions could be read two ways (policy and audit
  one, Bedrock the other), so it is refused rather than ranked. So is an ARN
  in the path (a guardrail, an async invocation) of another region than the
  call: Bedrock would look for it where the call goes.
- A client's region is never replaced silently: an unsigned SDK client sends
  its ``region_name`` nowhere, so it names it with the endpoint
  ``https://<proxy>/region/<region>``; when nothing names a region, only a
  default the operator configured on purpose applies.
- The caller's SigV4 signature is *not* verified (callers authenticate with
  mTLS and the header is stripped before forwarding); only the region is read
  from its credential scope, because SDKs put the region there.
- A source that clearly names a region but names it badly is an error
  (``InvalidRequest``), not a silent fall-back to the default: a typo must not
  turn into a call in another region. A Host that merely starts with
  ``bedrock-runtime.`` but whose next label is not region-shaped (for example
  the Kubernetes service name ``bedrock-runtime.ai-gateway.svc``) does not
  name a region at all, so resolution moves on to the next source.
- A Host whose first label is ``bedrock-runtime-fips`` asks for the FIPS
  endpoint, whether or not it names the region; the data plane sends such a
  call to a FIPS endpoint or refuses it, never to the plain one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.errors import InvalidRequest

if TYPE_CHECKING:
    # Type only: resources.py reads is_region from here.
    from proxy.request.resources import ResourceArn

# Commercial, GovCloud, China, ISO and EU sovereign regions, from botocore's
# partition ``regionRegex`` values, tightened to ASCII lower case.
_REGION = re.compile(r"(?:[a-z]{2}(?:-gov|-iso[a-z]?)?|eusc-[a-z]{2})-[a-z]+-[0-9]{1,2}")

# A Host label "names a region" when it ends in -<digits>, the one feature every
# region has and ordinary DNS labels after "bedrock-runtime." rarely do.
_REGION_SHAPED = re.compile(r".*-[0-9]+")

_FIPS_LABEL = "bedrock-runtime-fips"
_RUNTIME_LABELS = frozenset({"bedrock-runtime", _FIPS_LABEL})
_SIGV4_SCHEME = "AWS4-HMAC-SHA256"

NO_REGION_MESSAGE = (
    "The request names no AWS region and the proxy has no default region: use the "
    "endpoint https://<proxy>/region/<region> (e.g. .../region/us-west-2), or ask the "
    "operator to set aws.default_region"
)


@dataclass(frozen=True)
class Region:
    """The region of a call, and whether the caller asked for its FIPS endpoint."""

    name: str
    fips: bool = False


def is_region(value: str) -> bool:
    """True when ``value`` has the syntax of an AWS region (not whether it exists)."""
    return _REGION.fullmatch(value) is not None


def resolve_region(
    host: str | None,
    authorization: str | None,
    default: str | None,
    *,
    path_region: str | None = None,
    resource: ResourceArn | None = None,
) -> Region:
    """The region of a call; ``InvalidRequest`` when it is malformed, named twice
    differently, not named without a default, or not the region of ``resource``.

    ``default`` comes from validated configuration and ``path_region`` from the
    route parser, so a malformed one is a bug (``ValueError``), not a caller error.
    """
    region, source = _find(host, authorization, default, path_region)
    if region is None:
        raise InvalidRequest(NO_REGION_MESSAGE)
    if resource is not None and resource.region != region.name:
        raise InvalidRequest(
            f"The {resource.type} ARN in the path is in region {resource.region}, but the "
            f"request is for {region.name} ({source}): call it through the endpoint of its "
            f"region, https://<proxy>/region/{resource.region}",
            detail=f"arn={resource.arn!r}",
        )
    return region


def find_region(host: str | None, authorization: str | None, default: str | None) -> Region | None:
    """As ``resolve_region`` without a path or resource, but ``None`` rather than a
    refusal when nothing names a region and there is no default."""
    return _find(host, authorization, default, None)[0]


def _find(
    host: str | None, authorization: str | None, default: str | None, path_region: str | None
) -> tuple[Region | None, str]:
    if default is not None and not is_region(default):
        raise ValueError(f"default region {default!r} is not an AWS region")
    if path_region is not None and not is_region(path_region):
        raise ValueError(f"path region {path_region!r} is not an AWS region")
    named = {
        source: region
        for source, region in (
            (f"the path prefix /region/{path_region}", path_region),
            ("the Host header", _region_from_host(host) if host else None),
            (
                "the SigV4 credential scope",
                _region_from_authorization(authorization) if authorization else None,
            ),
        )
        if region is not None
    }
    fips = host is not None and _first_label(host) == _FIPS_LABEL
    if len(set(named.values())) > 1:
        raise InvalidRequest(
            "The request names more than one region ("
            + ", ".join(f"{region} in {source}" for source, region in named.items())
            + "): name one, e.g. with the endpoint https://<proxy>/region/<region>"
        )
    if named:
        source, region = next(iter(named.items()))
        return Region(region, fips), source
    if default is None:
        return None, ""
    return Region(default, fips), "aws.default_region"


def _first_label(host: str) -> str:
    return host.strip().lower().partition(":")[0].split(".")[0]


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
