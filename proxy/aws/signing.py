"""Which caller headers go upstream, and the SigV4 signature over what is sent.

Only an allow-list of Bedrock headers is forwarded: every caller credential
(SigV4 ``Authorization``, ``Authorization: Bearer`` API keys,
``X-Amz-Security-Token``, ``X-Amz-Date``, ``X-Amz-Content-Sha256``), hop-by-hop
headers and anything unknown are dropped by construction, not by a deny-list
that a new header could slip past.

Signing is botocore's SigV4 (signing name ``bedrock``) over the exact bytes
forwarded: the canonical URI is computed by botocore from the wire path we
send, which is what AWS does for ``:`` and ``/`` in model ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.aws.credentials import SessionCredentials

SIGNING_NAME = "bedrock"

FORWARDED_HEADERS = frozenset(
    {
        "content-type",
        "accept",
        "x-amzn-bedrock-accept",
        "x-amzn-bedrock-trace",
        "x-amzn-bedrock-guardrailidentifier",
        "x-amzn-bedrock-guardrailversion",
        "x-amzn-bedrock-performanceconfig-latency",
        "x-amzn-bedrock-service-tier",
        "x-amzn-bedrock-request-metadata",
        "x-amzn-bedrock-projectidentifier",
    }
)

# Response headers worth passing back; the rest (hop-by-hop, server internals) stay.
RETURNED_HEADERS = frozenset(
    {
        "content-type",
        "x-amzn-requestid",
        "x-amzn-errortype",
        "x-amzn-bedrock-content-type",
        "x-amzn-bedrock-input-token-count",
        "x-amzn-bedrock-output-token-count",
        "x-amzn-bedrock-invocation-latency",
        "x-amzn-bedrock-performanceconfig-latency",
        "x-amzn-bedrock-service-tier",
        "x-amzn-bedrock-trace",
    }
)


def forwardable_headers(incoming: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased allow-listed headers; a repeated header keeps its last value."""
    return {name.lower(): value for name, value in incoming if name.lower() in FORWARDED_HEADERS}


def returnable_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in upstream.items() if name.lower() in RETURNED_HEADERS}


def sign_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: SessionCredentials,
    region: str,
) -> dict[str, str]:
    """Headers to send: ``headers`` plus X-Amz-Date, the token and Authorization.

    Host is signed but not returned: aiohttp sends the same Host for the same URL.
    """
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    signer = SigV4Auth(
        Credentials(
            credentials.access_key_id, credentials.secret_access_key, credentials.session_token
        ),
        SIGNING_NAME,
        region,
    )
    signer.add_auth(request)
    return dict(request.headers.items())
