"""Prometheus metrics, served as ``/metrics`` on the admin listener.

One ``Metrics`` object per worker with its own registry (no global default
registry: no module-level mutable state). Request counts, tokens and TTFB are
derived from the terminal audit record, so metrics and audit can never
disagree about what happened; decision, upstream and audit-write latency are
timed where they happen. Label values come from closed sets (operation names
the router knows, outcome codes), never from caller strings, so a caller
cannot explode the series count. ``serve`` turns on prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh directory per run):
every worker, and the supervising parent, writes its values to a file there,
and whichever worker a scrape reaches answers with the sum of all of them, so
a worker that is restarted takes nothing its predecessor counted with it.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from proxy.dataplane.limits import LIMIT_KINDS
from proxy.dataplane.upstream import UPSTREAM_CONNECTIONS

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_KNOWN_OUTCOMES = frozenset(
    {
        "ok",
        "denied",
        "client_aborted",
        "upstream_error",
        "policy_unavailable",
        "credentials_unavailable",
        "invalid_request",
        "audit_unavailable",
        "internal_error",
        "state_unavailable",
        "client_timeout",
        "throttled",
        "overloaded",
    }
)
_LIMIT_OUTCOMES = frozenset({"throttled", "overloaded"})
# The limits a refusal's detail may name: the callers' and the upstream pool's.
_LIMITS = LIMIT_KINDS | {UPSTREAM_CONNECTIONS}
# The reasons a connection is cut for; OpenSSL's many handshake reasons are one label.
_CUT_REASONS = frozenset(
    {
        "max_connections",
        "max_connections_per_peer",
        "handshake_timeout",
        "header_timeout",
        "body_idle_timeout",
    }
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bedrock_proxy_requests",
            "Requests by operation and outcome",
            ["operation", "outcome"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "bedrock_proxy_decision_seconds",
            "OPA decision latency",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "bedrock_proxy_upstream_seconds",
            "Upstream call duration (to the end of the body)",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb_seconds = Histogram(
            "bedrock_proxy_ttfb_seconds",
            "Time to the first upstream byte",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "bedrock_proxy_tokens",
            "Model tokens by operation and direction",
            ["operation", "direction"],
            registry=r,
        )
        self.limit_refusals = Counter(
            "bedrock_proxy_limit_refusals",
            "Requests refused at a limit, by outcome (throttled, overloaded) and limit",
            ["outcome", "limit"],
            registry=r,
        )
        # Set by the data plane's limits (LimitGauges); summed over live workers.
        self.inflight_requests = Gauge(
            "bedrock_proxy_inflight_requests",
            "Data-plane requests in flight (to the end of their response)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight_body_bytes = Gauge(
            "bedrock_proxy_inflight_body_bytes",
            "Request body bytes reserved by the requests in flight",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.sts_calls = Counter(
            "bedrock_proxy_sts_calls", "STS AssumeRole calls by result", ["result"], registry=r
        )
        self.audit_write_seconds = Histogram(
            "bedrock_proxy_audit_write_seconds",
            "Audit write and fsync latency",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.connections_cut = Counter(
            "bedrock_proxy_connections_cut",
            "Client connections refused at accept, failed in the TLS handshake or cut, by reason",
            ["reason"],
            registry=r,
        )
        self.connections_open = Gauge(
            "bedrock_proxy_connections_open",
            "Client connections open (TLS handshakes included), by listener",
            ["listener"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.body_work_deaths = Counter(
            "bedrock_proxy_body_work_deaths",
            "Body-work processes that died mid-job (their pool is started afresh)",
            registry=r,
        )

    def connection_cut(self, reason: str) -> None:
        """A connection refused or cut (``proxy.identity.tls_accept``, ``proxy.request.deadlines``);
        every handshake failure that is not a timeout counts as ``handshake_failed``."""
        self.connections_cut.labels(reason if reason in _CUT_REASONS else "handshake_failed").inc()

    def observe_terminal(self, fields: dict[str, Any]) -> None:
        operation = str(fields.get("operation") or "unknown")
        outcome = fields.get("outcome")
        self.requests.labels(operation, outcome if outcome in _KNOWN_OUTCOMES else "other").inc()
        if outcome in _LIMIT_OUTCOMES:
            # The refusal's detail names its limit (proxy/dataplane/limits.py).
            limit = (fields.get("error") or {}).get("detail")
            self.limit_refusals.labels(outcome, limit if limit in _LIMITS else "other").inc()
        if isinstance(fields.get("ttfb_ms"), int | float):
            self.ttfb_seconds.labels(operation).observe(fields["ttfb_ms"] / 1000)
        usage = fields.get("usage") or {}
        for direction in ("input", "output"):
            count = usage.get(f"{direction}_tokens")
            if isinstance(count, int) and count >= 0:
                self.tokens.labels(operation, direction).inc(count)

    def in_flight(self, requests: int, body_bytes: int) -> None:
        """``LimitGauges``: what the data plane holds now."""
        self.inflight_requests.set(requests)
        self.inflight_body_bytes.set(body_bytes)

    def sts_hook(self, event_name: str, **kwargs: Any) -> None:
        """botocore ``after-call``/``after-call-error`` handler for AssumeRole."""
        if "exception" in kwargs:
            self.sts_calls.labels("error").inc()
            return
        parsed = kwargs.get("parsed") or {}
        status = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode")
        self.sts_calls.labels("ok" if status == 200 else "error").inc()

    async def handle(self, request: web.Request) -> web.Response:
        registry = self.registry
        shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=shared_dir)
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


class SupervisorMetrics:
    """What the ``serve`` parent process counts: workers that died on their own.

    The parent serves no /metrics; in multiprocess mode (always, under
    ``serve``) its values go to the shared directory like a worker's, so
    every scrape includes them.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.worker_deaths = Counter(
            "bedrock_proxy_worker_deaths",
            "Worker processes that died on their own (each is restarted), by cause",
            ["cause"],
            registry=self.registry,
        )

    def worker_died(self, pid: int, cause: str) -> None:
        self.worker_deaths.labels(cause).inc()
        shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared_dir:
            # Its gauges (connections open, requests in flight) no longer hold anything.
            mark_process_dead(pid, shared_dir)
