"""``python -m bench``: one benchmark run, table on stdout, JSON in ``--out``.

Order of a run: start the stack; rate steps (direct, then proxied, per rate
and scenario) and the proxy variants; a saturation ladder per target;
ConverseStream timings; open slow streams for the RSS slope; the STS ledger;
peers (``--peers``, if ``bench/peers.py`` exists). Every process the run
started is stopped when it ends, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import load, procstat, report, streams
from bench.stack import Cores, ProxyVariant, Stack, dump, proxy_supports_workers, start_stack
from proxy_dev import devstack

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_VEGETA = devstack.PROJECT_ROOT / ".cache/bin/vegeta"
SCENARIOS = ("invoke", "converse", "stream", "saturation", "open-streams")
P99_LIMIT_MS = 20.0
SATURATION_LADDER = (50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 2500, 3000, 4000)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about a minute, small figures")
    parser.add_argument("--duration", type=float, default=None, help="seconds per rate step")
    parser.add_argument("--rates", default=None, help="comma-separated RPS steps")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--vegeta", type=Path, default=DEFAULT_VEGETA)
    parser.add_argument("--peers", action="store_true", help="also run bench.peers if present")
    parser.add_argument("--workdir", type=Path, default=None, help="default: OUT/run-<stamp>")
    return parser


class Run:
    """State of one run: the stack, the step records, and how to probe processes."""

    def __init__(self, stack: Stack, args: argparse.Namespace, workdir: Path) -> None:
        self.stack = stack
        self.args = args
        self.workdir = workdir
        self.steps: list[dict[str, Any]] = []
        self.proxied_requests = 0
        self.credentials = load.assume_role(stack.sts_url, devstack.proxy_environment())

    def probe_for(self, proxy_name: str | None) -> Callable[[], dict[str, float]]:
        pids = {
            "emulator_cpu_s": self.stack.emulator_pid,
            "opa_cpu_s": self.stack.opa_pid,
            "stub_cpu_s": self.stack.stub_pid,
        }
        if proxy_name is not None:
            pids["proxy_cpu_s"] = self.stack.proxies[proxy_name].pid

        def probe() -> dict[str, float]:
            return {key: procstat.cpu_seconds(pid) for key, pid in pids.items()}

        return probe

    def request(self, target: str, op: load.Operation) -> load.Request:
        if target == "direct":
            # Signed now: every step is well inside the emulator's five-minute window.
            return load.direct_request(self.stack.emulator_tls_url, op, self.credentials)
        return load.proxy_request(self.stack.proxies[target].url, op)

    def step(
        self, scenario: str, target: str, op: load.Operation, rate: int, duration: float
    ) -> dict[str, Any]:
        _clear_emulator(self.stack)
        result = load.attack(
            self.args.vegeta,
            self.request(target, op),
            rate=rate,
            duration_s=duration,
            tls=self.stack.tls,
            workdir=self.workdir,
            cpus=self.stack.cores.load,
            probe=self.probe_for(None if target == "direct" else target),
        )
        record = {"scenario": scenario, "target": target, **load.summarize(result)}
        if target != "direct":
            self.proxied_requests += result.requests
            record["proxy_rss_bytes"] = procstat.rss_bytes(self.stack.proxies[target].pid)
        self.steps.append(record)
        print(
            f"  {scenario:<10} {target:<14} {rate:>5} rps: p50 {record['latency_ms']['p50']:.3f} "
            f"p99 {record['latency_ms']['p99']:.3f} ms ok {record['success_ratio']:.3f} "
            f"achieved {record['throughput']}",
            flush=True,
        )
        if target != "direct":
            _drain(self.stack.proxies[target].pid)
        time.sleep(0.3)
        return record


def _drain(pid: int, timeout_s: float = 15.0) -> None:
    """Wait until an overloaded proxy has worked off its backlog (under 5% of a core)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = procstat.cpu_seconds(pid)
        time.sleep(0.5)
        if procstat.cpu_seconds(pid) - before < 0.025:
            return


