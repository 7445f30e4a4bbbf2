"""Peer gateways for the side-by-side benchmark: LiteLLM proxy and the Portkey gateway.

Contract: ``run_peers`` starts each peer on 127.0.0.1, points it at the
project's Bedrock emulator with temporary credentials from the emulator's own
STS (access key, secret *and* session token: the emulator verifies every
SigV4 signature and token against what its STS issued), proves one chat call
succeeds end to end (peer answers 200 with a completion, and the emulator
recorded a *verified*, completed ``Converse`` for those credentials), then
runs the load step at each rate and records the peer's CPU seconds and RSS
(summed over its process tree, ``bench.procstat``). Each peer ends in exactly
one of ``{...results}``, ``{"skipped": reason}`` (install, start or the
end-to-end check failed; the reason carries the evidence) or ``{"error": ...}``
(the load step itself failed).

Both peers translate an OpenAI-style ``/chat/completions`` call into Bedrock
``POST /model/{id}/converse``, the same upstream call the proxy's Converse
scenario makes; the client side is plain HTTP because neither peer is the
mTLS endpoint here (their own auth: LiteLLM's master key, Portkey's headers).

Installation lives only in the bench cache, never in the product's
dependencies: LiteLLM ``1.80.0`` in its own virtualenv
``.cache/bench/litellm-venv`` (newer releases pull a ``litellm-proxy`` package
the index does not serve), Portkey ``1.15.2`` with ``npm --ignore-scripts``
in ``.cache/bench/portkey`` (its only install script is ``patch-package``,
whose ``patches/`` directory is not in the published ``files``). A marker /
the installed ``package.json`` version makes ``ensure_*`` idempotent.

Gotchas found on this machine (Portkey 1.15.2, LiteLLM 1.80.0), with the fix
applied:

* Portkey signs SigV4 with ``host = new URL(customHost).hostname``, i.e.
  *without the port*, while Node's fetch sends ``Host: 127.0.0.1:PORT``. Any
  endpoint on a non-default port therefore fails with the emulator's
  ``InvalidSignatureException`` (observed: ``SignedHeaders=content-type;host;
  ...`` signed over ``127.0.0.1``, wire ``Host: 127.0.0.1:33747``). Real
  Bedrock is on 443 where ``host == hostname``, so ``patch_portkey_signing``
  rewrites exactly that one token to ``url.host`` in a copy of the bundle
  (``portkey-gateway.bench.mjs``); against real Bedrock the two are identical,
  so the patch changes nothing the peer would do in production and costs
  nothing per request. If the anchor is not found exactly once (another
  version), the peer is skipped rather than measured wrongly.
* Portkey takes its port from ``--port=N`` on the command line (``PORT`` in
  the environment is read but not used for the listener) and passes no host
  to ``listen``, so it would bind every interface; ``bind-loopback.cjs``
  (``node --require``) fills in ``127.0.0.1`` for listeners given no host.
  ``--headless`` drops the log-streaming UI routes.
* LiteLLM binds 0.0.0.0 by default: ``--host 127.0.0.1`` is passed. It
  fetches its model cost map from GitHub at start unless
  ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (set), and ``--telemetry False``.
* The peer's environment loses ``*_proxy`` and ``AWS_*`` variables, so it
  neither leaves loopback nor picks up ambient credentials.

Fairness: one process each (LiteLLM ``--num_workers 1``; Node is one event
loop), pinned to the proxy's core (``cores.proxy``) when the harness pins;
load from the harness's generator on the load core; peers keep their default
logging. The credentials are the emulator's throwaway keys, written 0600 into
the run's workdir for LiteLLM's config.
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
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from bench import procstat
from bench.stack import ROLE_ARN, pinned
from proxy_dev import devstack

LITELLM_VERSION = "1.80.0"
PORTKEY_VERSION = "1.15.2"
MODEL_OP = "Converse"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
REGION = "us-east-1"
CACHE_DIR = devstack.PROJECT_ROOT / ".cache/bench"
LITELLM_MASTER_KEY = "sk-bench-loopback-only"
LOOPBACK = "127.0.0.1"
INSTALL_TIMEOUT_S = 1200.0
READY_TIMEOUT_S = {"litellm": 120.0, "portkey": 30.0}
REQUEST_TIMEOUT_S = 30.0
WARMUP_REQUESTS = 20
STOP_TIMEOUT_S = 10.0

# The one token Portkey 1.15.2 gets wrong (see module docstring); the anchor
# includes the Bedrock signer's body handling so the guardrail signer, which
# has the same prefix, is left alone.
_PORTKEY_SIGN_ANCHOR = "m=u.hostname;let f;t.host=m,e?e instanceof"
_PORTKEY_SIGN_FIXED = "m=u.hostname;let f;t.host=u.host,e?e instanceof"
_PORTKEY_ENTRY = "portkey-gateway.bench.mjs"
_LOOPBACK_PRELOAD = "bind-loopback.cjs"
_LOOPBACK_PRELOAD_SOURCE = """\
// bench: listeners given no host bind 127.0.0.1 instead of every interface.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number") {
    if (args.length === 1 || args[1] === undefined) args[1] = "127.0.0.1";
    else if (typeof args[1] === "function") args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
