"""proxy.metrics: refusals at a limit are counted by outcome and limit, from the
terminal record, with label values from closed sets only."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.metrics import Metrics


def _refused(outcome: str, detail: str | None) -> dict[str, Any]:
    return {"operation": "Converse", "outcome": outcome, "error": {"detail": detail}}


@pytest.mark.parametrize(
    ("fields", "labels"),
    [
        (_refused("throttled", "identity_rate"), ("throttled", "identity_rate")),
        (_refused("throttled", "task_concurrency"), ("throttled", "task_concurrency")),
        (_refused("throttled", "open_tasks"), ("throttled", "open_tasks")),
        (_refused("overloaded", "global_body_bytes"), ("overloaded", "global_body_bytes")),
        # A caller-shaped or unknown detail never becomes a label value.
        (_refused("throttled", "spiffe://example.org/x"), ("throttled", "other")),
        (_refused("overloaded", None), ("overloaded", "other")),
    ],
)
def test_limit_refusals_are_counted_by_limit(
    fields: dict[str, Any], labels: tuple[str, str]
) -> None:
    metrics = Metrics()
    metrics.observe_terminal(fields)
    metrics.observe_terminal({"operation": "Converse", "outcome": "ok"})
    assert metrics.limit_refusals.labels(*labels)._value.get() == 1
    assert metrics.requests.labels("Converse", fields["outcome"])._value.get() == 1
    total = sum(
        sample.value
        for metric in metrics.registry.collect()
        if metric.name == "bedrock_proxy_limit_refusals"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
    assert total == 1


def test_the_in_flight_gauges_are_set() -> None:
    metrics = Metrics()
    metrics.in_flight(3, 4096)
    assert metrics.inflight_requests._value.get() == 3
    assert metrics.inflight_body_bytes._value.get() == 4096
