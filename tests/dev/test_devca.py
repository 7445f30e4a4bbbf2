from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy import cli
from proxy_dev import devca

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    devca.init_ca(directory, "example.org", now=NOW)
    return directory


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        (" 12h ", timedelta(hours=12)),
    ],
)
def test_parse_ttl_accepts_cli_durations(text: str, expected: timedelta) -> None:
    assert devca.parse_ttl(text) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "0h", "-1h", "1.5h", "1w", "1H", "1h30m", "01h"])
def test_parse_ttl_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="for example 90s, 30m, 1h or 2d"):
        devca.parse_ttl(text)


def test_init_ca_writes_a_spiffe_root(ca_dir: Path) -> None:
    assert (ca_dir / "trust_domain.txt").read_text() == "example.org\n"
    assert _mode(ca_dir / "ca.key") == 0o600
    assert _mode(ca_dir / "ca.pem") == 0o644
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc
    assert not [p for p in ca_dir.iterdir() if p.name.startswith(".")]


def test_init_ca_refuses_to_overwrite_unless_forced(ca_dir: Path) -> None:
    before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(FileExistsError, match="force"):
        devca.init_ca(ca_dir, "example.org")
    assert (ca_dir / "ca.pem").read_bytes() == before
    devca.init_ca(ca_dir, "other.example", force=True)
    assert (ca_dir / "ca.pem").read_bytes() != before
    assert devca.load_ca(ca_dir).trust_domain == "other.example"
    assert _mode(ca_dir / "ca.key") == 0o600


@pytest.mark.parametrize("trust_domain", ["Example.org", "", "example.org/path", "ex ample", "a:1"])
def test_init_ca_rejects_bad_trust_domains(tmp_path: Path, trust_domain: str) -> None:
    with pytest.raises(ValueError):
        devca.init_ca(tmp_path / "ca", trust_domain)
    assert not (tmp_path / "ca").exists()


def test_issue_svid_conforms_to_x509_svid(ca_dir: Path) -> None:
    cert_path, key_path = devca.issue_svid(
        ca_dir, "spiffe://example.org/ns/prod/app", "app", timedelta(minutes=30), now=NOW
    )
    assert (cert_path, key_path) == (ca_dir / "app.pem", ca_dir / "app.key")
    assert _mode(key_path) == 0o600
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    assert len(certs) == 1
    cert = certs[0]
    cert.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()

    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/prod/app"
    ]
    assert len(list(san)) == 1
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_encipherment)
    assert set(_ext(cert, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    assert cert.not_valid_after_utc == NOW + timedelta(minutes=30)
    assert cert.not_valid_before_utc <= NOW
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(ca, x509.SubjectKeyIdentifier).value.digest


def test_each_svid_gets_a_fresh_key_and_serial(ca_dir: Path) -> None:
    first = x509.load_pem_x509_certificate(
        devca.issue_svid(ca_dir, "spiffe://example.org/a", "a")[0].read_bytes()
    )
    second = x509.load_pem_x509_certificate(
        devca.issue_svid(ca_dir, "spiffe://example.org/a", "b")[0].read_bytes()
    )
    assert first.serial_number != second.serial_number
    assert first.public_key() != second.public_key()


@pytest.mark.parametrize(
    ("spiffe_id", "out", "ttl", "message"),
    [
        ("spiffe://other.example/app", "x", timedelta(hours=1), "CA in .* issues for"),
        ("spiffe://example.org", "x", timedelta(hours=1), "needs a path"),
        ("spiffe://example.org/a/../b", "x", timedelta(hours=1), "dot segments"),
        ("spiffe://Example.org/app", "x", timedelta(hours=1), "lower-case"),
        ("spiffe://example.org/app", "../escape", timedelta(hours=1), "invalid output name"),
        ("spiffe://example.org/app", "sub/dir", timedelta(hours=1), "invalid output name"),
        ("spiffe://example.org/app", "ca", timedelta(hours=1), "invalid output name"),
        ("spiffe://example.org/app", ".hidden", timedelta(hours=1), "invalid output name"),
        ("spiffe://example.org/app", "x", timedelta(0), "ttl must be positive"),
    ],
)
def test_issue_svid_rejects_bad_requests(
    ca_dir: Path, spiffe_id: str, out: str, ttl: timedelta, message: str
) -> None:
    before = sorted(p.name for p in ca_dir.iterdir())
    with pytest.raises(ValueError, match=message):
        devca.issue_svid(ca_dir, spiffe_id, out, ttl)
    assert sorted(p.name for p in ca_dir.iterdir()) == before


def test_issue_without_a_ca_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dev-ca init"):
        devca.issue_svid(tmp_path, "spiffe://example.org/app", "app")


def test_issue_server_cert_for_the_listener(ca_dir: Path) -> None:
    cert_path, key_path = devca.issue_server_cert(
        ca_dir, "server", ["localhost"], ["127.0.0.1", "::1"], timedelta(days=1), now=NOW
    )
    assert _mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes()))
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == NOW + timedelta(days=1)


@pytest.mark.parametrize(
    ("dns", "ips", "message"),
    [([], [], "at least one"), (["localhost"], ["not-an-ip"], "invalid IP address")],
)
def test_issue_server_cert_rejects_bad_names(
    ca_dir: Path, dns: list[str], ips: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        devca.issue_server_cert(ca_dir, "server", dns, ips)


def test_cli_issue_without_a_ca_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["dev-ca", "issue", "--dir", str(tmp_path), "--spiffe-id", "spiffe://example.org/a",
         "--out", "a"]
    )  # fmt: skip
    assert code == 2
    assert "no dev CA in" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
