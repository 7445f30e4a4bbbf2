from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from proxy.errors import ConfigError, IdentityInvalid, IdentityMissing
from proxy.identity.svid import (
    TrustBundles,
    VerifiedIdentities,
    WorkloadIdentity,
    identity_from_peer,
    peer_certificates,
    server_ssl_context,
)
from proxy_dev import devca
from tests import certs
from tests.certs import CertPair

TD_A = "example.org"
TD_B = "other.example"


@dataclass(frozen=True)
class Pki:
    root: Path
    a: Path
    b: Path
    bundles: TrustBundles

    @property
    def a_only(self) -> TrustBundles:
        return TrustBundles.load({TD_A: self.a / "ca.pem"})


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    a = certs.make_ca(tmp_path / "a", TD_A).dir
    b = certs.make_ca(tmp_path / "b", TD_B).dir
    bundles = TrustBundles.load({TD_A: a / "ca.pem", TD_B: b / "ca.pem"})
    return Pki(root=tmp_path, a=a, b=b, bundles=bundles)


def _now() -> datetime:
    return datetime.now(UTC)


# --- identity_from_peer over every kind of certificate -------------------------------

Mint = Callable[[Pki], CertPair]

REJECTED: list[tuple[str, Mint, str]] = [
    ("expired", lambda p: certs.expired_svid(p.a), "expired at"),
    (
        "not yet valid",
        lambda p: certs.good_svid(p.a, now=_now() + timedelta(hours=1)),
        "is not valid before",
    ),
    (
        "unknown CA",
        lambda p: certs.svid_from_unknown_ca(p.root / "rogue"),
        "does not chain to a CA of trust domain 'example.org'",
    ),
    ("two URI SANs", lambda p: certs.two_uri_sans(p.a), "has 2 URI SANs"),
    ("CA as client", lambda p: certs.ca_as_client(p.a), "is a CA certificate"),
    ("leaf with keyCertSign", lambda p: certs.leaf_with_cert_sign(p.a), "keyCertSign"),
    (
        "key usage not critical",
        lambda p: certs.key_usage_not_critical(p.a),
        "key usage extension that is not marked critical",
    ),
    (
        "EKU without clientAuth",
        lambda p: certs.server_auth_only(p.a),
        "does not chain to a CA of trust domain",
    ),
    (
        "ID in B signed by A's CA",
        lambda p: certs.cross_domain_svid(p.a, f"spiffe://{TD_B}/app"),
        "does not chain to a CA of trust domain 'other.example'",
    ),
    (
        "trust domain not accepted",
        lambda p: certs.cross_domain_svid(p.a, "spiffe://stranger.example/app"),
        "trust domain 'stranger.example' is not accepted",
    ),
    ("dot segment in SAN", lambda p: certs.non_canonical_svid(p.a), "dot segments"),
    (
        "upper-case trust domain in SAN",
        lambda p: certs.non_canonical_svid(p.a, "spiffe://Example.org/app"),
        "must be lower-case",
    ),
    (
        "percent-encoded SAN",
        lambda p: certs.non_canonical_svid(p.a, "spiffe://example.org/%61pp"),
        "percent-encoding",
    ),
    (
        "not a spiffe URI",
        lambda p: certs.non_canonical_svid(p.a, "https://example.org/app"),
        "must start with 'spiffe://'",
    ),
    ("no URI SAN", lambda p: certs.no_uri_san(p.a), "no URI SAN"),
    ("bare trust domain ID", lambda p: certs.trust_domain_id(p.a), "needs a path"),
    ("server certificate", lambda p: certs.server_cert(p.a), "no URI SAN"),
    (
        "chained SVID without its intermediate",
        lambda p: certs.chained_svid(certs.intermediate_ca(p.a, p.root / "int").dir),
        "does not chain",
    ),
]


@pytest.mark.parametrize(
    ("mint", "message"), [(m, msg) for _, m, msg in REJECTED], ids=[n for n, _, _ in REJECTED]
)
def test_rejected_certificates(pki: Pki, mint: Mint, message: str) -> None:
    pair = mint(pki)
    with pytest.raises(IdentityInvalid) as caught:
        identity_from_peer(pair.der(), pki.bundles, _now())
    assert message in caught.value.message
    assert caught.value.status == 403
    assert caught.value.code == "identity_invalid"


