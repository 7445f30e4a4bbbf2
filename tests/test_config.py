"""proxy.config: one validated settings object; every mistake is a ConfigError that
names the key, found at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    ConnectionSettings,
    LimitSettings,
    Listen,
    Settings,
    load_settings,
    settings_from_mapping,
)
from proxy.errors import ConfigError

BASE: dict[str, dict[str, Any]] = {
    "tls": {"server_cert": "server.pem", "server_key": "server.key"},
    "trust_domains": {"example.org": "bundle.pem"},
}
DROP = object()  # marks a key (or a whole section) to delete from BASE


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    # The loader only checks that these exist; their content is read elsewhere.
    for name in ("server.pem", "server.key", "bundle.pem", "partner.pem"):
        (tmp_path / name).write_text("")
    return tmp_path


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string here
    return repr(value)


def _toml(overrides: dict[str, Any]) -> str:
    sections: dict[str, Any] = {name: dict(table) for name, table in BASE.items()}
    for name, table in overrides.items():
        if table is DROP:
            sections.pop(name, None)
        elif isinstance(table, dict):
            merged = sections.setdefault(name, {})
            for key, value in table.items():
                if value is DROP:
                    merged.pop(key, None)
                else:
                    merged[key] = value
        else:
            sections[name] = table
    lines: list[str] = []
    for name, table in sections.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{json.dumps(key)} = {_value(value)}" for key, value in table.items()]
        else:
            lines.insert(0, f"{name} = {_value(table)}")
    return "\n".join(lines) + "\n"


def _load(config_dir: Path, overrides: dict[str, Any]) -> Settings:
    path = config_dir / "proxy.toml"
    path.write_text(_toml(overrides))
    return load_settings(path)


def test_minimal_config_loads_with_defaults(config_dir: Path) -> None:
    path = config_dir / "proxy.toml"
    path.write_text(
        "[tls]\n"
        'server_cert = "server.pem"\n'
        'server_key = "server.key"\n'
        "[trust_domains]\n"
        '"example.org" = "bundle.pem"\n'
    )
    settings = load_settings(path)
    assert settings == Settings(
        data_listen=Listen("0.0.0.0", 8443),
        admin_listen=Listen("127.0.0.1", 9443),
        server_cert=config_dir / "server.pem",
        server_key=config_dir / "server.key",
        trust_bundles={"example.org": config_dir / "bundle.pem"},
        opa_url="http://127.0.0.1:8181",
        opa_timeout_s=2.0,
        # No built-in region: a call that names none is refused, not sent to us-east-1.
        default_region=None,
        default_account=None,
        sts_endpoint=None,
        sts_region="us-east-1",
        sts_timeout_s=3.0,
        max_session_seconds=3600,
        upstream_url="https://bedrock-runtime.{region}.amazonaws.com",
        upstream_connect_timeout_s=3.0,
        upstream_read_timeout_s=120.0,
        max_body_bytes=25_000_000,
        audit_path="audit.log",
        insecure_upstream_http=False,
    )
    assert settings.upstream_base("eu-west-1") == "https://bedrock-runtime.eu-west-1.amazonaws.com"


def test_full_config_loads(config_dir: Path) -> None:
    settings = _load(
        config_dir,
        {
            "listen": {"data": "[::1]:0", "admin": "127.0.0.1:9000"},
            "tls": {"server_cert": str(config_dir / "server.pem")},
            "trust_domains": {"partner.test": "partner.pem"},
            "opa": {"url": "https://opa.internal:8181/", "timeout_ms": 250},
            "aws": {
                "default_region": "eu-central-1",
                "default_account": "123456789012",
                "sts_endpoint": "http://127.0.0.1:5000",
                "sts_region": "eu-central-1",
                "sts_timeout_ms": 1000,
                "max_session_seconds": 900,
            },
            "upstream": {
                "url": "http://127.0.0.1:4567",
                "connect_timeout_ms": 100,
                "read_timeout_ms": 3_600_000,
            },
            "limits": {"max_body_bytes": 1},
            "audit": {"path": "-"},
        },
    )
    assert settings.data_listen == Listen("::1", 0)
    assert settings.admin_listen == Listen("127.0.0.1", 9000)
    assert settings.server_cert == config_dir / "server.pem"
    assert settings.trust_bundles == {
        "example.org": config_dir / "bundle.pem",
        "partner.test": config_dir / "partner.pem",
    }
    assert settings.opa_url == "https://opa.internal:8181"
    assert settings.opa_timeout_s == 0.25
    assert settings.default_account == "123456789012"
    assert settings.sts_endpoint == "http://127.0.0.1:5000"
    assert settings.max_session_seconds == 900
    assert settings.upstream_base("eu-central-1") == "http://127.0.0.1:4567"
    assert settings.upstream_read_timeout_s == 3600.0
    assert settings.max_body_bytes == 1
    assert settings.audit_path == "-"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        # structure
        ({"bogus": {"x": 1}}, ["bogus"]),
        ({"opa": {"timeout": 5}}, ["opa.timeout"]),
        ({"upstream": {"insecure": True}}, ["upstream.insecure"]),
        ({"listen": {"data": "0.0.0.0:8443", "extra": "x"}}, ["listen.extra"]),
        ({"listen": 5}, ["[listen]"]),
        # listen
        ({"listen": {"data": "8443"}}, ["listen.data"]),
        ({"listen": {"data": ":8443"}}, ["listen.data"]),
        ({"listen": {"data": "0.0.0.0:"}}, ["listen.data"]),
        ({"listen": {"data": "0.0.0.0:99999"}}, ["listen.data"]),
        ({"listen": {"data": "0.0.0.0:-1"}}, ["listen.data"]),
        ({"listen": {"admin": "localhost:http"}}, ["listen.admin"]),
        ({"listen": {"admin": 9443}}, ["listen.admin"]),
        ({"listen": {"admin": ""}}, ["listen.admin"]),
        # tls files
        ({"tls": {"server_cert": "missing.pem"}}, ["tls.server_cert", "missing.pem"]),
        ({"tls": {"server_key": "missing.key"}}, ["tls.server_key", "missing.key"]),
        ({"tls": {"server_key": DROP}}, ["tls.server_key"]),
        ({"tls": {"server_cert": "."}}, ["tls.server_cert"]),  # a directory, not a file
        ({"tls": DROP}, ["tls.server_cert"]),
        # trust domains
        ({"trust_domains": DROP}, ["trust_domains"]),
        ({"trust_domains": {"example.org": DROP}}, ["trust_domains"]),
        (
            {"trust_domains": {"partner.test": "nope.pem"}},
            ["trust_domains.partner.test", "nope.pem"],
        ),
        ({"trust_domains": {"partner.test": 5}}, ["trust_domains.partner.test"]),
        ({"trust_domains": "bundle.pem"}, ["trust_domains"]),
        # region / account
        ({"aws": {"default_region": "US-EAST-1"}}, ["aws.default_region"]),
        ({"aws": {"default_region": "useast1"}}, ["aws.default_region"]),
        ({"aws": {"default_region": ""}}, ["aws.default_region"]),
        ({"aws": {"sts_region": "mars-1"}}, ["aws.sts_region"]),
        ({"aws": {"default_account": "12345"}}, ["aws.default_account"]),
        ({"aws": {"default_account": "12345678901a"}}, ["aws.default_account"]),
        ({"aws": {"default_account": 123456789012}}, ["aws.default_account"]),
        # URLs
        ({"opa": {"url": "ftp://127.0.0.1:8181"}}, ["opa.url"]),
        ({"opa": {"url": "127.0.0.1:8181"}}, ["opa.url"]),
        ({"opa": {"url": "http://"}}, ["opa.url"]),
        ({"opa": {"url": "http://127.0.0.1:99999"}}, ["opa.url"]),
        ({"opa": {"url": "http://127.0.0.1:port"}}, ["opa.url"]),
        ({"opa": {"url": 8181}}, ["opa.url"]),
        ({"aws": {"sts_endpoint": "localhost:5000"}}, ["aws.sts_endpoint"]),
        ({"aws": {"sts_endpoint": "http://127.0.0.1:70000"}}, ["aws.sts_endpoint"]),
        ({"upstream": {"url": "ftp://bedrock.example.com"}}, ["upstream.url"]),
        ({"upstream": {"url": "https://bedrock.example.com/v1"}}, ["upstream.url"]),
        ({"upstream": {"url": "https://bedrock.example.com?x=1"}}, ["upstream.url"]),
        ({"upstream": {"url": "https://bedrock.example.com:99999"}}, ["upstream.url"]),
        (
            {"upstream": {"url": "http://bedrock.example.com"}},
            ["upstream.url", "insecure_upstream_http"],
        ),
        ({"upstream": {"url": "http://10.0.0.5:8080"}}, ["upstream.url", "insecure_upstream_http"]),
        (
            {"upstream": {"url": "http://localhost.example.com"}},
            ["upstream.url", "insecure_upstream_http"],
        ),
        ({"upstream": {"insecure_upstream_http": "yes"}}, ["upstream.insecure_upstream_http"]),
        ({"upstream": {"insecure_upstream_http": 1}}, ["upstream.insecure_upstream_http"]),
        # limits
        ({"limits": {"max_body_bytes": 0}}, ["limits.max_body_bytes"]),
        ({"limits": {"max_body_bytes": -1}}, ["limits.max_body_bytes"]),
        ({"limits": {"max_body_bytes": 25_000_001}}, ["limits.max_body_bytes"]),
        ({"limits": {"max_body_bytes": "1000"}}, ["limits.max_body_bytes"]),
        ({"limits": {"max_body_bytes": True}}, ["limits.max_body_bytes"]),
        ({"limits": {"max_body_bytes": 1000.0}}, ["limits.max_body_bytes"]),
        ({"limits": {"scan_budget_ms": 99}}, ["limits.scan_budget_ms"]),
        ({"limits": {"scan_budget_ms": 60_001}}, ["limits.scan_budget_ms"]),
        ({"limits": {"scan_budget_ms": 1.5}}, ["limits.scan_budget_ms"]),
        ({"limits": {"body_work_threads": 0}}, ["limits.body_work_threads"]),
        ({"limits": {"body_work_threads": 17}}, ["limits.body_work_threads"]),
        ({"limits": {"body_work_threads": True}}, ["limits.body_work_threads"]),
        ({"aws": {"max_session_seconds": 899}}, ["aws.max_session_seconds"]),
        ({"aws": {"max_session_seconds": 43201}}, ["aws.max_session_seconds"]),
        # timeouts
        ({"opa": {"timeout_ms": 1.5}}, ["opa.timeout_ms"]),
        ({"opa": {"timeout_ms": "500"}}, ["opa.timeout_ms"]),
        ({"opa": {"timeout_ms": 0}}, ["opa.timeout_ms"]),
        ({"opa": {"timeout_ms": True}}, ["opa.timeout_ms"]),
        ({"opa": {"timeout_ms": 3_600_001}}, ["opa.timeout_ms"]),
        ({"aws": {"sts_timeout_ms": 2.5}}, ["aws.sts_timeout_ms"]),
        ({"upstream": {"connect_timeout_ms": "3s"}}, ["upstream.connect_timeout_ms"]),
        ({"upstream": {"read_timeout_ms": -1}}, ["upstream.read_timeout_ms"]),
        # audit
        ({"audit": {"path": ""}}, ["audit.path"]),
        ({"audit": {"path": 5}}, ["audit.path"]),
        ({"audit": {"max_record_bytes": 32767}}, ["audit.max_record_bytes", "32768"]),
        ({"audit": {"max_record_bytes": 64 * 1024 * 1024 + 1}}, ["audit.max_record_bytes"]),
        ({"audit": {"max_record_bytes": "64KiB"}}, ["audit.max_record_bytes"]),
    ],
)
def test_bad_config_names_the_key(
    config_dir: Path, overrides: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(config_dir, overrides)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4567",
        "http://127.9.9.9",
        "http://localhost:4567",
        "http://[::1]:4567",
        "https://bedrock.example.com",
        "https://bedrock-runtime.{region}.amazonaws.com",
    ],
)
def test_upstream_https_or_loopback_http_is_allowed(config_dir: Path, url: str) -> None:
    settings = _load(config_dir, {"upstream": {"url": url}})
    assert settings.upstream_url == url
    assert settings.insecure_upstream_http is False


@pytest.mark.parametrize(
    "url", ["http://bedrock.example.com", "http://10.0.0.5:8080", "http://emulator:4567"]
)
def test_plain_http_off_loopback_needs_the_loud_option(config_dir: Path, url: str) -> None:
    settings = _load(config_dir, {"upstream": {"url": url, "insecure_upstream_http": True}})
    assert settings.upstream_url == url
    assert settings.insecure_upstream_http is True


# Services the proxy talks to besides the upstream: (section, URL key, plain scheme,
# the loud option that allows it off loopback, also the name of its Settings field).
PLAINTEXT_SERVICES = [
    ("opa", "url", "http", "insecure_opa_http"),
    ("aws", "sts_endpoint", "http", "insecure_sts_http"),
    ("tasks", "store", "redis", "insecure_redis_plaintext"),
]
OFF_LOOPBACK = ["opa.internal", "10.0.0.5", "[fd00::5]", "localhost.example.com", "127.1.nip.io"]
LOOPBACK = ["127.0.0.1", "127.9.9.9", "localhost", "[::1]"]


@pytest.mark.parametrize(("section", "key", "plain", "option"), PLAINTEXT_SERVICES)
@pytest.mark.parametrize("host", OFF_LOOPBACK)
def test_plaintext_service_off_loopback_is_refused_naming_the_setting(
    config_dir: Path, section: str, key: str, plain: str, option: str, host: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(config_dir, {section: {key: f"{plain}://{host}:1234"}})
    message = str(info.value)
    assert f"{section}.{key}" in message
    assert f"{section}.{option} = true" in message
    assert f"{plain}s://" in message


@pytest.mark.parametrize(("section", "key", "plain", "option"), PLAINTEXT_SERVICES)
@pytest.mark.parametrize(
    ("url", "opt_in"),
    [(f"{{plain}}://{host}:1234", False) for host in LOOPBACK]
    + [(f"{{plain}}s://{host}:1234", False) for host in OFF_LOOPBACK]
    + [(f"{{plain}}://{host}:1234", True) for host in OFF_LOOPBACK],
)
def test_plaintext_service_on_loopback_over_tls_or_opted_in_is_allowed(
    config_dir: Path, section: str, key: str, plain: str, option: str, url: str, opt_in: bool
) -> None:
    table: dict[str, Any] = {key: url.format(plain=plain)}
    if opt_in:
        table[option] = True
    settings = _load(config_dir, {section: table})
    assert getattr(settings, option) is opt_in


@pytest.mark.parametrize(("section", "key", "plain", "option"), PLAINTEXT_SERVICES)
def test_plaintext_option_must_be_a_boolean(
    config_dir: Path, section: str, key: str, plain: str, option: str
) -> None:
    with pytest.raises(ConfigError, match=f"{section}.{option} must be true or false"):
        _load(config_dir, {section: {option: "yes"}})


def test_default_region_is_read_when_named(config_dir: Path) -> None:
    assert _load(config_dir, {"aws": {"default_region": "us-west-2"}}).default_region == "us-west-2"


@pytest.mark.parametrize(
    ("url", "fips"),
    [
        # AWS's own endpoints: the FIPS form is AWS's FIPS endpoint of the same region.
        (
            "https://bedrock-runtime.{region}.amazonaws.com",
            "https://bedrock-runtime-fips.us-west-2.amazonaws.com",
        ),
        (
            "https://bedrock-runtime.{region}.amazonaws.com/",
            "https://bedrock-runtime-fips.us-west-2.amazonaws.com",
        ),
        # Anything else (the emulator, a VPC endpoint, a fixed region) has none the proxy knows.
        ("http://127.0.0.1:4567", None),
        ("https://bedrock-runtime.us-west-2.amazonaws.com", None),
        ("https://vpce-0abc.bedrock-runtime.{region}.vpce.amazonaws.com", None),
        ("https://bedrock-runtime.{region}.amazonaws.com.cn", None),
    ],
)
def test_fips_upstream_only_for_aws_endpoints(config_dir: Path, url: str, fips: str | None) -> None:
    settings = _load(config_dir, {"upstream": {"url": url}})
    if fips is None:
        assert settings.upstream_fips_url is None
        with pytest.raises(ValueError, match="no FIPS form"):
            settings.upstream_base("us-west-2", fips=True)
    else:
        assert settings.upstream_base("us-west-2", fips=True) == fips
        assert settings.upstream_base("us-west-2") == url.rstrip("/").format(region="us-west-2")


@pytest.mark.parametrize("max_body", [1, 1024, 25_000_000])
def test_max_body_bytes_bounds_accepted(config_dir: Path, max_body: int) -> None:
    assert _load(config_dir, {"limits": {"max_body_bytes": max_body}}).max_body_bytes == max_body


def test_scan_budget_and_body_threads_are_read(config_dir: Path) -> None:
    limits = {"scan_budget_ms": 750, "body_work_threads": 4}
    settings = _load(config_dir, {"limits": limits})
    assert (settings.scan_budget_s, settings.body_work_threads) == (0.75, 4)
    assert (_load(config_dir, {}).scan_budget_s, _load(config_dir, {}).body_work_threads) == (3, 2)


@pytest.mark.parametrize(
    ("configured", "expected"),
    [(None, 256 * 1024), (32 * 1024, 32 * 1024), (64 * 1024 * 1024, 64 * 1024 * 1024)],
)
def test_max_record_bytes(config_dir: Path, configured: int | None, expected: int) -> None:
    audit = {} if configured is None else {"max_record_bytes": configured}
    assert _load(config_dir, {"audit": audit}).audit.max_record_bytes == expected


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text("[tls\nserver_cert = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)


def test_relative_paths_resolve_against_base_dir(config_dir: Path) -> None:
    settings = settings_from_mapping(BASE, base_dir=config_dir)
    assert settings.server_key == config_dir / "server.key"
    with pytest.raises(ConfigError, match="tls.server_cert"):
        settings_from_mapping(BASE, base_dir=config_dir / "elsewhere")


def test_caller_limits_default_to_documented_values(config_dir: Path) -> None:
    limits = _load(config_dir, {}).limits
    assert limits == LimitSettings()
    assert (limits.inflight_body_bytes, limits.inflight_body_bytes_per_identity) == (
        256 * 1024 * 1024,
        64 * 1024 * 1024,
    )
    assert (limits.requests_per_second_per_identity, limits.burst_per_identity) == (50.0, 100)
    assert limits.concurrent_requests_per_identity == 32
    assert (limits.requests_per_second_per_task, limits.burst_per_task) == (20.0, 40)
    assert limits.concurrent_requests_per_task == 16
    assert (limits.max_json_containers, limits.tracked_callers) == (100_000, 10_000)
    assert limits.open_tasks_per_identity == 16


def test_caller_limits_are_read(config_dir: Path) -> None:
    settings = _load(
        config_dir,
        {
            "limits": {
                "max_body_bytes": 1000,
                "max_json_containers": 500,
                "inflight_body_bytes": 3000,
                "inflight_body_bytes_per_identity": 1000,
                "requests_per_second_per_identity": 0.5,
                "burst_per_identity": 2,
                "concurrent_requests_per_identity": 3,
                "requests_per_second_per_task": 7,
                "burst_per_task": 1,
                "concurrent_requests_per_task": 1,
                "tracked_callers": 100,
            },
            "tasks": {"max_open_per_identity": 2},
        },
    )
    assert settings.limits == LimitSettings(
        max_json_containers=500,
        inflight_body_bytes=3000,
        inflight_body_bytes_per_identity=1000,
        requests_per_second_per_identity=0.5,
        burst_per_identity=2,
        concurrent_requests_per_identity=3,
        requests_per_second_per_task=7.0,
        burst_per_task=1,
        concurrent_requests_per_task=1,
        tracked_callers=100,
        open_tasks_per_identity=2,
    )


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"limits": {"max_json_containers": 100_001}}, ["limits.max_json_containers", "100000"]),
        ({"limits": {"max_json_containers": 99}}, ["limits.max_json_containers"]),
        ({"limits": {"requests_per_second_per_identity": 0}}, ["requests_per_second_per_identity"]),
        ({"limits": {"requests_per_second_per_task": "5"}}, ["requests_per_second_per_task"]),
        ({"limits": {"requests_per_second_per_task": True}}, ["requests_per_second_per_task"]),
        ({"limits": {"burst_per_identity": 0}}, ["limits.burst_per_identity"]),
        ({"limits": {"burst_per_task": 1.5}}, ["limits.burst_per_task"]),
        ({"limits": {"concurrent_requests_per_identity": 0}}, ["concurrent_requests_per_identity"]),
        ({"limits": {"concurrent_requests_per_task": -1}}, ["concurrent_requests_per_task"]),
        ({"limits": {"tracked_callers": 99}}, ["limits.tracked_callers"]),
        ({"tasks": {"max_open_per_identity": 0}}, ["tasks.max_open_per_identity"]),
        # A budget that cannot hold one body of the largest allowed size, or a
        # global one smaller than one identity's.
        (
            {"limits": {"inflight_body_bytes_per_identity": 24_999_999}},
            ["limits.inflight_body_bytes_per_identity", "limits.max_body_bytes", "25000000"],
        ),
        (
            {"limits": {"inflight_body_bytes": 60 * 1024 * 1024}},
            ["limits.inflight_body_bytes", "limits.inflight_body_bytes_per_identity"],
        ),
    ],
)
def test_bad_caller_limits_name_the_key(
    config_dir: Path, overrides: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(config_dir, overrides)
    for name in names:
        assert name in str(info.value)


def test_connection_limits_default_to_documented_values(config_dir: Path) -> None:
    settings = _load(config_dir, {})
    assert settings.connections == ConnectionSettings(
        handshake_timeout_s=10.0,
        header_timeout_s=5.0,
        body_idle_timeout_s=10.0,
        keepalive_timeout_s=60.0,
        max_connections=4096,
        max_connections_per_peer=256,
        max_headers=128,
        max_request_line_bytes=8190,
        max_header_line_bytes=8190,
    )
    assert (settings.upstream_max_connections, settings.upstream_max_connections_per_host) == (
        1024,
        512,
    )


def test_connection_limits_are_read(config_dir: Path) -> None:
    settings = _load(
        config_dir,
        {
            "connections": {
                "handshake_timeout_ms": 250,
                "header_timeout_ms": 500,
                "body_idle_timeout_ms": 600_000,
                "keepalive_timeout_ms": 100,
                "max_connections": 10,
                "max_connections_per_peer": 10,
                "max_headers": 16,
                "max_request_line_bytes": 1024,
                "max_header_line_bytes": 65_536,
            },
            "upstream": {"max_connections": 2, "max_connections_per_host": 1},
        },
    )
    assert settings.connections == ConnectionSettings(
        handshake_timeout_s=0.25,
        header_timeout_s=0.5,
        body_idle_timeout_s=600.0,
        keepalive_timeout_s=0.1,
        max_connections=10,
        max_connections_per_peer=10,
        max_headers=16,
        max_request_line_bytes=1024,
        max_header_line_bytes=65_536,
    )
    assert (settings.upstream_max_connections, settings.upstream_max_connections_per_host) == (
        2,
        1,
    )


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"connections": {"handshake_timeout_ms": 99}}, ["connections.handshake_timeout_ms"]),
        ({"connections": {"handshake_timeout_ms": 60_001}}, ["connections.handshake_timeout_ms"]),
        ({"connections": {"header_timeout_ms": 0.5}}, ["connections.header_timeout_ms"]),
        ({"connections": {"body_idle_timeout_ms": "10s"}}, ["connections.body_idle_timeout_ms"]),
        ({"connections": {"keepalive_timeout_ms": 0}}, ["connections.keepalive_timeout_ms"]),
        ({"connections": {"max_connections": 0}}, ["connections.max_connections"]),
        ({"connections": {"max_connections_per_peer": True}}, ["max_connections_per_peer"]),
        ({"connections": {"max_headers": 15}}, ["connections.max_headers"]),
        ({"connections": {"max_request_line_bytes": 1023}}, ["max_request_line_bytes"]),
        ({"connections": {"max_header_line_bytes": 65_537}}, ["max_header_line_bytes"]),
        ({"connections": {"idle_timeout_ms": 5}}, ["connections.idle_timeout_ms"]),
        ({"upstream": {"max_connections": 0}}, ["upstream.max_connections"]),
        ({"upstream": {"max_connections_per_host": 0}}, ["upstream.max_connections_per_host"]),
        # A count per peer or per host above the total would never refuse anything.
        (
            {"connections": {"max_connections": 10, "max_connections_per_peer": 11}},
            ["connections.max_connections_per_peer (11)", "connections.max_connections (10)"],
        ),
        (
            {"upstream": {"max_connections": 4}},
            ["upstream.max_connections_per_host (512)", "upstream.max_connections (4)"],
        ),
    ],
)
def test_bad_connection_limits_name_the_key(
    config_dir: Path, overrides: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(config_dir, overrides)
    for name in names:
        assert name in str(info.value)
