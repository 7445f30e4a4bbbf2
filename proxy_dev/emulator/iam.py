"""Session-policy evaluation for emulated bedrock calls (pure).

Contract: ``session_policy_allows(policy, action, resource, region)`` is True
when ``policy`` is None (no session policy: the emulated role is allow-all),
or when no Deny statement matches and at least one Allow statement matches
the action (``bedrock:Op``, case-insensitive, ``*``/``?`` wildcards), the
resource (case-sensitive wildcards) and every condition. A call through a
system cross-region profile is checked twice, as IAM does: on the profile,
then on the model it routes to (``profile_route``), with
``bedrock:InferenceProfileArn`` set; the emulator serves geographic profiles
in the source region and global ones in a region IAM sees as "unspecified".

Deliberately small: ``Action``/``Resource`` strings or lists, and the
condition operators ``StringEquals`` / ``StringLike`` on ``aws:RequestedRegion``
and ``bedrock:InferenceProfileArn`` (a key the request lacks never matches).
Anything it does not understand (``NotAction``, other operators or keys) makes
an Allow statement not match and a Deny statement match: the emulator exists
to prove that the proxy's scoping really restricts, so unknown constructs must
never widen access.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any

_SUPPORTED_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}


def _as_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


_CONDITION_KEYS = ("aws:requestedregion", "bedrock:inferenceprofilearn")


def _conditions_hold(condition: Any, context: Mapping[str, str]) -> bool | None:
    """True/False when understood, None when not."""
    if condition is None:
        return True
    if not isinstance(condition, dict):
        return None
    for operator, clauses in condition.items():
        if operator not in ("StringEquals", "StringLike") or not isinstance(clauses, dict):
            return None
        for key, expected in clauses.items():
            values = _as_list(expected)
            if key.lower() not in _CONDITION_KEYS or values is None:
                return None
            actual = context.get(key.lower())
            if actual is None:
                return False
            if operator == "StringEquals" and actual not in values:
                return False
            if operator == "StringLike" and not any(fnmatch.fnmatchcase(actual, v) for v in values):
                return False
    return True


def _statement_matches(
    statement: Any, action: str, resource: str, context: Mapping[str, str]
) -> bool | None:
    if not isinstance(statement, dict) or set(statement) - _SUPPORTED_KEYS:
        return None
    actions = _as_list(statement.get("Action"))
    resources = _as_list(statement.get("Resource"))
    if actions is None or resources is None:
        return None
    if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
        return False
    if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
        return False
    return _conditions_hold(statement.get("Condition"), context)


def session_policy_allows(
    policy: Mapping[str, Any] | None,
    action: str,
    resource: str,
    region: str,
    *,
    profile_arn: str | None = None,
) -> bool:
    if policy is None:
        return True
    context = {"aws:requestedregion": region}
    if profile_arn is not None:
        context["bedrock:inferenceprofilearn"] = profile_arn
    raw = policy.get("Statement")
    statements = [raw] if isinstance(raw, dict) else raw
    if not isinstance(statements, list):
        return False
    allowed = False
    for statement in statements:
        effect = statement.get("Effect") if isinstance(statement, dict) else None
        matched = _statement_matches(statement, action, resource, context)
        if effect == "Deny" and matched is not False:
            return False
        if effect == "Allow" and matched is True:
            allowed = True
    return allowed


_GEO_PROFILE_RE = re.compile(r"^(us|eu|apac|global|us-gov|jp|au|ca|ap)\.")
_PROFILE_ARN_RE = re.compile(
    r"^arn:aws:bedrock:(?P<region>[a-z0-9-]+):\d{12}:inference-profile/"
    r"(?P<geo>us|eu|apac|global|us-gov|jp|au|ca|ap)\.(?P<model>.+)$"
)


def profile_route(resource: str) -> tuple[str, str] | None:
    """For a system profile's ARN: the model ARN it routes to and the region IAM sees."""
    match = _PROFILE_ARN_RE.match(resource)
    if match is None:
        return None
    if match["geo"] == "global":
        return f"arn:aws:bedrock:::foundation-model/{match['model']}", "unspecified"
    return f"arn:aws:bedrock:{match['region']}::foundation-model/{match['model']}", match["region"]


def model_resource(model_id: str, region: str, account: str) -> str:
    """The ARN IAM evaluates for a model id, as bedrock resolves it."""
    if model_id.startswith("arn:"):
        return model_id
    if _GEO_PROFILE_RE.match(model_id):
        return f"arn:aws:bedrock:{region}:{account}:inference-profile/{model_id}"
    return f"arn:aws:bedrock:{region}::foundation-model/{model_id}"


def guardrail_resource(guardrail_id: str, region: str, account: str) -> str:
    if guardrail_id.startswith("arn:"):
        return guardrail_id
    return f"arn:aws:bedrock:{region}:{account}:guardrail/{guardrail_id}"
