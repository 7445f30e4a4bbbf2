"""``python -m bench.detectors``: what the classification detectors cost on hostile text.

Each input repeats one unit made to give one detector family the most work:
BEGIN lines with no END line (the private-key pairing), runs of ``@`` and
long local parts (the e-mail walk back), digits with separators (the number
pass), ``eyJ`` and JWT headers, ``AKIA``, IBAN prefixes, base64-ish runs,
every family interleaved, and plain prose as a baseline. Each text is scanned
whole by ``scan_text`` (every family, as a request's text is) at 1, 5, 10 and
25 MB (``--quick``: 0.1 and 0.25 MB), without a deadline, so the full cost is
measured. ``seconds`` is the scanning thread's CPU time, the best of
``--repeat`` runs (3; 1 with ``--quick``): on a shared machine wall time
measures the neighbours too. Linear work shows as a flat cost per MB:
``ratio`` is an input's largest seconds-per-MB over its smallest (1.0 is
perfectly linear).

Prints a table and writes ``detectors-<timestamp>.json`` to ``--out``
(default bench/results/). No stack, no network: one process, one core.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import procstat
from bench.report import table
from proxy.policy.classify.detectors import scan_text

BENCH_DIR = Path(__file__).resolve().parent
MB = 1_000_000
FULL_SIZES_MB = (1.0, 5.0, 10.0, 25.0)
QUICK_SIZES_MB = (0.1, 0.25)

_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
_PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----\n"
_PROSE = (
    "The quarterly review covers 14 regions and 3 product lines. Revenue rose 4.2% "
    "while costs were flat; see the appendix (table 7) for details, or write to the "
    "finance team before 15 March. Version 2.3.1 of the report replaces 2.3.0.\n"
)


@dataclass(frozen=True)
class Input:
    name: str
    family: str  # the family the unit is made to load; every family scans it
    unit: str


INPUTS: tuple[Input, ...] = (
    Input("begin-lines", "private_key", "-----BEGIN PRIVATE KEY-----\n"),
    Input("end-lines", "private_key", "-----END RSA PRIVATE KEY-----\n"),
    Input("pem-blocks", "private_key", _PEM),
    Input("eyJ-run", "jwt", "eyJ"),
    Input("jwt-headers", "jwt", "eyJhbGciOiJIUzI1NiJ9."),
    Input("jwts", "jwt", _JWT + " "),
    Input("AKIA-run", "aws_access_key_id", "AKIA"),
    Input("key-ids", "aws_access_key_id", "AKIAIOSFODNN7EXAMPLE "),
    Input("at-run", "email", "@"),
    Input("long-local-parts", "email", "x" * 70 + "@a.b "),
    Input("addresses", "email", "a@b.cd "),
    Input("iban-prefixes", "iban", "DE89 "),
    Input("digits-spaced", "numbers", "1 "),
    Input("digits-parenthesised", "numbers", "(1) "),
    Input("cards", "numbers", "4111 1111 1111 1111 "),
    Input("base64-run", "tokens", "aB3+"),
    Input("tokens", "tokens", "ghp_16C7e42F292c6912E7710c838347Ae178B4a "),
    Input("interleaved", "all", "4111 1111 1111 1111 -----BEGIN PRIVATE KEY----- a@b.cd "),
    Input("prose", "baseline", _PROSE),
)


def text_of(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def measure(item: Input, size: int, repeat: int) -> dict[str, Any]:
    text = text_of(item.unit, size)
    runs = []
    for _ in range(repeat):
        gc.collect()
        wall, cpu = time.perf_counter(), time.thread_time()
        findings = len(scan_text(text))
        runs.append((time.thread_time() - cpu, time.perf_counter() - wall))
    cpu, wall = min(runs)
    return {
        "input": item.name,
        "family": item.family,
        "bytes": size,
        "seconds": cpu,
        "wall_seconds": wall,
        "seconds_per_mb": cpu / (size / MB),
        "findings": findings,
    }


def run(sizes_mb: Sequence[float], repeat: int) -> dict[str, Any]:
    sizes = [int(mb * MB) for mb in sizes_mb]
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    for item in INPUTS:
        measured = [measure(item, size, repeat) for size in sizes]
        per_mb = [row["seconds_per_mb"] for row in measured]
        ratios[item.name] = max(per_mb) / min(per_mb) if min(per_mb) > 0 else 0.0
        rows += measured
    return {
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": procstat.cpu_model(),
            "loadavg": procstat.loadavg(),
            "python": platform.python_version(),
        },
        "sizes_bytes": sizes,
        "repeat": repeat,
        "inputs": [{"name": i.name, "family": i.family, "unit": i.unit} for i in INPUTS],
        "rows": rows,
        "ratios": ratios,
        "worst_ratio": max(ratios.values()),
    }


def render(result: dict[str, Any]) -> str:
    last = result["sizes_bytes"][-1]
    rows = [
        [
            row["input"],
            row["family"],
            row["bytes"] / MB,
            row["seconds"],
            row["seconds_per_mb"],
            row["findings"],
            result["ratios"][row["input"]] if row["bytes"] == last else None,
        ]
        for row in result["rows"]
    ]
    header = ["input", "family", "MB", "cpu s", "s/MB", "findings", "ratio"]
    worst = max(result["ratios"], key=result["ratios"].__getitem__)
    return (
        table(rows, header)
        + f"\nratio = largest / smallest s/MB of an input; worst {result['worst_ratio']:.2f}"
        + f" ({worst})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.detectors", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="sizes 0.1 and 0.25 MB")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes in MB")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure, best kept")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sizes:
        sizes = tuple(float(s) for s in args.sizes.split(","))
    else:
        sizes = QUICK_SIZES_MB if args.quick else FULL_SIZES_MB
    repeat = args.repeat or (1 if args.quick else 3)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = run(sizes, repeat)
    result["started"] = stamp
    print(render(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"detectors-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfull results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
