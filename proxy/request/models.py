"""Model identifiers: validate the id a caller named and describe it for policy.

Contract: ``validate_model_id(decoded)`` checks the syntax of a model id that
has been percent-decoded exactly once and returns it unchanged;
``parse_model_id(decoded, region, account)`` also resolves it into a
``ModelRef`` (kind, provider, geo, the ARN the call is authorized against).
Both raise ``InvalidRequest`` with a message the caller can act on.

Accepted forms (as bedrock-runtime accepts them): a foundation model id
(``anthropic.claude-3-haiku-20240307-v1:0``), a system cross-region inference
profile id (``us.``, ``eu.``, ``apac.``, ``global.`` ... + foundation id), or
a ``bedrock`` ARN of a known model resource type.

Security reasoning:

- The id is matched by OPA, scoped into the STS session policy and sent on the
  wire. It must be one canonical string for all three, so anything with two
  readings is refused rather than normalised: a ``%`` left after the single
  decode (double encoding), ``..``, leading or trailing ``/``, whitespace,
  control or non-ASCII characters.
- Plain ids and every part that carries a foundation model id are lower case
  only, so a policy comparing strings cannot be sidestepped by ``Anthropic.``
  if the service were to fold case.
- Unknown resource types, services other than ``bedrock`` (e.g. SageMaker
  endpoints) and bare names with no dot are refused: policy can only reason
  about a model whose kind it knows (fail closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from proxy.errors import InvalidRequest
from proxy.request.region import is_region

MAX_MODEL_ID_LENGTH = 2048

# Geographic prefixes of system-defined cross-region inference profiles.
PROFILE_GEOS = frozenset({"us", "us-gov", "eu", "apac", "global", "jp", "au", "ca"})

KINDS = (
    "foundation-model",
    "inference-profile",
    "application-inference-profile",
    "provisioned-model",
    "custom-model",
    "custom-model-deployment",
    "imported-model",
    "prompt",
    "prompt-router",
)

_PARTITIONS = frozenset({"aws", "aws-us-gov", "aws-cn"})

_CHARSET = re.compile(r"[a-zA-Z0-9_./:-]+")

# provider "." name; "." and ":" must sit between alphanumerics, which rules
# out "..", "::", ".:" and a trailing separator. Linear: one alternative per char.
_FOUNDATION = r"(?P<provider>[a-z0-9][a-z0-9-]{0,62})\.[a-z0-9](?:[a-z0-9_-]|[.:](?=[a-z0-9]))*"
_FOUNDATION_RE = re.compile(_FOUNDATION)
_SHORT_ID_RE = re.compile(r"[a-z0-9]{1,64}")
_CUSTOM_MODEL_RE = re.compile(rf"(?:(?P<base>{_FOUNDATION})/)?[a-z0-9]{{1,64}}")
_PROMPT_RE = re.compile(r"[0-9a-zA-Z]{10}(?::[0-9]{1,5})?")
_ROUTER_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9_-]|[.:](?=[a-zA-Z0-9])){0,255}")
_ACCOUNT_RE = re.compile(r"[0-9]{12}")

# ARN resource type -> kind. "default-prompt-router" is AWS's own router.
_RESOURCE_KINDS = {
    "foundation-model": "foundation-model",
    "inference-profile": "inference-profile",
    "application-inference-profile": "application-inference-profile",
    "provisioned-model": "provisioned-model",
    "custom-model": "custom-model",
    "custom-model-deployment": "custom-model-deployment",
    "imported-model": "imported-model",
    "prompt": "prompt",
    "prompt-router": "prompt-router",
    "default-prompt-router": "prompt-router",
}


@dataclass(frozen=True)
class ModelRef:
    id: str
    kind: str
    provider: str | None
    arn: str | None
    account: str | None
    region: str | None
    geo: str | None
    foundation_id: str | None

    def to_opa(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "provider": self.provider,
            "arn": self.arn,
            "geo": self.geo,
            "account": self.account,
            "region": self.region,
            "foundation_id": self.foundation_id,
        }


@dataclass(frozen=True)
class _Parsed:
    kind: str
    geo: str | None
    foundation_id: str | None
    partition: str | None
    region: str | None
    account: str | None


def validate_model_id(decoded: str) -> str:
    """Check the syntax of a once-decoded model id (no region needed); return it."""
    _parse(decoded)
    return decoded


def parse_model_id(decoded: str, region: str, account: str | None = None) -> ModelRef:
    """Resolve a once-decoded model id called in ``region`` (by ``account``, if known)."""
    # Both come from the proxy (resolved region, configuration), not the caller.
    if not is_region(region):
        raise ValueError(f"region {region!r} is not an AWS region")
    if account is not None and _ACCOUNT_RE.fullmatch(account) is None:
        raise ValueError("account must be 12 digits")
    parsed = _parse(decoded)
    provider = parsed.foundation_id.split(".", 1)[0] if parsed.foundation_id else None
    if parsed.partition is not None:
        # An ARN names its own region and account: it is what IAM authorizes.
        return ModelRef(
            id=decoded,
            kind=parsed.kind,
            provider=provider,
            arn=decoded,
            account=parsed.account,
            region=parsed.region,
            geo=parsed.geo,
            foundation_id=parsed.foundation_id,
        )
    partition = _partition_of(region)
    arn: str | None
    if parsed.kind == "foundation-model":
        arn = f"arn:{partition}:bedrock:{region}::foundation-model/{decoded}"
        ref_account = None
    else:
        arn = (
            f"arn:{partition}:bedrock:{region}:{account}:inference-profile/{decoded}"
            if account is not None
            else None
        )
        ref_account = account
    return ModelRef(
        id=decoded,
        kind=parsed.kind,
        provider=provider,
        arn=arn,
        account=ref_account,
        region=None,
        geo=parsed.geo,
        foundation_id=parsed.foundation_id,
    )


def _partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if "-iso" in region or region.startswith("eusc-"):
        raise InvalidRequest(
            "Bedrock calls through this proxy are supported in the aws, aws-us-gov "
            "and aws-cn partitions only",
            detail=f"region={region}",
        )
    return "aws"


def _invalid(message: str, decoded: str) -> InvalidRequest:
    # The id goes to the audit detail, not back into the caller-facing message.
    return InvalidRequest(message, detail=f"model_id={decoded[:300]!r}")


def _parse(decoded: str) -> _Parsed:
    if not decoded:
        raise _invalid("The model id is empty", decoded)
    if len(decoded) > MAX_MODEL_ID_LENGTH:
        raise _invalid(f"The model id is longer than {MAX_MODEL_ID_LENGTH} characters", decoded)
    if "%" in decoded:
        raise _invalid(
            "The model id still contains '%' after URL decoding: it looks encoded twice; "
            "percent-encode it exactly once in the path",
            decoded,
        )
    if _CHARSET.fullmatch(decoded) is None:
        raise _invalid(
            "The model id contains characters outside [a-zA-Z0-9_.-/:] "
            "(whitespace, control and non-ASCII characters are not allowed)",
            decoded,
        )
    if ".." in decoded or decoded.startswith("/") or decoded.endswith("/"):
        raise _invalid("The model id must not contain '..' or start or end with '/'", decoded)
    if decoded.startswith("arn:"):
        return _parse_arn(decoded)
    return _parse_plain(decoded)


def _parse_plain(decoded: str) -> _Parsed:
    geo, _, rest = decoded.partition(".")
    if geo in PROFILE_GEOS:
        if _FOUNDATION_RE.fullmatch(rest) is None:
            raise _invalid(
                f"The inference profile id must be '{geo}.<provider>.<model>' in lower case, "
                "e.g. us.anthropic.claude-3-5-sonnet-20240620-v1:0",
                decoded,
            )
        return _Parsed("inference-profile", geo, rest, None, None, None)
    if _FOUNDATION_RE.fullmatch(decoded) is None:
        raise _invalid(
            "The model id must be a foundation model id '<provider>.<model>' in lower case "
            "(e.g. anthropic.claude-3-haiku-20240307-v1:0), a cross-region inference profile "
            "id, or a bedrock ARN",
            decoded,
        )
    return _Parsed("foundation-model", None, decoded, None, None, None)


def _parse_arn(decoded: str) -> _Parsed:
    parts = decoded.split(":", 5)
    if len(parts) != 6:
        raise _invalid(
            "The model ARN must read arn:<partition>:bedrock:<region>:<account>:<type>/<id>",
            decoded,
        )
    _, partition, service, region, account, resource = parts
    if partition not in _PARTITIONS:
        raise _invalid("The model ARN partition must be aws, aws-us-gov or aws-cn", decoded)
    if service != "bedrock":
        raise _invalid("Only bedrock model ARNs are accepted (service must be 'bedrock')", decoded)
    if not is_region(region) or served_partition(region) != partition:
        raise _invalid("The model ARN has no valid region for its partition", decoded)
    resource_type, sep, resource_id = resource.partition("/")
    kind = _RESOURCE_KINDS.get(resource_type)
    if kind is None or not sep:
        raise _invalid(
            "The model ARN resource type must be one of: " + ", ".join(sorted(_RESOURCE_KINDS)),
            decoded,
        )
    if kind == "foundation-model":
        # Foundation models belong to AWS, not to an account.
        if account:
            raise _invalid("A foundation-model ARN has an empty account field", decoded)
    elif _ACCOUNT_RE.fullmatch(account) is None:
        raise _invalid(f"A {resource_type} ARN needs a 12-digit account id", decoded)
    geo, foundation_id = _resource(kind, resource_id, decoded)
    return _Parsed(kind, geo, foundation_id, partition, region, account or None)


def _resource(kind: str, resource_id: str, decoded: str) -> tuple[str | None, str | None]:
    """Validate the part after ``type/``; return (geo, foundation id) where derivable."""
    if kind == "foundation-model":
        if _FOUNDATION_RE.fullmatch(resource_id) is None:
            raise _invalid("The foundation-model ARN must end in a foundation model id", decoded)
        return None, resource_id
    if kind == "inference-profile":
        geo, _, rest = resource_id.partition(".")
        if geo not in PROFILE_GEOS or _FOUNDATION_RE.fullmatch(rest) is None:
            raise _invalid(
                "The inference-profile ARN must end in '<geo>.<provider>.<model>' with geo one "
                "of: " + ", ".join(sorted(PROFILE_GEOS)),
                decoded,
            )
        return geo, rest
    if kind == "custom-model":
        match = _CUSTOM_MODEL_RE.fullmatch(resource_id)
        if match is None:
            raise _invalid(
                "The custom-model ARN must end in '[<base model id>/]<id>' in lower case", decoded
            )
        return None, match.group("base")
    if kind == "prompt":
        pattern = _PROMPT_RE
    elif kind == "prompt-router":
        pattern = _ROUTER_RE
    else:
        pattern = _SHORT_ID_RE
    if pattern.fullmatch(resource_id) is None:
        raise _invalid(f"The {kind} ARN has a malformed resource id", decoded)
    return None, None


def served_partition(region: str) -> str | None:
    """The partition of a region the proxy serves, None for one it does not."""
    try:
        return _partition_of(region)
    except InvalidRequest:
        return None
