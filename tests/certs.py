"""Mint certificates for tests, good and deliberately bad, with ``proxy_dev.devca``.

Every helper writes into a directory the test owns (``tmp_path``) and returns a
``CertPair(cert, key)`` of paths. CA directories use the ``devca`` layout
(``ca.pem``, ``ca.key``, ``trust_domain.txt``), so any of them can be passed
where a "CA dir" is expected, intermediates included.

Typical use::

    ca = make_ca(tmp_path / "ca", "example.org")
    good = good_svid(ca.dir, "spiffe://example.org/app")
    identity_from_peer(good.der(), bundles, now)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy_dev import devca

DEFAULT_TRUST_DOMAIN = "example.org"
DEFAULT_WORKLOAD_PATH = "/workload"
_BOTH_EKUS = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


class CertPair(NamedTuple):
    """Paths of a PEM certificate file (leaf first, then any chain) and its key."""

    cert: Path
    key: Path

    @property
    def dir(self) -> Path:
        return self.cert.parent

    def certificates(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.cert.read_bytes())

    def der(self) -> bytes:
        """The leaf as DER, as ``SSLObject.getpeercert(binary_form=True)`` gives it."""
        return self.certificates()[0].public_bytes(serialization.Encoding.DER)

    def chain_der(self) -> list[bytes]:
        """The certificates after the leaf, as DER (the intermediates a client sends)."""
        return [c.public_bytes(serialization.Encoding.DER) for c in self.certificates()[1:]]


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now


def _default_id(ca_dir: Path) -> str:
    return f"spiffe://{devca.load_ca(ca_dir).trust_domain}{DEFAULT_WORKLOAD_PATH}"


def make_ca(
    directory: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN, *, now: datetime | None = None
) -> CertPair:
    """A fresh dev root CA for ``trust_domain`` in ``directory``."""
    devca.init_ca(directory, trust_domain, now=now)
    return CertPair(directory / devca.CA_CERT, directory / devca.CA_KEY)


def mint(
    ca_dir: Path,
    name: str,
    *,
    sans: Sequence[x509.GeneralName],
    is_ca: bool = False,
    key_usage: x509.KeyUsage = devca.LEAF_KEY_USAGE,
    key_usage_critical: bool = True,
    extended_key_usage: Sequence[x509.ObjectIdentifier] = _BOTH_EKUS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> CertPair:
    """Any certificate at all, signed by the CA in ``ca_dir``; nothing is validated."""
    start = _now(not_before)
    certificate, key = devca.sign_certificate(
        devca.load_ca(ca_dir),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        sans=sans,
        not_before=start - timedelta(minutes=1) if not_before is None else start,
        not_after=not_after or start + timedelta(hours=1),
        is_ca=is_ca,
        key_usage=key_usage,
        key_usage_critical=key_usage_critical,
        extended_key_usage=extended_key_usage,
    )
    return CertPair(*devca.write_pair(ca_dir, name, certificate, key))


def good_svid(
    ca_dir: Path,
    spiffe_id: str | None = None,
    name: str = "good",
    *,
    ttl: timedelta = devca.DEFAULT_SVID_TTL,
    now: datetime | None = None,
) -> CertPair:
    """A conforming X.509-SVID, issued exactly as ``bedrock-proxy dev-ca issue`` does."""
    return CertPair(*devca.issue_svid(ca_dir, spiffe_id or _default_id(ca_dir), name, ttl, now=now))


def expired_svid(ca_dir: Path, spiffe_id: str | None = None, name: str = "expired") -> CertPair:
    """A conforming SVID that expired an hour ago."""
    return good_svid(
        ca_dir, spiffe_id, name, ttl=timedelta(hours=1), now=datetime.now(UTC) - timedelta(hours=2)
    )


def svid_from_unknown_ca(
    directory: Path, spiffe_id: str = f"spiffe://{DEFAULT_TRUST_DOMAIN}/intruder"
) -> CertPair:
    """A well-formed SVID from a CA created on the spot (same trust domain name, other key)."""
    trust_domain = spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
    make_ca(directory, trust_domain)
    return good_svid(directory, spiffe_id, "unknown-ca")


def two_uri_sans(ca_dir: Path, name: str = "two-uris") -> CertPair:
    """Two SPIFFE IDs in one certificate (X.509-SVID section 2 forbids it)."""
    td = devca.load_ca(ca_dir).trust_domain
    return mint(
        ca_dir,
        name,
        sans=[
            x509.UniformResourceIdentifier(f"spiffe://{td}/reader"),
            x509.UniformResourceIdentifier(f"spiffe://{td}/admin"),
        ],
    )


def ca_as_client(ca_dir: Path, spiffe_id: str | None = None, name: str = "ca-client") -> CertPair:
    """A CA certificate (cA true, keyCertSign) with a workload ID, presented as a client cert."""
    return mint(
        ca_dir,
        name,
        sans=[x509.UniformResourceIdentifier(spiffe_id or _default_id(ca_dir))],
        is_ca=True,
        key_usage=devca.CA_KEY_USAGE,
        extended_key_usage=(),
    )


def leaf_with_cert_sign(ca_dir: Path, name: str = "cert-sign-leaf") -> CertPair:
    """A leaf (cA false) whose key usage nonetheless allows keyCertSign."""
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return mint(
        ca_dir, name, sans=[x509.UniformResourceIdentifier(_default_id(ca_dir))], key_usage=usage
    )


def key_usage_not_critical(ca_dir: Path, name: str = "key-usage-not-critical") -> CertPair:
    """A leaf SVID whose key usage is right but not marked critical (X.509-SVID 4.3: MUST be)."""
    return mint(
        ca_dir,
        name,
        sans=[x509.UniformResourceIdentifier(_default_id(ca_dir))],
        key_usage_critical=False,
    )


def server_auth_only(ca_dir: Path, name: str = "server-only") -> CertPair:
    """An SVID whose extended key usage excludes clientAuth."""
    return mint(
        ca_dir,
        name,
        sans=[x509.UniformResourceIdentifier(_default_id(ca_dir))],
        extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )


def cross_domain_svid(
    signing_ca_dir: Path, spiffe_id: str = "spiffe://other.example/app", name: str = "cross"
) -> CertPair:
    """An ID in another trust domain, signed by ``signing_ca_dir``'s CA (which may not issue it)."""
    return mint(signing_ca_dir, name, sans=[x509.UniformResourceIdentifier(spiffe_id)])


