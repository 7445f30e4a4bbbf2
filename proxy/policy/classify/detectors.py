"""Finding detectors: which kinds of sensitive data one text holds.

Contract: ``scan_text`` returns every finding in a text as (start, end, kind)
spans, in order and non-overlapping. Only finding *kinds* leave the classify
package, never matched values.

Cost: linear in the text, whatever it holds. One left-to-right pass per
detector family; every regex starts with a literal or a narrow class and
candidates start only at the beginning of a run (negative look-behinds), so a
position is tried by a bounded amount of work at most a bounded number of
times. Nothing scans a window per match: a private key's BEGIN and END lines
are found in one pass each and paired as they go, and the backward walks
(an e-mail's local part, a token's start) stop at a fixed length or where an
earlier walk stopped. Families claim text in order with a bisect per finding.
``bench/detectors.py`` measures it on adversarial inputs up to 25 MB.

A ``Deadline`` is checked between regex windows and between matches, so the
time budget holds inside one long text too: running out raises
``OutOfTime``, which ``scan.py`` reports as ``scan_incomplete`` (restricted
unless policy says otherwise), never a clean result.
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
from functools import partial
from operator import attrgetter

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
_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END_MARK = "-----END"
# A key's END line is looked for this far after its BEGIN line (RSA 4096 is ~3.2 KiB).
_PEM_BODY_CHARS = 16384
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
_RUN = re.compile(r"[A-Za-z0-9+/_\-]*")
_PADDING = re.compile(r"={0,2}")
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


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    kind: str


class OutOfTime(Exception):
    """The scan's time budget ran out, possibly inside one text."""


@dataclass(frozen=True)
class Deadline:
    """When a scan must stop, on ``clock``; the default never comes."""

    at: float = math.inf
    clock: Callable[[], float] = time.monotonic

    def check(self) -> None:
        if self.at != math.inf and self.clock() > self.at:
            raise OutOfTime


NO_DEADLINE = Deadline()
# Findings claimed between two looks at the clock.
_CLAIMS_PER_CHECK = 4096

Family = Callable[[list[Span], str, Deadline], None]


def scan_text(text: str, deadline: Deadline = NO_DEADLINE) -> list[Span]:
    """Every finding in one text, in order and non-overlapping (earlier families win).

    Raises OutOfTime once ``deadline`` has passed.
    """
    spans: list[Span] = []
    for family in _FAMILIES:
        found: list[Span] = []
        family(found, text, deadline)
        spans = _claim(spans, found, deadline)
    return spans


def _claim(kept: list[Span], found: list[Span], deadline: Deadline) -> list[Span]:
    """``kept`` and, in order, each span of ``found`` that overlaps none kept before it.

    Kept spans never overlap, so sorted by start they are sorted by end too and
    one bisect finds the only one a new span could overlap. A family finds its
    spans left to right, so its own kept spans are appended, and the two sorted
    lists are merged once per family: O(n log n), where inserting each span in
    place was quadratic in the findings.
    """
    kept_ends = [span.end for span in kept]
    added: list[Span] = []
    added_ends: list[int] = []
    for index, span in enumerate(found):
        if index % _CLAIMS_PER_CHECK == 0:
            deadline.check()
        if _overlaps(kept, kept_ends, span) or _overlaps(added, added_ends, span):
            continue
        at = len(added)
        if added and added[-1].end > span.start:
            # Only if a family ever reported a span before its last one.
            at = bisect.bisect_left(added_ends, span.end)
        added.insert(at, span)
        added_ends.insert(at, span.end)
    if not added:
        return kept
    # Two sorted runs: timsort merges them in one linear pass.
    return sorted(kept + added, key=attrgetter("start"))


def _overlaps(spans: list[Span], ends: list[int], span: Span) -> bool:
    at = bisect.bisect_right(ends, span.start)
    return at < len(spans) and spans[at].start < span.end


def _search(
    pattern: re.Pattern[str], text: str, position: int, deadline: Deadline
) -> re.Match[str] | None:
    """``pattern.search`` in windows: re holds the GIL for a whole call, so one
    call over 20 MB in the scanning thread would stall the event loop's thread.
    The deadline is checked on every call and between windows, so it holds
    inside one long text however many matches or windows it takes.

    A match starting in a window is accepted only if it starts before the
    window's end: every pattern is shorter than the overlap, so it is whole.
    """
    deadline.check()
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
            deadline.check()
    return None


