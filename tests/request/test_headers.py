"""proxy.request.headers: each inspected or forwarded header once; no encoded bodies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.aws.signing import FORWARDED_HEADERS
from proxy.errors import InvalidRequest
from proxy.request.headers import INSPECTED_HEADERS, bedrock_headers, check_headers


def test_single_headers_are_forwarded_lower_cased() -> None:
    forwarded = check_headers(
        [
            ("Content-Type", "application/json"),
            ("X-Amzn-Bedrock-Service-Tier", "flex"),
            ("X-Task-Id", "task-1"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=..."),
            ("Content-Encoding", "identity"),
            ("X-Custom", "a"),
            ("X-Custom", "b"),  # neither read nor forwarded: a repeat does not matter
        ]
    )
    assert forwarded == {
        "content-type": "application/json",
        "x-amzn-bedrock-service-tier": "flex",
    }
    assert bedrock_headers(forwarded) == {"x-amzn-bedrock-service-tier": "flex"}


@given(
    st.sampled_from(sorted(INSPECTED_HEADERS | FORWARDED_HEADERS)),
    st.sampled_from([str.lower, str.upper, str.title]),
    st.lists(st.sampled_from(["", "identity"]), min_size=2, max_size=2),
)
def test_any_repeat_of_a_read_header_is_refused(name: str, case: object, values: list[str]) -> None:
    spelled = case(name)  # type: ignore[operator]
    headers = [(spelled, values[0]), ("Accept", "*/*") if name != "accept" else ("X-A", "1"),
               (name, values[1])]  # fmt: skip
    with pytest.raises(InvalidRequest, match="appears more than once") as refused:
        check_headers(headers)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "value", ["gzip", "identity, gzip", "gzip, identity", "br", " Deflate ", "identity,x-gzip"]
)
def test_any_coding_but_identity_is_refused_wherever_it_stands(value: str) -> None:
    with pytest.raises(InvalidRequest, match="Compressed request bodies"):
        check_headers([("Content-Encoding", value)])


@pytest.mark.parametrize("value", ["identity", "", "IDENTITY", "identity, identity"])
def test_identity_is_no_encoding(value: str) -> None:
    assert check_headers([("Content-Encoding", value)]) == {}
