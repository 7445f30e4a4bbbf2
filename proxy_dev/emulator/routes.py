"""bedrock-runtime routing from the raw wire path (pure).

Contract: ``parse_route(method, raw_path)`` maps a request onto one
bedrock-runtime operation with its IAM action, or raises ``AwsError``
(404 ``UnknownOperationException`` for paths bedrock does not serve, 400
``ValidationException`` for malformed labels). Labels are split on the raw
path and percent-decoded exactly once, as AWS does: botocore sends a model ARN
as one segment with ``:`` -> ``%3A`` and ``/`` -> ``%2F``, so splitting after
decoding would cut ARNs apart, and decoding twice would accept ids AWS
refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from proxy_dev.emulator.errors import AwsError, validation

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9_.\-/:]{1,2048}$")
GUARDRAIL_ID_RE = re.compile(r"^[A-Za-z0-9_.\-/:]{1,2048}$")
GUARDRAIL_VERSION_RE = re.compile(r"^(([1-9][0-9]{0,7})|(DRAFT))$")
ASYNC_ARN_RE = re.compile(r"^arn:[a-z-]+:bedrock:[a-z0-9-]+:[0-9]{12}:async-invoke/[A-Za-z0-9]+$")

_MODEL_OPS = {
    "invoke": ("InvokeModel", "bedrock:InvokeModel", False),
    "invoke-with-response-stream": (
        "InvokeModelWithResponseStream",
        "bedrock:InvokeModelWithResponseStream",
        True,
    ),
    "converse": ("Converse", "bedrock:InvokeModel", False),
    "converse-stream": ("ConverseStream", "bedrock:InvokeModelWithResponseStream", True),
    "count-tokens": ("CountTokens", "bedrock:CountTokens", False),
}


@dataclass(frozen=True)
class Route:
    operation: str
    action: str
    streaming: bool = False
    model_id: str | None = None
    guardrail_id: str | None = None
    guardrail_version: str | None = None
    invocation_arn: str | None = None


def _unknown() -> AwsError:
    return AwsError(404, "UnknownOperationException", "Unknown operation")


def _decode(segment: str) -> str:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError as exc:
        raise validation("Path label is not valid UTF-8 once decoded.") from exc


def parse_route(method: str, raw_path: str) -> Route:
    path = raw_path.split("?", 1)[0]
    segments = path.split("/")
    if len(segments) < 2 or segments[0] != "":
        raise _unknown()
    parts = segments[1:]
    if parts[0] == "model" and len(parts) == 3 and parts[2] in _MODEL_OPS and method == "POST":
        operation, action, streaming = _MODEL_OPS[parts[2]]
        model_id = _decode(parts[1])
        if not MODEL_ID_RE.match(model_id):
            raise validation(
                "1 validation error detected: Value at 'modelId' failed to satisfy constraint"
            )
        return Route(operation, action, streaming, model_id=model_id)
    if (
        parts[0] == "guardrail"
        and len(parts) == 5
        and parts[2] == "version"
        and parts[4] == "apply"
        and method == "POST"
    ):
        guardrail_id, version = _decode(parts[1]), _decode(parts[3])
        if not GUARDRAIL_ID_RE.match(guardrail_id) or not GUARDRAIL_VERSION_RE.match(version):
            raise validation("Guardrail identifier or version is malformed.")
        return Route(
            "ApplyGuardrail",
            "bedrock:ApplyGuardrail",
            guardrail_id=guardrail_id,
            guardrail_version=version,
        )
    if parts[0] == "async-invoke":
        if len(parts) == 1 and method == "POST":
            return Route("StartAsyncInvoke", "bedrock:InvokeModel")
        if len(parts) == 1 and method == "GET":
            return Route("ListAsyncInvokes", "bedrock:ListAsyncInvokes")
        if len(parts) == 2 and method == "GET":
            arn = _decode(parts[1])
            if not ASYNC_ARN_RE.match(arn):
                raise validation("invocationArn is malformed.")
            return Route("GetAsyncInvoke", "bedrock:GetAsyncInvoke", invocation_arn=arn)
    raise _unknown()
