"""The ``bedrock-proxy`` command line (docs/cli.md: the verbs are a contract)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from proxy.errors import ConfigError
from proxy.policy import check as policy_check

# Top-level modules that only the ``dev`` extra installs and that the emulator (so also
# ``dev up``) imports: moto, which needs boto3, and moto[server]'s flask, flask_cors and
# werkzeug. A ModuleNotFoundError naming anything else is a bug and surfaces as one.
_DEV_EXTRA_MODULES = frozenset({"boto3", "flask", "flask_cors", "moto", "werkzeug"})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator owns its flags (and their --help).
        return _emulator(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        outcome: int = args.run(args)
        return outcome
    except (ConfigError, ValueError, OSError) as exc:
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
    up.add_argument(
        "--policies", type=Path, help="policy directory (default: this project's policies/)"
    )
    up.set_defaults(run=_dev_up)

    policy = verbs.add_parser("policy", help="policy tools")
    policy_verbs = policy.add_subparsers(dest="policy_verb", required=True)
    check = policy_verbs.add_parser("check", help="dry-run a decision; exit 0 allow, 1 deny")
    policy_check.add_arguments(check)
    check.set_defaults(run=policy_check.run)

    audit = verbs.add_parser("audit", help="verify and read the audit stream")
    audit_verbs = audit.add_subparsers(dest="audit_verb", required=True)
    verify = audit_verbs.add_parser("verify", help="check chains and signatures (exit 1/3)")
    verify.add_argument("files", type=Path, nargs="+", metavar="FILE")
    verify.add_argument("--public-key", type=Path, help="pin the signing key (PEM)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=_audit_verify)
    tail = audit_verbs.add_parser("tail", help="print records as a table or JSON")
    tail.add_argument("files", type=Path, nargs="+", metavar="FILE")
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("--identity", help="SPIFFE ID")
    tail.add_argument("--outcome")
    tail.add_argument("--model", help="substring of the model id")
    tail.add_argument("--since", help="10m, 2h, 1d or an ISO 8601 time")
    tail.add_argument("--json", action="store_true")
    tail.set_defaults(run=_audit_tail)
    keygen = audit_verbs.add_parser("keygen", help="new Ed25519 signing key and FILE.pub")
    keygen.add_argument("file", type=Path, metavar="FILE")
    keygen.set_defaults(run=_audit_keygen)
    return parser


def _audit_verify(args: argparse.Namespace) -> int:
    from proxy.audit.cli import run_verify

    return run_verify(args.files, public_key=args.public_key, as_json=args.json)


def _audit_tail(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from proxy.audit.cli import TailFilter, parse_since, run_tail

    since = parse_since(args.since, datetime.now(UTC)) if args.since else None
    selector = TailFilter(args.identity, args.outcome, args.model, since)
    try:
        return run_tail(args.files, follow=args.follow, selector=selector, as_json=args.json)
    except KeyboardInterrupt:
        return 0


def _audit_keygen(args: argparse.Namespace) -> int:
    from proxy.audit.cli import run_keygen

    return run_keygen(args.file)


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be from 1 to 64")
    return value


def _serve(args: argparse.Namespace) -> int:
    # Set before prometheus_client is first imported (by proxy.server): each worker, and
    # the parent that restarts them, then writes its metrics to a file there and
    # /metrics sums all of them, whichever worker answers and however often one died.
    metrics_dir = tempfile.mkdtemp(prefix="bedrock-proxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from proxy.config import load_settings
    from proxy.server import run

    try:
        return run(load_settings(args.config), workers=args.workers, ready_file=args.ready_file)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _ca_init(args: argparse.Namespace) -> int:
    from proxy_dev import devca

    devca.init_ca(args.dir, args.trust_domain, force=args.force)
    print(f"dev CA for {args.trust_domain} written to {args.dir}")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    from proxy_dev import devca

    cert, key = devca.issue_svid(args.dir, args.spiffe_id, args.out, devca.parse_ttl(args.ttl))
    print(f"{cert}\n{key}")
    return 0


def _emulator(argv: list[str]) -> int:
    try:
        from proxy_dev.emulator.__main__ import main as emulator_main
    except ModuleNotFoundError as exc:
        if not _is_dev_extra(exc):
            raise
        return _needs_dev_extra("emulator")
    result: int = emulator_main(argv)
    return result


def _dev_up(args: argparse.Namespace) -> int:
    try:
        # The stack runs the emulator as a child process: import it here so a missing
        # extra is reported now, not as an emulator exit after OPA has started.
        import proxy_dev.emulator  # noqa: F401
        from proxy_dev.devstack import PROJECT_ROOT, dev_up
    except ModuleNotFoundError as exc:
        if not _is_dev_extra(exc):
            raise
        return _needs_dev_extra("dev up")
    return dev_up(args.dir, args.policies or PROJECT_ROOT / "policies")


def _is_dev_extra(exc: ModuleNotFoundError) -> bool:
    return (exc.name or "").partition(".")[0] in _DEV_EXTRA_MODULES


def _needs_dev_extra(verb: str) -> int:
    print(
        f"error: 'bedrock-proxy {verb}' needs the dev extra: pip install 'bedrock-proxy[dev]'",
        file=sys.stderr,
    )
    return 2
