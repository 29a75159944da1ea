"""The gateway's errors: a small tree by meaning, and one enum of the stable codes.

    GatewayError (code: ErrorCode, detail, retryable)   something went wrong in the gateway
    ├── InvalidInput          the input breaks a rule: a field, a MedCom rule, a reference
    │   │                     to something that does not exist (unknown-receiver) …
    │   ├── Malformed         the input cannot even be read: not JSON, not an envelope
    │   └── EnvelopeRejected  a sealed envelope fails the trust policy (core/trust.py), or
    │                         cannot be verified or opened
    ├── NotAuthenticated      the caller is not known: no or a wrong credential
    ├── NotPermitted          the caller is known but may not do this (role, other party)
    ├── Unknown               what the caller names (a path, a request it answers) does not
    │                         exist, or is not the caller's: the answer is the same
    ├── Replay                an identifier used before for something else (an
    │                         Idempotency-Key, a message id)
    ├── RateLimited           the caller sends more, or more at once, than its limit, or its
    │                         address is locked out after failed authentications; `retry_after`
    └── Unavailable           a dependency cannot serve now (database, outbox, Kafka);
                              `retryable` says whether trying again may help

The class says what kind of failure it is; the code (`ErrorCode`) says which one, and is the
public contract: it ends the problem `type` URI on HTTP and is the dead-letter reason on
Kafka. Neither boundary reads anything else: on HTTP, one table (entrypoints/http/problems.py)
turns the class (and a few codes) into the status and title; on Kafka, one table
(infra/kafka/consumer.py `verdict`) turns `retryable` into retry or dead letter. Messages never
repeat the rejected input: it may carry a CPR number or health text.
"""

from __future__ import annotations

from enum import StrEnum, unique
from typing import Any


@unique
class ErrorCode(StrEnum):
    """Every stable code the gateway answers or dead-letters with. The values are the public
    contract (docs/openapi.json lists those the HTTP API answers): never change one."""

    # The input cannot be read
    MALFORMED_JSON = "malformed-json"
    MALFORMED_XML = "malformed-xml"
    XML_NOT_ALLOWED = "xml-not-allowed"
    UNSUPPORTED_BODY = "unsupported-body"
    UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type"
    INVALID_ENVELOPE = "invalid-envelope"
    INVALID_BUNDLE = "invalid-bundle"
    INVALID_TRACKING_EVENT = "invalid-tracking-event"
    PAYLOAD_TOO_LARGE = "payload-too-large"
    METHOD_NOT_ALLOWED = "method-not-allowed"

    # The input breaks a rule: the request schema and its bounds (entrypoints/http/problems.py)
    INVALID_REQUEST = "invalid-request"
    UNKNOWN_PARAMETER = "unknown-parameter"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency-key-required"
    INVALID_CPR = "invalid-cpr"
    INVALID_GLN = "invalid-gln"
    INVALID_SOR = "invalid-sor"
    INVALID_YDERNUMMER = "invalid-ydernummer"
    INVALID_KOMMUNEKODE = "invalid-kommunekode"
    DATE_OUT_OF_RANGE = "date-out-of-range"
    CONTROL_CHARACTER = "control-character"
    CPR_IN_REFERENCE = "cpr-in-reference"
    # the person acting (core/actors.py): required by REQUIRE_ACTING_PERSON, or a reply's
    # MedCom author is someone else than the one the headers name
    ACTOR_REQUIRED = "actor-required"
    ACTOR_MISMATCH = "actor-mismatch"

    # The input breaks a rule: the use cases'
    UNKNOWN_ATTEST_TYPE = "unknown-attest-type"
    UNKNOWN_RECEIVER = "unknown-receiver"
    RECEIVER_CANNOT_ISSUE = "receiver-cannot-issue"
    RECEIVER_HAS_NO_KEY = "receiver-has-no-key"
    INVALID_REPLY_DEADLINE = "invalid-reply-deadline"
    INVALID_CURSOR = "invalid-cursor"
    INVALID_FIRST_DAY_OF_ABSENCE = "invalid-first-day-of-absence"
    INVALID_CONTACT_DATE = "invalid-contact-date"
    INVALID_CLOSED_DATE = "invalid-closed-date"
    INVALID_CASE_REF = "invalid-case-ref"
    UNKNOWN_JOBCENTER = "unknown-jobcenter"
    UNKNOWN_CASE = "unknown-case"
    INVALID_PERIOD = "invalid-period"
    UNKNOWN_METRIC = "unknown-metric"
    PATIENT_MISMATCH = "patient-mismatch"
    CONVERSATION_MISMATCH = "conversation-mismatch"
    RECEIVER_MISMATCH = "receiver-mismatch"
    UNSUPPORTED_MESSAGE = "unsupported-message"
    EMPTY_REPLY = "empty-reply"
    CONSENT_REQUIRED = "consent-required"
    WRONG_REPLY_FORM = "wrong-reply-form"
    INVALID_REPLY_KIND = "invalid-reply-kind"
    STALE_PSEUDONYM = "stale-pseudonym"
    INVALID_WEBHOOK_URL = "invalid-webhook-url"
    INVALID_WEBHOOK_EVENTS = "invalid-webhook-events"

    # The input breaks a rule: the MedCom parser's (medcom/parse.py, medcom/rules.py)
    INVALID_ID = "invalid-id"
    BUNDLE_NOT_MESSAGE = "bundle-not-message"
    MISSING_MESSAGE_HEADER = "missing-message-header"
    UNKNOWN_EVENT_CODE = "unknown-event-code"
    MISSING_PROVENANCE = "missing-provenance"
    MISSING_ORGANIZATION = "missing-organization"
    MISSING_IDENTIFIER = "missing-identifier"
    MISSING_COMMUNICATION = "missing-communication"
    MISSING_PATIENT = "missing-patient"
    MISSING_RESPONSE = "missing-response"
    MISSING_OPERATION_OUTCOME = "missing-operation-outcome"
    TOO_DEEPLY_NESTED = "too-deeply-nested"
    UNSUPPORTED_ATTACHMENT_TYPE = "unsupported-attachment-type"
    ATTACHMENT_WITHOUT_DATA = "attachment-without-data"
    ATTACHMENT_CONTENT_MISMATCH = "attachment-content-mismatch"

    # The envelope is refused (core/trust.py, crypto/sealing.py)
    NOT_ADDRESSED_TO_GATEWAY = "not-addressed-to-gateway"
    NOT_ADDRESSED_TO_RECEIVER = "not-addressed-to-receiver"
    UNKNOWN_KEY = "unknown-key"
    SIGNER_NOT_SENDER = "signer-not-sender"
    KEY_NOT_VALID = "key-not-valid"
    SIGNATURE_INVALID = "signature-invalid"
    HEADER_MISMATCH = "header-mismatch"
    OPEN_FAILED = "open-failed"
    UNSUPPORTED_SUITE = "unsupported-suite"

    # The caller
    UNAUTHENTICATED = "unauthenticated"
    UNKNOWN_CLIENT_CERTIFICATE = "unknown-client-certificate"
    CREDENTIALS_DISAGREE = "credentials-disagree"
    FORBIDDEN = "forbidden"
    OUTSIDE_SCOPE = "outside-scope"  # an analyst asked for figures outside its region/municipality
    JOBCENTER_MISMATCH = "jobcenter-mismatch"
    SENDER_MISMATCH = "sender-mismatch"

    # What is named does not exist
    NOT_FOUND = "not-found"
    UNKNOWN_REQUEST = "unknown-request"
    UNKNOWN_CONVERSATION = "unknown-conversation"

    # An identifier used before
    IDEMPOTENCY_KEY_REUSED = "idempotency-key-reused"
    CASE_CONFLICT = "case-conflict"
    MESSAGE_ID_CONFLICT = "message-id-conflict"
    REPLAYED_MESSAGE_ID = "replayed-message-id"
    REQUEST_CANCELLED = "request-cancelled"
    REQUEST_ANSWERED = "request-answered"
    REMINDER_LIMIT = "reminder-limit"

    # The caller sends too much
    RATE_LIMITED = "rate-limited"
    TOO_MANY_CONCURRENT_REQUESTS = "too-many-concurrent-requests"
    AUTHENTICATION_LOCKED_OUT = "authentication-locked-out"

    # A dependency cannot serve now
    DATABASE_UNAVAILABLE = "database-unavailable"
    DATABASE_BUSY = "database-busy"
    OUTBOX_FULL = "outbox-full"
    KAFKA_TIMEOUT = "kafka-timeout"
    TOPIC_MISSING = "topic-missing"

    # A bug: the gateway's own failure
    INTERNAL_ERROR = "internal-error"
    HANDLER_CRASHED = "handler-crashed"


