"""Open-loop fixed-rate load with vegeta, and the requests it replays.

Direct calls must carry SigV4 (the emulator verifies every signature), so
each step signs its request once with botocore, using temporary credentials
from the emulator's own STS, and vegeta replays that signed request: the
emulator checks only that ``X-Amz-Date`` is within five minutes, and every
step is far shorter. Proxied calls carry the client SVID and no signature,
as an application behind the proxy would.

vegeta's CPU time is the growth of ``RUSAGE_CHILDREN`` across the attack (it
is the only child reaped meanwhile); with the achieved rate it shows whether
the generator kept up.
"""

from __future__ import annotations

import base64
import json
import resource
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bench.stack import ROLE_ARN, ClientTls, pinned

REGION = "us-east-1"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
MODEL_PATH = MODEL.replace(":", "%3A")  # as botocore puts it on the wire


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Operation:
    """One bench scenario's request: path and body (the same for direct and proxied)."""

    name: str
    path: str
    body: bytes
    accept: str = "application/json"


def invoke_1kb() -> Operation:
    doc: dict[str, Any] = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": ""}],
    }
    pad = 1024 - len(json.dumps(doc))
    doc["messages"][0]["content"] = "x" * pad
    body = json.dumps(doc).encode()
    assert len(body) == 1024
    return Operation("invoke", f"/model/{MODEL_PATH}/invoke", body)


def converse() -> Operation:
    body = json.dumps(
        {"messages": [{"role": "user", "content": [{"text": "Hello from the benchmark"}]}]}
    ).encode()
    return Operation("converse", f"/model/{MODEL_PATH}/converse", body)


def converse_stream() -> Operation:
    body = json.dumps(
        {"messages": [{"role": "user", "content": [{"text": "Stream to the benchmark"}]}]}
    ).encode()
    return Operation(
        "converse_stream",
        f"/model/{MODEL_PATH}/converse-stream",
        body,
        "application/vnd.amazon.eventstream",
    )


def assume_role(sts_url: str, env: Mapping[str, str]) -> Credentials:
    """Temporary credentials from the emulator's STS (the only ones its bedrock accepts)."""
    sts = boto3.client(
        "sts",
        region_name=REGION,
        endpoint_url=sts_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    try:
        answer = sts.assume_role(RoleArn=ROLE_ARN, RoleSessionName="bench-direct")["Credentials"]
    finally:
        sts.close()
    return Credentials(answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"])


def direct_request(base_url: str, op: Operation, credentials: Credentials) -> Request:
    """``op`` signed for the emulator now; valid for five minutes of replays."""
    aws = AWSRequest(
        method="POST",
        url=base_url + op.path,
        data=op.body,
        headers={"Content-Type": "application/json", "Accept": op.accept},
    )
    SigV4Auth(credentials, "bedrock", REGION).add_auth(aws)
    return Request("POST", base_url + op.path, dict(aws.headers.items()), op.body)


def proxy_request(base_url: str, op: Operation, task: str | None = None) -> Request:
    # No X-Task-Id by default: a task must now be opened through the task API first.
    headers = {"Content-Type": "application/json", "Accept": op.accept}
    if task is not None:
        headers["X-Task-Id"] = task
    return Request("POST", base_url + op.path, headers, op.body)


def _target_line(request: Request) -> str:
    return json.dumps(
        {
            "method": request.method,
            "url": request.url,
            "header": {k: [v] for k, v in request.headers.items()},
            "body": base64.b64encode(request.body).decode(),
        }
    )


@dataclass(frozen=True)
class AttackResult:
    rate: int
    duration_s: float
    report: dict[str, Any]
    vegeta_cpu_s: float
    samples: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return int(self.report.get("requests", 0))

    @property
    def success(self) -> float:
        return float(self.report.get("success", 0.0))

    def latency_ms(self) -> dict[str, float]:
        lat = self.report.get("latencies", {})
        keys = {"p50": "50th", "p90": "90th", "p99": "99th", "max": "max", "mean": "mean"}
        return {name: round(float(lat.get(key, 0)) / 1e6, 3) for name, key in keys.items()}


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def attack(
    vegeta: Path,
    request: Request,
    *,
    rate: int,
    duration_s: float,
    tls: ClientTls,
    workdir: Path,
    cpus: str | None,
    probe: Callable[[], dict[str, float]],
) -> AttackResult:
    """One open-loop step; ``probe`` is read before and after, and its deltas kept."""
    targets = workdir / "targets.json"
    targets.write_text(_target_line(request) + "\n")
    results = workdir / "results.bin"
    command = [
        str(vegeta),
        "attack",
        "-format=json",
        f"-targets={targets}",
        f"-rate={rate}/1s",
        f"-duration={duration_s}s",
        f"-root-certs={tls.ca}",
        f"-cert={tls.cert}",
        f"-key={tls.key}",
        "-http2=false",
        "-timeout=5s",
        f"-output={results}",
    ]
    before, cpu_before, started = probe(), _cpu_children(), time.monotonic()
    subprocess.run(pinned(command, cpus), check=True, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - started
    vegeta_cpu = _cpu_children() - cpu_before
    after = probe()
    report = subprocess.run(
        [str(vegeta), "report", "-type=json", str(results)],
        check=True,
        capture_output=True,
        text=True,
    )
    results.unlink(missing_ok=True)
    deltas = {key: after[key] - before.get(key, 0.0) for key in after}
    deltas["wall_s"] = wall
    return AttackResult(rate, duration_s, json.loads(report.stdout), vegeta_cpu, deltas)


def summarize(result: AttackResult) -> dict[str, Any]:
    """The JSON record of one step."""
    report = result.report
    samples = result.samples
    wall = samples.get("wall_s", result.duration_s) or result.duration_s
    requests = result.requests
    proxy_cpu = samples.get("proxy_cpu_s")
    out: dict[str, Any] = {
        "rate": result.rate,
        "duration_s": result.duration_s,
        "requests": requests,
        "success_ratio": result.success,
        "achieved_rate": round(float(report.get("rate", 0.0)), 1),
        "throughput": round(float(report.get("throughput", 0.0)), 1),
        "latency_ms": result.latency_ms(),
        "status_codes": report.get("status_codes", {}),
        "errors": (report.get("errors") or [])[:5],
        "cpu_utilisation": {
            "vegeta": round(result.vegeta_cpu_s / wall, 3),
            **{
                key.removesuffix("_cpu_s"): round(value / wall, 3)
                for key, value in samples.items()
                if key.endswith("_cpu_s")
            },
        },
    }
    if proxy_cpu is not None and requests:
        out["proxy_cpu_s_per_1000"] = round(proxy_cpu / requests * 1000, 4)
    return out


def passes(step: Mapping[str, Any], p99_limit_ms: float) -> bool:
    """Saturation criterion: zero errors, p99 under the limit, and the rate really achieved."""
    return (
        step["success_ratio"] == 1.0
        and step["latency_ms"]["p99"] < p99_limit_ms
        and step["throughput"] >= 0.95 * step["rate"]
    )


def rate_ladder(start: int, factor: float, steps: int) -> Sequence[int]:
    rates, rate = [], float(start)
    for _ in range(steps):
        rates.append(int(round(rate, -1)))
        rate *= factor
    return rates
