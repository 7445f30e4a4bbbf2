"""Workload identity: from the mTLS peer certificate to a validated SPIFFE ID.

Contract:

* ``server_ssl_context`` builds the listener's TLS context: TLS 1.2+, a client
  certificate is required and must chain to one of the configured trust
  bundles (OpenSSL refuses everything else during the handshake).
* ``identity_from_peer`` is pure: given the peer's leaf (DER), any
  intermediates it sent, the bundles and the time, it returns a
  ``WorkloadIdentity`` or raises ``IdentityMissing`` / ``IdentityInvalid``.
* ``peer_certificates`` reads the leaf and the chain the client sent off an
  ``ssl`` object, at the I/O edge.

Security reasoning: the TLS layer alone is not enough. OpenSSL accepts any
chain to *any* loaded CA, so a CA trusted for ``a.example`` could mint
``spiffe://b.example/admin``. ``identity_from_peer`` therefore re-verifies the
leaf against the bundle of the trust domain *named in its SPIFFE ID* only, and
applies the X.509-SVID leaf rules (spiffe/spiffe ``standards/X509-SVID.md``
sections 2, 3.1, 4 and 5): exactly one URI SAN holding a canonical SPIFFE ID
with a non-root path, not a CA, key usage present, critical, with
digitalSignature and without keyCertSign/cRLSign. Path validation itself is ``cryptography``'s
RFC 5280 verifier; nothing here checks signatures by hand.

Intermediates: Python 3.11's public ``ssl`` API exposes only the leaf.
``peer_certificates`` uses ``get_unverified_chain`` (public from 3.13, a
private method of ``SSLObject._sslobj`` on 3.10-3.12) to recover the
intermediates the client sent. If neither exists, only the leaf is passed and
a chained SVID fails verification: SVIDs issued directly by a bundle CA always
work, chained ones fail closed.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from proxy.errors import ConfigError, IdentityInvalid, IdentityMissing
from proxy.identity.spiffe import SpiffeId, parse_spiffe_id

# A client may send any number of extra certificates; more than this is not a
# real SPIFFE hierarchy and only costs verification time.
MAX_INTERMEDIATES = 8
_ENCODING_DER = 2  # _ssl.ENCODING_DER, for _ssl.Certificate.public_bytes on 3.10-3.12


@dataclass(frozen=True)
class WorkloadIdentity:
    """The authenticated caller, as policy and audit see it."""

    spiffe_id: str
    trust_domain: str
    path: str
    serial: str
    not_after: datetime
    # The earliest expiry along the verified chain (leaf, intermediates, root): how long
    # a remembered verification holds. Not part of what policy or audit see.
    chain_not_after: datetime | None = field(default=None, compare=False)

    def to_opa(self) -> dict[str, str]:
        """The ``identity`` object of the OPA input (docs/opa.md, a contract)."""
        return {
            "spiffe_id": self.spiffe_id,
            "trust_domain": self.trust_domain,
            "path": self.path,
            "serial": self.serial,
            "not_after": _rfc3339(self.not_after),
        }


@dataclass(frozen=True, eq=False)
class TrustBundles:
    """Accepted trust domains, each with the CA certificates that may issue its SVIDs."""

    bundles: Mapping[str, tuple[x509.Certificate, ...]]
    _stores: Mapping[str, Store] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.bundles:
            raise ConfigError("no trust domain is configured: accept at least one [trust_domains]")
        for trust_domain, certificates in self.bundles.items():
            _check_trust_domain_name(trust_domain)
            if not certificates:
                raise ConfigError(f"trust domain {trust_domain!r} has no CA certificate")
        frozen = MappingProxyType({td: tuple(certs) for td, certs in self.bundles.items()})
        object.__setattr__(self, "bundles", frozen)
        stores = {td: Store(list(certs)) for td, certs in frozen.items()}
        object.__setattr__(self, "_stores", MappingProxyType(stores))

    @classmethod
    def load(cls, mapping: Mapping[str, Path], *, now: datetime | None = None) -> TrustBundles:
        """Read one PEM bundle per trust domain; raise ``ConfigError`` saying what to fix."""
        at = datetime.now(UTC) if now is None else now
        bundles: dict[str, tuple[x509.Certificate, ...]] = {}
        for trust_domain, path in mapping.items():
            _check_trust_domain_name(trust_domain)
            bundles[trust_domain] = _load_bundle(trust_domain, Path(path), at)
        return cls(bundles)

    @property
    def trust_domains(self) -> tuple[str, ...]:
        return tuple(sorted(self.bundles))

    def store(self, trust_domain: str) -> Store | None:
        """The verification store of exactly this trust domain, or None if not accepted."""
        return self._stores.get(trust_domain)

    def cafile_pem(self) -> str:
        """Every CA of every bundle as one PEM string, for ``load_verify_locations(cadata=)``."""
        return "".join(
            cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
            for td in self.trust_domains
            for cert in self.bundles[td]
        )


def server_ssl_context(cert_file: Path, key_file: Path, bundles: TrustBundles) -> ssl.SSLContext:
    """TLS server context that requires a client certificate from one of ``bundles``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    # Only the configured bundles, never the system store: a public CA must
    # not be able to authenticate workloads.
    context.load_verify_locations(cadata=bundles.cafile_pem())
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the listener certificate {cert_file} with key {key_file}: {exc}; "
            "check that both files exist, are PEM, and that the key matches the certificate"
        ) from exc
    return context


