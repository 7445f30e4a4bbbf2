"""``bedrock-proxy dev up``: the whole local stack in the foreground.

Dev CA, OPA (the real binary) on ``policies/``, the emulator (bedrock-runtime
and STS), and the proxy, each on a free loopback port, each its own process
so they fail and stop independently. Once all are ready ``DIR/stack.json``
says where everything is; SIGINT/SIGTERM stops them all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from proxy.audit.chain import generate_key
from proxy_dev import devca

TRUST_DOMAIN = "example.org"
REGION = "us-east-1"
ACCOUNT = "123456789012"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
    """A component of the dev stack could not be started."""


def find_opa() -> str:
    """The pinned OPA the Makefile builds, else one on PATH; never a stand-in."""
    candidates = [os.environ.get("BEDROCK_PROXY_OPA"), str(PROJECT_ROOT / ".cache/bin/opa")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("opa")
    if found:
        return found
    raise StackError("the opa binary was not found: run `make opa` (or set BEDROCK_PROXY_OPA)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_file(path: Path, process: subprocess.Popen[bytes], what: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            loaded: dict = json.loads(path.read_text())
            return loaded
        if process.poll() is not None:
            raise StackError(f"{what} exited with code {process.returncode} before it was ready")
        time.sleep(0.05)
    raise StackError(f"{what} was not ready within {timeout}s")


def wait_for_http(url: str, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{what} exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{what} did not answer {url} within {timeout}s")


def spawn(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a component with its output in ``log``; the child keeps its own copy of the fd."""
    with log.open("ab") as output:
        return subprocess.Popen(
            list(command),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )


def start_opa(
    policies: Path, log: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = port or free_port()
    process = spawn(
        [
            find_opa(),
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{port}",
            "--watch",
            # Tests of the policy are not policy: keep them out of what decides.
            "--ignore=*_test.rego",
            "--log-level",
            "error",
            "--set",
            "decision_logs.console=true",
            str(policies),
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", process, "OPA", 30)
    return process, url


def start_emulator(
    directory: Path, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], dict]:
    ready = directory / "emulator.ready.json"
    ready.unlink(missing_ok=True)
    process = spawn(
        [sys.executable, "-m", "proxy_dev.emulator", "--ready-file", str(ready), *extra],
        directory / "emulator.log",
    )
    return process, wait_for_file(ready, process, "the emulator", 60)


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on 127.0.0.1 without persistence (the task store several workers
    share); its URL. A missing binary is an error, never a stand-in."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            "redis-server is not installed (Debian package redis-server; make test installs it)"
        )
    port = free_port()
    process = spawn(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        + ["--dir", str(directory)],
        directory / "redis.log",
    )
    deadline = time.monotonic() + 10
    while not _redis_answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise StackError(f"redis-server did not start (see {directory / 'redis.log'})")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def write_proxy_config(
    path: Path,
    *,
    pki: Path,
    opa_url: str,
    emulator: Mapping[str, str],
    audit_log: Path,
    trust_domains: Mapping[str, Path] | None = None,
    opa_timeout_ms: int = 2000,
    max_body_bytes: int = 25_000_000,
    audit_options: Mapping[str, object] | None = None,
    shutdown_grace_ms: int = 30_000,
    task_store: str = "memory",
    default_region: str | None = REGION,
    limits_options: Mapping[str, object] | None = None,
    tasks_options: Mapping[str, object] | None = None,
    upstream_options: Mapping[str, object] | None = None,
    connections_options: Mapping[str, object] | None = None,
) -> Path:
    bundles = trust_domains or {TRUST_DOMAIN: pki / "ca.pem"}
    # None leaves the key out: a call that names no region is then refused.
    region_line = "" if default_region is None else f'default_region = "{default_region}"\n'
    # Extra [audit] keys (fsync, signing_key, format, ...), rendered as TOML values.
    audit_extra = "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in (audit_options or {}).items()
    )
    domains = "\n".join(f'"{name}" = "{bundle}"' for name, bundle in bundles.items())
    # Extra [limits] and [tasks] keys (rates, budgets, open tasks), rendered as TOML values.
    limits_extra = "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in (limits_options or {}).items()
    )
    tasks_keys = {
        **({} if task_store == "memory" else {"store": task_store}),
        **(tasks_options or {}),
    }
    # Extra [upstream] keys (the pool) and a [connections] table (limits and deadlines).
    upstream_extra = "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in (upstream_options or {}).items()
    )
    connections_section = (
        "[connections]\n"
        + "".join(f"{key} = {json.dumps(v)}\n" for key, v in connections_options.items())
        + "\n"
        if connections_options
        else ""
    )
    # Left out when empty, so a caller may append its own [tasks] table.
    tasks_section = (
        "[tasks]\n" + "".join(f"{key} = {json.dumps(v)}\n" for key, v in tasks_keys.items()) + "\n"
        if tasks_keys
        else ""
    )
    path.write_text(
        f"""# Written by `bedrock-proxy dev up`: local defaults, not for production.
[listen]
data = "127.0.0.1:0"
admin = "127.0.0.1:0"

[tls]
server_cert = "{pki / "server.pem"}"
server_key = "{pki / "server.key"}"

[trust_domains]
{domains}

[opa]
url = "{opa_url}"
timeout_ms = {opa_timeout_ms}

[aws]
{region_line}default_account = "{ACCOUNT}"
sts_endpoint = "{emulator["sts_url"]}"

[upstream]
url = "{emulator["bedrock_url"]}"
{upstream_extra}
[limits]
max_body_bytes = {max_body_bytes}
shutdown_grace_ms = {shutdown_grace_ms}
{limits_extra}
{tasks_section}{connections_section}[audit]
path = "{audit_log}"
{audit_extra}"""
    )
    return path


