"""Start the benchmark stack: emulator (TLS), OPA, stub decider, proxy variants.

Every component is its own process, started the way a user would start it,
each pinned with ``taskset`` when the machine has two cores or more: the
proxy alone on one core, everything else (emulator, OPA, stub, load
generator, stream client) on the other, so the proxy's figures are not
mixed with the load it is put under. All listeners are 127.0.0.1.

The emulator serves bedrock over TLS with the dev CA's server certificate,
so the bench client reaches it with exactly the TLS settings it uses for the
proxy; the proxy reaches the same TLS listener (trusting the dev CA through
``SSL_CERT_FILE``), as it would reach AWS over TLS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from proxy_dev import devca, devstack

CHAT = "spiffe://example.org/ns/demo/sa/chat"
ROLE_ARN = "arn:aws:iam::123456789012:role/bedrock-runtime-demo"
BENCH_LIMITS = {
    "requests_per_second_per_identity": 1_000_000.0,
    "burst_per_identity": 1_000_000,
    "concurrent_requests_per_identity": 100_000,
    "requests_per_second_per_task": 1_000_000.0,
    "burst_per_task": 1_000_000,
    "concurrent_requests_per_task": 100_000,
}


@dataclass(frozen=True)
class Cores:
    """``taskset -c`` CPU lists; ``None`` means unpinned."""

    proxy: str | None
    load: str | None

    @staticmethod
    def detect() -> Cores:
        if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
            return Cores(None, None)
        return Cores("0", "1")

    @property
    def all(self) -> str | None:
        return None if self.proxy is None else f"0-{(os.cpu_count() or 2) - 1}"


@dataclass(frozen=True)
class ClientTls:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class ProxyVariant:
    name: str
    decider: str  # "opa" or "stub"
    audit: str  # "file" or "off" (/dev/null)
    workers: int = 1


@dataclass(frozen=True)
class RunningProxy:
    variant: ProxyVariant
    url: str
    pid: int


@dataclass(frozen=True)
class Stack:
    workdir: Path
    tls: ClientTls
    emulator_url: str  # plain HTTP (for peers that cannot be told a CA)
    emulator_tls_url: str
    sts_url: str
    emulator_pid: int
    opa_url: str
    opa_pid: int
    stub_url: str
    stub_pid: int
    proxies: dict[str, RunningProxy]
    cores: Cores


def pinned(command: Sequence[str], cpus: str | None) -> list[str]:
    # taskset execs the program, so the pid we get is the component's own.
    return ["taskset", "-c", cpus, *command] if cpus else list(command)


def proxy_supports_workers() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--workers" in done.stdout


def _wait_json(path: Path, process: subprocess.Popen[bytes], what: str) -> dict:
    return devstack.wait_for_file(path, process, what, 60)


def start_stack(
    stack: ExitStack,
    workdir: Path,
    variants: Sequence[ProxyVariant],
    *,
    frame_delay_ms: int,
    frames: int,
    cores: Cores,
) -> Stack:
    """Start everything; each process is stopped when ``stack`` closes."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    devstack.ensure_ca(pki)
    cert, key = devca.issue_svid(pki, CHAT, "bench-client")
    tls = ClientTls(pki / "ca.pem", cert, key)

    def launch(
        command: Sequence[str], log: str, cpus: str | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        process = devstack.spawn(pinned(command, cpus), workdir / log, env)
        stack.callback(devstack.stop, process)
        return process

    ready = workdir / "emulator.ready.json"
    ready.unlink(missing_ok=True)
    emulator = launch(
        [
            sys.executable,
            "-m",
            "proxy_dev.emulator",
            "--ready-file",
            str(ready),
            "--frame-delay-ms",
            str(frame_delay_ms),
            "--frames",
            str(frames),
            "--tls-cert",
            str(pki / "server.pem"),
            "--tls-key",
            str(pki / "server.key"),
        ],
        "emulator.log",
        cores.load,
    )
    emulator_info = _wait_json(ready, emulator, "the emulator")

    opa_port = devstack.free_port()
    opa = launch(
        [
            devstack.find_opa(),
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{opa_port}",
            "--log-level",
            "error",
            # As in production: the policy's own tests are not loaded.
            "--ignore=*_test.rego",
            str(devstack.PROJECT_ROOT / "policies"),
        ],
        "opa.log",
        cores.load,
    )
    opa_url = f"http://127.0.0.1:{opa_port}"
    devstack.wait_for_http(f"{opa_url}/health", opa, "OPA", 30)

    stub_ready = workdir / "stub.ready.json"
    stub_ready.unlink(missing_ok=True)
    stub = launch(
        [sys.executable, "-m", "bench.stub_opa", "--port-file", str(stub_ready)],
        "stub.log",
        cores.load,
    )
    stub_url = f"http://127.0.0.1:{_wait_json(stub_ready, stub, 'the stub decider')['port']}"

    env = devstack.proxy_environment()
    env["SSL_CERT_FILE"] = str(tls.ca)  # the proxy's upstream TLS trusts the dev CA
    task_store = "memory"
    if any(variant.workers > 1 for variant in variants):
        # Workers share task state: serve refuses the per-process memory store.
        redis, task_store = devstack.start_redis(workdir)
        stack.callback(devstack.stop, redis)
    proxies: dict[str, RunningProxy] = {}
    for variant in variants:
        directory = workdir / f"proxy-{variant.name}"
        directory.mkdir(exist_ok=True)
        audit = directory / "audit.log" if variant.audit == "file" else Path(os.devnull)
        config = devstack.write_proxy_config(
            directory / "proxy.toml",
            pki=pki,
            opa_url=opa_url if variant.decider == "opa" else stub_url,
            emulator={
                "sts_url": emulator_info["sts_url"],
                "bedrock_url": emulator_info["bedrock_tls_url"],
            },
            audit_log=audit,
            task_store=task_store if variant.workers > 1 else "memory",
            # One bench identity stands for a whole fleet: the per-caller limits
            # would measure themselves, not the proxy.
            limits_options=BENCH_LIMITS,
        )
        command = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
        if variant.workers > 1:
            command += ["--workers", str(variant.workers)]
        proxy_ready = directory / "proxy.ready.json"
        proxy_ready.unlink(missing_ok=True)
        cpus = cores.proxy if variant.workers == 1 else cores.all
        process = launch(
            [*command, "--ready-file", str(proxy_ready)], f"proxy-{variant.name}.log", cpus, env
        )
        ports = _wait_json(proxy_ready, process, f"the proxy ({variant.name})")
        proxies[variant.name] = RunningProxy(
            variant, f"https://127.0.0.1:{ports['data_port']}", process.pid
        )
    return Stack(
        workdir=workdir,
        tls=tls,
        emulator_url=emulator_info["bedrock_url"],
        emulator_tls_url=emulator_info["bedrock_tls_url"],
        sts_url=emulator_info["sts_url"],
        emulator_pid=emulator.pid,
        opa_url=opa_url,
        opa_pid=opa.pid,
        stub_url=stub_url,
        stub_pid=stub.pid,
        proxies=proxies,
        cores=cores,
    )


def dump(path: Path, document: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(path)