def peer_certificates(
    ssl_object: ssl.SSLObject | ssl.SSLSocket,
) -> tuple[bytes | None, list[bytes]]:
    """The peer's leaf (DER) and the other certificates it sent, after the handshake."""
    leaf = ssl_object.getpeercert(binary_form=True)
    if leaf is None:
        return None, []
    chain_fn: Any = getattr(ssl_object, "get_unverified_chain", None)
    if chain_fn is None:
        chain_fn = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if chain_fn is None:
        return leaf, []
    chain = [
        c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in (chain_fn() or [])
    ]
    # OpenSSL puts the leaf first on the server side; drop it wherever it is.
    return leaf, [der for der in chain if der != leaf][:MAX_INTERMEDIATES]


def identity_from_peer(
    der_leaf: bytes | None,
    bundles: TrustBundles,
    now: datetime,
    *,
    intermediates: Sequence[bytes] = (),
) -> WorkloadIdentity:
    """Validate an X.509-SVID and return the identity it proves."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not der_leaf:
        raise IdentityMissing("a client certificate (X.509-SVID) is required")
    try:
        leaf = x509.load_der_x509_certificate(der_leaf)
        extensions = leaf.extensions
    except ValueError as exc:
        raise IdentityInvalid("the client certificate cannot be parsed", detail=str(exc)) from None

    spiffe_id = _spiffe_id_of(extensions)
    _check_leaf_usage(extensions, spiffe_id)
    if now < leaf.not_valid_before_utc:
        raise IdentityInvalid(
            f"the SVID for {spiffe_id} is not valid before {_rfc3339(leaf.not_valid_before_utc)}"
        )
    if now > leaf.not_valid_after_utc:
        raise IdentityInvalid(
            f"the SVID for {spiffe_id} expired at {_rfc3339(leaf.not_valid_after_utc)}"
        )
    store = bundles.store(spiffe_id.trust_domain)
    if store is None:
        raise IdentityInvalid(
            f"trust domain {spiffe_id.trust_domain!r} is not accepted by this proxy"
        )
    chain_not_after = _verify_chain(leaf, intermediates, store, now, spiffe_id)
    return WorkloadIdentity(
        spiffe_id=str(spiffe_id),
        trust_domain=spiffe_id.trust_domain,
        path=spiffe_id.path,
        serial=format(leaf.serial_number, "x"),
        not_after=leaf.not_valid_after_utc,
        chain_not_after=chain_not_after,
    )


def _spiffe_id_of(extensions: x509.Extensions) -> SpiffeId:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityInvalid(
            "the client certificate has no subject alternative name, so no SPIFFE ID"
        ) from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise IdentityInvalid("the client certificate has no URI SAN, so no SPIFFE ID")
    if len(uris) > 1:
        # X.509-SVID section 2: validators MUST reject more than one URI SAN.
        raise IdentityInvalid(
            f"the client certificate has {len(uris)} URI SANs; an X.509-SVID has exactly one"
        )
    spiffe_id = parse_spiffe_id(uris[0])
    if not spiffe_id.path:
        raise IdentityInvalid(
            f"{spiffe_id} names a trust domain, not a workload; a leaf SVID needs a path"
        )
    return spiffe_id


def _check_leaf_usage(extensions: x509.Extensions, spiffe_id: SpiffeId) -> None:
    # X.509-SVID section 5.2: signing certificates must never authenticate.
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise IdentityInvalid(
            f"the certificate for {spiffe_id} is a CA certificate; only leaf SVIDs authenticate"
        )
    # Section 4.3: key usage MUST be set on every SVID, so its absence is a
    # malformed SVID rather than "no restriction"; and it MUST be critical
    # (RFC 5280 only recommends it, so the path validator does not check).
    try:
        key_usage = extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise IdentityInvalid(
            f"the SVID for {spiffe_id} has no key usage extension; X.509-SVIDs must carry one"
        ) from None
    if not key_usage.critical:
        raise IdentityInvalid(
            f"the SVID for {spiffe_id} has a key usage extension that is not marked critical; "
            "X.509-SVIDs must mark it critical"
        )
    usage = key_usage.value
    if usage.key_cert_sign or usage.crl_sign:
        raise IdentityInvalid(
            f"the SVID for {spiffe_id} may sign certificates or CRLs (keyCertSign/cRLSign); "
            "a leaf SVID must not"
        )
    if not usage.digital_signature:
        raise IdentityInvalid(
            f"the SVID for {spiffe_id} lacks the digitalSignature key usage a leaf SVID needs"
        )


def _verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[bytes],
    store: Store,
    now: datetime,
    spiffe_id: SpiffeId,
) -> datetime:
    """Verify the chain; the earliest expiry among the certificates it was built from."""
    try:
        untrusted = [x509.load_der_x509_certificate(der) for der in intermediates]
        verified = (
            PolicyBuilder()
            .store(store)
            .time(now)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_SVID_LEAF_POLICY)
            .build_client_verifier()
            .verify(leaf, untrusted[:MAX_INTERMEDIATES])
        )
        return min(c.not_valid_after_utc for c in verified.chain)
    except (VerificationError, ValueError) as exc:
        raise IdentityInvalid(
            f"the SVID for {spiffe_id} does not chain to a CA of trust domain "
            f"{spiffe_id.trust_domain!r}",
            detail=str(exc),
        ) from None


def _require_client_auth(
    _policy: Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    # X.509-SVID 4.4: EKU is optional, but if present it must allow clientAuth.
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ValueError("extended key usage does not include clientAuth")


# Why not the plain web-PKI client profile: tried against X.509-SVIDs, it
# rejects two things the SVID spec allows: a leaf without an
# authorityKeyIdentifier (CA/B rule, not RFC 5280 for leaves) and a
# *critical* extendedKeyUsage (X.509-SVID 4.4 "MAY be marked as critical").
# So we keep the web-PKI defaults (signature algorithms, key sizes, unknown
# critical extensions rejected, CA rules for the bundle and intermediates)
# and relax exactly those two leaf extensions. ``verify_directly_issued_by``
# is not used because it checks only the signature, not validity, CA
# constraints or path length.
_SVID_LEAF_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _require_client_auth)
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


def _check_trust_domain_name(trust_domain: str) -> None:
    try:
        parsed = parse_spiffe_id(f"spiffe://{trust_domain}")
    except IdentityInvalid as exc:
        raise ConfigError(f"trust domain {trust_domain!r} is not valid: {exc.message}") from None
    if parsed.path:
        raise ConfigError(f"trust domain {trust_domain!r} must be a bare name without a path")


def _load_bundle(trust_domain: str, path: Path, now: datetime) -> tuple[x509.Certificate, ...]:
    where = f"trust bundle for {trust_domain!r} ({path})"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{where} does not exist; point it at the trust domain's CA PEM file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(
            f"{where} holds no PEM certificate; expected '-----BEGIN CERTIFICATE-----' blocks"
        ) from None
    for cert in certificates:
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        except ValueError as exc:
            raise ConfigError(f"{where}: certificate {subject!r} is malformed: {exc}") from None
        if not is_ca:
            raise ConfigError(
                f"{where}: certificate {subject!r} is not a CA (basicConstraints cA is not "
                "true); a bundle holds the CA certificates that issue SVIDs, not an SVID"
            )
        if cert.not_valid_after_utc < now:
            raise ConfigError(
                f"{where}: CA certificate {subject!r} expired at "
                f"{_rfc3339(cert.not_valid_after_utc)}; replace it with the current CA"
            )
    return tuple(certificates)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class VerifiedIdentities:
    """Remembers certificates that already verified, so a keep-alive client pays once.

    A hit still re-checks expiry against ``now``, of the whole chain (an
    intermediate may end before the leaf); failures are never cached, so a
    bad certificate is re-examined (and refused) every time. Bounded: the oldest
    entries go first. One instance per TrustBundles: new bundles, new cache.
    """

    def __init__(self, bundles: TrustBundles, *, capacity: int = 4096) -> None:
        self.bundles = bundles
        self._capacity = capacity
        self._verified: dict[tuple[bytes, tuple[bytes, ...]], WorkloadIdentity] = {}

    def of_connection(self, transport: Any, now: datetime) -> WorkloadIdentity:
        """The verified identity behind a request's TLS connection (the one place both
        the data plane and the task API read it)."""
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            raise IdentityMissing("A client certificate (X.509-SVID) over TLS is required")
        leaf, intermediates = peer_certificates(ssl_object)
        return self.identify(leaf, now, intermediates)

    def identify(
        self, der_leaf: bytes | None, now: datetime, intermediates: Sequence[bytes] = ()
    ) -> WorkloadIdentity:
        key = (der_leaf or b"", tuple(intermediates))
        known = self._verified.get(key)
        if known is not None and now <= (known.chain_not_after or known.not_after):
            return known
        identity = identity_from_peer(der_leaf, self.bundles, now, intermediates=intermediates)
        if len(self._verified) >= self._capacity:
            del self._verified[next(iter(self._verified))]
        self._verified[key] = identity
        return identity
