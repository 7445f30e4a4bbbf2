"""The errors the emulated AWS services answer with.

These are AWS's errors, not the proxy's: the emulator plays the part of AWS,
so it speaks AWS's error vocabulary (status, ``x-amzn-ErrorType``, message),
which is what the proxy and SDKs are tested against. The proxy's own family
(``proxy.errors``) is deliberately not reused: an emulator refusal must never
be confused with a proxy refusal in a test.
"""

from __future__ import annotations


class AwsError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def validation(message: str) -> AwsError:
    return AwsError(400, "ValidationException", message)


def access_denied(message: str) -> AwsError:
    return AwsError(403, "AccessDeniedException", message)
