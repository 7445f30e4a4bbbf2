from __future__ import annotations

import pytest

from proxy.errors import IdentityInvalid
from proxy.identity.spiffe import SpiffeId, parse_spiffe_id

# The longest valid ID: 9 ("spiffe://") + 11 ("example.org") + path = 2048.
_LONGEST_PATH = "/" + "a" * (2048 - 9 - 11 - 1)


@pytest.mark.parametrize(
    ("value", "trust_domain", "path"),
    [
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://example.org/app", "example.org", "/app"),
        ("spiffe://example.org/ns/prod/sa/default", "example.org", "/ns/prod/sa/default"),
        ("spiffe://td/A-Za-z0-9._", "td", "/A-Za-z0-9._"),
        ("spiffe://a-b_c.d9/x", "a-b_c.d9", "/x"),
        ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
        ("spiffe://example.org/...", "example.org", "/..."),
        ("spiffe://example.org/.hidden/a..b", "example.org", "/.hidden/a..b"),
        (
            "spiffe://example.org/9eebccd2-12bf-40a6-b262-65fe0487d453",
            "example.org",
            "/9eebccd2-12bf-40a6-b262-65fe0487d453",
        ),
        ("spiffe://" + "t" * 255, "t" * 255, ""),
        ("spiffe://example.org" + _LONGEST_PATH, "example.org", _LONGEST_PATH),
    ],
)
def test_valid_ids_parse_to_their_parts_and_round_trip(
    value: str, trust_domain: str, path: str
) -> None:
    parsed = parse_spiffe_id(value)
    assert parsed == SpiffeId(trust_domain=trust_domain, path=path)
    assert str(parsed) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "must start with 'spiffe://'"),
        ("example.org/app", "must start with 'spiffe://'"),
        ("https://example.org/app", "must start with 'spiffe://'"),
        ("spiffe:/example.org/app", "must start with 'spiffe://'"),
        ("spiffe:example.org", "must start with 'spiffe://'"),
        (" spiffe://example.org/app", "must start with 'spiffe://'"),
        ("SPIFFE://example.org/app", "scheme must be lower-case"),
        ("Spiffe://example.org/app", "scheme must be lower-case"),
        ("spiffe://", "trust domain is empty"),
        ("spiffe:///app", "trust domain is empty"),
        ("spiffe://Example.org/app", "must be lower-case ('example.org')"),
        ("spiffe://EXAMPLE.ORG", "must be lower-case"),
        ("spiffe://exa mple.org/app", "may only contain a-z 0-9"),
        ("spiffe://exämple.org/app", "may only contain a-z 0-9"),
        ("spiffe://example.org!/app", "may only contain a-z 0-9"),
        ("spiffe://[::1]/app", "port"),
        ("spiffe://example.org:8443/app", "a port is not allowed"),
        ("spiffe://example.org:/app", "a port is not allowed"),
        ("spiffe://user@example.org/app", "userinfo"),
        ("spiffe://user:pw@example.org/app", "userinfo"),
        ("spiffe://example.org/app?x=1", "a query"),
        ("spiffe://example.org?x", "a query"),
        ("spiffe://example.org/app#frag", "a fragment"),
        ("spiffe://example.org#", "a fragment"),
        ("spiffe://example.org/%61pp", "percent-encoding"),
        ("spiffe://exa%6Dple.org/app", "percent-encoding"),
        ("spiffe://example.org/app/%2e%2e/admin", "percent-encoding"),
        ("spiffe://example.org/.", "dot segments"),
        ("spiffe://example.org/..", "dot segments"),
        ("spiffe://example.org/app/./x", "dot segments"),
        ("spiffe://example.org/app/../admin", "dot segments"),
        ("spiffe://example.org//app", "empty path segments"),
        ("spiffe://example.org/app//x", "empty path segments"),
        ("spiffe://example.org/", "trailing '/'"),
        ("spiffe://example.org/app/", "trailing '/'"),
        ("spiffe://example.org/app x", "path segments may only contain"),
        ("spiffe://example.org/app\\x", "path segments may only contain"),
        ("spiffe://example.org/app*", "path segments may only contain"),
        ("spiffe://example.org/ü", "path segments may only contain"),
        ("spiffe://example.org/app\n", "path segments may only contain"),
        ("spiffe://example.org/a+b", "path segments may only contain"),
        ("spiffe://example.org/a:b", "path segments may only contain"),
        ("spiffe://example.org/a@b", "path segments may only contain"),
        ("spiffe://" + "t" * 256, "trust domain is longer than 255"),
        ("spiffe://example.org" + _LONGEST_PATH + "a", "longer than 2048"),
    ],
)
def test_invalid_ids_are_rejected_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(IdentityInvalid) as caught:
        parse_spiffe_id(value)
    assert reason in caught.value.message
    assert caught.value.code == "identity_invalid"


def test_message_shows_a_long_value_truncated_and_escaped() -> None:
    value = "spiffe://example.org/\x1b[31m" + "a" * 500
    with pytest.raises(IdentityInvalid) as caught:
        parse_spiffe_id(value)
    assert "\x1b" not in caught.value.message
    assert len(caught.value.message) < 300


def test_spiffe_id_is_frozen() -> None:
    parsed = parse_spiffe_id("spiffe://example.org/app")
    with pytest.raises(AttributeError):
        parsed.path = "/admin"  # type: ignore[misc]
