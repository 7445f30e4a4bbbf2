"""``make soak``: legitimate clients at a steady rate while hostile clients run beside them.

Two phases against one real stack (OPA with the shipped policies plus one
hostile workload, the emulator, the proxy with its default limits): a quiet
phase with the legitimate clients alone, then the same clients with every
hostile client of the overload review running in parallel:

    stalled TLS handshakes, stalled headers, stalled bodies, an idle
    connection flood, pathological bodies (detector bombs, deep and wide
    JSON, many tools, gzip under a repeated Content-Encoding), a task flood,
    and one identity at ten times its rate limit.

Everything runs on 127.0.0.1, every loop is bounded in time and stops by
itself. The report compares the legitimate clients' success and latency in
the two phases and shows the proxy's peak RSS and CPU, the refusals by
reason, terminal audit records per request and ``audit verify`` of the log;
it is printed as a table and written as JSON under ``bench/results/``.

    python -m bench.soak [--quick] [--quiet-s 30] [--hostile-s 60] [--rate 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import load, procstat, streams
from bench.stack import ClientTls
from proxy.config import load_settings
from proxy_dev import devca, devstack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LEGIT = "spiffe://example.org/ns/demo/sa/chat"
HOSTILE = "spiffe://example.org/ns/soak/sa/hostile"
ABUSER = "spiffe://example.org/ns/soak/sa/abuser"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
CONVERSE = f"/model/{MODEL.replace(':', '%3A')}/converse"
HELLO = json.dumps({"messages": [{"role": "user", "content": [{"text": "hello"}]}]}).encode()
# Hostile clients connect from their own loopback address, as they would from their
# own hosts: per-address connection limits then tell them from the legitimate ones.
HOSTILE_ADDRESS = "127.0.0.2"
TARGETS = {"legit_success": 1.0, "p99_ratio": 2.0, "rss_peak_bytes": 1 << 30}


@dataclass
class Phase:
    """What the legitimate clients saw in one phase."""

    latencies_ms: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        sent = len(self.latencies_ms) + sum(self.failures.values())
        ordered = sorted(self.latencies_ms)
        return {
            "sent": sent,
            "ok": len(ordered),
            "success_ratio": round(len(ordered) / sent, 4) if sent else 0.0,
            "p50_ms": round(statistics.median(ordered), 2) if ordered else None,
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)
            if ordered
            else None,
            "failures": dict(self.failures),
        }


@dataclass
class Hostile:
    """What the hostile clients achieved: answers by status and connections cut."""

    answers: Counter[str] = field(default_factory=Counter)
    cuts: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Stack:
    directory: Path
    proxy: subprocess.Popen[bytes]
    port: int
    audit_log: Path
    rate_per_s: float
    # The other processes of the stack, whose CPU is shown beside the proxy's.
    others: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


# --- the stack -------------------------------------------------------------------------


def soak_policies(directory: Path) -> Path:
    """The shipped policies plus two soak workloads, so no hostile call is the legit one's."""
    target = directory / "policies"
    shutil.copytree(ROOT / "policies", target)
    data_path = target / "bedrock" / "data.json"
    data = json.loads(data_path.read_text())
    legit = data["workloads"][LEGIT]
    for identity, team in ((HOSTILE, "team-soak"), (ABUSER, "team-soak-abuser")):
        data["workloads"][identity] = {**legit, "owner": {"team": team, "contact": "soak@x"}}
    data_path.write_text(json.dumps(data, indent=2))
    return target


def start_stack(directory: Path, exit_stack: contextlib.ExitStack) -> Stack:
    running = devstack.start_local_stack(directory, soak_policies(directory), exit_stack)
    settings = load_settings(running.config)
    return Stack(
        directory,
        running.proxy,
        int(running.ports["data_port"]),
        running.audit_log,
        settings.limits.requests_per_second_per_identity,
        {"opa": running.opa.pid, "emulator": running.emulator.pid},
    )


