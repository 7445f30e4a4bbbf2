"""Caller headers read once, each at most once: what the policy judges is what is sent.

Contract: ``check_headers(headers)`` refuses, with a 400 that names the header,
any header the proxy inspects or forwards that appears more than once, and any
``Content-Encoding`` other than identity in any of its values. It returns the
allow-listed headers to forward (lower-cased, one value each).

Security reasoning: with a repeated header, one reader takes the first value
and another the last (aiohttp's ``get`` and the forwarding dict did exactly
that), so the policy could judge one guardrail, task or service tier while
Bedrock receives another. None of these headers is defined as a list, so a
repetition is refused rather than joined. A compressed body would be scanned
compressed, or inflated past the body limit, so it is refused whatever the
position of the coding among the header's values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from proxy.aws.signing import FORWARDED_HEADERS, forwardable_headers
from proxy.errors import InvalidRequest

# Read by the proxy itself: routing, region, task, classification, body framing.
INSPECTED_HEADERS = frozenset(
    {
        "host",
        "authorization",
        "x-task-id",
        "x-data-classification",
        "content-encoding",
        "content-length",
        "transfer-encoding",
    }
)
_SINGLE = INSPECTED_HEADERS | FORWARDED_HEADERS
_NAME_SHOWN = 64


def check_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers to forward; InvalidRequest for a repeated or an encoding header."""
    items = list(headers)
    seen: set[str] = set()
    for name, value in items:
        lower = name.lower()
        if lower in _SINGLE:
            if lower in seen:
                raise InvalidRequest(
                    f"The header {name[:_NAME_SHOWN]} appears more than once; send it once"
                )
            seen.add(lower)
        if lower == "content-encoding":
            codings = {coding.strip().lower() for coding in value.split(",")}
            if not codings <= {"", "identity"}:
                raise InvalidRequest(
                    "Compressed request bodies are not accepted (Content-Encoding must be "
                    "identity or absent)"
                )
    return forwardable_headers(items)


def bedrock_headers(forwarded: Mapping[str, str]) -> dict[str, str]:
    """The forwarded ``X-Amzn-Bedrock-*`` headers, for the policy to judge cost and logging."""
    return {name: value for name, value in forwarded.items() if name.startswith("x-amzn-bedrock-")}