def _clear_emulator(stack: Stack) -> None:
    # The emulator keeps every request it saw; clearing keeps its memory (and speed) flat.
    for path in ("/_emulator/requests", "/_emulator/faults"):
        request = urllib.request.Request(stack.emulator_url + path, method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def _post_json(url: str, document: object) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def _compare(direct: dict[str, Any], proxied: dict[str, Any], variant: str) -> dict[str, Any]:
    d, p = direct["latency_ms"], proxied["latency_ms"]
    return {
        "scenario": direct["scenario"],
        "variant": variant,
        "rate": direct["rate"],
        "direct": direct,
        "proxy": proxied,
        "added_ms": {k: round(p[k] - d[k], 3) for k in ("p50", "p90", "p99")},
        "ratio": {k: round(p[k] / d[k], 2) if d[k] else None for k in ("p50", "p90", "p99")},
    }


def _saturate(
    run: Run, target: str, op: load.Operation, duration: float, ladder: Sequence[int]
) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    tried: list[dict[str, Any]] = []
    failed_at = None
    for rate in ladder:
        step = run.step("saturation", target, op, rate, duration)
        tried.append(
            {
                "rate": rate,
                "p99_ms": step["latency_ms"]["p99"],
                "success": step["success_ratio"],
                "throughput": step["throughput"],
            }
        )
        if not load.passes(step, P99_LIMIT_MS):
            failed_at = rate
            break
        best = step
    return {
        "max_rps": None if best is None else best["rate"],
        "at_max": best or {},
        "first_failure": failed_at,
        "ladder": tried,
        "ladder_exhausted": failed_at is None,
    }


def _sts_summary(stack: Stack, proxied_requests: int) -> dict[str, Any]:
    calls = _get_json(stack.emulator_url + "/_emulator/sts-calls")
    by_proxy = [c for c in calls if c.get("source_identity")]
    per_task: dict[str, int] = {}
    for call in by_proxy:
        task = str((call.get("tags") or {}).get("task", "<none>"))
        per_task[task] = per_task.get(task, 0) + 1
    proxies = sum(p.variant.workers for p in stack.proxies.values()) or 1
    return {
        "proxy_calls": len(by_proxy),
        "tasks": len(per_task),
        "per_task": per_task,
        "proxy_processes": proxies,
        "max_calls_per_task_per_proxy": max(per_task.values(), default=0) / proxies,
        "proxied_requests": proxied_requests,
        "note": "each proxy variant is its own process with its own credential cache",
    }


def _run_peers(
    stack: Stack, args: argparse.Namespace, workdir: Path, settings: dict[str, Any]
) -> dict[str, Any]:
    if importlib.util.find_spec("bench.peers") is None:
        return {"skipped": "bench/peers.py is not present"}
    from bench import peers  # type: ignore[attr-defined]

    context = {
        "emulator_url": stack.emulator_url,
        "emulator_tls_url": stack.emulator_tls_url,
        "sts_url": stack.sts_url,
        "workdir": workdir / "peers",
        "vegeta": args.vegeta,
        "tls": stack.tls,
        "cores": stack.cores,
        "rates": settings["rates"],
        "duration_s": settings["duration_s"],
        "quick": args.quick,
    }
    try:
        outcome: dict[str, Any] = peers.run_peers(**context)
    except Exception as exc:  # noqa: BLE001 - a peer failing must not lose the run's figures
        return {"error": f"{type(exc).__name__}: {exc}"}
    return outcome


def _machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": procstat.cpu_model(),
        "loadavg_start": procstat.loadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _versions(vegeta: Path) -> dict[str, str]:
    def first_line(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return (
            (done.stdout or done.stderr).strip().splitlines()[0]
            if (done.stdout or done.stderr)
            else ""
        )

    return {
        "vegeta": "v12.13.0 (" + first_line([str(vegeta), "-version"]).strip() + ")",
        "opa": first_line([devstack.find_opa(), "version"]),
    }


def execute(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = (args.workdir or args.out / f"run-{stamp}").resolve()
    scenarios = set(args.scenarios.split(","))
    unknown = scenarios - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {sorted(unknown)}")
    quick = args.quick
    rates = [
        int(r) for r in (args.rates or ("50,200" if quick else "100,500,1000,2000")).split(",")
    ]
    duration = args.duration or (1.0 if quick else 5.0)
    settings: dict[str, Any] = {
        "rates": rates,
        "duration_s": duration,
        "saturation_step_s": duration,
        "saturation_ladder": [r for r in SATURATION_LADDER if not quick or r <= 200],
        "p99_limit_ms": P99_LIMIT_MS,
        "stream_frames": 8,
        "stream_frame_delay_ms": 10,
        "stream_rounds": 2 if quick else 10,
        "stream_concurrency": 4 if quick else 10,
        "open_stream_levels": [10, 50] if quick else [100, 1000],
        "open_stream_frame_delay_ms": 1500 if quick else 6000,
        "scenarios": sorted(scenarios),
    }
    variants = [
        ProxyVariant("opa+audit", "opa", "file"),
        ProxyVariant("stub+audit", "stub", "file"),
        ProxyVariant("opa+noaudit", "opa", "off"),
    ]
    # Several workers need a shared task store (serve refuses "memory"): a local Redis.
    workers_missing: str | None = None
    if not proxy_supports_workers():
        workers_missing = "`serve --workers` not available"
    elif shutil.which("redis-server") is None:
        workers_missing = "no redis-server for the workers' shared task store"
    else:
        variants.append(ProxyVariant("opa+audit+2workers", "opa", "file", workers=2))
    cores = Cores.detect()
    result: dict[str, Any] = {
        "schema": 1,
        "started_at": started.isoformat().replace("+00:00", "Z"),
        "quick": quick,
        "machine": _machine(),
        "versions": _versions(args.vegeta),
        "pinning": {
            "proxy": cores.proxy,
            "emulator_opa_load": cores.load,
            "taskset": cores.proxy is not None,
        },
        "settings": settings,
        "variants": [v.__dict__ for v in variants],
        "workers_variant": "measured"
        if workers_missing is None
        else f"not measured: {workers_missing}",
    }
    with ExitStack() as exits:
        print(f"bench: starting the stack in {workdir}", flush=True)
        stack = start_stack(
            exits,
            workdir,
            variants,
            frame_delay_ms=settings["stream_frame_delay_ms"],
            frames=settings["stream_frames"],
            cores=cores,
        )
        run = Run(stack, args, workdir)
        ops = {"invoke": load.invoke_1kb(), "converse": load.converse()}
        # Warm-up (connections, credential caches, OPA's first evaluation), not recorded.
        for target in ["direct", *stack.proxies]:
            load.attack(
                args.vegeta,
                run.request(target, ops["invoke"]),
                rate=50,
                duration_s=1,
                tls=stack.tls,
                workdir=workdir,
                cpus=cores.load,
                probe=dict,
            )
        comparisons: list[dict[str, Any]] = []
        for name in ("invoke", "converse"):
            if name not in scenarios:
                continue
            print(f"bench: {name} rate steps", flush=True)
            for rate in rates:
                direct = run.step(name, "direct", ops[name], rate, duration)
                for variant in stack.proxies:
                    # Variants at the lowest rate only: their capacity is the saturation
                    # ladder's job, and overloaded steps are what makes a run long.
                    if variant != "opa+audit" and (name == "converse" or rate != rates[0]):
                        continue
                    comparisons.append(
                        _compare(
                            direct, run.step(name, variant, ops[name], rate, duration), variant
                        )
                    )
        result["comparisons"] = comparisons
        saturation: dict[str, Any] = {}
        if "saturation" in scenarios:
            print("bench: saturation (invoke)", flush=True)
            for target in ["direct", *stack.proxies]:
                label = "direct" if target == "direct" else f"proxy {target}"
                saturation[label] = _saturate(
                    run, target, ops["invoke"], duration, settings["saturation_ladder"]
                )
        result["saturation"] = saturation
        if "stream" in scenarios:
            print("bench: ConverseStream timings", flush=True)
            stream_op = load.converse_stream()
            result["streams"] = asyncio.run(
                streams.compare(
                    stack.tls,
                    lambda: run.request("direct", stream_op),
                    lambda: run.request("opa+audit", stream_op),
                    rounds=settings["stream_rounds"],
                    concurrency=settings["stream_concurrency"],
                )
            )
            run.proxied_requests += settings["stream_rounds"] * settings["stream_concurrency"] + 1
        if "open-streams" in scenarios:
            print("bench: open slow streams", flush=True)
            result["open_streams"] = _open_streams(run, settings)
        result["sts"] = _sts_summary(stack, run.proxied_requests)
        result["steps"] = run.steps
        if args.peers:
            print("bench: peers", flush=True)
            result["peers"] = _run_peers(stack, args, workdir, settings)
    result["machine"]["loadavg_end"] = procstat.loadavg()
    result["finished_at"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    result["targets"] = report.evaluate(result)
    path = args.out / f"{stamp}.json"
    dump(path, result)
    result["json_path"] = str(path)
    return result


OPEN_STREAM_RAMP = 100


def _open_streams(run: Run, settings: dict[str, Any]) -> dict[str, Any]:
    stack, name = run.stack, "opa+audit"
    pid = stack.proxies[name].pid
    op = load.converse_stream()
    delay = settings["open_stream_frame_delay_ms"]
    levels = []
    _clear_emulator(stack)
    time.sleep(1.0)
    baseline = procstat.rss_bytes(pid)
    for count in settings["open_stream_levels"]:
        _clear_emulator(stack)
        _post_json(
            stack.emulator_url + "/_emulator/faults",
            {"kind": "slow", "delay_ms": delay, "count": count},
        )
        level = asyncio.run(
            streams.hold_open(
                stack.tls,
                run.request(name, op),
                count,
                # The emulator's slow fault holds every frame, the first too:
                # each wave of `ramp` streams takes one frame delay to open.
                settle_timeout_s=delay / 1000 * (count / OPEN_STREAM_RAMP + 2),
                ramp=OPEN_STREAM_RAMP,
                measure=lambda: procstat.rss_bytes(pid),
            )
        )
        run.proxied_requests += count
        levels.append(level)
        print(f"  {count} open streams: {level}", flush=True)
        time.sleep(1.0)
    _clear_emulator(stack)
    first, last = levels[0], levels[-1]
    spread = last["open_with_first_frame"] - first["open_with_first_frame"]
    complete = all(lv["open_with_first_frame"] == lv["streams"] for lv in levels)
    # A slope from levels that did not all open would flatter the proxy: report none.
    slope = (last["rss_bytes"] - first["rss_bytes"]) / spread if complete and spread > 0 else None
    return {
        "proxy": name,
        "baseline_rss_bytes": baseline,
        "levels": levels,
        "all_streams_opened": complete,
        "rss_slope_bytes_per_stream": None if slope is None else round(max(slope, 0.0), 1),
        "frame_delay_ms": delay,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if not args.vegeta.is_file():
        print(f"bench: vegeta not found at {args.vegeta} (run `make bench`)", file=sys.stderr)
        return 2
    result = execute(args)
    print()
    print(report.render(result))
    print(f"\nfull results: {result['json_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
