"""Finding detectors: which kinds of sensitive data one text holds.

Contract: ``scan_text`` returns every finding in a text as (start, end, kind)
spans, in order and non-overlapping. Only finding *kinds* leave the classify
package, never matched values.

Cost: one compiled alternation, one left-to-right pass per text; candidates
start only at the beginning of a run (negative look-behinds), quantifiers are
bounded, so work is linear in the body, which the body limit bounds. A time
budget is checked between texts; running out reports ``scan_incomplete``
(restricted unless policy says otherwise), never a clean result. Bodies above
a threshold are scanned in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

EMAIL = "email"
PHONE = "phone"
US_SSN = "us_ssn"
PAYMENT_CARD = "payment_card"
IBAN = "iban"
AWS_ACCESS_KEY_ID = "aws_access_key_id"
AWS_SECRET_KEY = "aws_secret_key"
PRIVATE_KEY = "private_key"
JWT = "jwt"
HIGH_ENTROPY_TOKEN = "high_entropy_token"
BINARY_CONTENT = "binary_content"
SCAN_INCOMPLETE = "scan_incomplete"

# A base64 run this long is a blob (image, file, archive), not a credential.
BLOB_CHARS = 1024


# --- detectors ----------------------------------------------------------------

# One pass per detector family over each text, each pattern starting with a
# literal or a narrow character class: CPython's re then skips ahead in C
# (memchr for literals), which measured ~10x faster than one alternation of
# all detectors, where every alternative is tried at every position.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]{0,16384}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----)?"
)
_JWT = re.compile(
    r"eyJ(?<![A-Za-z0-9_\-.]eyJ)[A-Za-z0-9_\-]{8,4096}\.[A-Za-z0-9_\-]{2,8192}"
    r"\.[A-Za-z0-9_\-]{0,2048}(?![A-Za-z0-9_\-.])"
)
_AWS_KEY_ID = re.compile(
    r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)"
    r"(?<![A-Za-z0-9]....)[A-Z0-9]{16}(?![A-Za-z0-9])"
)
# The local part is found backwards from the "@", which keeps the search literal.
_EMAIL_DOMAIN = re.compile(
    r"@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_IBAN = re.compile(
    r"[A-Z]{2}[0-9]{2}(?<![A-Za-z0-9][A-Z]{2}[0-9]{2})(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"
    r"(?![A-Za-z0-9])"
)
# Cards, SSNs, phones and tokens all hold a digit (tokens are only reported
# with lower, upper and digit), so one digit-anchored pass finds them all.
_DIGIT = re.compile(r"[0-9]")
# "=" only as base64 padding, so "key=<secret>" is the secret, not one token.
_RUN = re.compile(r"[A-Za-z0-9+/_\-]*={0,2}")
_RUN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/_-")
# Numbers with separators: card, SSN and phone candidates, told apart below.
_NUMBER = re.compile(r"[+(]?[0-9](?:(?:[ .\-]|\) ?)?[0-9]){6,18}(?![0-9])")
# Window of one regex call, and the overlap that holds any whole candidate
# (PEM blocks <= ~16.5 KiB, JWTs <= ~14.5 KiB, everything else far less).
_WINDOW = 64 * 1024
_OVERLAP = 32 * 1024
_HEX = re.compile(r"[0-9a-fA-F\-]+")
_WORDISH = re.compile(r"[A-Z]?[a-z]{3,}")
_SSN = re.compile(r"([0-9]{3})-([0-9]{2})-([0-9]{4})")
_CARD = re.compile(r"[0-9]{13,19}|[0-9]{4}(?:([ \-])[0-9]{3,6}){2,4}")
_PHONE = re.compile(r"\+[1-9][0-9 .\-()]{7,20}|\(?[2-9][0-9]{2}\)?[ .\-]?[0-9]{3}[ .\-][0-9]{4}")

# ISO 13616 IBAN lengths by country (SWIFT registry); a wrong length is no IBAN.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
# How card numbers are written when they are grouped (Visa/MC/Discover, Amex, Diners).
_CARD_GROUPS = frozenset({(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4)})


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


def scan_text(text: str) -> list[Span]:
    """Every finding in one text, in order and non-overlapping (earlier families win)."""
    found: list[Span] = []
    _pass(found, text, _PRIVATE_KEY, lambda v: PRIVATE_KEY)
    _pass(found, text, _JWT, lambda v: JWT if _jwt(v) else None)
    _pass(found, text, _AWS_KEY_ID, lambda v: AWS_ACCESS_KEY_ID)
    _emails(found, text)
    _pass(found, text, _IBAN, lambda v: IBAN if _iban(v) else None)
    _digit_anchored(found, text)
    # Keep the first family's claim on any overlapping text. Kept spans never
    # overlap, so sorted by start they are sorted by end too: one bisect finds the
    # only neighbour a new span could overlap (linear, not quadratic, in findings).
    spans: list[Span] = []
    starts: list[int] = []
    for span in found:
        at = bisect.bisect_left(starts, span.end)
        if at and spans[at - 1].end > span.start:
            continue
        spans.insert(at, span)
        starts.insert(at, span.start)
    return spans


def _search(pattern: re.Pattern[str], text: str, position: int) -> re.Match[str] | None:
    """``pattern.search`` in windows: re holds the GIL for a whole call, so one
    call over 20 MB in the scanning thread would stall the event loop's thread.

    A match starting in a window is accepted only if it starts before the
    window's end: every pattern is shorter than the overlap, so it is whole.
    """
    size = len(text)
    while position < size:
        window_end = position + _WINDOW
        end = min(size, window_end + _OVERLAP)
        match = pattern.search(text, position, end)
        if match is not None and (match.start() < window_end or end == size):
            return match
        position = window_end
        if position < size:
            # Hand the GIL over between windows: a thread that only computes keeps
            # it for the whole switch interval, and the event loop would wait on it.
            time.sleep(0)
    return None


def _pass(
    found: list[Span], text: str, pattern: re.Pattern[str], kind_of: Callable[[str], str | None]
) -> None:
    position = 0
    while (match := _search(pattern, text, position)) is not None:
        kind = kind_of(match.group())
        if kind is not None:
            found.append(Span(match.start(), match.end(), kind))
            position = match.end()
        else:
            # A rejected short candidate (a number failing Luhn) may hide a real
            # one starting inside it; candidates are bounded, so the retry is too.
            short = match.end() - match.start() <= 64
            position = match.start() + 1 if short else match.end()


def _digit_anchored(found: list[Span], text: str) -> None:
    position = 0
    while (digit := _search(_DIGIT, text, position)) is not None:
        at = digit.start()
        start = at
        while start > 0 and text[start - 1] in _RUN_CHARS and at - start < BLOB_CHARS:
            start -= 1
        run = _RUN.match(text, at)
        end = run.end() if run is not None else at + 1
        position = end
        if end - start >= 20:
            kind = _token_kind(text[start:end])
            if kind is not None:
                found.append(Span(start, end, kind))
            continue
        # A number starts at a word boundary, possibly with "+" or "(" before it.
        begin = at - 1 if at and text[at - 1] in "+(" else at
        if begin and text[begin - 1].isalnum() or start < at and begin == at:
            continue
        number = _NUMBER.match(text, begin)
        kind = None if number is None else _number_kind(number.group())
        if number is not None and kind is not None:
            found.append(Span(begin, number.end(), kind))
            position = number.end()


def _emails(found: list[Span], text: str) -> None:
    position = 0
    while (match := _search(_EMAIL_DOMAIN, text, position)) is not None:
        position = match.end()
        start = match.start()
        while start > 0 and match.start() - start < 64 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        if start < match.start():
            found.append(Span(start, match.end(), EMAIL))


def _number_kind(value: str) -> str | None:
    ssn = _SSN.fullmatch(value)
    if ssn is not None:
        area, group, serial = ssn.groups()
        valid = area not in ("000", "666") and area[0] != "9" and group != "00"
        return US_SSN if valid and serial != "0000" else None
    if _CARD.fullmatch(value) and _luhn(value):
        return PAYMENT_CARD
    if _PHONE.fullmatch(value) and 10 <= sum(c.isdigit() for c in value) <= 15:
        return PHONE
    return None


def _luhn(value: str) -> bool:
    digits = [int(c) for c in value if c.isdigit()]
    if digits[0] not in (2, 3, 4, 5, 6) or len(set(digits)) < 2:
        return False
    groups = tuple(len(g) for g in re.split(r"[ \-]", value))
    if len(groups) > 1 and groups not in _CARD_GROUPS:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _iban(value: str) -> bool:
    compact = value.replace(" ", "")
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _jwt(value: str) -> bool:
    header = value.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def _entropy(value: str) -> float:
    counts = Counter(value)
    size = len(value)
    return -sum(n / size * math.log2(n / size) for n in counts.values())


def _token_kind(value: str) -> str | None:
    """A run of base64/url-safe characters: a blob, an AWS secret key, a token, or prose."""
    if len(value) >= BLOB_CHARS:
        return BINARY_CONTENT
    classes = (
        any(c.islower() for c in value),
        any(c.isupper() for c in value),
        any(c.isdigit() for c in value),
    )
    # Hex (hashes, UUIDs), single-case names and CamelCase identifiers made of
    # words are not credentials; random tokens rarely have word-like runs.
    if len(value) < 24 or _HEX.fullmatch(value) or sum(classes) < 3:
        return None
    if sum(map(len, _WORDISH.findall(value))) > 0.6 * len(value) or _entropy(value) < 3.7:
        return None
    if len(value) == 40 and "-" not in value and "_" not in value:
        return AWS_SECRET_KEY
    return HIGH_ENTROPY_TOKEN
