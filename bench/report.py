"""The printed table and the evaluation against the issue's targets (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KIB = 1024


def _fmt(value: object, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    else:
        text = str(value)
    return text.rjust(width)


def table(rows: list[list[object]], header: list[str]) -> str:
    widths = [
        max(len(str(h)), *(len(_fmt(r[i], 0).strip()) for r in rows)) if rows else len(h)
        for i, h in enumerate(header)
    ]
    lines = [" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(_fmt(v, w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def comparison_rows(comparisons: list[Mapping[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for c in comparisons:
        d, p = c["direct"], c["proxy"]
        rows.append(
            [
                c["scenario"],
                c["variant"],
                c["rate"],
                d["latency_ms"]["p50"],
                p["latency_ms"]["p50"],
                c["added_ms"]["p50"],
                d["latency_ms"]["p99"],
                p["latency_ms"]["p99"],
                c["added_ms"]["p99"],
                f"{d['success_ratio']:.3f}/{p['success_ratio']:.3f}",
                p.get("proxy_cpu_s_per_1000"),
                p["cpu_utilisation"].get("proxy"),
            ]
        )
    return rows


COMPARISON_HEADER = [
    "scenario",
    "proxy variant",
    "rps",
    "p50 direct",
    "p50 proxy",
    "+p50",
    "p99 direct",
    "p99 proxy",
    "+p99",
    "ok d/p",
    "cpu s/1k",
    "proxy core",
]


def render(result: Mapping[str, Any]) -> str:
    parts = [
        f"bedrock-proxy bench {result['started_at']}  nproc={result['machine']['nproc']}  "
        f"cpu={result['machine']['cpu_model']}  load={result['machine']['loadavg_start']}  "
        f"pinning={result['pinning']}",
        "",
        "Latency in ms (vegeta, open loop, same TLS client for both); +p50/+p99 = proxy - direct",
        table(comparison_rows(result["comparisons"]), COMPARISON_HEADER),
        "",
        "Saturation (max rate with zero errors, p99 < "
        f"{result['settings']['p99_limit_ms']} ms, >= 95% of the rate achieved)",
        table(
            [
                [
                    name,
                    s["max_rps"],
                    s.get("at_max", {}).get("latency_ms", {}).get("p99"),
                    s.get("at_max", {}).get("proxy_cpu_s_per_1000"),
                    s.get("at_max", {}).get("cpu_utilisation", {}).get("proxy"),
                    s.get("at_max", {}).get("cpu_utilisation", {}).get("vegeta"),
                    s.get("first_failure"),
                ]
                for name, s in result["saturation"].items()
            ],
            ["target", "max rps", "p99 ms", "cpu s/1k", "proxy core", "vegeta core", "failed at"],
        ),
    ]
    streams = result.get("streams")
    if streams:
        d, p = streams["direct"], streams["proxy"]
        parts += [
            "",
            "ConverseStream (frames spaced in time; ms)",
            table(
                [
                    [
                        "ttfb p50",
                        d["ttfb_ms"]["p50"],
                        p["ttfb_ms"]["p50"],
                        streams["added_ms"]["ttfb_p50"],
                    ],
                    [
                        "ttfb p99",
                        d["ttfb_ms"]["p99"],
                        p["ttfb_ms"]["p99"],
                        streams["added_ms"]["ttfb_p99"],
                    ],
                    [
                        "gap p50",
                        d["gap_ms"]["p50"],
                        p["gap_ms"]["p50"],
                        streams["added_ms"]["gap_p50"],
                    ],
                    [
                        "gap p99",
                        d["gap_ms"]["p99"],
                        p["gap_ms"]["p99"],
                        streams["added_ms"]["gap_p99"],
                    ],
                    [
                        "frames",
                        d["frames_total"],
                        p["frames_total"],
                        streams["frames_in_equals_frames_out"],
                    ],
                ],
                ["", "direct", "proxy", "added"],
            ),
        ]
    held = result.get("open_streams")
    if held:
        parts += [
            "",
            "Open slow streams through the proxy (RSS of the proxy process tree)",
            table(
                [
                    [
                        lv["streams"],
                        lv["open_with_first_frame"],
                        round(lv["rss_bytes"] / KIB / KIB, 1),
                    ]
                    for lv in held["levels"]
                ],
                ["streams", "open", "rss MiB"],
            ),
            f"baseline RSS {held['baseline_rss_bytes'] / KIB / KIB:.1f} MiB; slope "
            + (
                f"{held['rss_slope_bytes_per_stream'] / KIB:.1f} KiB per open stream"
                if held["rss_slope_bytes_per_stream"] is not None
                else "not measured: not every stream opened (see levels[].first_error)"
            ),
        ]
    sts = result.get("sts", {})
    parts += [
        "",
        f"STS AssumeRole by the proxy: {sts.get('proxy_calls')} calls for {sts.get('tasks')} "
        f"task ids over {sts.get('proxied_requests')} proxied requests "
        f"(max {sts.get('max_calls_per_task_per_proxy')} per task per proxy process)",
        "",
        "Targets from the issue:",
        table(
            [[t["target"], t["limit"], t["measured"], t["met"]] for t in result["targets"]],
            ["target", "limit", "measured", "met"],
        ),
    ]
    if result.get("peers"):
        parts += ["", f"Peers: see JSON key 'peers' ({', '.join(result['peers'])})"]
    return "\n".join(parts)


def evaluate(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each issue target with what this run measured; ``met`` is None when not measured."""

    def at_rate(rate: int) -> Mapping[str, Any] | None:
        for c in result["comparisons"]:
            if c["scenario"] == "invoke" and c["variant"] == "opa+audit" and c["rate"] == rate:
                return c
        return None

    out: list[dict[str, Any]] = []
    low = at_rate(min(result["settings"]["rates"]))
    rate_label = min(result["settings"]["rates"])

    def add(
        target: str, limit: float, measured: float | None, higher_is_better: bool = False
    ) -> None:
        met = (
            None
            if measured is None
            else (measured >= limit if higher_is_better else measured <= limit)
        )
        out.append({"target": target, "limit": limit, "measured": measured, "met": met})

    add(f"added p50 ms @ {rate_label} rps (invoke)", 0.6, low["added_ms"]["p50"] if low else None)
    add(f"added p99 ms @ {rate_label} rps (invoke)", 3.0, low["added_ms"]["p99"] if low else None)
    sat = result["saturation"].get("proxy opa+audit")
    add("rps on one proxy core, opa+audit, p99<=20ms", 2000, sat["max_rps"] if sat else None, True)
    streams = result.get("streams")
    add("added stream ttfb p50 ms", 1.0, streams["added_ms"]["ttfb_p50"] if streams else None)
    add("added inter-frame gap p99 ms", 1.0, streams["added_ms"]["gap_p99"] if streams else None)
    held = result.get("open_streams")
    add(
        "KiB RSS per open stream",
        100,
        round(held["rss_slope_bytes_per_stream"] / KIB, 1)
        if held and held["rss_slope_bytes_per_stream"] is not None
        else None,
    )
    return out