def test_chain_failure_keeps_library_detail_out_of_the_message(pki: Pki) -> None:
    pair = certs.server_auth_only(pki.a)
    with pytest.raises(IdentityInvalid) as caught:
        identity_from_peer(pair.der(), pki.bundles, _now())
    assert caught.value.detail is not None and "clientAuth" in caught.value.detail
    assert "clientAuth" not in caught.value.message


@pytest.mark.parametrize("der", [None, b""])
def test_no_certificate_is_identity_missing(pki: Pki, der: bytes | None) -> None:
    with pytest.raises(IdentityMissing) as caught:
        identity_from_peer(der, pki.bundles, _now())
    assert caught.value.status == 401


def test_garbage_is_invalid(pki: Pki) -> None:
    with pytest.raises(IdentityInvalid, match="cannot be parsed"):
        identity_from_peer(b"\x30\x03\x02\x01\x01", pki.bundles, _now())


def test_good_svid_yields_its_identity(pki: Pki) -> None:
    pair = certs.good_svid(pki.b, f"spiffe://{TD_B}/ns/prod/sa/agent")
    leaf = pair.certificates()[0]
    identity = identity_from_peer(pair.der(), pki.bundles, _now())
    assert identity == WorkloadIdentity(
        spiffe_id=f"spiffe://{TD_B}/ns/prod/sa/agent",
        trust_domain=TD_B,
        path="/ns/prod/sa/agent",
        serial=format(leaf.serial_number, "x"),
        not_after=leaf.not_valid_after_utc,
    )


def test_validity_is_judged_at_the_given_time(pki: Pki) -> None:
    pair = certs.good_svid(pki.a)
    after_expiry = pair.certificates()[0].not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(IdentityInvalid, match="expired"):
        identity_from_peer(pair.der(), pki.bundles, after_expiry)


def test_svid_is_checked_against_its_own_domain_only(pki: Pki) -> None:
    # The same certificate is good when B's ID is signed by B's CA, and bad
    # when only A's CA signed it, although both CAs are trusted at TLS level.
    good = certs.good_svid(pki.b, f"spiffe://{TD_B}/app", "b-good")
    assert identity_from_peer(good.der(), pki.bundles, _now()).trust_domain == TD_B
    forged = certs.cross_domain_svid(pki.a, f"spiffe://{TD_B}/app")
    with pytest.raises(IdentityInvalid, match="does not chain"):
        identity_from_peer(forged.der(), pki.bundles, _now())


def test_chained_svid_verifies_with_its_intermediate(pki: Pki) -> None:
    intermediate = certs.intermediate_ca(pki.a, pki.root / "int")
    pair = certs.chained_svid(intermediate.dir, f"spiffe://{TD_A}/chained")
    identity = identity_from_peer(pair.der(), pki.bundles, _now(), intermediates=pair.chain_der())
    assert identity.spiffe_id == f"spiffe://{TD_A}/chained"


def test_to_opa_is_the_contract_shape() -> None:
    identity = WorkloadIdentity(
        spiffe_id="spiffe://example.org/app",
        trust_domain="example.org",
        path="/app",
        serial="1f",
        not_after=datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC),
    )
    assert identity.to_opa() == {
        "spiffe_id": "spiffe://example.org/app",
        "trust_domain": "example.org",
        "path": "/app",
        "serial": "1f",
        "not_after": "2030-05-06T07:08:09Z",
    }


# --- TrustBundles -------------------------------------------------------------------


def test_bundles_expose_domains_and_concatenated_pem(pki: Pki) -> None:
    assert pki.bundles.trust_domains == (TD_A, TD_B)
    loaded = x509.load_pem_x509_certificates(pki.bundles.cafile_pem().encode())
    expected = {x509.load_pem_x509_certificate((d / "ca.pem").read_bytes()) for d in (pki.a, pki.b)}
    assert set(loaded) == expected
    assert pki.bundles.store(TD_A) is not None
    assert pki.bundles.store("stranger.example") is None


