"""Apply a decision's obligations to the request before it is signed.

Pure: (operation, model, forwarded headers, body, obligations) -> new headers
and body. An obligation that cannot be enforced for this operation or body
shape raises ObligationUnenforceable: the call is denied rather than sent
without the safeguard the policy asked for.

- guardrail: InvokeModel* carry it in X-Amzn-Bedrock-Guardrail* headers,
  Converse* in ``guardrailConfig``; the policy's choice replaces the caller's,
  so a caller cannot pick a weaker guardrail. CountTokens generates nothing,
  so a guardrail or token cap is moot there.
- max_output_tokens: caps Converse ``inferenceConfig.maxTokens`` and the
  provider's own field in InvokeModel bodies we know the shape of.
- audit_capture ``redacted`` needs the classification detectors; until they
  exist it cannot be honoured and denies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from proxy.decision import Obligations
from proxy.errors import InvalidRequest, ObligationUnenforceable
from proxy.models import ModelRef
from proxy.operations import Route

_CONVERSE = {"Converse", "ConverseStream"}
_INVOKE = {"InvokeModel", "InvokeModelWithResponseStream"}
_MOOT = {"CountTokens"}

# Where each provider's InvokeModel body keeps its output cap.
_TOKEN_FIELDS: dict[str, tuple[str, ...]] = {
    "anthropic": ("max_tokens",),
    "mistral": ("max_tokens",),
    "cohere": ("max_tokens",),
    "meta": ("max_gen_len",),
}


def apply_obligations(
    route: Route,
    model: ModelRef | None,
    headers: dict[str, str],
    body: bytes,
    obligations: Obligations,
) -> tuple[dict[str, str], bytes]:
    if obligations.audit_capture == "redacted":
        raise ObligationUnenforceable(
            "Policy obligation cannot be enforced: audit_capture 'redacted' needs "
            "prompt detectors, which this proxy does not have yet"
        )
    needs_body_change = obligations.guardrail is not None or obligations.max_output_tokens
    if not needs_body_change or route.operation in _MOOT:
        return headers, body
    if route.operation in _CONVERSE:
        return headers, _edit_json(body, lambda doc: _converse(doc, obligations))
    if route.operation in _INVOKE:
        headers = dict(headers)
        if obligations.guardrail is not None:
            headers["x-amzn-bedrock-guardrailidentifier"] = obligations.guardrail.identifier
            headers["x-amzn-bedrock-guardrailversion"] = obligations.guardrail.version
        if obligations.max_output_tokens:
            cap = obligations.max_output_tokens
            body = _edit_json(body, lambda doc: _invoke_model(doc, model, cap))
        return headers, body
    raise ObligationUnenforceable(
        f"Policy obligation cannot be enforced: {route.operation} cannot carry a "
        "guardrail or an output-token cap through this proxy"
    )


def _converse(doc: dict[str, Any], obligations: Obligations) -> None:
    if obligations.guardrail is not None:
        doc["guardrailConfig"] = {
            "guardrailIdentifier": obligations.guardrail.identifier,
            "guardrailVersion": obligations.guardrail.version,
        }
    if obligations.max_output_tokens:
        config = doc.setdefault("inferenceConfig", {})
        if not isinstance(config, dict):
            raise InvalidRequest("inferenceConfig must be an object")
        config["maxTokens"] = _capped(config.get("maxTokens"), obligations.max_output_tokens)


def _invoke_model(doc: dict[str, Any], model: ModelRef | None, cap: int) -> None:
    provider = model.provider if model else None
    if provider == "amazon" and isinstance(doc.get("textGenerationConfig"), dict):
        config = doc["textGenerationConfig"]
        config["maxTokenCount"] = _capped(config.get("maxTokenCount"), cap)
        return
    fields = _TOKEN_FIELDS.get(provider or "")
    if not fields:
        raise ObligationUnenforceable(
            "Policy obligation cannot be enforced: no known output-token field for "
            f"InvokeModel bodies of provider {provider or 'unknown'}"
        )
    for name in fields:
        doc[name] = _capped(doc.get(name), cap)


def _capped(current: object, cap: int) -> int:
    if isinstance(current, int) and not isinstance(current, bool) and 0 < current < cap:
        return current
    return cap


def _edit_json(body: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("The request body is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise InvalidRequest("The request body must be a JSON object")
    edit(doc)
    return json.dumps(doc, separators=(",", ":")).encode()
