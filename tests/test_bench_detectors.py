"""Smoke test of the detector benchmark: ``--quick`` runs and writes every figure.

No wall-clock assertions (the figures are the benchmark's, not a test's):
only that every input was measured at every size, with its cost per MB and
its ratio, and that the run found what its inputs hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.detectors import INPUTS, MB, QUICK_SIZES_MB

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-detectors")
    done = subprocess.run(
        [sys.executable, "-m", "bench.detectors", "--quick", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ratio" in done.stdout
    [path] = out.glob("detectors-*.json")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_every_input_is_measured_at_every_size(result: dict[str, Any]) -> None:
    sizes = [int(mb * MB) for mb in QUICK_SIZES_MB]
    assert result["sizes_bytes"] == sizes
    measured = {(row["input"], row["bytes"]) for row in result["rows"]}
    assert measured == {(item.name, size) for item in INPUTS for size in sizes}
    for row in result["rows"]:
        for figure in ("seconds", "wall_seconds", "seconds_per_mb", "findings"):
            assert isinstance(row[figure], int | float) and row[figure] >= 0, (row, figure)


def test_every_input_has_its_ratio(result: dict[str, Any]) -> None:
    assert set(result["ratios"]) == {item.name for item in INPUTS}
    assert all(ratio >= 1 for ratio in result["ratios"].values())
    assert result["worst_ratio"] == max(result["ratios"].values())
    assert result["machine"]["nproc"] >= 1


def test_the_inputs_hold_what_they_are_made_of(result: dict[str, Any]) -> None:
    findings = {row["input"]: row["findings"] for row in result["rows"]}
    assert findings["begin-lines"] > 0 and findings["addresses"] > 0
    assert findings["end-lines"] == findings["at-run"] == findings["digits-spaced"] == 0
