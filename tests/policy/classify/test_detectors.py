"""proxy.policy.classify.detectors: true and false positives of every detector."""

from __future__ import annotations

import pytest

from proxy.policy.classify.detectors import scan_text
from tests.policy.classify.samples import AWS_SECRET, JWT_VALUE, PEM


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to john.doe+x@mail.example.co.uk today", "email", "john.doe+x@mail.example.co.uk"),
        ("call +44 20 7946 0958 now", "phone", "+44 20 7946 0958"),
        ("call (415) 555-2671 now", "phone", "(415) 555-2671"),
        ("ssn 078-05-1120.", "us_ssn", "078-05-1120"),
        ("card 4111 1111 1111 1111 exp", "payment_card", "4111 1111 1111 1111"),
        ("card 4111111111111111", "payment_card", "4111111111111111"),
        ("amex 3782-822463-10005", "payment_card", "3782-822463-10005"),
        ("iban DE89 3704 0044 0532 0130 00", "iban", "DE89 3704 0044 0532 0130 00"),
        ("iban GB82WEST12345698765432", "iban", "GB82WEST12345698765432"),
        ("id AKIAIOSFODNN7EXAMPLE,", "aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
        (f"key={AWS_SECRET}\n", "aws_secret_key", AWS_SECRET),
        (f"here:\n{PEM}\nend", "private_key", PEM),
        (f"Bearer {JWT_VALUE}", "jwt", JWT_VALUE),
        ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a", "high_entropy_token",
         "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
        ("x-api-key: sk-proj-4f8Hq2LmN9xR7tY3vB6kP1sZ0wC5dE", "high_entropy_token",
         "sk-proj-4f8Hq2LmN9xR7tY3vB6kP1sZ0wC5dE"),
    ],
)  # fmt: skip
def test_detector_true_positives(text: str, kind: str, value: str) -> None:
    [span] = scan_text(text)
    assert (span.kind, text[span.start : span.end]) == (kind, value)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # 16 digits failing Luhn
        "order 1234567890123456",  # Luhn fails
        "grouped oddly 4111 11 1111 1111 11",  # Luhn passes, not how cards are written
        "bad iban DE89 3704 0044 0532 0130 01",  # mod-97 fails
        "short iban DE89 3704 0044 0532",  # wrong length for DE
        "ssn 000-12-3456 and 666-12-3456 and 900-12-3456",  # never issued
        "date 2024-01-15 at 12:30, version 1.2.3.4, pi 3.14159",
        "user@localhost and a@b",  # no domain with a TLD
        "git 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",  # hex hash
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "getUserProfileById2024WithExtraStuff",  # CamelCase identifier
        "internationalization_and_localization_settings",
        "https://example.com/api/v1/users/12345/profile",
        "AKIAIOSFODNN7EXAMPLEX",  # too long for an access key id
        "eyJub3RhIjoiand0In0.eyJzdWIiOiIxIn0.sig",  # header without alg
        "-----BEGIN PUBLIC KEY-----",
        "phone 12345",
    ],
)
def test_detector_false_positives(text: str) -> None:
    assert scan_text(text) == []