def proxy_environment() -> dict[str, str]:
    """The proxy's own credentials in the dev stack: static ones that only moto's STS accepts."""
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="AKIADEVPROXYONLY0000",
        AWS_SECRET_ACCESS_KEY="dev-proxy-secret-used-only-for-sts",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    return env


def start_proxy(
    directory: Path, config: Path, workers: int = 1
) -> tuple[subprocess.Popen[bytes], dict]:
    ready = directory / "proxy.ready.json"
    ready.unlink(missing_ok=True)
    command = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    command += ["--workers", str(workers)]
    process = spawn(
        [*command, "--ready-file", str(ready)], directory / "proxy.log", proxy_environment()
    )
    return process, wait_for_file(ready, process, "the proxy", 60)


def ensure_ca(directory: Path) -> None:
    if not (directory / "ca.pem").exists():
        devca.init_ca(directory, TRUST_DOMAIN)
    if not (directory / "server.pem").exists():
        devca.issue_server_cert(directory, "server", ["localhost"], ["127.0.0.1"])


def ensure_audit_key(directory: Path) -> Path:
    """The dev stack signs its audit checkpoints; verifiers get ``audit.key.pub``."""
    key = directory / "audit.key"
    if not key.exists():
        generate_key(key)
    return key


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class LocalStack:
    """The processes of a local stack, as ``start_local_stack`` left them running."""

    opa: subprocess.Popen[bytes]
    opa_url: str
    emulator: subprocess.Popen[bytes]
    emulator_info: dict
    config: Path
    proxy: subprocess.Popen[bytes]
    ports: dict
    audit_log: Path


def start_local_stack(directory: Path, policies: Path, stops: ExitStack) -> LocalStack:
    """OPA on ``policies``, the emulator and a proxy with a signed audit log in
    ``directory`` (which holds the dev CA); each is stopped when ``stops`` closes."""
    ensure_ca(directory)
    opa, opa_url = start_opa(policies, directory / "opa.log")
    stops.callback(stop, opa)
    emulator, emulator_info = start_emulator(directory)
    stops.callback(stop, emulator)
    audit_log = directory / "audit.log"
    config = write_proxy_config(
        directory / "proxy.toml",
        pki=directory,
        opa_url=opa_url,
        emulator=emulator_info,
        audit_log=audit_log,
        audit_options={"signing_key": str(ensure_audit_key(directory))},
    )
    proxy, ports = start_proxy(directory, config)
    stops.callback(stop, proxy)
    return LocalStack(opa, opa_url, emulator, emulator_info, config, proxy, ports, audit_log)


def dev_up(directory: Path, policies: Path) -> int:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stack.json").unlink(missing_ok=True)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with ExitStack() as stack:
        running = start_local_stack(directory, policies.resolve(), stack)
        opa, opa_url, emulator, emulator_info = (
            running.opa,
            running.opa_url,
            running.emulator,
            running.emulator_info,
        )
        proxy, ports, audit_log = running.proxy, running.ports, running.audit_log
        stack_info = {
            "proxy_url": f"https://127.0.0.1:{ports['data_port']}",
            "admin_url": f"https://127.0.0.1:{ports['admin_port']}",
            "region": REGION,
            "ca_bundle": str(directory / "ca.pem"),
            "dev_ca_dir": str(directory),
            "trust_domain": TRUST_DOMAIN,
            "emulator_url": emulator_info["bedrock_url"],
            "sts_url": emulator_info["sts_url"],
            "opa_url": opa_url,
            "audit_log": str(audit_log),
            "audit_public_key": str(directory / "audit.key.pub"),
        }
        tmp = directory / "stack.json.tmp"
        tmp.write_text(json.dumps(stack_info, indent=2))
        tmp.replace(directory / "stack.json")
        print(json.dumps(stack_info, indent=2), flush=True)
        processes = {"OPA": opa, "emulator": emulator, "proxy": proxy}
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"dev up: {name} exited with code {process.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
    (directory / "stack.json").unlink(missing_ok=True)
    return 0