def client_tls(directory: Path, identity: str, name: str) -> ssl.SSLContext:
    return streams.client_ssl(
        ClientTls(directory / "ca.pem", *devca.issue_svid(directory, identity, name))
    )


# --- clients ---------------------------------------------------------------------------


async def legit_clients(url: str, tls: ssl.SSLContext, rate: float, until: float) -> Phase:
    """One request every 1/rate s, each on its own task, whatever the others do."""
    phase = Phase()
    connector = aiohttp.TCPConnector(ssl=tls, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            started = time.monotonic()
            try:
                async with session.post(
                    url + CONVERSE,
                    data=HELLO,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:
                    await response.read()
                    if response.status != 200:
                        phase.failures[f"http_{response.status}"] += 1
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                phase.failures[type(exc).__name__] += 1
                return
            phase.latencies_ms.append((time.monotonic() - started) * 1000)

        await paced(one, rate, until)
    return phase


async def paced(
    one: Callable[[], Coroutine[Any, Any, None]], rate: float, until: float, most: int | None = None
) -> None:
    """Start ``one()`` every 1/rate s until ``until`` (at most ``most`` running), then
    let the last ones finish: a steady rate whatever the answers take."""
    running: set[asyncio.Task[None]] = set()
    next_at = time.monotonic()
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if most is None or len(running) < most:
            task = asyncio.create_task(one())
            running.add(task)
            task.add_done_callback(running.discard)
        next_at += 1 / rate
    if running:
        await asyncio.wait(running, timeout=35)


async def hold_connections(
    stack: Stack,
    tls: ssl.SSLContext | None,
    count: int,
    send: bytes,
    kind: str,
    hostile: Hostile,
    until: float,
) -> None:
    """``count`` connections that send ``send`` and then nothing; reopened when cut."""

    async def one() -> None:
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1", stack.port, ssl=tls, local_addr=(HOSTILE_ADDRESS, 0)
                    ),
                    10,
                )
            except (OSError, TimeoutError, ssl.SSLError):
                hostile.cuts[f"{kind}_refused"] += 1
                await asyncio.sleep(0.2)
                continue
            try:
                if send:
                    writer.write(send)
                    await writer.drain()
                remaining = until - time.monotonic()
                # The proxy answers or closes: either way this connection is over.
                data = await asyncio.wait_for(reader.read(65536), max(0.01, remaining))
                hostile.cuts[kind if not data else f"{kind}_answered"] += 1
            except TimeoutError:
                hostile.cuts[f"{kind}_held_to_end"] += 1
            except (OSError, ssl.SSLError):
                hostile.cuts[kind] += 1
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
            await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(count)))


def pathological_bodies() -> list[tuple[str, bytes, dict[str, str]]]:
    json_type = {"Content-Type": "application/json"}
    tools = [{"toolSpec": {"name": f"t{i}", "inputSchema": {"json": {}}}} for i in range(50_000)]
    return [
        ("detector_bomb", b'{"messages":[{"role":"user","content":[{"text":"'
         + b"-----BEGIN PRIVATE KEY-----" * 40_000 + b'"}]}]}', json_type),
        ("deep_json", b'{"a":' * 200_000 + b"1" + b"}" * 200_000, json_type),
        ("wide_json", b'{"messages":[' + b",".join([b"{}"] * 3_000_000) + b"]}", json_type),
        ("many_tools", json.dumps({"messages": [], "toolConfig": {"tools": tools}}).encode(),
         json_type),
        ("gzip_repeated_encoding", gzip.compress(HELLO * 1000),
         {**json_type, "Content-Encoding": "identity"}),
    ]  # fmt: skip


