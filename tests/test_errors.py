"""proxy.errors: one family, each refusal with its status, AWS type, code and outcome."""

from __future__ import annotations

import pytest

from proxy import errors
from proxy.errors import Outcome, ProxyError, http_refusal


def _subclasses(cls: type[ProxyError]) -> list[type[ProxyError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_error_maps_to_a_known_outcome_and_an_error_status() -> None:
    classes = [ProxyError, *_subclasses(ProxyError)]
    assert len(classes) > 10
    for cls in classes:
        assert isinstance(cls.outcome, Outcome), cls
        assert 400 <= cls.status < 600, cls
        assert cls.error_type.endswith("Exception"), cls
        assert cls.code.isidentifier() and cls.code == cls.code.lower(), cls


def test_an_unclassified_error_is_an_internal_error() -> None:
    assert ProxyError("bug").outcome is Outcome.INTERNAL_ERROR
    assert ProxyError("bug").status == 500


@pytest.mark.parametrize(
    ("status", "cls", "error_type"),
    [
        (400, errors.InvalidRequest, "ValidationException"),
        (404, errors.UnknownOperation, "UnknownOperationException"),
        (405, errors.MethodNotAllowed, "ValidationException"),
        (413, errors.BodyTooLarge, "ValidationException"),
        # Anything else aiohttp refuses is a malformed request.
        (411, errors.InvalidRequest, "ValidationException"),
    ],
)
def test_http_refusals_keep_their_status_in_aws_shape(
    status: int, cls: type[ProxyError], error_type: str
) -> None:
    refusal = http_refusal(status, "Refused")
    assert type(refusal) is cls
    assert refusal.status == (400 if cls is errors.InvalidRequest else status)
    assert refusal.error_type == error_type
    assert refusal.outcome is Outcome.INVALID_REQUEST
    assert refusal.message == "Refused"


@pytest.mark.parametrize(
    ("text", "limit", "clipped"),
    [
        ("", 32, ""),
        ("short", 32, "short"),
        ("a" * 32, 32, "a" * 32),
        ("a" * 33, 32, "a" * 18 + "...[+15 chars]"),
        ("b" * 1_000_000, 128, "b" * 109 + "...[+999891 chars]"),
        ("\u00e9" * 200, 40, "\u00e9" * 25 + "...[+175 chars]"),
    ],
)
def test_clip_bounds_and_says_how_much_was_cut(text: str, limit: int, clipped: str) -> None:
    assert errors.clip(text, limit) == clipped
    assert len(errors.clip(text, limit)) <= limit


@pytest.mark.parametrize("size", [0, 10, 2048, 2049, 1_000_000])
def test_every_refusal_message_and_detail_is_bounded(size: int) -> None:
    value = "m" * size
    for cls in [ProxyError, *_subclasses(ProxyError)]:
        error = cls(f"The value {value} is refused", detail=f"value={value}")
        assert len(error.message) <= errors.MAX_MESSAGE_CHARS
        assert str(error) == error.message
        assert error.detail is not None and len(error.detail) <= errors.MAX_DETAIL_CHARS
        if size <= 2000:
            assert error.message == f"The value {value} is refused"
    assert ProxyError("x").detail is None


@pytest.mark.parametrize(
    ("error", "status", "error_type", "outcome"),
    [
        (errors.Throttled("slow down", retry_after_s=2.5), 429, "ThrottlingException", "throttled"),
        (errors.Overloaded("busy"), 503, "ServiceUnavailableException", "overloaded"),
    ],
)
def test_limit_refusals_carry_a_retry_hint(
    error: errors.Throttled | errors.Overloaded, status: int, error_type: str, outcome: str
) -> None:
    from proxy.app import error_response

    response = error_response(error, "req-1")
    assert response.status == status
    assert response.headers["x-amzn-ErrorType"] == error_type
    assert int(response.headers["Retry-After"]) >= error.retry_after_s
    assert error.outcome == outcome
