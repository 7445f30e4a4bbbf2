"""Smoke test of the benchmark harness: it runs end to end and writes well-formed JSON.

No wall-clock assertions (benchmarks are not unit tests): only that every
figure is present and non-negative, and that direct and proxied calls both
succeeded. Loopback only; the run is bounded by a subprocess timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VEGETA = PROJECT_ROOT / ".cache/bin/vegeta"


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    assert VEGETA.is_file(), "vegeta is missing: `make test` and `make bench` build it"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--duration",
            "1",
            "--rates",
            "20",
            "--out",
            str(out),
            "--vegeta",
            str(VEGETA),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    loaded: dict[str, Any] = json.loads(files[0].read_text())
    return loaded


def _numbers(document: object) -> Iterator[float]:
    if isinstance(document, bool):
        return
    if isinstance(document, int | float):
        yield document
    elif isinstance(document, dict):
        for value in document.values():
            yield from _numbers(value)
    elif isinstance(document, list):
        for value in document:
            yield from _numbers(value)


def _without_signed_differences(result: dict[str, Any]) -> dict[str, Any]:
    # Added latency (proxy - direct) may legitimately be negative in noise; everything else not.
    kept = {k: v for k, v in result.items() if k not in ("comparisons", "streams", "open_streams")}
    kept["targets"] = [t for t in result["targets"] if not t["target"].startswith("added")]
    return kept


def test_result_has_every_section(result: dict[str, Any]) -> None:
    for key in (
        "machine",
        "pinning",
        "settings",
        "comparisons",
        "saturation",
        "streams",
        "open_streams",
        "sts",
        "steps",
        "targets",
    ):
        assert key in result, key
    assert result["machine"]["nproc"] >= 1
    assert len(result["machine"]["loadavg_start"]) == 3


def test_figures_are_non_negative(result: dict[str, Any]) -> None:
    assert all(n >= 0 for n in _numbers(_without_signed_differences(result)))
    for comparison in result["comparisons"]:
        for side in ("direct", "proxy"):
            assert all(n >= 0 for n in _numbers(comparison[side]))
    for side in ("direct", "proxy"):
        assert all(n >= 0 for n in _numbers(result["streams"][side]))
    assert result["open_streams"]["all_streams_opened"] is True
    assert result["open_streams"]["rss_slope_bytes_per_stream"] >= 0


def test_direct_and_proxied_calls_both_succeeded(result: dict[str, Any]) -> None:
    scenarios = {c["scenario"] for c in result["comparisons"]}
    assert scenarios == {"invoke", "converse"}
    for comparison in result["comparisons"]:
        for side in ("direct", "proxy"):
            step = comparison[side]
            assert step["requests"] > 0
            assert step["success_ratio"] == 1.0, step
            assert set(step["latency_ms"]) >= {"p50", "p90", "p99"}
        assert set(comparison["added_ms"]) == {"p50", "p90", "p99"}
    assert result["comparisons"][0]["proxy"]["proxy_cpu_s_per_1000"] > 0


def test_streams_pass_every_frame(result: dict[str, Any]) -> None:
    streams = result["streams"]
    assert streams["direct"]["ok"] == streams["direct"]["streams"] > 0
    assert streams["proxy"]["ok"] == streams["proxy"]["streams"] > 0
    assert streams["frames_in_equals_frames_out"] is True
    levels = result["open_streams"]["levels"]
    assert [lv["open_with_first_frame"] for lv in levels] == [lv["streams"] for lv in levels]


def test_proxy_assumed_roles_and_saturation_was_searched(result: dict[str, Any]) -> None:
    assert result["sts"]["proxy_calls"] >= 1
    assert result["sts"]["tasks"] >= 1
    assert "direct" in result["saturation"] and "proxy opa+audit" in result["saturation"]
    for search in result["saturation"].values():
        assert search["ladder"], search
