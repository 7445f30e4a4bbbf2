"""proxy.classify: the declared level can raise, never lower, the effective level."""

from __future__ import annotations

import pytest

from proxy.classify import LEVELS, Classification, classify
from proxy.errors import InvalidRequest


@pytest.mark.parametrize(
    ("header", "declared"),
    [
        ("public", "public"),
        ("internal", "internal"),
        ("confidential", "confidential"),
        ("restricted", "restricted"),
        (None, "internal"),  # unlabelled calls count as internal data
    ],
)
def test_declared_levels(header: str | None, declared: str) -> None:
    result = classify(header, b'{"messages": []}')
    assert result == Classification(declared, "public", declared, ())
    assert result.to_opa() == {
        "declared": declared,
        "detected": "public",
        "effective": declared,
        "findings": [],
    }


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Public",
        "RESTRICTED",
        " internal",
        "internal ",
        "secret",
        "public,restricted",
        "internal\r\nX-Evil: 1",
        "x" * 1000,
    ],
)
def test_bad_declared_level_is_invalid(header: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        classify(header, b"")
    assert info.value.status == 400
    assert "X-Data-Classification" in info.value.message
    # The echo of the caller's value is bounded.
    assert len(info.value.message) < 200


@pytest.mark.parametrize("header", [*LEVELS, None])
@pytest.mark.parametrize(
    "body", [b"", b"{}", b"my card is 4111 1111 1111 1111, ssn 078-05-1120", b"\xff\x00"]
)
def test_effective_never_below_declared(header: str | None, body: bytes) -> None:
    result = classify(header, body)
    assert LEVELS.index(result.effective) >= LEVELS.index(result.declared)
    assert LEVELS.index(result.effective) >= LEVELS.index(result.detected)
    assert result.effective in (result.declared, result.detected)