def non_canonical_svid(
    ca_dir: Path, uri: str | None = None, name: str = "non-canonical"
) -> CertPair:
    """A URI SAN that is not a canonical SPIFFE ID (default: a dot segment)."""
    td = devca.load_ca(ca_dir).trust_domain
    return mint(
        ca_dir, name, sans=[x509.UniformResourceIdentifier(uri or f"spiffe://{td}/app/../admin")]
    )


def trust_domain_id(ca_dir: Path, name: str = "bare-domain") -> CertPair:
    """A leaf whose SPIFFE ID is the bare trust domain (no workload path)."""
    td = devca.load_ca(ca_dir).trust_domain
    return mint(ca_dir, name, sans=[x509.UniformResourceIdentifier(f"spiffe://{td}")])


def no_uri_san(ca_dir: Path, name: str = "no-uri") -> CertPair:
    """A client certificate with only a DNS SAN: no SPIFFE ID at all."""
    return mint(ca_dir, name, sans=[x509.DNSName("workload.example.org")])


def server_cert(ca_dir: Path, name: str = "server") -> CertPair:
    """The proxy listener's certificate (DNS localhost, IP 127.0.0.1)."""
    return CertPair(*devca.issue_server_cert(ca_dir, name, ["localhost"], ["127.0.0.1"]))


def intermediate_ca(
    root_dir: Path, directory: Path, *, not_after: datetime | None = None
) -> CertPair:
    """An intermediate CA signed by ``root_dir``'s CA, in the devca layout in ``directory``."""
    root = devca.load_ca(root_dir)
    issued = mint(
        root_dir,
        f"intermediate-{directory.name}",
        sans=[x509.UniformResourceIdentifier(f"spiffe://{root.trust_domain}")],
        is_ca=True,
        key_usage=devca.CA_KEY_USAGE,
        extended_key_usage=(),
        not_after=not_after,
    )
    directory.mkdir(parents=True, exist_ok=True)
    issued.cert.replace(directory / devca.CA_CERT)
    issued.key.replace(directory / devca.CA_KEY)
    (directory / devca.TRUST_DOMAIN_FILE).write_text(f"{root.trust_domain}\n")
    return CertPair(directory / devca.CA_CERT, directory / devca.CA_KEY)


def chained_svid(
    intermediate_dir: Path, spiffe_id: str | None = None, name: str = "chained"
) -> CertPair:
    """A good SVID from an intermediate; the cert file holds the leaf then the intermediate."""
    pair = good_svid(intermediate_dir, spiffe_id, name)
    with pair.cert.open("ab") as handle:
        handle.write((intermediate_dir / devca.CA_CERT).read_bytes())
    return pair
