"""Settings: one frozen, typed object, validated completely at start-up.

A configuration error is found when the proxy starts, never at the first
request, and the message names the key and what to do. Anything that weakens
security (plain HTTP to the upstream, OPA or STS, or plain ``redis://``, off
loopback) needs an explicit, loudly named option.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from proxy.audit.bound import (
    DEFAULT_MAX_RECORD_BYTES,
    MAX_MAX_RECORD_BYTES,
    MIN_MAX_RECORD_BYTES,
)
from proxy.errors import ConfigError
from proxy.request.body import MAX_JSON_CONTAINERS
from proxy.request.region import is_region

# AWS's own endpoints: the only upstream whose FIPS form the proxy knows.
AWS_UPSTREAM_URL = "https://bedrock-runtime.{region}.amazonaws.com"
AWS_FIPS_UPSTREAM_URL = "https://bedrock-runtime-fips.{region}.amazonaws.com"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True)
class AuditSettings:
    """The ``[audit]`` keys beyond ``path`` (see docs/audit.md)."""

    fsync: str = "always"  # "always": fsync per record; "batch": group fsync every batch_s
    batch_s: float = 0.005
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 60.0
    signing_key: Path | None = None
    format: str = "json"  # or "ocsf"
    rotate_bytes: int = 0  # 0: never by size
    rotate_seconds: float = 0  # 0: never by age
    connection_records_per_minute: int = 60
    # The longest line written; a longer record is cut down (docs/audit.md#record-size).
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES


@dataclass(frozen=True)
class LimitSettings:
    """What one caller can make the proxy hold (README, configuration; docs/api.md#limits).

    Every count is per worker process: with ``--workers N`` a caller can have
    N times as much in flight in all. Open tasks are counted in the task
    store, so with Redis that cap holds across workers and replicas.
    """

    # Objects and arrays one body may hold ('{' and '[' counted before the parse).
    max_json_containers: int = MAX_JSON_CONTAINERS
    # Request body bytes held at once: by everyone (past it 503), by one SPIFFE ID (429).
    inflight_body_bytes: int = 256 * MIB
    inflight_body_bytes_per_identity: int = 64 * MIB
    # A token bucket and a count of requests in flight per SPIFFE ID and per task.
    requests_per_second_per_identity: float = 50.0
    burst_per_identity: int = 100
    concurrent_requests_per_identity: int = 32
    requests_per_second_per_task: float = 20.0
    burst_per_task: int = 40
    concurrent_requests_per_task: int = 16
    # Rate buckets kept (least recently used forgotten first), identities and tasks each.
    tracked_callers: int = 10_000
    # [tasks] max_open_per_identity: tasks one SPIFFE ID may have open at once.
    open_tasks_per_identity: int = 16


@dataclass(frozen=True)
class ConnectionSettings:
    """``[connections]``: how long a client connection may take, and how many there may be.

    Both listeners; every count is per worker process (README, configuration).
    A connection past a count is closed at accept, before its TLS handshake;
    one past a deadline is cut. Each is counted and recorded (docs/audit.md).
    """

    # From accept to a finished TLS handshake.
    handshake_timeout_s: float = 10.0
    # From the handshake (or the first byte of a keep-alive connection's next
    # request) to the end of the request's headers.
    header_timeout_s: float = 5.0
    # The longest silence while a request body is incomplete and the proxy waits for it.
    body_idle_timeout_s: float = 10.0
    # An idle keep-alive connection between two requests.
    keepalive_timeout_s: float = 60.0
    max_connections: int = 4096
    max_connections_per_peer: int = 256
    # aiohttp's parser: headers per request, bytes of the request line and of each header line.
    max_headers: int = 128
    max_request_line_bytes: int = 8190
    max_header_line_bytes: int = 8190


@dataclass(frozen=True)
class Settings:
    data_listen: Listen
    admin_listen: Listen
    server_cert: Path
    server_key: Path
    trust_bundles: Mapping[str, Path]
    opa_url: str
    opa_timeout_s: float
    # None: a call that names no region is refused (docs/api.md#region).
    default_region: str | None
    default_account: str | None
    sts_endpoint: str | None
    sts_region: str
    sts_timeout_s: float
    max_session_seconds: int
    upstream_url: str
    upstream_connect_timeout_s: float
    upstream_read_timeout_s: float
    max_body_bytes: int
    audit_path: str
    insecure_upstream_http: bool = False
    insecure_opa_http: bool = False
    insecure_sts_http: bool = False
    insecure_redis_plaintext: bool = False
    audit: AuditSettings = AuditSettings()
    shutdown_grace_s: float = 30.0
    # "memory" (one process) or a redis:// / rediss:// URL shared by every replica.
    task_store: str = "memory"
    task_store_timeout_s: float = 0.5
    task_sweep_interval_s: float = 1.0
    # Wall-clock budget of one body's classification scan; past it the body is
    # scan_incomplete (restricted in the shipped policy), never an unbounded scan.
    scan_budget_s: float = 3.0
    # Body work over 64 KiB: processes for parse, scan and obligation edits (each
    # SPIFFE ID at most body_work_per_identity of them at once), threads for SigV4.
    body_work_processes: int = 2
    body_work_per_identity: int = 1
    body_work_threads: int = 2
    limits: LimitSettings = LimitSettings()
    connections: ConnectionSettings = ConnectionSettings()
    # The upstream pool: connections to Bedrock in use at once, in all and to one host.
    upstream_max_connections: int = 1024
    upstream_max_connections_per_host: int = 512

    def upstream_base(self, region: str, *, fips: bool = False) -> str:
        template = self.upstream_fips_url if fips else self.upstream_url
        if template is None:
            raise ValueError("upstream.url has no FIPS form; check upstream_fips_url first")
        return template.format(region=region).rstrip("/")

    @property
    def upstream_fips_url(self) -> str | None:
        """The FIPS form of ``upstream.url``: only AWS's own endpoint template has one."""
        return AWS_FIPS_UPSTREAM_URL if self.upstream_url.rstrip("/") == AWS_UPSTREAM_URL else None


_SECTIONS = {
    "listen",
    "tls",
    "trust_domains",
    "opa",
    "aws",
    "upstream",
    "limits",
    "audit",
    "tasks",
    "connections",
}


def load_settings(path: Path) -> Settings:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return settings_from_mapping(raw, base_dir=path.parent)


def settings_from_mapping(raw: Mapping[str, Any], *, base_dir: Path) -> Settings:
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise ConfigError(
            f"unknown config section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}"
        )
    reader = _Reader(raw, base_dir)
    settings = Settings(
        data_listen=reader.listen("listen", "data", "0.0.0.0:8443"),
        admin_listen=reader.listen("listen", "admin", "127.0.0.1:9443"),
        server_cert=reader.existing_file("tls", "server_cert"),
        server_key=reader.existing_file("tls", "server_key"),
        trust_bundles=reader.trust_bundles(),
        opa_url=reader.url("opa", "url", "http://127.0.0.1:8181"),
        opa_timeout_s=reader.millis("opa", "timeout_ms", 2000),
        default_region=reader.optional_region("aws", "default_region"),
        default_account=reader.account("aws", "default_account"),
        sts_endpoint=reader.optional_url("aws", "sts_endpoint"),
        sts_region=reader.region("aws", "sts_region", "us-east-1"),
        sts_timeout_s=reader.millis("aws", "sts_timeout_ms", 3000),
        max_session_seconds=reader.integer("aws", "max_session_seconds", 3600, 900, 43200),
        upstream_url=reader.string("upstream", "url", AWS_UPSTREAM_URL),
        upstream_connect_timeout_s=reader.millis("upstream", "connect_timeout_ms", 3000),
        upstream_read_timeout_s=reader.millis("upstream", "read_timeout_ms", 120_000),
        max_body_bytes=reader.integer("limits", "max_body_bytes", 25_000_000, 1, 25_000_000),
        audit_path=reader.string("audit", "path", "audit.log"),
        insecure_upstream_http=reader.boolean("upstream", "insecure_upstream_http", False),
        insecure_opa_http=reader.boolean("opa", "insecure_opa_http", False),
        insecure_sts_http=reader.boolean("aws", "insecure_sts_http", False),
        insecure_redis_plaintext=reader.boolean("tasks", "insecure_redis_plaintext", False),
        audit=reader.audit(),
        shutdown_grace_s=reader.millis("limits", "shutdown_grace_ms", 30_000),
        task_store=reader.task_store("tasks", "store", "memory"),
        task_store_timeout_s=reader.millis("tasks", "timeout_ms", 500),
        task_sweep_interval_s=reader.millis("tasks", "sweep_interval_ms", 1000),
        scan_budget_s=reader.integer("limits", "scan_budget_ms", 3000, 100, 60_000) / 1000,
        body_work_processes=reader.integer("limits", "body_work_processes", 2, 1, 64),
        body_work_per_identity=reader.integer("limits", "body_work_per_identity", 1, 1, 64),
        body_work_threads=reader.integer("limits", "body_work_threads", 2, 1, 16),
        limits=reader.limits(),
        connections=reader.connections(),
        upstream_max_connections=reader.integer("upstream", "max_connections", 1024, 1, 1_000_000),
        upstream_max_connections_per_host=reader.integer(
            "upstream", "max_connections_per_host", 512, 1, 1_000_000
        ),
    )
    reader.reject_unknown_keys()
    _check_upstream(settings)
    _check_connection_counts(settings)
    _check_body_budgets(settings)
    _check_plaintext_services(settings)
    return settings


def _check_upstream(settings: Settings) -> None:
    sample = settings.upstream_url.replace("{region}", settings.default_region or "us-east-1")
    parts = urlsplit(sample)
    if parts.scheme not in ("https", "http") or not parts.hostname or not _port_ok(parts):
        raise ConfigError(f"upstream.url {settings.upstream_url!r} must be an http(s) URL")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError("upstream.url must not carry a path or query")
    if parts.scheme == "http" and not (
        _is_loopback(parts.hostname) or settings.insecure_upstream_http
    ):
        raise ConfigError(
            "upstream.url uses plain HTTP to a non-loopback host; set "
            "upstream.insecure_upstream_http = true only if you really mean it"
        )


def _check_body_budgets(settings: Settings) -> None:
    limits = settings.limits
    # A budget smaller than one allowed body would refuse that body forever, with a
    # 429 that tells the caller to retry.
    if limits.inflight_body_bytes_per_identity < settings.max_body_bytes:
        raise ConfigError(
            "limits.inflight_body_bytes_per_identity must be at least limits.max_body_bytes "
            f"({settings.max_body_bytes}), or a body of the largest allowed size never fits"
        )
    if limits.inflight_body_bytes < limits.inflight_body_bytes_per_identity:
        raise ConfigError(
            "limits.inflight_body_bytes must be at least limits.inflight_body_bytes_per_identity "
            f"({limits.inflight_body_bytes_per_identity})"
        )


def _check_connection_counts(settings: Settings) -> None:
    # A per-peer or per-host count above the total would never be the one that refuses.
    pairs = [
        (
            "connections.max_connections_per_peer",
            settings.connections.max_connections_per_peer,
            "connections.max_connections",
            settings.connections.max_connections,
        ),
        (
            "upstream.max_connections_per_host",
            settings.upstream_max_connections_per_host,
            "upstream.max_connections",
            settings.upstream_max_connections,
        ),
    ]
    for part_key, part, total_key, total in pairs:
        if part > total:
            raise ConfigError(f"{part_key} ({part}) must be at most {total_key} ({total})")


def _check_plaintext_services(settings: Settings) -> None:
    # Off loopback, whoever is on the path could forge OPA's "allow", read the
    # STS session credentials, or rewrite task state: TLS unless asked by name.
    services = [
        ("opa.url", settings.opa_url, "http", "opa.insecure_opa_http", settings.insecure_opa_http),
        (
            "aws.sts_endpoint",
            settings.sts_endpoint,
            "http",
            "aws.insecure_sts_http",
            settings.insecure_sts_http,
        ),
        (
            "tasks.store",
            settings.task_store,
            "redis",
            "tasks.insecure_redis_plaintext",
            settings.insecure_redis_plaintext,
        ),
    ]
    for key, url, plain, option, allowed in services:
        parts = urlsplit(url or "")
        if parts.scheme == plain and not allowed and not _is_loopback(parts.hostname or ""):
            raise ConfigError(
                f"{key} uses plain {plain}:// (no TLS) to the non-loopback host "
                f"{parts.hostname!r}; use {plain}s:// or set {option} = true only if you "
                "really mean it"
            )


def _port_ok(parts: SplitResult) -> bool:
    # urlsplit defers port parsing; without this a bad port fails at first use.
    try:
        parts.port  # noqa: B018
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Reader:
    """Reads typed values out of the TOML tree and remembers which keys were used."""

    def __init__(self, raw: Mapping[str, Any], base_dir: Path) -> None:
        self._raw = raw
        self._base_dir = base_dir
        self._used: set[tuple[str, str]] = set()

    def _get(self, section: str, key: str, default: Any) -> Any:
        self._used.add((section, key))
        table = self._raw.get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{section}] must be a table")
        return table.get(key, default)

    def string(self, section: str, key: str, default: str | None = None) -> str:
        value = self._get(section, key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{section}.{key} must be a non-empty string")
        return value

    def boolean(self, section: str, key: str, default: bool) -> bool:
        value = self._get(section, key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{section}.{key} must be true or false")
        return value

    def integer(self, section: str, key: str, default: int, low: int, high: int) -> int:
        value = self._get(section, key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{section}.{key} must be an integer from {low} to {high}")
        return value

    def number(self, section: str, key: str, default: float, low: float, high: float) -> float:
        value = self._get(section, key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(f"{section}.{key} must be a number from {low:g} to {high:g}")
        return float(value)

    def millis(self, section: str, key: str, default: int) -> float:
        return self.integer(section, key, default, 1, 3_600_000) / 1000

    def listen(self, section: str, key: str, default: str) -> Listen:
        value = self.string(section, key, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{section}.{key} must be HOST:PORT, got {value!r}")
        return Listen(host.strip("[]"), int(port))

    def path(self, value: str) -> Path:
        candidate = Path(value)
        return candidate if candidate.is_absolute() else self._base_dir / candidate

    def existing_file(self, section: str, key: str) -> Path:
        path = self.path(self.string(section, key))
        if not path.is_file():
            raise ConfigError(f"{section}.{key}: file {path} does not exist")
        return path

    def trust_bundles(self) -> dict[str, Path]:
        self._used.add(("trust_domains", "*"))
        table = self._raw.get("trust_domains")
        if not isinstance(table, Mapping) or not table:
            raise ConfigError(
                "[trust_domains] must map each accepted trust domain to its bundle, "
                'e.g. "example.org" = "bundle.pem"'
            )
        bundles: dict[str, Path] = {}
        for domain, value in table.items():
            if not isinstance(value, str):
                raise ConfigError(f"trust_domains.{domain} must be a path to a PEM bundle")
            path = self.path(value)
            if not path.is_file():
                raise ConfigError(f"trust_domains.{domain}: bundle {path} does not exist")
            bundles[domain] = path
        return bundles

    def url(self, section: str, key: str, default: str) -> str:
        value = self.string(section, key, default)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or not _port_ok(parts):
            raise ConfigError(f"{section}.{key} must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def task_store(self, section: str, key: str, default: str) -> str:
        value = self.string(section, key, default)
        if value == "memory":
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or not _port_ok(parts):
            raise ConfigError(
                f'{section}.{key} must be "memory" or a redis:// or rediss:// URL, got {value!r}'
            )
        return value

    def choice(self, section: str, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.string(section, key, default)
        if value not in allowed:
            raise ConfigError(f"{section}.{key} must be one of {list(allowed)}, got {value!r}")
        return value

    def audit(self) -> AuditSettings:
        key = self._get("audit", "signing_key", None)
        if key is not None and not isinstance(key, str):
            raise ConfigError("audit.signing_key must be a path to an Ed25519 PEM key")
        signing_key = self.path(key) if key else None
        if signing_key is not None and not signing_key.is_file():
            raise ConfigError(
                f"audit.signing_key: file {signing_key} does not exist "
                "(create one with `bedrock-proxy audit keygen FILE`)"
            )
        return AuditSettings(
            fsync=self.choice("audit", "fsync", "always", ("always", "batch")),
            batch_s=self.integer("audit", "batch_ms", 5, 1, 1000) / 1000,
            checkpoint_every=self.integer("audit", "checkpoint_every", 1000, 1, 1_000_000),
            checkpoint_seconds=self.integer("audit", "checkpoint_seconds", 60, 1, 86_400),
            signing_key=signing_key,
            format=self.choice("audit", "format", "json", ("json", "ocsf")),
            rotate_bytes=self.integer("audit", "rotate_bytes", 0, 0, 1 << 40),
            rotate_seconds=self.integer("audit", "rotate_seconds", 0, 0, 31 * 86_400),
            connection_records_per_minute=self.integer(
                "audit", "connection_records_per_minute", 60, 0, 100_000
            ),
            max_record_bytes=self.integer(
                "audit",
                "max_record_bytes",
                DEFAULT_MAX_RECORD_BYTES,
                MIN_MAX_RECORD_BYTES,
                MAX_MAX_RECORD_BYTES,
            ),
        )

    def limits(self) -> LimitSettings:
        d = LimitSettings()
        per_second = (0.01, 1_000_000.0)
        return LimitSettings(
            max_json_containers=self.integer(
                "limits", "max_json_containers", d.max_json_containers, 100, MAX_JSON_CONTAINERS
            ),
            inflight_body_bytes=self.integer(
                "limits", "inflight_body_bytes", d.inflight_body_bytes, 1, 1 << 40
            ),
            inflight_body_bytes_per_identity=self.integer(
                "limits",
                "inflight_body_bytes_per_identity",
                d.inflight_body_bytes_per_identity,
                1,
                1 << 40,
            ),
            requests_per_second_per_identity=self.number(
                "limits",
                "requests_per_second_per_identity",
                d.requests_per_second_per_identity,
                *per_second,
            ),
            burst_per_identity=self.integer(
                "limits", "burst_per_identity", d.burst_per_identity, 1, 1_000_000
            ),
            concurrent_requests_per_identity=self.integer(
                "limits",
                "concurrent_requests_per_identity",
                d.concurrent_requests_per_identity,
                1,
                1_000_000,
            ),
            requests_per_second_per_task=self.number(
                "limits",
                "requests_per_second_per_task",
                d.requests_per_second_per_task,
                *per_second,
            ),
            burst_per_task=self.integer("limits", "burst_per_task", d.burst_per_task, 1, 1_000_000),
            concurrent_requests_per_task=self.integer(
                "limits",
                "concurrent_requests_per_task",
                d.concurrent_requests_per_task,
                1,
                1_000_000,
            ),
            tracked_callers=self.integer(
                "limits", "tracked_callers", d.tracked_callers, 100, 10_000_000
            ),
            open_tasks_per_identity=self.integer(
                "tasks", "max_open_per_identity", d.open_tasks_per_identity, 1, 100_000
            ),
        )

    def connections(self) -> ConnectionSettings:
        d = ConnectionSettings()
        section = "connections"

        def seconds(key: str, default_s: float, high_ms: int) -> float:
            return self.integer(section, key, round(default_s * 1000), 100, high_ms) / 1000

        return ConnectionSettings(
            handshake_timeout_s=seconds("handshake_timeout_ms", d.handshake_timeout_s, 60_000),
            header_timeout_s=seconds("header_timeout_ms", d.header_timeout_s, 60_000),
            body_idle_timeout_s=seconds("body_idle_timeout_ms", d.body_idle_timeout_s, 600_000),
            keepalive_timeout_s=seconds("keepalive_timeout_ms", d.keepalive_timeout_s, 3_600_000),
            max_connections=self.integer(
                section, "max_connections", d.max_connections, 1, 1_000_000
            ),
            max_connections_per_peer=self.integer(
                section, "max_connections_per_peer", d.max_connections_per_peer, 1, 1_000_000
            ),
            max_headers=self.integer(section, "max_headers", d.max_headers, 16, 1024),
            max_request_line_bytes=self.integer(
                section, "max_request_line_bytes", d.max_request_line_bytes, 1024, 65_536
            ),
            max_header_line_bytes=self.integer(
                section, "max_header_line_bytes", d.max_header_line_bytes, 1024, 65_536
            ),
        )

    def optional_url(self, section: str, key: str) -> str | None:
        if self._get(section, key, None) in (None, ""):
            return None
        return self.url(section, key, "")

    def region(self, section: str, key: str, default: str) -> str:
        value = self.string(section, key, default)
        if not is_region(value):
            raise ConfigError(f"{section}.{key} {value!r} is not an AWS region name")
        return value

    def optional_region(self, section: str, key: str) -> str | None:
        if self._get(section, key, None) is None:
            return None
        return self.region(section, key, "")

    def account(self, section: str, key: str) -> str | None:
        value = self._get(section, key, None)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) != 12 or not value.isdigit():
            raise ConfigError(f"{section}.{key} must be a 12-digit AWS account id as a string")
        return value

    def reject_unknown_keys(self) -> None:
        for section, table in self._raw.items():
            if section == "trust_domains" or not isinstance(table, Mapping):
                continue
            for key in table:
                if (section, key) not in self._used:
                    raise ConfigError(f"unknown config key {section}.{key}")
