"""Shared fixtures: real OPA, the emulator (bedrock-runtime + moto STS), real
proxies as subprocesses, and boto3 clients with client certificates.

Everything binds 127.0.0.1 on ephemeral ports and is stopped at the end. A
missing component (no opa binary) fails loudly; nothing is faked or skipped.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from hypothesis import HealthCheck, settings

from proxy_dev import devstack
from tests import certs

# Property tests assert rules about all inputs, never timings: no per-example
# deadline on a shared, noisy machine; a fixed example budget keeps CI bounded.
settings.register_profile(
    "project", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("project")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
POLICIES = PROJECT_ROOT / "policies"
CHAT = "spiffe://example.org/ns/demo/sa/chat"
BATCH = "spiffe://example.org/ns/demo/sa/batch"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PARTNER_DOMAIN = "partner.test"
LOG_EVENTS = {"chain_start", "chain_resumed", "checkpoint", "connection"}
TERMINAL = {"completed", "denied"}


@dataclass
class Pki:
    dir: Path
    partner_dir: Path
    ca_bundle: Path

    def svid(self, spiffe_id: str, name: str) -> certs.CertPair:
        return certs.good_svid(self.dir, spiffe_id, name)


class Emulator:
    """Client of the emulator's control endpoints."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = info
        self.url: str = info["bedrock_url"]
        self.sts_url: str = info["sts_url"]

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_emulator/requests")
        return result

    def sts_calls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_emulator/sts-calls")
        return result

    def fault(self, kind: str, **options: Any) -> None:
        self._call("POST", "/_emulator/faults", {"kind": kind, **options})

    def reset(self) -> None:
        self._call("DELETE", "/_emulator/requests")
        self._call("DELETE", "/_emulator/faults")


