"""Smoke test of the JSON memory benchmark: ``--quick`` runs and writes every figure.

The figures are the benchmark's (printed, never judged as timings); what is
asserted is what the pre-check promises: every shape the default limit
lets through held at most the bound ``proxy.request.body`` documents, and
the container floods it refuses were refused before the parse held more
than their text.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.json_memory import MB, QUICK_SIZES_MB, SHAPES

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-json-memory")
    done = subprocess.run(
        [sys.executable, "-m", "bench.json_memory", "--quick", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)
    [path] = out.glob("json-memory-*.json")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_every_shape_is_measured(result: dict[str, Any]) -> None:
    assert result["sizes_bytes"] == [int(mb * MB) for mb in QUICK_SIZES_MB]
    assert [row["shape"] for row in result["rows"]] == [shape.name for shape in SHAPES]
    for row in result["rows"]:
        for run in ("checked", "unchecked"):
            for figure in ("peak_bytes", "held_bytes", "peak_x", "held_x", "seconds"):
                assert row[run][figure] >= 0, (row, run, figure)


def test_floods_of_containers_are_refused_before_they_are_parsed(
    result: dict[str, Any],
) -> None:
    rows = {row["shape"]: row for row in result["rows"]}
    for shape in ("empty-objects", "empty-arrays", "nested-pairs", "one-key-objects"):
        assert rows[shape]["checked"]["refused"] == "json_too_complex"
        assert rows[shape]["checked"]["peak_x"] < 1.5
        assert rows[shape]["unchecked"]["peak_x"] > 15
    assert rows["prose"]["checked"]["refused"] is None


def test_what_is_accepted_holds_within_the_documented_bound(result: dict[str, Any]) -> None:
    for row in result["rows"]:
        if row["checked"]["refused"] is None:
            assert row["checked"]["peak_bytes"] <= (
                16 * row["bytes"] + 300 * row["containers_counted"] + 2048
            ), row
