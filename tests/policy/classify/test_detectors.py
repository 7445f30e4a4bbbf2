"""proxy.policy.classify.detectors: true and false positives, adversarial input, the deadline."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.policy.classify.detectors import Deadline, OutOfTime, Span, scan_text
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


# --- the private-key detector finds what its old single regex found ----------

# The old detector, kept as the oracle: right, but it tried up to 16 KiB after
# every BEGIN line (~8 s of CPU per MB of repeated BEGIN lines).
_OLD_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]{0,16384}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----)?"
)
_PEM_MARKERS = [
    "-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----",
    "-----BEGIN ENCRYPTED PRIVATE KEY-----", "-----BEGIN PGP PRIVATE KEY BLOCK-----",
    "-----END PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----",
    "-----END PGP PRIVATE KEY BLOCK-----", "-----END PUBLIC KEY-----",
]  # fmt: skip
_PEM_PIECES = [
    "-----BEGIN ", "-----END ", "-----", "-", "PRIVATE KEY", "PRIVATE KEY-----", "RSA ",
    " BLOCK", "MIIEpAIBAAKCAQEA7", "\n", " ", "a@b.cd",
]  # fmt: skip


def _old_private_keys(text: str) -> list[tuple[int, int]]:
    spans, position = [], 0
    while (match := _OLD_PRIVATE_KEY.search(text, position)) is not None:
        spans.append(match.span())
        position = match.end()
    return spans


@st.composite
def _pem_shaped(draw: st.DrawFn) -> str:
    # Key-like pieces, with fillers long enough to put an END line on either
    # side of the 16 KiB reach and a text across the 64 KiB regex window.
    filler = st.sampled_from([1, 1000, 16383, 16384, 16385, 40000]).map(lambda n: "x" * n)
    marker = st.sampled_from(_PEM_MARKERS)
    pieces = draw(st.lists(marker | marker | st.sampled_from(_PEM_PIECES) | filler, max_size=30))
    return "".join(pieces)


@given(_pem_shaped())
@example(f"{_PEM_MARKERS[0]}{'x' * 16384}{_PEM_MARKERS[4]}")  # END at the edge of reach
@example(f"{_PEM_MARKERS[0]}{'x' * 16385}{_PEM_MARKERS[4]}")  # just past it
@example(f"{_PEM_MARKERS[1]}{_PEM_MARKERS[0]}{'x' * 16380}{_PEM_MARKERS[5]}")  # one END, two BEGINs
def test_private_keys_are_the_spans_the_old_regex_found(text: str) -> None:
    found = [(s.start, s.end) for s in scan_text(text) if s.kind == "private_key"]
    # Private keys are the first family: nothing found later displaces one.
    assert found == _old_private_keys(text)


# --- adversarial input: bounded, sane findings (cost: bench/detectors.py) ----

_ADVERSARIAL_CHARS = 100_000


def _repeated(unit: str) -> str:
    return unit * (_ADVERSARIAL_CHARS // len(unit))


def _kinds(spans: list[Span]) -> set[str]:
    return {span.kind for span in spans}


@pytest.mark.parametrize(
    ("unit", "kinds", "per_unit"),
    [
        # Each BEGIN line is a key of its own: no END line follows any of them.
        ("-----BEGIN PRIVATE KEY-----", {"private_key"}, 1),
        ("-----BEGIN RSA PRIVATE KEY-----\n", {"private_key"}, 1),
        ("-----BEGIN PRIVATE KEY-----x-----END PRIVATE KEY-----", {"private_key"}, 1),
        ("-----END PRIVATE KEY-----", set(), 0),
        ("@", set(), 0),
        ("a@", set(), 0),
        ("x" * 70 + "@", set(), 0),
        # "a.bc@a.bc": every other "@" ends an address, the next one would overlap it.
        ("@a.bc", {"email"}, 0.5),
        ("1 ", set(), 0),
        ("12.", set(), 0),
        ("(1) ", set(), 0),
        ("+1 ", set(), 0),
        ("078-05-1120 x ", {"us_ssn"}, 1),
        ("eyJ", set(), 0),
        ("eyJhbGciOiJIUzI1NiJ9.", set(), 0),
        ("AKIA", set(), 0),
        ("AKIAIOSFODNN7EXAMPLE ", {"aws_access_key_id"}, 1),
        ("DE89 ", set(), 0),
        (f"{JWT_VALUE} ", {"jwt"}, 1),
        # Two families interleaved: each claims its own text, none is lost.
        ("4111 1111 1111 1111 -----BEGIN PRIVATE KEY----- a@b.cd ",
         {"payment_card", "private_key", "email"}, 3),
    ],
)  # fmt: skip
def test_adversarial_repetitions_give_bounded_sane_findings(
    unit: str, kinds: set[str], per_unit: float
) -> None:
    spans = scan_text(_repeated(unit))
    assert _kinds(spans) == kinds
    assert len(spans) == int(per_unit * (_ADVERSARIAL_CHARS // len(unit)))
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("unit", ["aB3+", "a1", "1-", "x9/"])
def test_a_long_base64ish_run_is_one_blob(unit: str) -> None:
    text = _repeated(unit)
    assert scan_text(text) == [Span(0, len(text), "binary_content")]


def test_a_pem_block_hides_what_is_inside_it() -> None:
    text = f"{PEM[:-30]} a@b.cd 4111111111111111 {PEM[-30:]}" * 1000
    assert _kinds(scan_text(text)) == {"private_key"}


# --- the budget holds inside one text ------------------------------------------


def test_a_deadline_passed_stops_a_single_text() -> None:
    ticks = iter(range(1_000_000))
    with pytest.raises(OutOfTime):
        scan_text(_repeated("1 "), Deadline(at=0.5, clock=lambda: next(ticks)))
    # The first look at the clock ended it.
    assert next(ticks) == 2
