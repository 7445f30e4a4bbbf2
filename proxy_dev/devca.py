"""A development SPIFFE CA on disk: for demos, ``dev up`` and tests only.

Contract: ``init_ca`` creates ``DIR/ca.pem``, ``DIR/ca.key`` (mode 0600) and
``DIR/trust_domain.txt`` for a self-signed ECDSA P-256 root; ``issue_svid``
issues X.509-SVIDs that conform to the X.509-SVID spec (one URI SAN, CA false,
critical key usage digitalSignature only, EKU serverAuth+clientAuth);
``issue_server_cert`` issues the proxy listener's TLS certificate from the
same CA. Bad arguments raise ``ValueError``; an existing CA is never
overwritten without ``force=True`` (``FileExistsError``); a missing CA raises
``FileNotFoundError``. All X.509 work is done by ``cryptography``.

Security reasoning: this CA has no HSM, no revocation and no attestation, so
it must never back a production trust domain. Private keys are written with
mode 0600 through a temporary file and an atomic rename, so a key is never
readable by others, not even for a moment, and a crash leaves no half file.
SVIDs are short-lived (1 hour by default) because nothing can revoke them.

``load_ca``, ``sign_certificate`` and ``write_pair`` are the unvalidated
building blocks the safe ``issue_*`` functions use; they are public so that
tests can mint deliberately broken certificates with the same code.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.errors import IdentityInvalid
from proxy.identity.spiffe import SpiffeId, parse_spiffe_id

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
TRUST_DOMAIN_FILE = "trust_domain.txt"

DEFAULT_CA_TTL = timedelta(days=365)
DEFAULT_SVID_TTL = timedelta(hours=1)
DEFAULT_SERVER_TTL = timedelta(days=30)
# Backdating notBefore absorbs small clock differences between the machine
# that issues and the one that verifies, which would otherwise reject a
# certificate in its first seconds.
CLOCK_SKEW = timedelta(minutes=5)

_OUT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_TTL = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_TTL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

# The key usages a leaf may carry: digitalSignature only (keyEncipherment is
# meaningless for EC keys, keyCertSign/cRLSign are forbidden by the spec).
LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class DevCa:
    """A loaded dev CA: its certificate, private key and trust domain."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str