"""

Attack = Callable[[str, str, dict[str, str], bytes, int, float], dict[str, Any]]
RequestSpec = tuple[str, str, dict[str, str], bytes]


class PeerError(RuntimeError):
    """A peer could not be installed, started or verified; the message is the evidence."""


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str


def as_credentials(value: object) -> AwsCredentials:
    """Accept ours, botocore ``Credentials`` or an STS ``Credentials`` mapping."""
    if isinstance(value, AwsCredentials):
        return value
    if isinstance(value, Mapping):
        return AwsCredentials(
            str(value["AccessKeyId"]), str(value["SecretAccessKey"]), str(value["SessionToken"])
        )
    parts = [getattr(value, name, None) for name in ("access_key", "secret_key", "token")]
    if all(parts):
        return AwsCredentials(*(str(part) for part in parts))
    raise PeerError("peer credentials need an access key, secret and session token")


def assume_emulator_role(sts_url: str) -> AwsCredentials:
    """AssumeRole on the emulator's STS; the caller keys are dummies (the STS is moto)."""
    sts = boto3.client(
        "sts",
        region_name=REGION,
        endpoint_url=require_loopback(sts_url),
        aws_access_key_id="AKIDBENCHPEERS",
        aws_secret_access_key="bench-peers-caller",
    )
    try:
        answer = sts.assume_role(RoleArn=ROLE_ARN, RoleSessionName="bench-peers")["Credentials"]
    finally:
        sts.close()
    return as_credentials(answer)


def require_loopback(url: str) -> str:
    """Every URL a peer is given must stay on this machine."""
    host = urllib.parse.urlsplit(url).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise PeerError(f"refusing non-loopback endpoint {url!r}")
    return url.rstrip("/")


# --- pure parts -------------------------------------------------------------


def chat_body() -> bytes:
    """The OpenAI-style request both peers turn into one Bedrock Converse call."""
    doc = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64}
    return json.dumps(doc).encode()


def litellm_config(emulator_url: str, creds: AwsCredentials) -> str:
    """LiteLLM's config; JSON is valid YAML, so no hand-quoting of secrets."""
    doc = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"bedrock/converse/{MODEL}",
                    "aws_bedrock_runtime_endpoint": require_loopback(emulator_url),
                    "aws_access_key_id": creds.access_key_id,
                    "aws_secret_access_key": creds.secret_access_key,
                    "aws_session_token": creds.session_token,
                    "aws_region_name": REGION,
                },
            }
        ],
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }
    return json.dumps(doc, indent=2) + "\n"


def litellm_request(url: str) -> RequestSpec:
    headers = {"Authorization": f"Bearer {LITELLM_MASTER_KEY}", "Content-Type": "application/json"}
    return "POST", f"{url}/chat/completions", headers, chat_body()


def portkey_request(url: str, emulator_url: str, creds: AwsCredentials) -> RequestSpec:
    headers = {
        "Content-Type": "application/json",
        "x-portkey-provider": "bedrock",
        "x-portkey-aws-access-key-id": creds.access_key_id,
        "x-portkey-aws-secret-access-key": creds.secret_access_key,
        "x-portkey-aws-session-token": creds.session_token,
        "x-portkey-aws-region": REGION,
        "x-portkey-custom-host": require_loopback(emulator_url),
    }
    return "POST", f"{url}/v1/chat/completions", headers, chat_body()


