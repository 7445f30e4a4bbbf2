"""``bedrock-proxy policy check``: dry-run one decision against a running OPA.

Either an input document (the exact OPA input of docs/opa.md, or
``{"input": ...}``) or ``--request`` flags, from which the input is built by
the same code the proxy uses (``build_opa_input``), so what a security
engineer tries here is what the proxy would ask. Exit code 0 allow, 1 deny,
2 when no decision could be had.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from proxy.errors import ProxyError
from proxy.identity.spiffe import parse_spiffe_id
from proxy.identity.svid import WorkloadIdentity
from proxy.policy.classify.classifier import Classification
from proxy.policy.classify.rules import LEVELS
from proxy.policy.decision import DECISION_PACKAGE, DECISION_RULE, PolicyQuery, build_opa_input
from proxy.request.models import parse_model_id
from proxy.request.operations import parse_route

_PATHS = {
    "InvokeModel": "/model/{model}/invoke",
    "InvokeModelWithResponseStream": "/model/{model}/invoke-with-response-stream",
    "Converse": "/model/{model}/converse",
    "ConverseStream": "/model/{model}/converse-stream",
    "CountTokens": "/model/{model}/count-tokens",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, nargs="?", help="an OPA input document (JSON)")
    parser.add_argument("--opa-url", default="http://127.0.0.1:8181")
    built = parser.add_argument_group("--request: build the input from these instead of a file")
    built.add_argument("--request", action="store_true", help="build the input from flags")
    built.add_argument("--spiffe-id")
    built.add_argument("--operation", default="Converse", choices=sorted(_PATHS))
    built.add_argument("--model")
    built.add_argument("--region", default="us-east-1")
    built.add_argument("--account")
    built.add_argument("--classification", default="internal", choices=LEVELS)
    built.add_argument("--tools", default="", help="comma-separated tool names")


def run(args: argparse.Namespace) -> int:
    try:
        opa_input = _input_from_flags(args) if args.request else _input_from_file(args.input)
    except (ProxyError, OSError, ValueError) as exc:
        print(f"bedrock-proxy policy check: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    try:
        answer = _ask(args.opa_url, opa_input)
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        print(f"bedrock-proxy policy check: OPA at {args.opa_url}: {exc}", file=sys.stderr)
        return 2
    result = answer.get("result")
    if not isinstance(result, dict):
        print("bedrock-proxy policy check: OPA has no bedrock.authz.decision", file=sys.stderr)
        return 2
    allowed = result.get("allow") is True
    print(f"allow: {str(allowed).lower()}")
    for reason in result.get("reasons") or []:
        print(f"reason: {reason}")
    print(f"obligations: {json.dumps(result.get('obligations') or {}, sort_keys=True)}")
    if answer.get("decision_id"):
        print(f"decision_id: {answer['decision_id']}")
    return 0 if allowed else 1


def _input_from_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        raise ValueError("give an INPUT.json or --request with --spiffe-id and --model")
    document = json.loads(path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path} must hold a JSON object")
    inner = document.get("input", document)
    if not isinstance(inner, dict):
        raise ValueError(f"{path}: 'input' must be an object")
    return inner


def _input_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    if not args.spiffe_id or not args.model:
        raise ValueError("--request needs --spiffe-id and --model")
    spiffe_id = parse_spiffe_id(args.spiffe_id)
    now = datetime.now(UTC).replace(microsecond=0)
    route = parse_route("POST", _PATHS[args.operation].format(model=quote(args.model, safe="")))
    model = parse_model_id(args.model, args.region, args.account)
    return build_opa_input(
        PolicyQuery(
            identity=WorkloadIdentity(
                spiffe_id=str(spiffe_id),
                trust_domain=spiffe_id.trust_domain,
                path=spiffe_id.path,
                serial="0",
                not_after=now + timedelta(hours=1),
            ),
            route=route,
            model=model,
            region=args.region,
            account=model.account or args.account,
            body_bytes=0,
            tools=tuple(t for t in args.tools.split(",") if t),
            guardrail=None,
            classification=Classification(args.classification, "public", args.classification),
            now=now,
        )
    )


def _ask(opa_url: str, opa_input: dict[str, Any]) -> dict[str, Any]:
    path = DECISION_PACKAGE.replace(".", "/")
    request = urllib.request.Request(
        f"{opa_url.rstrip('/')}/v1/data/{path}/{DECISION_RULE}",
        data=json.dumps({"input": opa_input}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.load(response)
    return answer
