"""proxy.policy.classify.classifier: declared can raise, never lower, the effective level."""

from __future__ import annotations

import json

import pytest

from proxy.errors import InvalidRequest
from proxy.policy.classify.classifier import Classification, Classifier, classify
from proxy.policy.classify.rules import (
    BUILTIN_RULES,
    LEVELS,
    ClassificationRules,
)
from proxy.policy.classify.scan import scan_body
from tests.policy.classify.samples import AWS_SECRET, converse_body


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
    assert result == Classification(declared, "public", declared, (), header is None)
    assert result.to_opa() == {
        "declared": declared,
        "detected": "public",
        "effective": declared,
        "findings": [],
        "defaulted": header is None,
    }


@pytest.mark.parametrize(
    ("header", "default", "declared", "defaulted"),
    [
        (None, "confidential", "confidential", True),
        (None, "public", "public", True),
        # The header wins over the policy's default, in either direction.
        ("public", "confidential", "public", False),
        ("restricted", "public", "restricted", False),
    ],
)
def test_the_default_applies_only_without_a_header(
    header: str | None, default: str, declared: str, defaulted: bool
) -> None:
    result = classify(header, b"{}", default=default)
    assert (result.declared, result.effective, result.defaulted) == (declared, declared, defaulted)


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


def test_budget_exhausted_reports_scan_incomplete() -> None:
    ticks = iter(range(100))
    body = converse_body({"text": "a"}, {"text": "b"})
    kinds = scan_body(body, operation="Converse", deadline=0.5, clock=lambda: next(ticks))
    assert kinds == ("scan_incomplete",)
    result = classify("public", body, budget_s=-1)
    assert result.effective == "restricted"


def test_downgrade_attempt_is_raised() -> None:
    result = classify("public", converse_body({"text": f"use {AWS_SECRET}"}))
    assert result == Classification("public", "restricted", "restricted", ("aws_secret_key",))
    assert AWS_SECRET not in json.dumps(result.to_opa())


async def test_the_classifier_raises_the_declared_level_by_the_findings() -> None:
    classifier = Classifier(None, None)
    defaulted = await classifier.classify(await classifier.declared(None, "spiffe://td/w"), ())
    assert defaulted == Classification("internal", "public", "internal", (), defaulted=True)
    found = await classifier.classify(
        await classifier.declared("public", "spiffe://td/w"), ("aws_secret_key",)
    )
    assert found == Classification("public", "restricted", "restricted", ("aws_secret_key",))
    assert isinstance(ClassificationRules().levels, type(BUILTIN_RULES.levels))
