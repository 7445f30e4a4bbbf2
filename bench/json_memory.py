"""``python -m bench.json_memory``: what a parsed request body holds, by shape.

Each body is a Converse document (``{"a": [...]}``) made of one repeated
unit: empty objects or arrays side by side and nested in pairs, objects of
one key, deep nesting, tiny strings (the same and all different), empty
strings, small and large integers, floats, nulls, objects of unique keys,
realistic rows (``json.dumps`` of small records), prose, and prose with
one character outside the BMP (CPython then stores every character in four
bytes). Each is read by ``read_document`` twice under ``tracemalloc``: with
``limits.max_json_containers`` at its default, as the proxy does, and
without the pre-check, to show what it refuses. ``peak`` is the most the
parse held at once, ``held`` what the document keeps (it lives until the
call's response is relayed), both as multiples of the body's size, which the
in-flight body budget counts. Seconds are printed, never judged: tracemalloc
slows the parse several times over.

Prints a table and writes ``json-memory-<timestamp>.json`` to ``--out``
(default bench/results/). No stack, no network: one process.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import table
from proxy.errors import InvalidRequest
from proxy.request.body import MAX_JSON_CONTAINERS, read_document

BENCH_DIR = Path(__file__).resolve().parent
MB = 1_000_000
FULL_SIZES_MB = (1.0, 5.0)
QUICK_SIZES_MB = (1.0,)
_UNLIMITED = 1 << 62
_PROSE = "The quarterly review covers 14 regions, 3 product lines and the appendix. "


@dataclass(frozen=True)
class Shape:
    name: str
    # The i-th item of the array; items are joined by commas.
    item: Callable[[int], str]


SHAPES: tuple[Shape, ...] = (
    Shape("empty-objects", lambda i: "{}"),
    Shape("empty-arrays", lambda i: "[]"),
    Shape("nested-pairs", lambda i: "[{}]"),
    Shape("one-key-objects", lambda i: '{"a":0}'),
    Shape("deep", lambda i: ""),  # built apart: nesting, not items
    Shape("tiny-strings", lambda i: '"ab"'),
    Shape("unique-tiny-strings", lambda i: f'"{i:x}"'),
    Shape("empty-strings", lambda i: '""'),
    Shape("small-ints", lambda i: "0"),
    Shape("ints", lambda i: "1000"),
    Shape("floats", lambda i: "1.5"),
    Shape("nulls", lambda i: "null"),
    Shape("unique-keys", lambda i: f'{{"{i:x}":0,"k{i:x}":0,"j{i:x}":0,"q{i:x}":0}}'),
    Shape("rows", lambda i: json.dumps({"id": i, "name": f"n{i}", "ok": True})),
    Shape("prose", lambda i: json.dumps(_PROSE)),
    Shape("astral-prose", lambda i: json.dumps("\U0001f600" + _PROSE * 1000, ensure_ascii=False)),
)


def body_of(shape: Shape, size: int) -> bytes:
    """A Converse body of about ``size`` bytes made of ``shape``'s unit."""
    if shape.name == "deep":
        depth = size // 6
        return ('{"a":' * depth + "{}" + "}" * depth).encode()
    items: list[str] = []
    length = 8
    while length < size:
        items.append(shape.item(len(items)))
        length += len(items[-1].encode()) + 1
    return ('{"a":[' + ",".join(items) + "]}").encode()


def parse_cost(body: bytes, max_containers: int) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        try:
            document = read_document("Converse", body, max_containers=max_containers)
            refused = None
        except InvalidRequest as exc:
            document, refused = None, exc.code
        seconds = time.perf_counter() - started
        held, peak = (value - base for value in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    del document
    return {
        "refused": refused,
        "peak_bytes": peak,
        "held_bytes": held,
        "peak_x": peak / len(body),
        "held_x": held / len(body),
        "seconds": seconds,
    }


def measure(shape: Shape, size: int) -> dict[str, Any]:
    body = body_of(shape, size)
    return {
        "shape": shape.name,
        "bytes": len(body),
        "containers_counted": body.count(b"{") + body.count(b"["),
        "checked": parse_cost(body, MAX_JSON_CONTAINERS),
        "unchecked": parse_cost(body, _UNLIMITED),
    }


def run(sizes_mb: Sequence[float]) -> dict[str, Any]:
    sizes = [int(mb * MB) for mb in sizes_mb]
    rows = [measure(shape, size) for shape in SHAPES for size in sizes]
    accepted = [row for row in rows if row["checked"]["refused"] is None]
    return {
        "machine": {"python": platform.python_version()},
        "max_json_containers": MAX_JSON_CONTAINERS,
        "sizes_bytes": sizes,
        "rows": rows,
        # What any body the pre-check let through cost, as multiples of its size.
        "worst_accepted_peak_x": max(row["checked"]["peak_x"] for row in accepted),
        "worst_accepted_held_x": max(row["checked"]["held_x"] for row in accepted),
        "worst_unchecked_peak_x": max(row["unchecked"]["peak_x"] for row in rows),
    }


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            row["shape"],
            row["bytes"] / MB,
            row["containers_counted"],
            row["checked"]["refused"] or "parsed",
            row["checked"]["peak_x"],
            row["checked"]["held_x"],
            row["unchecked"]["peak_x"],
            row["unchecked"]["held_x"],
            row["unchecked"]["seconds"],
        ]
        for row in result["rows"]
    ]
    header = ["shape", "MB", "{ and [", "checked", "peak x", "held x", "unchecked peak x",
              "held x", "s"]  # fmt: skip
    return (
        table(rows, header)
        + f"\nmax_json_containers = {result['max_json_containers']}; accepted bodies: worst peak"
        + f" {result['worst_accepted_peak_x']:.1f}x, worst held"
        + f" {result['worst_accepted_held_x']:.1f}x; without the pre-check: worst peak"
        + f" {result['worst_unchecked_peak_x']:.1f}x"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.json_memory", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="size 1 MB")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes in MB")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sizes:
        sizes = tuple(float(s) for s in args.sizes.split(","))
    else:
        sizes = QUICK_SIZES_MB if args.quick else FULL_SIZES_MB
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = run(sizes)
    result["started"] = stamp
    print(render(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"json-memory-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfull results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
