"""Callers without a valid X.509-SVID never get a model call, over real mTLS.

Some refusals happen in the TLS handshake (OpenSSL's chain and validity
checks); the SPIFFE rules that TLS cannot express (one URI SAN, canonical ID,
leaf not a CA, trust domain bound to the bundle that verified it) are ours and
answer an AWS-shaped 403 with an audit record.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import botocore.exceptions
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from tests import certs
from tests.conftest import CHAT, HAIKU, PARTNER_DOMAIN, Emulator, Pki, ProxyFactory, ProxyHandle

PATH = f"/model/{quote(HAIKU, safe='')}/converse"
BODY = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()


def attempt(proxy: ProxyHandle, cert: certs.CertPair | None) -> tuple[str, int, dict]:
    """('tls', 0, {}) when the handshake or connection is refused, else ('http', status, body)."""
    connection = proxy.connection(cert)
    try:
        connection.request("POST", PATH, body=BODY, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        status, headers, body = response.status, dict(response.getheaders()), response.read()
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return "tls", 0, {}
    finally:
        connection.close()
    assert headers["x-amzn-ErrorType"] == "AccessDeniedException"
    return "http", status, {**json.loads(body), "request_id": headers["x-amzn-RequestId"]}


def _ca(tmp: Path) -> certs.CertPair:
    return certs.CertPair(tmp / "ca.pem", tmp / "ca.key")


# case -> (client certificate, the reason the connection record must give)
TLS_REFUSED: dict[str, tuple[Callable[[Pki, Path], certs.CertPair | None], str]] = {
    "no-certificate": (lambda pki, tmp: None, "peer_did_not_return_a_certificate"),
    "expired": (
        lambda pki, tmp: certs.expired_svid(pki.dir, CHAT, "e2e-expired"),
        "certificate has expired",
    ),
    "unknown-ca": (
        lambda pki, tmp: certs.svid_from_unknown_ca(tmp / "rogue", CHAT),
        "unable to get local issuer certificate",
    ),
    "untrusted-trust-domain": (
        lambda pki, tmp: certs.good_svid(
            certs.make_ca(tmp / "other", "other.test").dir, "spiffe://other.test/ns/x/sa/y"
        ),
        "unable to get local issuer certificate",
    ),
}


def connection_records(proxy: ProxyHandle) -> list[dict]:
    return [r for r in proxy.all_records() if r["event"] == "connection"]


SVID_REFUSED: dict[str, tuple[Callable[[Pki, Path], certs.CertPair], str]] = {
    "two-uri-sans": (lambda pki, tmp: certs.two_uri_sans(pki.dir, "e2e-two-uris"), "URI SAN"),
    "no-uri-san": (lambda pki, tmp: certs.no_uri_san(pki.dir, "e2e-no-uri"), "URI SAN"),
    "non-canonical-id": (
        lambda pki, tmp: certs.non_canonical_svid(pki.dir, name="e2e-noncanon"),
        "SPIFFE ID",
    ),
    "id-of-another-trust-domain": (
        lambda pki, tmp: certs.cross_domain_svid(
            pki.dir, f"spiffe://{PARTNER_DOMAIN}/ns/demo/sa/chat", "e2e-cross"
        ),
        "trust domain",
    ),
    "leaf-with-cert-sign": (
        lambda pki, tmp: certs.leaf_with_cert_sign(pki.dir, "e2e-certsign"),
        "keyCertSign",
    ),
    "key-usage-not-critical": (
        lambda pki, tmp: certs.key_usage_not_critical(pki.dir, "e2e-ku-not-critical"),
        "not marked critical",
    ),
}


@pytest.mark.parametrize("case", sorted(TLS_REFUSED))
def test_refused_in_the_handshake(
    proxy: ProxyHandle, emulator: Emulator, pki: Pki, tmp_path: Path, case: str
) -> None:
    make, reason = TLS_REFUSED[case]
    before = len(connection_records(proxy))
    kind, status, _ = attempt(proxy, make(pki, tmp_path))
    assert (kind, status) == ("tls", 0)
    assert emulator.requests() == []
    deadline = time.monotonic() + 5
    while len(connection_records(proxy)) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    [record] = connection_records(proxy)[before:]
    assert reason in record["reason"]
    assert record["peer"].startswith("127.0.0.1:")


def test_a_client_without_a_certificate_gets_the_certificate_required_alert(
    proxy: ProxyHandle, pki: Pki
) -> None:
    # TLS 1.3: the client's side of the handshake completes before the server
    # judges its (empty) certificate, so the alert arrives on the first read.
    context = ssl.create_default_context(cafile=str(pki.ca_bundle))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as refused:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == "TLSv1.3"
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                tls.recv(1)
    assert refused.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert "certificate required" in str(refused.value)


def test_boto3_without_a_certificate_says_certificate_required(
    proxy: ProxyHandle, pki: Pki
) -> None:
    client: Any = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=proxy.url,
        verify=str(pki.ca_bundle),
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}),
    )
    with pytest.raises(botocore.exceptions.SSLError, match="certificate required"):
        client.converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    client.close()


def test_a_flood_of_bad_handshakes_is_recorded_at_a_bounded_rate(
    proxy_factory: ProxyFactory, opa_url: str, pki: Pki
) -> None:
    proxy = proxy_factory(opa_url, audit_options={"connection_records_per_minute": 5})
    for _ in range(40):
        assert attempt(proxy, None)[0] == "tls"
    # Unbounded records would let a flood fill the disk; the rest are counted.
    deadline = time.monotonic() + 5
    while len(connection_records(proxy)) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    records = connection_records(proxy)
    assert len(records) == 5
    assert proxy.client().converse(
        modelId="anthropic.claude-3-haiku-20240307-v1:0",
        messages=[{"role": "user", "content": [{"text": "still serving"}]}],
    )["output"]


@pytest.mark.parametrize("case", sorted(SVID_REFUSED))
def test_refused_by_svid_rules_with_audit(
    proxy: ProxyHandle, emulator: Emulator, pki: Pki, tmp_path: Path, case: str
) -> None:
    make, expected = SVID_REFUSED[case]
    kind, status, body = attempt(proxy, make(pki, tmp_path))
    assert (kind, status) == ("http", 403)
    assert expected.lower() in body["message"].lower()
    assert emulator.requests() == []
    [record] = proxy.request_of(body["request_id"])
    assert record["event"] == "denied"
    assert record["error"]["code"] == "identity_invalid"
    assert record["decision"] is None, "policy is never asked for an unverified identity"


def test_ca_certificate_as_client_is_refused(
    proxy: ProxyHandle, emulator: Emulator, pki: Pki
) -> None:
    # OpenSSL may accept a trusted root as its own chain; our leaf rules must not.
    kind, status, body = attempt(proxy, certs.ca_as_client(pki.dir, name="e2e-ca-client"))
    assert kind == "tls" or (status == 403 and "CA" in body["message"])
    assert emulator.requests() == []


def test_valid_svid_of_a_trust_domain_policy_does_not_accept(
    proxy: ProxyHandle, emulator: Emulator, pki: Pki
) -> None:
    partner = certs.good_svid(pki.partner_dir, f"spiffe://{PARTNER_DOMAIN}/ns/demo/sa/chat")
    kind, status, body = attempt(proxy, partner)
    assert (kind, status) == ("http", 403)
    assert "trust_domain_not_accepted" in body["message"]
    [record] = proxy.request_of(body["request_id"])
    assert record["spiffe_id"] == f"spiffe://{PARTNER_DOMAIN}/ns/demo/sa/chat"
    assert record["decision"]["allow"] is False
