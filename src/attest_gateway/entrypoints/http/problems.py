"""The HTTP boundary of the error tree: one table from an error to its RFC 9457 problem.

The status and title of an answer come from here only: from the error's class (the
nearest in `BY_CLASS` along its ancestry), or from its code for the few codes whose HTTP
status says more than their meaning (`BY_CODE`: a missing Idempotency-Key, 405,
413, 415). The body's `type` URI ends
with the stable code; `retryable` is the error's flag; an `Unavailable` and a `RateLimited` also
carry `retry_after`, sent as the `Retry-After` header too.

The errors the framework raises before a route runs become errors of the tree here too:
a request that fails validation (`validation_problem`, with the codes of the identifiers
and bounds in `FIELD_CODES`) and Starlette's own HTTP errors (`framework_problem`).
entrypoints/http/error_handlers.py installs the handlers that answer with these problems.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import structlog
from fastapi.exceptions import RequestValidationError

from attest_gateway.core.errors import (
    EnvelopeRejected,
    ErrorCode,
    GatewayError,
    InvalidInput,
    Malformed,
    NotAuthenticated,
    NotPermitted,
    RateLimited,
    Replay,
    Unavailable,
    Unknown,
)

log = structlog.get_logger(__name__)

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
    RateLimited: (429, "Too many requests"),
    Unavailable: (503, "Service unavailable"),
}

#: code → (HTTP status, title), before the class: where HTTP has a status of its own.
BY_CODE: Mapping[ErrorCode, tuple[int, str]] = {
    # draft-ietf-httpapi-idempotency-key-header: a missing required key is a 400.
    ErrorCode.IDEMPOTENCY_KEY_REQUIRED: (400, "Idempotency-Key required"),
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
        retry_after=error.retry_after if isinstance(error, Unavailable | RateLimited) else None,
        envelope_rejected=isinstance(error, EnvelopeRejected),
    )


# Pydantic error types raised by our identifier checks and bounds → stable problem codes.
FIELD_CODES: dict[str, ErrorCode] = {
    "invalid_cpr": ErrorCode.INVALID_CPR,
    "invalid_gln": ErrorCode.INVALID_GLN,
    "invalid_sor": ErrorCode.INVALID_SOR,
    "invalid_ydernummer": ErrorCode.INVALID_YDERNUMMER,
    "invalid_kommunekode": ErrorCode.INVALID_KOMMUNEKODE,
    "date_out_of_range": ErrorCode.DATE_OUT_OF_RANGE,
    "control_character": ErrorCode.CONTROL_CHARACTER,
    "string_unicode": ErrorCode.CONTROL_CHARACTER,  # pydantic's own: a lone surrogate (not UTF-8)
    "cpr_in_reference": ErrorCode.CPR_IN_REFERENCE,
}


def framework_problem(status: int) -> Problem:
    """The problem for an HTTP error Starlette or FastAPI raise themselves: no route (404),
    a method the route does not take (405, answered with Starlette's `Allow` header), a body
    that cannot be read as text (400; FastAPI's JSON errors are validation errors)."""
    if status == 400:
        return problem_of(Malformed(ErrorCode.MALFORMED_JSON, "the request body is not valid JSON"))
    if status == 404:
        return problem_of(Unknown(ErrorCode.NOT_FOUND, "no such resource"))
    if status == 405:
        return problem_of(
            Malformed(ErrorCode.METHOD_NOT_ALLOWED, "the resource does not take this method")
        )
    # Nothing else is raised by the framework for this app; should a new version start to,
    # the answer still has a title and a code of its own, and the log says so.
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    log.warning("http.unmapped_framework_error", status=status)
    return Problem(status, phrase, phrase.lower().replace(" ", "-"), phrase.lower())


def validation_problem(exc: RequestValidationError) -> GatewayError:
    """The error for a request FastAPI could not validate: unreadable JSON (400), an id in
    the path of a form the gateway never hands out (404), else 422 with the code of the
    first identifier or bound that failed (`FIELD_CODES`), or `invalid-request`."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return Malformed(ErrorCode.MALFORMED_JSON, "the request body is not valid JSON")
    if errors and all(tuple(e.get("loc", ()))[:1] == ("path",) for e in errors):
        # An id in the path that does not have the form of one the gateway hands out.
        return Unknown(ErrorCode.NOT_FOUND, "no such resource")
    codes = [FIELD_CODES[e["type"]] for e in errors if e.get("type") in FIELD_CODES]
    # Only location, type and our own message: never the rejected input (it may be a CPR).
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "type": e.get("type"), "msg": e.get("msg")}
        for e in errors
    ]
    code = codes[0] if codes else ErrorCode.INVALID_REQUEST
    return InvalidInput(code, "the request does not match the schema", extra={"errors": details})
