"""SPIFFE ID syntax: parse a string into a canonical ``SpiffeId`` or refuse it.

Contract: ``parse_spiffe_id`` accepts exactly the IDs the SPIFFE-ID spec
(spiffe/spiffe ``standards/SPIFFE-ID.md``) calls valid *and* already
canonical, and raises ``IdentityInvalid`` for everything else. It never
normalises.

Security reasoning: the SPIFFE ID is the caller's name in policy input, audit
records, STS ``SourceIdentity`` and credential cache keys. If two spellings
could reach the same identity (``Example.org`` vs ``example.org``,
``/a/./b`` vs ``/a/b``, ``%61`` vs ``a``), a policy written against one
spelling could be bypassed with another, and audit trails would split one
workload into several. Refusing every non-canonical form means string
equality *is* identity equality everywhere downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.errors import IdentityInvalid

SCHEME_PREFIX = "spiffe://"
MAX_ID_LENGTH = 2048
# RFC 3986 limits the URI host to 255 characters; the spec inherits it.
MAX_TRUST_DOMAIN_LENGTH = 255

_TRUST_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


@dataclass(frozen=True)
class SpiffeId:
    """A syntactically valid, canonical SPIFFE ID; ``path`` is ``""`` or starts with ``/``."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"


def _refuse(value: str, reason: str) -> IdentityInvalid:
    # The value may come from a caller's certificate: show it with repr() so
    # control characters cannot break a log line, and bound its length.
    shown = value if len(value) <= 120 else value[:117] + "..."
    return IdentityInvalid(f"invalid SPIFFE ID {shown!r}: {reason}")


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse ``spiffe://<trust-domain>[/<segment>...]``.

    Raises ``IdentityInvalid`` for anything that is not a canonical SPIFFE ID.
    """
    if len(value) > MAX_ID_LENGTH:
        raise _refuse(value, f"longer than {MAX_ID_LENGTH} characters")
    if not value.startswith(SCHEME_PREFIX):
        if value[: len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX:
            raise _refuse(value, "the scheme must be lower-case 'spiffe://'")
        raise _refuse(value, "must start with 'spiffe://' followed by a trust domain")
    rest = value[len(SCHEME_PREFIX) :]
    # Checked on the whole remainder first so the message names the real
    # problem rather than a "bad character" it causes.
    if "?" in rest:
        raise _refuse(value, "a query ('?') is not allowed")
    if "#" in rest:
        raise _refuse(value, "a fragment ('#') is not allowed")
    if "%" in rest:
        raise _refuse(value, "percent-encoding is not allowed; spell the ID in plain characters")

    slash = rest.find("/")
    trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    _check_trust_domain(value, trust_domain)
    _check_path(value, path)
    return SpiffeId(trust_domain=trust_domain, path=path)


def _check_trust_domain(value: str, trust_domain: str) -> None:
    if not trust_domain:
        raise _refuse(value, "the trust domain is empty")
    if "@" in trust_domain:
        raise _refuse(value, "userinfo ('user@') is not allowed before the trust domain")
    if ":" in trust_domain:
        raise _refuse(value, "a port is not allowed after the trust domain")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LENGTH:
        raise _refuse(
            value, f"the trust domain is longer than {MAX_TRUST_DOMAIN_LENGTH} characters"
        )
    if trust_domain != trust_domain.lower():
        raise _refuse(value, f"the trust domain must be lower-case ({trust_domain.lower()!r})")
    bad = sorted(set(trust_domain) - _TRUST_DOMAIN_CHARS)
    if bad:
        raise _refuse(
            value, f"the trust domain may only contain a-z 0-9 . - _ (found {''.join(bad)!r})"
        )


def _check_path(value: str, path: str) -> None:
    if not path:
        return
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if segment == "":
            if index == len(segments) - 1:
                raise _refuse(value, "a trailing '/' is not allowed")
            raise _refuse(value, "empty path segments ('//') are not allowed")
        if segment in (".", ".."):
            raise _refuse(value, "dot segments ('.' or '..') are not allowed in the path")
        bad = sorted(set(segment) - _PATH_CHARS)
        if bad:
            raise _refuse(
                value, f"path segments may only contain A-Z a-z 0-9 . - _ (found {''.join(bad)!r})"
            )