async def body_attacks(stack: Stack, tls: ssl.SSLContext, hostile: Hostile, until: float) -> None:
    bodies = pathological_bodies()
    connector = aiohttp.TCPConnector(ssl=tls, limit=0, local_addr=(HOSTILE_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def loop(name: str, body: bytes, headers: dict[str, str]) -> None:
            while time.monotonic() < until:
                extra = [("Content-Encoding", "gzip")] if name.startswith("gzip") else []
                try:
                    async with session.post(
                        stack.url + CONVERSE,
                        data=body,
                        headers=[*headers.items(), *extra],
                        timeout=aiohttp.ClientTimeout(total=60),
                    ) as response:
                        await response.read()
                        hostile.answers[f"{name}:{response.status}"] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    hostile.answers[f"{name}:{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.1)

        # Two of each at a time: concurrent heavy bodies are the point.
        await asyncio.gather(*(loop(*b) for b in bodies for _ in range(2)))


async def request_flood(
    stack: Stack,
    tls: ssl.SSLContext,
    kind: str,
    path: str,
    body: bytes,
    rate: float,
    hostile: Hostile,
    until: float,
) -> None:
    connector = aiohttp.TCPConnector(ssl=tls, limit=64, local_addr=(HOSTILE_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            try:
                async with session.post(
                    stack.url + path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:
                    await response.read()
                    hostile.answers[f"{kind}:{response.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                hostile.answers[f"{kind}:{type(exc).__name__}"] += 1

        await paced(one, rate, until, most=256)  # the flood is bounded on this side too


def hostile_clients(
    stack: Stack,
    tls: dict[str, ssl.SSLContext],
    hostile: Hostile,
    until: float,
    only: Sequence[str] = (),
) -> list[Awaitable[None]]:
    task = json.dumps({"purpose": "soak", "ttl_seconds": 300, "max_calls": 10}).encode()
    partial = b"POST " + CONVERSE.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"
    stalled = (
        b"POST " + CONVERSE.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + b'{"messages":' * 50
    )
    abuse_rate = stack.rate_per_s * 10
    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "stalled_handshake": lambda: hold_connections(
            stack, None, 20, b"\x16\x03\x01", "stalled_handshake", hostile, until
        ),
        "stalled_headers": lambda: hold_connections(
            stack, tls["hostile"], 20, partial, "stalled_headers", hostile, until
        ),
        "stalled_body": lambda: hold_connections(
            stack, tls["hostile"], 10, stalled, "stalled_body", hostile, until
        ),
        "idle_connection": lambda: hold_connections(
            stack, tls["hostile"], 100, b"", "idle_connection", hostile, until
        ),
        "bodies": lambda: body_attacks(stack, tls["hostile"], hostile, until),
        "task_flood": lambda: request_flood(
            stack, tls["hostile"], "task_flood", "/v1/tasks", task, 20, hostile, until
        ),
        "rate_abuser": lambda: request_flood(
            stack, tls["abuser"], "rate_abuser", CONVERSE, HELLO, abuse_rate, hostile, until
        ),
    }
    return [start() for name, start in kinds.items() if not only or name in only]


# --- measuring -------------------------------------------------------------------------


@dataclass
class Sampler:
    pid: int
    rss_peak: int = 0

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            self.rss_peak = max(self.rss_peak, procstat.rss_bytes(self.pid))
            await asyncio.sleep(0.25)


def _harness_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + load._cpu_children()


async def phase(
    stack: Stack,
    tls: dict[str, ssl.SSLContext],
    seconds: float,
    rate: float,
    hostile: Hostile | None,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    started, (user0, sys0) = time.monotonic(), procstat.cpu_split(stack.proxy.pid)
    harness0 = _harness_cpu()
    others0 = {name: procstat.cpu_seconds(pid) for name, pid in stack.others.items()}
    until = started + seconds
    sampler = Sampler(stack.proxy.pid)
    attackers = [] if hostile is None else hostile_clients(stack, tls, hostile, until, only)
    # The legitimate clients run in a process of their own: sharing an event loop
    # with the hostile ones would measure this harness's own queueing.
    result = stack.directory / f"legit-{started}.json"
    legit_process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak", "--legit-only", "--url", stack.url,
        "--dir", str(stack.directory), "--rate", str(rate), "--seconds", str(seconds),
        "--out", str(result), cwd=ROOT,
    )  # fmt: skip
    await asyncio.gather(legit_process.wait(), sampler.run(until), *attackers)
    legit = json.loads(result.read_text())
    user1, sys1 = procstat.cpu_split(stack.proxy.pid)
    elapsed = time.monotonic() - started
    harness = _harness_cpu() - harness0
    others = {
        name: round((procstat.cpu_seconds(pid) - others0[name]) / elapsed, 3)
        for name, pid in stack.others.items()
    }
    return {
        "seconds": round(elapsed, 1),
        "legit": legit,
        "proxy_rss_peak_bytes": sampler.rss_peak,
        "proxy_cpu": {
            "user_s": round(user1 - user0, 2),
            "system_s": round(sys1 - sys0, 2),
            "cores": round((user1 - user0 + sys1 - sys0) / elapsed, 3),
        },
        # The clients themselves (this process and the legitimate clients' one).
        "harness_cpu_cores": round(harness / elapsed, 3),
        "other_cpu_cores": others,
    }


def audit_summary(audit_log: Path, since: str) -> dict[str, Any]:
    """Refusals by reason, and whether every request left exactly one terminal record."""
    terminal: Counter[str] = Counter()
    authorized: set[str] = set()
    refusals: Counter[str] = Counter()
    connection: Counter[str] = Counter()
    for line in audit_log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = record.get("event")
        if event == "connection":
            connection[str(record.get("reason", record.get("outcome")))] += 1
        if event == "authorized":
            authorized.add(record["request_id"])
        if event in ("completed", "denied"):
            terminal[record["request_id"]] += 1
            if str(record.get("ts", "")) >= since and record.get("outcome") != "ok":
                code = (record.get("error") or {}).get("code", record.get("outcome"))
                status = (record.get("error") or {}).get("status", record.get("upstream_status"))
                refusals[f"{status} {code}"] += 1
    return {
        "requests": len(terminal),
        "requests_with_one_terminal_record": sum(1 for n in terminal.values() if n == 1),
        "authorized_without_terminal": len(authorized - set(terminal)),
        "refusals_in_hostile_phase": dict(refusals.most_common()),
        "connection_records": dict(connection.most_common()),
    }


def verify(stack: Stack) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", "--public-key",
         str(stack.directory / "audit.key.pub"), str(stack.audit_log)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return {"exit_code": result.returncode, "output": result.stdout.strip()[-400:]}


def judge(report: dict[str, Any]) -> dict[str, bool]:
    quiet, loud = report["quiet"]["legit"], report["hostile"]["legit"]
    audit = report["audit"]
    return {
        "legit success 100%": loud["success_ratio"] >= TARGETS["legit_success"],
        "legit p99 within 2x quiet": bool(
            quiet["p99_ms"] and loud["p99_ms"] and loud["p99_ms"] <= 2 * quiet["p99_ms"]
        ),
        "proxy RSS peak under 1 GiB": report["hostile"]["proxy_rss_peak_bytes"]
        < TARGETS["rss_peak_bytes"],
        "one terminal record per request": audit["requests"]
        == audit["requests_with_one_terminal_record"]
        and audit["authorized_without_terminal"] == 0,
        "audit chain verifies": report["verify"]["exit_code"] == 0,
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        "phase    sent   ok  success  p50 ms  p99 ms  proxy RSS peak  proxy CPU (user+sys, cores)"
    ]
    for name in ("quiet", "hostile"):
        entry = report[name]
        legit, cpu = entry["legit"], entry["proxy_cpu"]
        lines.append(
            f"{name:8} {legit['sent']:5} {legit['ok']:4} {legit['success_ratio']:8.2%} "
            f"{legit['p50_ms'] or 0:7.1f} {legit['p99_ms'] or 0:7.1f} "
            f"{entry['proxy_rss_peak_bytes'] / 2**20:11.0f} MiB  "
            f"{cpu['user_s']:.1f}+{cpu['system_s']:.1f} s ({cpu['cores']:.2f}), "
            f"clients {entry['harness_cpu_cores']:.2f}, "
            + ", ".join(f"{k} {v:.2f}" for k, v in entry["other_cpu_cores"].items())
        )
    lines.append("")
    lines.append("refusals in the hostile phase (status code: count)")
    lines += [f"  {k}: {v}" for k, v in report["audit"]["refusals_in_hostile_phase"].items()]
    lines.append("hostile clients: answers seen")
    lines += [f"  {k}: {v}" for k, v in sorted(report["hostile_clients"]["answers"].items())]
    lines.append("hostile clients: connections ended")
    lines += [f"  {k}: {v}" for k, v in sorted(report["hostile_clients"]["cuts"].items())]
    audit = report["audit"]
    lines.append(
        f"audit: {audit['requests_with_one_terminal_record']}/{audit['requests']} requests with "
        f"exactly one terminal record, {audit['authorized_without_terminal']} authorized without "
        f"one; verify exit {report['verify']['exit_code']}"
    )
    lines.append("targets:")
    lines += [f"  [{'x' if ok else ' '}] {name}" for name, ok in report["targets"].items()]
    return "\n".join(lines)


async def soak(
    stack: Stack, quiet_s: float, hostile_s: float, rate: float, only: Sequence[str] = ()
) -> dict[str, Any]:
    tls = {
        "hostile": client_tls(stack.directory, HOSTILE, "soak-hostile"),
        "abuser": client_tls(stack.directory, ABUSER, "soak-abuser"),
    }
    quiet = await phase(stack, tls, quiet_s, rate, None)
    since = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    hostile = Hostile()
    loud = await phase(stack, tls, hostile_s, rate, hostile, only)
    return {
        "quiet": quiet,
        "hostile": loud,
        "since": since,
        "hostile_clients": {"answers": dict(hostile.answers), "cuts": dict(hostile.cuts)},
        "rate_limit_per_identity": stack.rate_per_s,
    }


def run_legit(url: str, directory: Path, rate: float, seconds: float, out: Path) -> int:
    tls = client_tls(directory, LEGIT, "soak-legit")
    phase = asyncio.run(legit_clients(url, tls, rate, time.monotonic() + seconds))
    out.write_text(json.dumps(phase.summary()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--quiet-s", type=float, default=30.0)
    parser.add_argument("--hostile-s", type=float, default=90.0)
    parser.add_argument("--rate", type=float, default=10.0, help="legitimate requests per second")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    parser.add_argument(
        "--only", action="append", default=[], help="run only these hostile clients (repeatable)"
    )
    # Internal: the legitimate clients' own process (see ``phase``).
    parser.add_argument("--legit-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.legit_only:
        return run_legit(args.url, args.dir, args.rate, args.seconds, args.out)
    quiet_s, hostile_s = (5.0, 10.0) if args.quick else (args.quiet_s, args.hostile_s)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, contextlib.ExitStack() as stack_exit:
        stack = start_stack(Path(tmp), stack_exit)
        report = asyncio.run(soak(stack, quiet_s, hostile_s, args.rate, args.only))
        report["hostile_kinds"] = args.only or "all"
        stack_exit.close()  # the proxy seals its log on the way out
        report["audit"] = audit_summary(stack.audit_log, report.pop("since"))
        report["verify"] = verify(stack)
    report["targets"] = judge(report)
    report["machine"] = {"cpus": os.cpu_count(), "cpu": procstat.cpu_model()}
    report["when"] = datetime.now(UTC).isoformat()
    print(render(report))
    out = args.out or RESULTS / f"soak-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