def patch_portkey_signing(source: str) -> str:
    """Sign ``host:port`` like every AWS SDK does (identical to upstream on port 443)."""
    count = source.count(_PORTKEY_SIGN_ANCHOR)
    if count != 1:
        raise PeerError(
            f"Portkey bundle: SigV4 host anchor found {count} times (expected 1); "
            "a different gateway build cannot be patched to sign host:port"
        )
    return source.replace(_PORTKEY_SIGN_ANCHOR, _PORTKEY_SIGN_FIXED)


def peer_env(base: Mapping[str, str]) -> dict[str, str]:
    """The peer's environment: no egress proxies, no ambient AWS credentials."""
    env = {
        key: value
        for key, value in base.items()
        if not key.lower().endswith("_proxy") and not key.startswith("AWS_")
    }
    env.update(
        NO_PROXY="127.0.0.1,localhost",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        NODE_ENV="production",
    )
    return env


def completion_text(raw: bytes) -> str:
    """The assistant text of an OpenAI-style answer; empty when it is not one."""
    try:
        doc = json.loads(raw)
        text = doc["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    return text if isinstance(text, str) else ""


# --- install ----------------------------------------------------------------


def _run_install(command: Sequence[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(
            list(command),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerError(f"{what} install failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        raise PeerError(f"{what} install failed (exit {done.returncode}): {tail}")


def ensure_litellm(cache: Path = CACHE_DIR) -> Path:
    """The ``litellm`` executable of the bench-only virtualenv, installing it once."""
    venv = cache / "litellm-venv"
    exe, marker = venv / "bin/litellm", venv / ".bench-installed"
    if exe.exists() and marker.exists() and marker.read_text().strip() == LITELLM_VERSION:
        return exe
    cache.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin/python").exists():
        _run_install([sys.executable, "-m", "venv", str(venv)], cache, "litellm virtualenv")
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run_install([*pip, f"litellm[proxy]=={LITELLM_VERSION}"], cache, "litellm")
    if not exe.exists():
        raise PeerError(f"litellm install finished but {exe} is missing")
    marker.write_text(LITELLM_VERSION + "\n")
    return exe


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def ensure_portkey(cache: Path = CACHE_DIR) -> Path:
    """The patched, loopback-only Portkey entry script, installing the gateway once."""
    root = cache / "portkey"
    package = root / "node_modules/@portkey-ai/gateway"
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerError("node and npm must be on PATH to run the Portkey gateway")
    if not _portkey_installed(package):
        root.mkdir(parents=True, exist_ok=True)
        _write_if_changed(root / "package.json", '{"private": true}\n')
        npm = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts"]
        _run_install([*npm, f"@portkey-ai/gateway@{PORTKEY_VERSION}"], root, "portkey")
        if not _portkey_installed(package):
            raise PeerError(f"npm finished but {package} is not version {PORTKEY_VERSION}")
    patched = patch_portkey_signing((package / "build/start-server.js").read_text())
    # The copy sits at the install root so its bare imports resolve from node_modules.
    _write_if_changed(root / _PORTKEY_ENTRY, patched)
    _write_if_changed(root / _LOOPBACK_PRELOAD, _LOOPBACK_PRELOAD_SOURCE)
    return root / _PORTKEY_ENTRY


def _portkey_installed(package: Path) -> bool:
    try:
        version = json.loads((package / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        return False
    return version == PORTKEY_VERSION and (package / "build/start-server.js").exists()


# --- running peers ----------------------------------------------------------


@dataclass(frozen=True)
class PeerHandle:
    name: str
    url: str
    pid: int
    command: tuple[str, ...]
    log: Path
    spec: RequestSpec = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    def request_spec(self) -> RequestSpec:
        method, url, headers, body = self.spec
        return method, url, dict(headers), body

    def stop(self) -> None:
        """SIGTERM the peer's process group (it leads its own session), then SIGKILL."""
        if self.process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT_S)
        else:
            _signal_group(self.pid, signal.SIGKILL)  # stray children of an exited leader


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _log_tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _launch(
    name: str, command: Sequence[str], workdir: Path, port: int, ready_path: str, spec: RequestSpec,
    cpus: str | None,
) -> PeerHandle:  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    full = pinned(command, cpus)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            full,
            cwd=workdir,
            env=peer_env(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{LOOPBACK}:{port}"
    handle = PeerHandle(name, url, process.pid, tuple(full), log, spec, process)
    try:
        devstack.wait_for_http(url + ready_path, process, name, READY_TIMEOUT_S[name])
    except devstack.StackError as exc:
        handle.stop()
        raise PeerError(f"{exc}; log tail: {_log_tail(log)}") from exc
    return handle


def start_litellm(
    emulator_url: str, creds: object, workdir: Path, port: int, *, cpus: str | None = None
) -> PeerHandle:
    exe = ensure_litellm()
    credentials = as_credentials(creds)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "litellm.config.yaml"
    config.touch(mode=0o600)
    config.write_text(litellm_config(emulator_url, credentials))
    command = [
        str(exe), "--config", str(config), "--host", LOOPBACK, "--port", str(port),
        "--num_workers", "1", "--telemetry", "False",
    ]  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    return _launch(
        "litellm", command, workdir, port, "/health/liveliness", litellm_request(url), cpus
    )


def start_portkey(
    emulator_url: str, creds: object, workdir: Path, port: int, *, cpus: str | None = None
) -> PeerHandle:
    entry = ensure_portkey()
    node = shutil.which("node") or "node"
    command = [
        node, "--require", str(entry.parent / _LOOPBACK_PRELOAD), str(entry),
        f"--port={port}", "--headless",
    ]  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    spec = portkey_request(url, emulator_url, as_credentials(creds))
    return _launch("portkey", command, workdir, port, "/", spec, cpus)


def _send(spec: RequestSpec) -> tuple[int, bytes]:
    method, url, headers, body = spec
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _emulator(method: str, url: str) -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
        return json.loads(answer.read())


def verify_end_to_end(handle: PeerHandle, emulator_url: str, creds: AwsCredentials) -> dict:
    """One call through the peer, confirmed on both ends; raises ``PeerError`` with evidence.

    Clears the emulator's request log first: it grows with every call, and
    each peer should face the same emulator state.
    """
    records_url = require_loopback(emulator_url) + "/_emulator/requests"
    _emulator("DELETE", records_url)
    started = time.monotonic()
    status, raw = _send(handle.request_spec())
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    text = completion_text(raw)
    records = _emulator("GET", records_url)
    upstream = [r for r in records if r.get("access_key_id") == creds.access_key_id]
    good = [
        r
        for r in upstream
        if r.get("verified") and r.get("outcome") == "completed" and r.get("operation") == MODEL_OP
    ]
    if status != 200 or not text or not good:
        seen = [
            {k: r.get(k) for k in ("raw_path", "verified", "outcome", "status", "error_type")}
            for r in upstream
        ]
        raise PeerError(
            f"{handle.name} end-to-end check failed: peer answered {status} "
            f"{raw[:400]!r}; emulator saw {seen}"
        )
    first = good[0]
    return {
        "status": status,
        "completion": text,
        "first_call_ms": elapsed_ms,
        "emulator": {k: first.get(k) for k in ("raw_path", "operation", "verified", "status")},
    }


def _steps(
    handle: PeerHandle, rates: Sequence[int], duration_s: float, attack: Attack
) -> list[dict[str, Any]]:
    for _ in range(WARMUP_REQUESTS):
        _send(handle.request_spec())
    steps = []
    for rate in rates:
        method, url, headers, body = handle.request_spec()
        cpu_before = procstat.cpu_seconds(handle.pid)
        result = attack(method, url, headers, body, rate, duration_s)
        cpu = procstat.cpu_seconds(handle.pid) - cpu_before
        requests = result.get("requests")
        count = requests if isinstance(requests, int) and requests > 0 else round(rate * duration_s)
        steps.append(
            {
                **result,
                "rate": rate,
                "peer_cpu_s": round(cpu, 3),
                "peer_cpu_s_per_1000": round(cpu / count * 1000, 4),
                "peer_rss_bytes": procstat.rss_bytes(handle.pid),
            }
        )
        if handle.process.poll() is not None:
            raise PeerError(
                f"{handle.name} exited during the {rate} RPS step: {_log_tail(handle.log)}"
            )
    return steps


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _vegeta_attack(vegeta: Path, tls: Any, workdir: Path, cpus: str | None) -> Attack:
    """Adapter to the harness's vegeta wrapper (plain-HTTP targets never use the client cert)."""
    from bench import load

    def attack(
        method: str, url: str, headers: dict[str, str], body: bytes, rate: int, duration_s: float
    ) -> dict[str, Any]:
        result = load.attack(
            vegeta, load.Request(method, url, headers, body), rate=rate, duration_s=duration_s,
            tls=tls, workdir=workdir, cpus=cpus, probe=dict,
        )  # fmt: skip
        return load.summarize(result)

    return attack


def run_peers(
    rates: Sequence[int],
    duration_s: float,
    attack: Attack | None = None,
    emulator_url: str = "",
    creds: object | None = None,
    workdir: Path = CACHE_DIR / "peers-run",
    *,
    sts_url: str | None = None,
    emulator_tls_url: str | None = None,
    vegeta: Path | None = None,
    tls: Any = None,
    cores: Any = None,
    quick: bool = False,
) -> dict[str, Any]:
    """``{"litellm": {...}, "portkey": {...}}``; each peer's results or why it was left out.

    ``attack`` defaults to the harness's vegeta wrapper (needs ``vegeta`` and
    ``tls``); ``creds`` default to a fresh AssumeRole on ``sts_url``; ``quick``
    keeps only the first rate. ``emulator_tls_url`` is unused: neither peer can
    be given the emulator's private CA, so both use its plain-HTTP listener.
    """
    del emulator_tls_url
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    emulator_url = require_loopback(emulator_url)
    if creds is None:
        if sts_url is None:
            raise PeerError("run_peers needs creds or the emulator's sts_url")
        creds = assume_emulator_role(sts_url)
    credentials = as_credentials(creds)
    peer_cpus = getattr(cores, "proxy", None)
    if attack is None:
        if vegeta is None:
            raise PeerError("run_peers needs an attack callable or a vegeta binary")
        attack = _vegeta_attack(Path(vegeta), tls, workdir, getattr(cores, "load", None))
    steps = list(rates[:1] if quick else rates)
    starters = {
        "litellm": (start_litellm, ensure_litellm),
        "portkey": (start_portkey, ensure_portkey),
    }
    outcome: dict[str, Any] = {}
    for name, (start, ensure) in starters.items():
        began = time.monotonic()
        try:
            ensure()
        except PeerError as exc:
            outcome[name] = {"skipped": str(exc)}
            continue
        install_s = round(time.monotonic() - began, 1)
        try:
            handle = start(emulator_url, credentials, workdir / name, _free_port(), cpus=peer_cpus)
        except PeerError as exc:
            outcome[name] = {"skipped": str(exc)}
            continue
        try:
            check = verify_end_to_end(handle, emulator_url, credentials)
            record: dict[str, Any] = {
                "version": LITELLM_VERSION if name == "litellm" else PORTKEY_VERSION,
                "ensure_s": install_s,
                "url": handle.url,
                "command": list(handle.command),
                "pinned_cpus": peer_cpus,
                "verified": check,
            }
            record["steps"] = _steps(handle, steps, duration_s, attack)
            record["peer_rss_bytes_max"] = max(
                (s["peer_rss_bytes"] for s in record["steps"]), default=0
            )
            outcome[name] = record
        except PeerError as exc:
            outcome[name] = {"skipped": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one peer's failure must not lose the other's
            outcome[name] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            handle.stop()
    return outcome


__all__ = [
    "AwsCredentials",
    "PeerError",
    "PeerHandle",
    "assume_emulator_role",
    "ensure_litellm",
    "ensure_portkey",
    "run_peers",
    "start_litellm",
    "start_portkey",
]