def _private_keys(found: list[Span], text: str, deadline: Deadline) -> None:
    """A BEGIN line, through the first END line that starts within _PEM_BODY_CHARS of it.

    BEGIN lines are found in one pass and END lines in another, paired as they
    go; each END candidate is looked at once however many BEGIN lines precede
    it. (One regex with a lazy 16 KiB body tried the whole window after every
    BEGIN line: ~8 s of CPU per MB of repeated BEGIN lines.) The spans are the
    ones that regex found.
    """
    ends = _PemEnds(text)
    position = 0
    while (begin := _search(_PEM_BEGIN, text, position, deadline)) is not None:
        end = ends.first(begin.end(), begin.end() + _PEM_BODY_CHARS)
        position = begin.end() if end is None else end.end()
        found.append(Span(begin.start(), position, PRIVATE_KEY))


class _PemEnds:
    """END lines of one text, searched left to right once: queries must not go back."""

    def __init__(self, text: str) -> None:
        self._text = text
        # No END line starts in [last query's start, _searched) but ``_next``.
        self._searched = 0
        self._next: re.Match[str] | None = None

    def first(self, start: int, limit: int) -> re.Match[str] | None:
        """The first END line starting in [start, limit]."""
        if self._next is not None and self._next.start() >= start:
            return self._next if self._next.start() <= limit else None
        self._next = None
        at = max(start, self._searched)
        # find() is bounded by the limit: one C call never runs past one key's window.
        while (found := self._text.find(_PEM_END_MARK, at, limit + len(_PEM_END_MARK))) >= 0:
            self._searched = found + 1
            match = _PEM_END.match(self._text, found)
            if match is not None:
                self._next = match
                return match
            at = found + 1
        self._searched = max(self._searched, limit + 1)
        return None


def _pass(
    found: list[Span],
    text: str,
    deadline: Deadline,
    *,
    pattern: re.Pattern[str],
    kind_of: Callable[[str], str | None],
) -> None:
    position = 0
    while (match := _search(pattern, text, position, deadline)) is not None:
        kind = kind_of(match.group())
        if kind is not None:
            found.append(Span(match.start(), match.end(), kind))
            position = match.end()
        else:
            # A rejected short candidate (a number failing Luhn) may hide a real
            # one starting inside it; candidates are bounded, so the retry is too.
            short = match.end() - match.start() <= 64
            position = match.start() + 1 if short else match.end()


def _digit_anchored(found: list[Span], text: str, deadline: Deadline) -> None:
    position = 0
    while (digit := _search(_DIGIT, text, position, deadline)) is not None:
        at = digit.start()
        start = at
        # Stops at BLOB_CHARS, or before: the previous run ended at a character
        # outside _RUN_CHARS, so no character is walked back over twice.
        while start > 0 and text[start - 1] in _RUN_CHARS and at - start < BLOB_CHARS:
            start -= 1
        end = _run_end(text, at, deadline)
        position = end
        if end - start >= 20:
            # A blob is known by its length: no copy of a 20 MB run to learn it.
            kind = BINARY_CONTENT if end - start >= BLOB_CHARS else _token_kind(text[start:end])
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


def _run_end(text: str, at: int, deadline: Deadline) -> int:
    """Where the token run from ``at`` ends (its "=" padding included), a window at a time."""
    position = at
    while (end := _match_end(_RUN, text, position, position + _WINDOW)) == position + _WINDOW:
        position = end
        time.sleep(0)
        deadline.check()
    return _match_end(_PADDING, text, end, len(text))


def _match_end(pattern: re.Pattern[str], text: str, position: int, end: int) -> int:
    match = pattern.match(text, position, end)
    assert match is not None, "the pattern matches the empty string"
    return match.end()


def _emails(found: list[Span], text: str, deadline: Deadline) -> None:
    position = 0
    while (match := _search(_EMAIL_DOMAIN, text, position, deadline)) is not None:
        position = match.end()
        start = match.start()
        # At most 64 steps, and never past the previous "@" (not a local-part character).
        while start > 0 and match.start() - start < 64 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        if start < match.start():
            found.append(Span(start, match.end(), EMAIL))


# In order of precedence: an earlier family's finding wins overlapping text.
_FAMILIES: tuple[Family, ...] = (
    _private_keys,
    partial(_pass, pattern=_JWT, kind_of=lambda v: JWT if _jwt(v) else None),
    partial(_pass, pattern=_AWS_KEY_ID, kind_of=lambda v: AWS_ACCESS_KEY_ID),
    _emails,
    partial(_pass, pattern=_IBAN, kind_of=lambda v: IBAN if _iban(v) else None),
    _digit_anchored,
)


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