class GatewayError(Exception):
    """Something went wrong in the gateway: an internal error, unless a subclass says more.

    `code` names it for good; `detail` is a sentence of the gateway's own (never the
    rejected input); `extra` adds members to the problem+json answer; `retryable` says
    whether the same request or record may succeed later."""

    retryable: bool = False

    def __init__(
        self, code: ErrorCode, detail: str, *, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = ErrorCode(code)
        self.detail = detail
        self.extra = extra or {}


class InvalidInput(GatewayError):
    """The input breaks a rule: a field out of bounds, a MedCom rule, a reference to an
    organisation or attest type that does not exist. The same input will fail again."""


class Malformed(InvalidInput):
    """The input cannot be read at all: not JSON, not a sealed envelope, a media type or a
    method the gateway does not take, a body over the limit."""


class EnvelopeRejected(InvalidInput):
    """A sealed envelope fails the trust policy (core/trust.py) or cannot be verified or
    opened (crypto/sealing.py): wrong addressee, unknown or unusable key, bad signature."""


class NotAuthenticated(GatewayError):
    """The caller is not known: no credential, or one the directory does not accept."""


class NotPermitted(GatewayError):
    """The caller is known but may not do this: its role, or it is not the party named."""


class Unknown(GatewayError):
    """What the caller names does not exist, or is not the caller's (the answer is the same,
    so that nobody learns what others hold)."""


class Replay(GatewayError):
    """An identifier used before for something else: an Idempotency-Key with another body,
    a message id of another message."""


class RateLimited(GatewayError):
    """The caller is over one of its limits: requests per second or requests at once for an
    endpoint class, or too many failed authentications from its address. Retryable after
    `retry_after` seconds (sent as `Retry-After`)."""

    retryable = True

    def __init__(self, code: ErrorCode, detail: str, *, retry_after: int) -> None:
        super().__init__(code, detail, extra={"retry_after": retry_after})
        self.retry_after = retry_after


class Unavailable(GatewayError):
    """A dependency cannot serve now (the database, the outbox, Kafka). Retryable unless
    said otherwise; `retry_after` is a hint in seconds for HTTP callers."""

    def __init__(
        self, code: ErrorCode, detail: str, *, retry_after: int = 5, retryable: bool = True
    ) -> None:
        super().__init__(code, detail, extra={"retry_after": retry_after})
        self.retry_after = retry_after
        self.retryable = retryable
