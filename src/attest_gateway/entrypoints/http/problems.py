"""The HTTP boundary of the error tree: one table from an error to its RFC 9457 problem.

The status and title of an answer come from here only: from the error's class (the
nearest in `BY_CLASS` along its ancestry), or from its code for the few codes whose HTTP
status says more than their meaning (`BY_CODE`: 405, 413, 415). The body's `type` URI ends
with the stable code; `retryable` is the error's flag; an `Unavailable` also carries
`retry_after`, sent as the `Retry-After` header too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attest_gateway.core.errors import (
    EnvelopeRejected,
    ErrorCode,
    GatewayError,
    InvalidInput,
    Malformed,
    NotAuthenticated,
    NotPermitted,
    Replay,
    Unavailable,
    Unknown,
)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://attest-gateway.dk/problems/"

#: error class → (HTTP status, title); an error takes the entry of its nearest ancestor.
BY_CLASS: Mapping[type[GatewayError], tuple[int, str]] = {
    GatewayError: (500, "Internal error"),
    InvalidInput: (422, "Unprocessable content"),
    Malformed: (400, "Bad request"),
    EnvelopeRejected: (422, "Envelope rejected"),
    NotAuthenticated: (401, "Authentication required"),
    NotPermitted: (403, "Forbidden"),
    Unknown: (404, "Not found"),
    Replay: (409, "Conflict"),
    Unavailable: (503, "Service unavailable"),
}

#: code → (HTTP status, title), before the class: where HTTP has a status of its own.
BY_CODE: Mapping[ErrorCode, tuple[int, str]] = {
    ErrorCode.METHOD_NOT_ALLOWED: (405, "Method not allowed"),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, "Payload too large"),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: (415, "Unsupported media type"),
}


def status_of(error_class: type[GatewayError], code: ErrorCode) -> tuple[int, str]:
    """The (status, title) an error of this class and code is answered with."""
    if code in BY_CODE:
        return BY_CODE[code]
    for cls in error_class.__mro__:
        if cls in BY_CLASS:
            return BY_CLASS[cls]
    raise AssertionError(f"{error_class.__name__} is not a GatewayError")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 9457 answer. `code` is an `ErrorCode` for every error of the gateway; only an
    HTTP error the framework raises that the gateway does not map has a code of its own."""

    status: int
    title: str
    code: str
    detail: str
    retryable: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    retry_after: int | None = None
    envelope_rejected: bool = False  # counted as a verification failure too

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The problem+json body: the `type` URI ends with the stable code."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": str(self.code),
            "retryable": self.retryable,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body


def problem_of(error: GatewayError) -> Problem:
    """The answer to an error of the gateway, by the table."""
    status, title = status_of(type(error), error.code)
    return Problem(
        status=status,
        title=title,
        code=error.code,
        detail=error.detail,
        retryable=error.retryable,
        extra=error.extra,
        retry_after=error.retry_after if isinstance(error, Unavailable) else None,
        envelope_rejected=isinstance(error, EnvelopeRejected),
    )
