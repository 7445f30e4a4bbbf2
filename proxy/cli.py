"""The ``bedrock-proxy`` command line (DESIGN.md section 8: the verbs are a contract)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from proxy.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator owns its flags (and their --help).
        from proxy.emulator.__main__ import main as emulator_main

        result: int = emulator_main(argv[1:])
        return result
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        outcome: int = args.run(args)
        return outcome
    except (ConfigError, ValueError, FileExistsError) as exc:
        print(f"bedrock-proxy: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bedrock-proxy", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="run the proxy (data and admin listeners)")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--ready-file", type=Path, help="write bound ports here once listening")
    serve.add_argument(
        "--workers", type=_positive, default=1, help="worker processes sharing the ports"
    )
    serve.set_defaults(run=_serve)

    dev_ca = verbs.add_parser("dev-ca", help="a local SPIFFE CA for demos and tests")
    ca_verbs = dev_ca.add_subparsers(dest="ca_verb", required=True)
    init = ca_verbs.add_parser("init", help="create the CA")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--trust-domain", required=True)
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(run=_ca_init)
    issue = ca_verbs.add_parser("issue", help="issue an X.509-SVID")
    issue.add_argument("--dir", type=Path, required=True)
    issue.add_argument("--spiffe-id", required=True)
    issue.add_argument("--out", required=True)
    issue.add_argument("--ttl", default="1h")
    issue.set_defaults(run=_ca_issue)

    verbs.add_parser("emulator", help="local bedrock-runtime and STS (see emulator --help)")

    dev = verbs.add_parser("dev", help="the local stack")
    dev_verbs = dev.add_subparsers(dest="dev_verb", required=True)
    up = dev_verbs.add_parser("up", help="run CA, OPA, emulator and proxy until stopped")
    up.add_argument("--dir", type=Path, required=True)
    up.add_argument("--policies", type=Path, default=Path("policies"))
    up.set_defaults(run=_dev_up)

    policy = verbs.add_parser("policy", help="policy tools")
    policy_verbs = policy.add_subparsers(dest="policy_verb", required=True)
    check = policy_verbs.add_parser("check", help="dry-run a decision for an OPA input")
    check.add_argument("input", type=Path)
    check.add_argument("--opa-url", default="http://127.0.0.1:8181")
    check.set_defaults(run=_policy_check)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be from 1 to 64")
    return value


def _serve(args: argparse.Namespace) -> int:
    from proxy.config import load_settings
    from proxy.server import run

    return run(load_settings(args.config), workers=args.workers, ready_file=args.ready_file)


def _ca_init(args: argparse.Namespace) -> int:
    from proxy import devca

    devca.init_ca(args.dir, args.trust_domain, force=args.force)
    print(f"dev CA for {args.trust_domain} written to {args.dir}")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    from proxy import devca

    cert, key = devca.issue_svid(args.dir, args.spiffe_id, args.out, devca.parse_ttl(args.ttl))
    print(f"{cert}\n{key}")
    return 0


def _dev_up(args: argparse.Namespace) -> int:
    from proxy.devstack import dev_up

    return dev_up(args.dir, args.policies)


def _policy_check(args: argparse.Namespace) -> int:
    from proxy.decision import DECISION_PACKAGE, DECISION_RULE

    document = json.loads(args.input.read_text())
    payload = {"input": document.get("input", document)}
    url = f"{args.opa_url.rstrip('/')}/v1/data/{DECISION_PACKAGE.replace('.', '/')}/{DECISION_RULE}"
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            result = json.load(response).get("result")
    except (urllib.error.URLError, TimeoutError) as exc:
        print(f"bedrock-proxy: OPA at {args.opa_url} did not answer: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0 if isinstance(result, dict) and result.get("allow") is True else 1
