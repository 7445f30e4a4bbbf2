"""Routing of the bedrock-runtime data plane: raw request target -> ``Route``.

Contract: ``parse_route(method, raw_path)`` takes the method and the request
target exactly as received (aiohttp's ``request.raw_path``: percent-encoded,
query included) and returns the operation, its decoded labels, the IAM
actions it is authorized as (the Bedrock service authorization reference) and the canonical
path and query to forward. Unknown paths, wrong methods and the control plane
raise ``UnknownOperation`` (404); data-plane operations the proxy cannot
re-sign yet raise ``NotImplementedOperation`` (501); malformed labels raise
``InvalidRequest`` (400).

Security reasoning:

- The path is split into segments *before* decoding, and each label is
  decoded exactly once with strict rules (malformed ``%``, invalid UTF-8 are
  refused). An encoded ``/`` therefore stays inside its label and cannot
  shift the route, and a double-encoded id stays visibly encoded and is
  refused by the label validation.
- The forwarded path is rebuilt from the decoded labels with the encoding
  botocore itself uses (``quote(label, safe="")``), so OPA, the session
  policy, the wire and the SigV4 canonical URI all see one canonical id; the
  caller's own spelling of the path is never forwarded.
- Fixed segments are compared raw: ``/model/x/%69nvoke`` is not ``invoke``.
- An endpoint ``https://<proxy>/region/<region>`` names the call's region for
  an SDK that cannot (an unsigned client sends its ``region_name`` nowhere);
  botocore keeps an endpoint's path as a prefix of every operation's path. The
  prefix is read here, once, raw (no percent-decoding: a region has no
  character to encode), must have AWS region syntax, and is not part of the
  forwarded path, which is rebuilt from the labels as always. Whether it
  agrees with the Host and the SigV4 scope is ``region.resolve_region``'s check.
- An ARN in the path (a guardrail's, an async invocation's) is parsed into its
  partition, region and account (``Route.resource``), so policy sees the
  account and region it names, as it sees a model ARN's.
- Only the documented ListAsyncInvokes filters are forwarded; every other
  query parameter (notably presigned-URL ``X-Amz-*`` credentials) is dropped.
  A filter given twice is refused, so policy and upstream cannot read
  different values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import quote, unquote

from proxy.errors import InvalidRequest, NotImplementedOperation, UnknownOperation
from proxy.request.models import validate_model_id
from proxy.request.region import is_region
from proxy.request.resources import ResourceArn, parse_resource_arn

MAX_GUARDRAIL_ID_LENGTH = 2048
MAX_COUNT_TOKENS_MODEL_ID_LENGTH = 256  # botocore model: CountTokens modelId max 256


@dataclass(frozen=True)
class Route:
    operation: str
    method: str
    stream: bool
    model_id: str | None
    guardrail: tuple[str, str] | None
    async_invocation_arn: str | None
    wire_path: str
    wire_query: str
    iam_actions: tuple[str, ...]
    # The region of the path prefix /region/<region>, if the caller used it.
    region: str | None = None
    # The ARN of the guardrail or async invocation the path names, if it names one by ARN.
    resource: ResourceArn | None = None

    @property
    def wire_target(self) -> str:
        """Path plus query, as it goes on the request line upstream."""
        return f"{self.wire_path}?{self.wire_query}" if self.wire_query else self.wire_path


@dataclass(frozen=True)
class _ModelAction:
    operation: str
    stream: bool
    iam_action: str


# /model/{modelId}/<action>, all POST.
_MODEL_ACTIONS = {
    "invoke": _ModelAction("InvokeModel", False, "bedrock:InvokeModel"),
    "invoke-with-response-stream": _ModelAction(
        "InvokeModelWithResponseStream", True, "bedrock:InvokeModelWithResponseStream"
    ),
    # Converse is authorized as InvokeModel, ConverseStream as the streaming action.
    "converse": _ModelAction("Converse", False, "bedrock:InvokeModel"),
    "converse-stream": _ModelAction(
        "ConverseStream", True, "bedrock:InvokeModelWithResponseStream"
    ),
    "count-tokens": _ModelAction("CountTokens", False, "bedrock:CountTokens"),
}

_PERCENT_MALFORMED = re.compile(r"%(?![0-9A-Fa-f]{2})")
_GUARDRAIL_ID = re.compile(r"[a-z0-9]{1,64}")
_GUARDRAIL_VERSION = re.compile(r"[1-9][0-9]{0,7}|DRAFT")
_ASYNC_ID = re.compile(r"[a-z0-9]{12}")
_REGION_PREFIX = "/region/"

_LIST_ENUMS = {
    "statusEquals": frozenset({"InProgress", "Completed", "Failed"}),
    "sortBy": frozenset({"SubmissionTime"}),
    "sortOrder": frozenset({"Ascending", "Descending"}),
}
_LIST_PARAMS = frozenset(
    {*_LIST_ENUMS, "submitTimeAfter", "submitTimeBefore", "maxResults", "nextToken"}
)
_TIMESTAMP = re.compile(r"[0-9][0-9T:.+Z-]{9,63}")
_MAX_RESULTS = re.compile(r"[1-9][0-9]{0,3}")
_NEXT_TOKEN = re.compile(r"[!-~]{1,2048}")  # printable ASCII, no whitespace


def parse_route(method: str, raw_path: str) -> Route:
    """Map a method and a raw (still percent-encoded) request target to a ``Route``."""
    path, _, query = raw_path.partition("?")
    region, path = split_region_prefix(path)
    route = _route(method, path, query)
    return route if region is None else replace(route, region=region)


def split_region_prefix(path: str) -> tuple[str | None, str]:
    """``/region/<region>/rest`` -> ``(region, "/rest")``; any other path -> ``(None, path)``."""
    if not path.startswith(_REGION_PREFIX):
        return None, path
    region, _, rest = path[len(_REGION_PREFIX) :].partition("/")
    if not is_region(region):
        raise InvalidRequest(
            "The path prefix /region/<region> must name an AWS region in lower case, "
            "e.g. /region/us-west-2",
            detail=f"region={region[:64]!r}",
        )
    return region, "/" + rest


def _route(method: str, path: str, query: str) -> Route:
    if not path.startswith("/"):
        raise _unknown()
    segments = path[1:].split("/")
    head = segments[0]
    if head == "model" and len(segments) == 3:
        return _model_route(method, segments[1], segments[2])
    if head == "guardrail" and len(segments) == 5 and segments[2] == "version":
        if segments[4] == "apply":
            _require(method, "POST")
            return _guardrail_route(method, segments[1], segments[3])
    if head == "async-invoke":
        if len(segments) == 1:
            if method == "POST":
                # modelId travels in the JSON body; the caller of this parser reads it.
                return _async_route("StartAsyncInvoke", method, "", "bedrock:InvokeModel")
            _require(method, "GET")
            return _async_route(
                "ListAsyncInvokes", method, _list_query(query), "bedrock:ListAsyncInvokes"
            )
        if len(segments) == 2:
            _require(method, "GET")
            arn = _decode(segments[1], "invocation ARN")
            resource = parse_resource_arn(arn, "async-invoke")
            if resource is None or _ASYNC_ID.fullmatch(resource.id) is None:
                raise InvalidRequest(
                    "The async invocation ARN must read "
                    "arn:aws:bedrock:<region>:<account>:async-invoke/<12 characters>",
                    detail=f"invocation_arn={arn[:300]!r}",
                )
            return _async_route("GetAsyncInvoke", method, "", "bedrock:GetAsyncInvoke", resource)
    if path == "/guardrail-checks/invoke" and method == "POST":
        raise NotImplementedOperation(
            "InvokeGuardrailChecks is not supported through the proxy yet"
        )
    raise _unknown()


def _model_route(method: str, raw_model: str, action_name: str) -> Route:
    if action_name == "invoke-with-bidirectional-stream":
        _require(method, "POST")
        # Every input frame is signed in a chain from the request signature, so a
        # re-signing proxy has to terminate and re-sign the stream frame by frame.
        raise NotImplementedOperation(
            "InvokeModelWithBidirectionalStream is not supported through the proxy yet"
        )
    action = _MODEL_ACTIONS.get(action_name)
    if action is None:
        raise _unknown()
    _require(method, "POST")
    model_id = validate_model_id(_decode(raw_model, "model id"))
    if action.operation == "CountTokens" and len(model_id) > MAX_COUNT_TOKENS_MODEL_ID_LENGTH:
        raise InvalidRequest(
            f"CountTokens accepts model ids of at most {MAX_COUNT_TOKENS_MODEL_ID_LENGTH} "
            "characters",
            detail=f"model_id={model_id[:300]!r}",
        )
    return Route(
        operation=action.operation,
        method=method,
        stream=action.stream,
        model_id=model_id,
        guardrail=None,
        async_invocation_arn=None,
        wire_path=f"/model/{quote(model_id, safe='')}/{action_name}",
        wire_query="",
        iam_actions=(action.iam_action,),
    )


def _async_route(
    operation: str,
    method: str,
    query: str,
    iam_action: str,
    resource: ResourceArn | None = None,
) -> Route:
    arn = None if resource is None else resource.arn
    return Route(
        operation=operation,
        method=method,
        stream=False,
        model_id=None,
        guardrail=None,
        async_invocation_arn=arn,
        wire_path="/async-invoke" if arn is None else "/async-invoke/" + quote(arn, safe=""),
        wire_query=query,
        iam_actions=(iam_action,),
        resource=resource,
    )


def _guardrail_route(method: str, raw_id: str, raw_version: str) -> Route:
    identifier = _decode(raw_id, "guardrail identifier")
    version = _decode(raw_version, "guardrail version")
    resource = parse_resource_arn(identifier, "guardrail")
    valid_id = len(identifier) <= MAX_GUARDRAIL_ID_LENGTH and (
        _GUARDRAIL_ID.fullmatch(identifier) is not None or resource is not None
    )
    if not valid_id:
        raise InvalidRequest(
            "The guardrail identifier must be a guardrail id (lower-case letters and digits) "
            "or a guardrail ARN",
            detail=f"guardrail={identifier[:300]!r}",
        )
    if _GUARDRAIL_VERSION.fullmatch(version) is None:
        raise InvalidRequest(
            "The guardrail version must be DRAFT or a number from 1 to 99999999",
            detail=f"guardrail_version={version[:64]!r}",
        )
    return Route(
        operation="ApplyGuardrail",
        method=method,
        stream=False,
        model_id=None,
        guardrail=(identifier, version),
        async_invocation_arn=None,
        wire_path=(
            f"/guardrail/{quote(identifier, safe='')}/version/{quote(version, safe='')}/apply"
        ),
        wire_query="",
        iam_actions=("bedrock:ApplyGuardrail",),
        resource=resource,
    )


def _list_query(query: str) -> str:
    kept: list[str] = []
    seen: set[str] = set()
    for pair in query.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        key = _decode(raw_key, "query parameter name")
        if key not in _LIST_PARAMS:
            continue
        if key in seen:
            raise InvalidRequest(f"The query parameter {key} is given more than once")
        seen.add(key)
        value = _decode(raw_value, f"query parameter {key}")
        if not _list_value_ok(key, value):
            raise InvalidRequest(
                f"The query parameter {key} has an invalid value",
                detail=f"{key}={value[:300]!r}",
            )
        kept.append(f"{quote(key, safe='-_.~')}={quote(value, safe='-_.~')}")
    return "&".join(kept)


def _list_value_ok(key: str, value: str) -> bool:
    if key in _LIST_ENUMS:
        return value in _LIST_ENUMS[key]
    if key == "maxResults":
        return _MAX_RESULTS.fullmatch(value) is not None and int(value) <= 1000
    if key == "nextToken":
        return _NEXT_TOKEN.fullmatch(value) is not None
    # submitTimeAfter / submitTimeBefore: ISO 8601, as botocore serializes them.
    if _TIMESTAMP.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _decode(raw: str, what: str) -> str:
    """Percent-decode one label exactly once; refuse what cannot be decoded cleanly."""
    if _PERCENT_MALFORMED.search(raw):
        raise InvalidRequest(f"The {what} contains a malformed percent-escape")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest(f"The {what} is not valid UTF-8 after URL decoding") from None


def _require(method: str, expected: str) -> None:
    if method != expected:
        raise UnknownOperation(f"This bedrock-runtime path accepts {expected} only")


def _unknown() -> UnknownOperation:
    return UnknownOperation(
        "Unknown operation: this proxy serves the bedrock-runtime data plane only "
        "(/model/{modelId}/..., /guardrail/..., /async-invoke)"
    )
