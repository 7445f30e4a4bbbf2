"""One flat error family for every refusal the proxy can make.

Each class carries the HTTP status, the AWS error type that SDKs turn into
their usual exceptions, and a stable snake_case ``code`` used as the audit
``outcome`` detail and in metrics. ``message`` is written for the caller and
must never contain internals of a library error; ``detail`` is for the audit
record only.

Both are bounded (``MAX_MESSAGE_CHARS``, ``MAX_DETAIL_CHARS``) whatever a raise
site puts in them: a caller-controlled value echoed into a refusal must not
make the answer, or the audit record that repeats it, grow with the request.
Raise sites clip each identifier they echo with ``clip`` (``MAX_SHOWN_CHARS``)
so that the message stays readable; the bound here is the guarantee.
"""

from __future__ import annotations

from enum import StrEnum

MAX_MESSAGE_CHARS = 2048
MAX_DETAIL_CHARS = 2048
# An identifier echoed in a message: above every valid task id (128) and long
# enough to recognise a model id or SPIFFE ID by its start.
MAX_SHOWN_CHARS = 128


def clip(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` unchanged, or cut to at most ``limit`` characters (``limit`` >= 32)
    ending in a marker that says how many characters were cut."""
    if len(text) <= limit:
        return text
    # The marker's length with the largest possible count bounds the result.
    keep = max(0, limit - len(f"...[+{len(text)} chars]"))
    return f"{text[:keep]}...[+{len(text) - keep} chars]"


class Outcome(StrEnum):
    """How a request ended: the audit record's ``outcome`` (docs/audit.md lists them)."""

    OK = "ok"
    DENIED = "denied"
    INVALID_REQUEST = "invalid_request"
    CLIENT_ABORTED = "client_aborted"
    UPSTREAM_ERROR = "upstream_error"
    POLICY_UNAVAILABLE = "policy_unavailable"
    CREDENTIALS_UNAVAILABLE = "credentials_unavailable"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    STATE_UNAVAILABLE = "state_unavailable"
    CLIENT_TIMEOUT = "client_timeout"
    THROTTLED = "throttled"
    OVERLOADED = "overloaded"
    INTERNAL_ERROR = "internal_error"


class ProxyError(Exception):
    status = 500
    error_type = "InternalServerException"
    code = "internal_error"
    outcome = Outcome.INTERNAL_ERROR

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.detail = None if detail is None else clip(detail, MAX_DETAIL_CHARS)


class InvalidRequest(ProxyError):
    status = 400
    error_type = "ValidationException"
    code = "invalid_request"
    outcome = Outcome.INVALID_REQUEST


class UnknownOperation(InvalidRequest):
    status = 404
    error_type = "UnknownOperationException"
    code = "unknown_operation"


class MalformedHttp(InvalidRequest):
    """A request aiohttp's HTTP/1.1 parser refused, before any route or stage ran."""

    code = "malformed_http"


class NotImplementedOperation(InvalidRequest):
    status = 501
    error_type = "ValidationException"
    code = "not_implemented"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "body_too_large"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


def http_refusal(status: int, reason: str) -> InvalidRequest:
    """A refusal raised by aiohttp's router (no such route, wrong method) in AWS shape."""
    kind = {404: UnknownOperation, 405: MethodNotAllowed, 413: BodyTooLarge}
    return kind.get(status, InvalidRequest)(reason)


class IdentityInvalid(ProxyError):
    status = 403
    error_type = "AccessDeniedException"
    code = "identity_invalid"
    outcome = Outcome.DENIED


class IdentityMissing(IdentityInvalid):
    status = 401
    code = "identity_missing"


class PolicyDenied(ProxyError):
    status = 403
    error_type = "AccessDeniedException"
    code = "policy_denied"
    outcome = Outcome.DENIED


class PolicyUnavailable(ProxyError):
    status = 503
    error_type = "ServiceUnavailableException"
    code = "policy_unavailable"
    outcome = Outcome.POLICY_UNAVAILABLE


class ObligationUnenforceable(PolicyDenied):
    code = "obligation_unenforceable"


class CredentialsUnavailable(ProxyError):
    status = 503
    error_type = "ServiceUnavailableException"
    code = "credentials_unavailable"
    outcome = Outcome.CREDENTIALS_UNAVAILABLE


class AuditUnavailable(ProxyError):
    status = 503
    error_type = "ServiceUnavailableException"
    code = "audit_unavailable"
    outcome = Outcome.AUDIT_UNAVAILABLE


class UpstreamUnavailable(ProxyError):
    status = 502
    error_type = "ServiceUnavailableException"
    code = "upstream_unavailable"
    outcome = Outcome.UPSTREAM_ERROR


class ConfigError(Exception):
    """Raised at start-up for a configuration a person must fix; never at request time."""


class TaskRefused(ProxyError):
    """The named task cannot be used: unknown, expired, ended or someone else's."""

    status = 403
    error_type = "AccessDeniedException"
    code = "task_refused"
    outcome = Outcome.DENIED


class StateUnavailable(ProxyError):
    """The shared task store (Redis) cannot be reached: fail closed."""

    status = 503
    error_type = "ServiceUnavailableException"
    code = "state_unavailable"
    outcome = Outcome.STATE_UNAVAILABLE


class RequestTimeout(ProxyError):
    """The client stopped sending the request body it announced
    (``connections.body_idle_timeout_ms``); the connection is closed after the answer.

    ``RequestTimeoutException`` is an error code botocore retries as transient.
    """

    status = 408
    error_type = "RequestTimeoutException"
    code = "request_timeout"
    outcome = Outcome.CLIENT_TIMEOUT


class RetryLater(ProxyError):
    """A refusal at a limit: ``retry_after_s`` becomes a ``Retry-After`` header."""

    def __init__(
        self, message: str, *, retry_after_s: float = 1.0, detail: str | None = None
    ) -> None:
        super().__init__(message, detail=detail)
        self.retry_after_s = retry_after_s


class Throttled(RetryLater):
    """One identity (or task) is over its own limit: it waits, nobody else does.

    SDKs retry a ThrottlingException with backoff on their own.
    """

    status = 429
    error_type = "ThrottlingException"
    code = "throttled"
    outcome = Outcome.THROTTLED


class Overloaded(RetryLater):
    """The proxy as a whole is at a limit (connections, in-flight bytes): fail fast."""

    status = 503
    error_type = "ServiceUnavailableException"
    code = "overloaded"
    outcome = Outcome.OVERLOADED
