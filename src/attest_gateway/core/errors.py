"""The gateway's error tree. Every error has a stable code, an HTTP status and a retryable flag.

    GatewayError (code, status, retryable)
    ├── BadRequest                 400  malformed-json, invalid-envelope, invalid-bundle …
    ├── Unauthenticated            401  unauthenticated
    ├── Forbidden                  403  forbidden, jobcenter-mismatch, sender-mismatch
    ├── NotFound                   404  not-found
    ├── MethodNotAllowed           405  method-not-allowed (with the Allow header)
    ├── Conflict                   409  idempotency-key-reused, message-id-conflict,
    │                                   replayed-message-id
    ├── PayloadTooLarge            413  payload-too-large
    ├── UnsupportedMediaType       415  unsupported-media-type
    ├── Unprocessable              422  invalid-request, invalid-cpr, invalid-gln,
    │                                   unknown-attest-type, unknown-receiver …
    ├── EnvelopeRejected           422  signature-invalid, unknown-key, key-not-valid,
    │                                   not-addressed-to-gateway, header-mismatch, open-failed
    └── Unavailable                503  unavailable (retryable)

On HTTP every error becomes RFC 9457 problem+json through one table (`problem_for`); on Kafka
a non-retryable error sends the record to the dead-letter topic with the code as its reason.
Envelope checks on Kafka (`delivery.check_envelope`, `deliver`) use the same codes where they
mean the same (signature-invalid, unknown-key, key-not-valid, replayed-message-id) plus their
own: unknown-receiver, not-addressed-to-receiver, signer-not-sender, unknown-conversation,
conversation-mismatch. `metrics.VERIFICATION_CODES` lists those that raise the alert metric.
Messages never repeat the rejected input: it may carry a CPR number or health text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    retryable: ClassVar[bool] = False

    def __init__(self, code: str, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.extra = extra or {}


class BadRequest(GatewayError):
    status = 400
    title = "Bad request"


class Unauthenticated(GatewayError):
    status = 401
    title = "Authentication required"


class Forbidden(GatewayError):
    status = 403
    title = "Forbidden"


class NotFound(GatewayError):
    status = 404
    title = "Not found"


class MethodNotAllowed(GatewayError):
    status = 405
    title = "Method not allowed"


class Conflict(GatewayError):
    status = 409
    title = "Conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(GatewayError):
    status = 415
    title = "Unsupported media type"


class Unprocessable(GatewayError):
    status = 422
    title = "Unprocessable content"


class EnvelopeRejected(Unprocessable):
    title = "Envelope rejected"


class Unavailable(GatewayError):
    status = 503
    title = "Service unavailable"
    retryable = True

    def __init__(self, code: str, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(code, detail, extra={"retry_after": retry_after})
        self.retry_after = retry_after


PROBLEM_TYPE_BASE = "https://attest-gateway.dk/problems/"


def problem_for(error: GatewayError, *, instance: str | None = None) -> dict[str, Any]:
    """The RFC 9457 body for an error: the `type` URI ends with the stable code."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        "retryable": error.retryable,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(error.extra)
    return body


# --- a consumed record's fate (the Kafka boundary) ------------------------------------------


class PermanentError(GatewayError):
    """A record that can never be processed: it goes to the dead-letter topic."""

    status = 422
    title = "Record rejected"


class TransientError(GatewayError):
    """A failure that may pass (database busy, broker hiccup): retried with backoff."""

    status = 503
    title = "Temporarily unavailable"
    retryable = True
