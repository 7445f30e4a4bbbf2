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


def test_a_full_upstream_pool_and_a_client_timeout_have_their_own_labels() -> None:
    metrics = Metrics()
    metrics.observe_terminal(_refused("overloaded", "upstream_connections"))
    metrics.observe_terminal({"operation": "Converse", "outcome": "client_timeout"})
    assert metrics.limit_refusals.labels("overloaded", "upstream_connections")._value.get() == 1
    assert metrics.requests.labels("Converse", "client_timeout")._value.get() == 1


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("max_connections", "max_connections"),
        ("max_connections_per_peer", "max_connections_per_peer"),
        ("handshake_timeout", "handshake_timeout"),
        ("header_timeout", "header_timeout"),
        ("body_idle_timeout", "body_idle_timeout"),
        # OpenSSL's many reasons, and anything else, are one label.
        ("peer_did_not_return_a_certificate", "handshake_failed"),
        ("certificate_verify_failed: certificate has expired", "handshake_failed"),
        ("ConnectionResetError", "handshake_failed"),
    ],
)
def test_connection_cuts_are_counted_by_a_closed_set_of_reasons(reason: str, label: str) -> None:
    metrics = Metrics()
    metrics.connection_cut(reason)
    assert metrics.connections_cut.labels(label)._value.get() == 1