def test_bundle_file_may_hold_several_cas(pki: Pki) -> None:
    both = pki.root / "both.pem"
    both.write_bytes((pki.a / "ca.pem").read_bytes() + (pki.b / "ca.pem").read_bytes())
    bundles = TrustBundles.load({TD_A: both})
    assert len(bundles.bundles[TD_A]) == 2


def _old_ca(p: Pki) -> Path:
    devca.init_ca(p.root / "old", TD_A, ttl=timedelta(days=1), now=_now() - timedelta(days=3))
    return p.root / "old" / "ca.pem"


def _not_pem(p: Pki) -> Path:
    path = p.root / "empty.pem"
    path.write_text("not a certificate\n")
    return path


BUNDLE_ERRORS: list[tuple[str, Callable[[Pki], dict[str, Path]], str]] = [
    ("missing file", lambda p: {TD_A: p.root / "nope.pem"}, "does not exist"),
    ("no certificate", lambda p: {TD_A: _not_pem(p)}, "holds no PEM certificate"),
    ("SVID as bundle", lambda p: {TD_A: certs.good_svid(p.a, name="leaf").cert}, "is not a CA"),
    ("expired CA", lambda p: {TD_A: _old_ca(p)}, "expired at"),
    ("bad trust domain", lambda p: {"Example.org": p.a / "ca.pem"}, "is not valid"),
    ("trust domain with path", lambda p: {"example.org/x": p.a / "ca.pem"}, "without a path"),
    ("no trust domain", lambda p: {}, "no trust domain is configured"),
]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [(m, msg) for _, m, msg in BUNDLE_ERRORS],
    ids=[n for n, _, _ in BUNDLE_ERRORS],
)
def test_bundle_load_errors_say_what_to_fix(
    pki: Pki, mapping: Callable[[Pki], dict[str, Path]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        TrustBundles.load(mapping(pki))


# --- server_ssl_context and a real handshake ----------------------------------------


def test_server_context_settings(pki: Pki) -> None:
    server = certs.server_cert(pki.a)
    context = server_ssl_context(server.cert, server.key, pki.bundles)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 2


def test_server_context_bad_key_is_config_error(pki: Pki) -> None:
    server = certs.server_cert(pki.a)
    other = certs.good_svid(pki.a, name="other")
    with pytest.raises(ConfigError, match="key matches the certificate"):
        server_ssl_context(server.cert, other.key, pki.bundles)


@dataclass
class Listener:
    port: int
    handled: list[str]
    tls_failures: list[BaseException]


@asynccontextmanager
async def _listener(pki: Pki) -> AsyncIterator[Listener]:
    server_pair = certs.server_cert(pki.a)
    context = server_ssl_context(server_pair.cert, server_pair.key, pki.bundles)
    handled: list[str] = []
    tls_failures: list[BaseException] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        leaf, chain = peer_certificates(writer.get_extra_info("ssl_object"))
        try:
            identity = identity_from_peer(leaf, pki.bundles, _now(), intermediates=chain)
            answer = f"ok {identity.spiffe_id}"
        except IdentityInvalid as exc:
            answer = f"denied {exc.code}"
        handled.append(answer)
        writer.write(answer.encode() + b"\n")
        await writer.drain()
        writer.close()
        with suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()

    def record(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            tls_failures.append(exc)

    # asyncio reports a failed server-side handshake to the exception
    # handler only in debug mode; that is how the test sees *why* TLS refused.
    loop = asyncio.get_running_loop()
    previous_handler, previous_debug = loop.get_exception_handler(), loop.get_debug()
    loop.set_exception_handler(record)
    loop.set_debug(True)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield Listener(server.sockets[0].getsockname()[1], handled, tls_failures)
    finally:
        server.close()
        await server.wait_closed()
        loop.set_exception_handler(previous_handler)
        loop.set_debug(previous_debug)


async def _call(port: int, ca_file: Path, client: CertPair | None) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        with suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    ("mint", "reason"),
    [
        (None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        (
            lambda p: certs.svid_from_unknown_ca(p.root / "rogue"),
            "unable to get local issuer certificate",
        ),
        (lambda p: certs.expired_svid(p.a), "certificate has expired"),
    ],
    ids=["no client certificate", "unknown CA", "expired"],
)
async def test_tls_refuses_before_any_handler_runs(
    pki: Pki, mint: Mint | None, reason: str
) -> None:
    client = None if mint is None else mint(pki)
    async with _listener(pki) as listener:
        # With TLS 1.3 the client finishes its side of the handshake before
        # the server judges its certificate, so it sees the refusal as EOF.
        try:
            answer = await _call(listener.port, pki.a / "ca.pem", client)
        except (ssl.SSLError, ConnectionError):
            answer = ""
        assert answer == ""
        for _ in range(100):
            if listener.tls_failures:
                break
            await asyncio.sleep(0.01)
        assert listener.handled == []
        assert len(listener.tls_failures) == 1
        failure = listener.tls_failures[0]
        assert isinstance(failure, ssl.SSLError)
        assert reason in str(failure)


@pytest.mark.parametrize(
    ("mint", "answer"),
    [
        (lambda p: certs.good_svid(p.a, f"spiffe://{TD_A}/app"), f"ok spiffe://{TD_A}/app"),
        (lambda p: certs.good_svid(p.b, f"spiffe://{TD_B}/app"), f"ok spiffe://{TD_B}/app"),
        (
            lambda p: certs.chained_svid(
                certs.intermediate_ca(p.a, p.root / "int").dir, f"spiffe://{TD_A}/chained"
            ),
            f"ok spiffe://{TD_A}/chained",
        ),
        # Passes OpenSSL (A's CA is trusted) but not identity_from_peer.
        (lambda p: certs.cross_domain_svid(p.a, f"spiffe://{TD_B}/app"), "denied identity_invalid"),
        (lambda p: certs.two_uri_sans(p.a), "denied identity_invalid"),
    ],
    ids=["good A", "good B", "chained via intermediate", "B's ID from A's CA", "two URI SANs"],
)
async def test_handshake_then_identity(pki: Pki, mint: Mint, answer: str) -> None:
    async with _listener(pki) as listener:
        assert await _call(listener.port, pki.a / "ca.pem", mint(pki)) == answer
        assert listener.handled == [answer]
        assert listener.tls_failures == []


# --- the verified-certificate cache -------------------------------------------------


def test_cache_returns_the_verified_identity_until_it_expires(pki: Pki) -> None:
    cache = VerifiedIdentities(pki.bundles)
    good = certs.good_svid(pki.a, ttl=timedelta(minutes=10))
    first = cache.identify(good.der(), _now())
    assert cache.identify(good.der(), _now()) is first
    with pytest.raises(IdentityInvalid, match="expired at"):
        cache.identify(good.der(), _now() + timedelta(minutes=11))


def test_cache_expires_with_the_earliest_certificate_of_the_chain(pki: Pki) -> None:
    # The intermediate ends before the leaf: a cached verification must end with it.
    intermediate = certs.intermediate_ca(
        pki.a, pki.root / "short-int", not_after=_now() + timedelta(minutes=10)
    )
    pair = certs.chained_svid(intermediate.dir, f"spiffe://{TD_A}/short")
    cache = VerifiedIdentities(pki.bundles)
    identity = cache.identify(pair.der(), _now(), pair.chain_der())
    assert identity.not_after > _now() + timedelta(minutes=30)  # the leaf itself is good
    with pytest.raises(IdentityInvalid, match="does not chain"):
        cache.identify(pair.der(), _now() + timedelta(minutes=11), pair.chain_der())


def test_cache_never_remembers_a_refusal(pki: Pki) -> None:
    cache = VerifiedIdentities(pki.bundles)
    bad = certs.two_uri_sans(pki.a)
    for _ in range(2):
        with pytest.raises(IdentityInvalid, match="URI SANs"):
            cache.identify(bad.der(), _now())
    with pytest.raises(IdentityMissing):
        cache.identify(None, _now())


def test_cache_is_bounded(pki: Pki) -> None:
    cache = VerifiedIdentities(pki.bundles, capacity=2)
    pairs = [certs.good_svid(pki.a, name=f"n{i}") for i in range(3)]
    identities = [cache.identify(p.der(), _now()) for p in pairs]
    assert cache.identify(pairs[2].der(), _now()) is identities[2]
    assert cache.identify(pairs[0].der(), _now()) is not identities[0]
