"""SigV4 verification for the emulated bedrock-runtime (pure, no I/O).

Contract: ``verify_request`` accepts a request only when its ``Authorization``
header is a well-formed ``AWS4-HMAC-SHA256`` header scoped to service
``bedrock``, its access key belongs to an unexpired credential issued by the
emulator's STS (``lookup``), ``X-Amz-Security-Token`` equals that
credential's session token, ``X-Amz-Date`` is within the allowed skew and
matches the scope date, ``x-amz-content-sha256`` (if sent) is the body's hash,
and the signature recomputed by botocore over the exact wire path, query,
signed headers and body is equal (constant-time compare). Anything else
raises ``AwsError`` with the 403 type AWS uses.

Why botocore computes the signature: the point of the emulator is to catch
signing bugs in the proxy, and a hand-written verifier could share them.
botocore re-encodes every path segment of the raw wire path itself, which is
exactly AWS's double encoding for non-S3 services (as botocore signs them), so a
proxy that decodes or re-encodes model ids wrongly fails here as it would on
AWS.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials
from multidict import MultiMapping

from proxy_dev.emulator.errors import AwsError

SERVICE = "bedrock"
MAX_SKEW_S = 300.0
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 +Credential=(?P<cred>[^,\s]+), *"
    r"SignedHeaders=(?P<signed>[^,\s]+), *Signature=(?P<sig>[0-9a-f]{64})$"
)
_AMZ_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")


@dataclass(frozen=True)
class IssuedCredential:
    """A credential the emulator's STS handed out (read from its answer)."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: float
    role_arn: str
    policy: Mapping[str, Any] | None
    source_identity: str | None

    @property
    def account(self) -> str:
        parts = self.role_arn.split(":")
        return parts[4] if len(parts) > 5 else ""


@dataclass(frozen=True)
class ParsedAuthorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


@dataclass(frozen=True)
class VerifiedCaller:
    credential: IssuedCredential
    region: str


def _invalid_signature(message: str) -> AwsError:
    return AwsError(403, "InvalidSignatureException", message)


def _unrecognized() -> AwsError:
    return AwsError(
        403, "UnrecognizedClientException", "The security token included in the request is invalid."
    )


def parse_authorization(value: str | None) -> ParsedAuthorization:
    if not value:
        raise AwsError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTH_RE.match(value.strip())
    if match is None:
        raise AwsError(
            403, "IncompleteSignatureException", "Authorization header is not a valid SigV4 header."
        )
    parts = match["cred"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise AwsError(403, "IncompleteSignatureException", "Credential scope is malformed.")
    akid, date, region, service, _ = parts
    if service != SERVICE:
        raise _invalid_signature(f"Credential should be scoped to correct service: '{SERVICE}'.")
    if not _REGION_RE.match(region):
        raise _invalid_signature("Credential should be scoped to a valid region.")
    signed = tuple(match["signed"].split(";"))
    if list(signed) != sorted(set(signed)) or any(h != h.lower() or not h for h in signed):
        raise _invalid_signature("SignedHeaders must be lower-case, sorted and unique.")
    if "host" not in signed:
        raise _invalid_signature("'Host' must be a signed header.")
    return ParsedAuthorization(akid, date, region, service, signed, match["sig"])


class _ExactHeadersSigV4(SigV4Auth):
    """SigV4Auth that signs exactly the headers it is given.

    botocore drops headers on its own blocklist (user-agent, expect...) and
    adds ``host``; a verifier must instead use precisely the caller's
    SignedHeaders list, or a client signing a blocklisted header would fail.
    """

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        out = HTTPHeaders()
        for name, value in request.headers.items():
            out[name.lower()] = value
        return out


def expected_signature(
    *,
    method: str,
    raw_path: str,
    headers: MultiMapping[str],
    body: bytes,
    auth: ParsedAuthorization,
    secret_access_key: str,
    session_token: str,
    amz_date: str,
) -> str:
    signed = HTTPHeaders()
    for name in auth.signed_headers:
        values = headers.getall(name, [])
        if not values:
            raise _invalid_signature(f"Signed header '{name}' is missing from the request.")
        for value in values:
            signed[name] = value
    # The scheme only steers botocore's "sign the payload?" choice: over http it
    # always hashes the body, which is what bedrock requires of SDK callers.
    request = AWSRequest(method=method, url="http://emulator" + raw_path, data=body)
    request.headers = signed
    request.context["timestamp"] = amz_date
    signer = _ExactHeadersSigV4(
        Credentials(auth.access_key_id, secret_access_key, session_token), auth.service, auth.region
    )
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))


def _amz_epoch(amz_date: str) -> float:
    return float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))


def verify_request(
    *,
    method: str,
    raw_path: str,
    headers: MultiMapping[str],
    body: bytes,
    lookup: Callable[[str], IssuedCredential | None],
    now: float,
) -> VerifiedCaller:
    auth = parse_authorization(headers.get("Authorization"))
    credential = lookup(auth.access_key_id)
    if credential is None:
        raise _unrecognized()
    token = headers.get("X-Amz-Security-Token", "")
    if not hmac.compare_digest(token.encode(), credential.session_token.encode()):
        raise _unrecognized()
    if credential.expiration <= now:
        raise AwsError(
            403, "ExpiredTokenException", "The security token included in the request is expired"
        )
    amz_date = headers.get("X-Amz-Date", "")
    if not _AMZ_DATE_RE.match(amz_date) or amz_date[:8] != auth.date:
        raise _invalid_signature(
            "X-Amz-Date is missing, malformed or does not match the scope date."
        )
    if abs(_amz_epoch(amz_date) - now) > MAX_SKEW_S:
        raise _invalid_signature(
            "Signature expired: the request time is too far from the server time."
        )
    declared_hash = headers.get("X-Amz-Content-Sha256")
    if declared_hash is not None and declared_hash != hashlib.sha256(body).hexdigest():
        # bedrock has no unsigned-payload mode for SDK callers; a mismatch means
        # the body was changed after signing.
        raise _invalid_signature("x-amz-content-sha256 does not match the request body.")
    expected = expected_signature(
        method=method,
        raw_path=raw_path,
        headers=headers,
        body=body,
        auth=auth,
        secret_access_key=credential.secret_access_key,
        session_token=credential.session_token,
        amz_date=amz_date,
    )
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        raise _invalid_signature(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    return VerifiedCaller(credential=credential, region=auth.region)