def parse_ttl(text: str) -> timedelta:
    """Parse a CLI duration such as ``90s``, ``30m``, ``1h`` or ``2d``."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: use a positive whole number followed by "
            "s, m, h or d, for example 90s, 30m, 1h or 2d"
        )
    return timedelta(**{_TTL_UNITS[match.group(2)]: int(match.group(1))})


def init_ca(
    directory: Path,
    trust_domain: str,
    *,
    force: bool = False,
    ttl: timedelta = DEFAULT_CA_TTL,
    now: datetime | None = None,
) -> None:
    """Create a self-signed ECDSA P-256 SPIFFE root CA for ``trust_domain`` in ``directory``."""
    td_id = _parse(f"spiffe://{trust_domain}")
    if td_id.path:
        raise ValueError(f"invalid trust domain {trust_domain!r}: give the name only, no path")
    if not force:
        existing = [n for n in (CA_CERT, CA_KEY) if (directory / n).exists()]
        if existing:
            raise FileExistsError(
                f"a CA already exists in {directory} ({', '.join(existing)}); "
                "pass force=True (--force) to replace it, which invalidates every SVID it issued"
            )
    issued_at = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bedrock-proxy dev CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"dev CA for {trust_domain}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued_at - CLOCK_SKEW)
        .not_valid_after(issued_at + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        # X.509-SVID section 3.2: a signing certificate SHOULD itself be an
        # SVID whose ID is the bare trust domain.
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(td_id))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / CA_KEY, _key_pem(key), mode=0o600)
    _write_atomic(directory / CA_CERT, certificate.public_bytes(serialization.Encoding.PEM))
    _write_atomic(directory / TRUST_DOMAIN_FILE, f"{trust_domain}\n".encode())


def load_ca(directory: Path) -> DevCa:
    """Load the CA that ``init_ca`` wrote to ``directory``."""
    paths = [directory / n for n in (CA_CERT, CA_KEY, TRUST_DOMAIN_FILE)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"no dev CA in {directory} (missing {', '.join(missing)}); "
            "create one with 'bedrock-proxy dev-ca init --dir DIR --trust-domain TD'"
        )
    certificate = x509.load_pem_x509_certificate(paths[0].read_bytes())
    key = serialization.load_pem_private_key(paths[1].read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{paths[1]} is not an EC private key")
    return DevCa(certificate=certificate, key=key, trust_domain=paths[2].read_text().strip())


def sign_certificate(
    ca: DevCa,
    *,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName],
    not_before: datetime,
    not_after: datetime,
    is_ca: bool = False,
    key_usage: x509.KeyUsage = LEAF_KEY_USAGE,
    key_usage_critical: bool = True,
    extended_key_usage: Sequence[x509.ObjectIdentifier] = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Sign a fresh P-256 key's certificate with ``ca``. Validates nothing: callers decide."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(key_usage, critical=key_usage_critical)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
    )
    if extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), False)
    if sans:
        # Non-critical is right because the subject is never empty here
        # (RFC 5280 4.1.2.6 requires critical only for an empty subject).
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
    return builder.sign(ca.key, hashes.SHA256()), key


def write_pair(
    directory: Path, out: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """Write ``DIR/<out>.pem`` and ``DIR/<out>.key`` (0600); ``out`` must be a plain name."""
    if _OUT_NAME.fullmatch(out) is None or out in ("ca", "trust_domain"):
        raise ValueError(
            f"invalid output name {out!r}: use a plain file name of letters, digits, . - _ "
            "(no directories), other than 'ca'"
        )
    cert_path, key_path = directory / f"{out}.pem", directory / f"{out}.key"
    _write_atomic(key_path, _key_pem(key), mode=0o600)
    _write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_svid(
    directory: Path,
    spiffe_id: str,
    out: str,
    ttl: timedelta = DEFAULT_SVID_TTL,
    *,
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """Issue a conforming X.509-SVID for ``spiffe_id``; return ``(cert_path, key_path)``."""
    ca = load_ca(directory)
    sid = _parse(spiffe_id)
    if sid.trust_domain != ca.trust_domain:
        raise ValueError(
            f"SPIFFE ID {spiffe_id!r} is in trust domain {sid.trust_domain!r}, but the CA in "
            f"{directory} issues for {ca.trust_domain!r}"
        )
    if not sid.path:
        # X.509-SVID 3.1: a leaf's ID names a workload, never the bare domain.
        raise ValueError(
            f"SPIFFE ID {spiffe_id!r} needs a path, e.g. spiffe://{ca.trust_domain}/app"
        )
    _check_ttl(ttl)
    issued_at = _now(now)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bedrock-proxy dev SVID"),
            x509.NameAttribute(NameOID.COMMON_NAME, sid.path.rsplit("/", 1)[-1][:64]),
        ]
    )
    certificate, key = sign_certificate(
        ca,
        subject=subject,
        sans=[x509.UniformResourceIdentifier(str(sid))],
        not_before=issued_at - CLOCK_SKEW,
        not_after=issued_at + ttl,
    )
    return write_pair(directory, out, certificate, key)


def issue_server_cert(
    directory: Path,
    out: str,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    ttl: timedelta = DEFAULT_SERVER_TTL,
    *,
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """Issue the proxy listener's TLS server certificate; return ``(cert_path, key_path)``."""
    ca = load_ca(directory)
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    _check_ttl(ttl)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    for text in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError as exc:
            raise ValueError(f"invalid IP address {text!r} for the server certificate") from exc
    issued_at = _now(now)
    cn = dns_names[0] if dns_names else ip_addresses[0]
    certificate, key = sign_certificate(
        ca,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        sans=sans,
        not_before=issued_at - CLOCK_SKEW,
        not_after=issued_at + ttl,
        extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )
    return write_pair(directory, out, certificate, key)


def _parse(spiffe_id: str) -> SpiffeId:
    # devca is driven by a person at a CLI: bad input is a ValueError there,
    # not an access-denied response.
    try:
        return parse_spiffe_id(spiffe_id)
    except IdentityInvalid as exc:
        raise ValueError(exc.message) from None


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _check_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise ValueError(f"ttl must be positive, got {ttl}")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    # mkstemp creates the file 0600 from the start; the rename replaces any
    # previous file (and its permissions) in one step.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