@dataclass
class ProxyHandle:
    url: str
    port: int
    audit_path: Path
    pki: Pki
    process: subprocess.Popen[bytes]
    admin_port: int = 0
    _clients: dict[str, Any] = field(default_factory=dict)

    def audit_files(self) -> list[Path]:
        """The audit file of every worker: audit.log, audit-1.log, ... (one chain each)."""
        workers = sorted(self.audit_path.parent.glob(f"{self.audit_path.stem}-*.log"))
        return [p for p in [self.audit_path, *workers] if p.exists()]

    def all_records(self) -> list[dict[str, Any]]:
        # A line without its newline is a record the proxy is still writing: left for the next read.
        texts = [path.read_text() for path in self.audit_files()]
        lines = [line for text in texts for line in text[: text.rfind("\n") + 1].splitlines()]
        return [json.loads(line) for line in lines]

    def records(self, *, settled: bool = True) -> list[dict[str, Any]]:
        """Request-level records: chain bookkeeping and connection records left out.

        The proxy writes a relayed call's ``completed`` record just after the
        client has read the last byte, so by default this waits (up to 10 s)
        until every ``authorized`` request has its terminal record. Tests that
        look at requests still in flight pass ``settled=False``.
        """
        deadline = time.monotonic() + 10
        while True:
            records = [r for r in self.all_records() if r.get("event") not in LOG_EVENTS]
            if not settled or not _open_requests(records) or time.monotonic() > deadline:
                return records
            time.sleep(0.02)

    def audit_text(self) -> str:
        """The audit file as text, once every request in it has its terminal record."""
        self.records()
        return self.audit_path.read_text()

    def records_for(self, request_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records()
            if request_id in (r.get("request_id"), r.get("aws_request_id"))
        ]

    def request_of(self, aws_or_proxy_request_id: str) -> list[dict[str, Any]]:
        """Every record of the request that an SDK response's RequestId names."""
        first = self.records_for(aws_or_proxy_request_id)
        if not first:
            return []
        proxy_id = first[0]["request_id"]
        return [r for r in self.records() if r.get("request_id") == proxy_id]

    def close_clients(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def client(self, spiffe_id: str = CHAT, cert: certs.CertPair | None = None) -> Any:
        key = f"{spiffe_id}|{cert}"
        if key not in self._clients:
            pair = cert or self.pki.svid(spiffe_id, spiffe_id.rsplit("/", 1)[-1] + "-client")
            self._clients[key] = bedrock_client(self.url, self.pki.ca_bundle, pair)
        return self._clients[key]

    def raw(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        cert: certs.CertPair | None = None,
        port: int | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request over mTLS with full control of headers (for canaries and limits);
        ``port``: another listener of this proxy (the admin one) instead of the data one."""
        connection = self.connection(cert or self.pki.svid(CHAT, "raw-client"), port)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def client_context(self, cert: certs.CertPair | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_bundle))
        if cert is not None:
            context.load_cert_chain(str(cert.cert), str(cert.key))
        return context

    def connection(
        self, cert: certs.CertPair | None, port: int | None = None
    ) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", port or self.port, context=self.client_context(cert), timeout=30
        )

    def wire(
        self, data: bytes, cert: certs.CertPair | None = None, port: int | None = None
    ) -> bytes:
        """Send ``data`` as it is over mTLS (requests no HTTP client would write) and
        return everything the proxy answers until it closes the connection."""
        context = self.client_context(cert or self.pki.svid(CHAT, "raw-client"))
        with socket.create_connection(("127.0.0.1", port or self.port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(data)
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                return answer


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a proxy's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _open_requests(records: list[dict[str, Any]]) -> set[str]:
    authorized = {r["request_id"] for r in records if r.get("event") == "authorized"}
    return authorized - {r["request_id"] for r in records if r.get("event") in TERMINAL}


def bedrock_client(
    url: str, ca_bundle: Path, cert: certs.CertPair, region: str = "us-east-1"
) -> Any:
    """An unmodified boto3 client: only endpoint_url and a client certificate, no AWS keys."""
    return boto3.client(
        "bedrock-runtime",
        region_name=region,
        endpoint_url=url,
        verify=str(ca_bundle),
        config=Config(
            signature_version=UNSIGNED,
            client_cert=(str(cert.cert), str(cert.key)),
            retries={"total_max_attempts": 1},
            read_timeout=30,
        ),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    devstack.ensure_ca(directory)
    partner = certs.make_ca(tmp_path_factory.mktemp("partner-pki"), PARTNER_DOMAIN)
    return Pki(directory, partner.dir, directory / "ca.pem")


@pytest.fixture(scope="session")
def opa_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("opa") / "opa.log"
    process, url = devstack.start_opa(POLICIES, log)
    yield url
    devstack.stop(process)


@pytest.fixture(scope="session")
def emulator_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    process, info = devstack.start_emulator(tmp_path_factory.mktemp("emulator"))
    yield Emulator(info)
    devstack.stop(process)


@pytest.fixture
def emulator(emulator_service: Emulator) -> Emulator:
    emulator_service.reset()
    return emulator_service


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server's URL: the task store of proxies that run several workers."""
    process, url = devstack.start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    devstack.stop(process)


class ProxyFactory:
    def __init__(self, tmp: pytest.TempPathFactory, pki: Pki, emulator: Emulator) -> None:
        self._tmp, self._pki, self._emulator = tmp, pki, emulator
        self._started: list[subprocess.Popen[bytes]] = []
        self._handles: list[ProxyHandle] = []

    def __call__(
        self,
        opa_url: str,
        *,
        workers: int = 1,
        upstream: Mapping[str, str] | None = None,
        **options: Any,
    ) -> ProxyHandle:
        directory = self._tmp.mktemp("proxy")
        config = devstack.write_proxy_config(
            directory / "proxy.toml",
            pki=self._pki.dir,
            opa_url=opa_url,
            emulator=upstream or self._emulator.info,
            audit_log=directory / "audit.log",
            trust_domains={
                "example.org": self._pki.ca_bundle,
                PARTNER_DOMAIN: self._pki.partner_dir / "ca.pem",
            },
            **options,
        )
        process, ports = devstack.start_proxy(directory, config, workers)
        self._started.append(process)
        port = ports["data_port"]
        handle = ProxyHandle(
            f"https://127.0.0.1:{port}",
            port,
            directory / "audit.log",
            self._pki,
            process,
            admin_port=ports["admin_port"],
        )
        self._handles.append(handle)
        return handle

    def stop_all(self) -> None:
        for handle in self._handles:
            handle.close_clients()
        for process in self._started:
            devstack.stop(process)


@pytest.fixture(scope="session")
def proxy_factory(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, emulator_service: Emulator
) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(tmp_path_factory, pki, emulator_service)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def proxy(proxy_factory: ProxyFactory, opa_url: str) -> ProxyHandle:
    """The shared proxy on the real policies; tests tell their records apart by request id."""
    return proxy_factory(opa_url)


@pytest.fixture
def start_opa(tmp_path: Path) -> Iterator[Any]:
    """Start an extra OPA on a given policy directory; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(policies: Path) -> tuple[subprocess.Popen[bytes], str]:
        process, url = devstack.start_opa(policies, tmp_path / f"opa-{len(started)}.log")
        started.append(process)
        return process, url

    yield start
    for process in started:
        devstack.stop(process)
