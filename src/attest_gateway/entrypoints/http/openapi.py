"""The OpenAPI document, completed in one place: the RFC 9457 problem schema, the bearer
security scheme, an example for every success answer and every error code of every endpoint.

The routers stay thin: FastAPI builds the document from them, and `install_openapi()` adds
what routes do not declare. `ERROR_CATALOGUE` is the list of every stable problem code the
HTTP API can answer, with its status and an example detail; `ENDPOINT_ERRORS` says which
endpoint can answer which. A test checks that every `ErrorCode` the HTTP API can answer is
here, with the status and title the HTTP table (problems.py) gives a class that raises it,
and that the document is valid OpenAPI 3.1.
Endpoints added later get the common codes (authentication, body limit, unknown query
parameters, internal error)
automatically; their own codes belong in `ENDPOINT_ERRORS`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.glossary import describe
from attest_gateway.contracts.mailbox import Collected, Mailbox, MessageAccepted, ReplyAcknowledged
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.bounds import TEXT_PATTERN
from attest_gateway.entrypoints.http.ministry_examples import MINISTRY_EXAMPLES
from attest_gateway.entrypoints.http.problems import PROBLEM_JSON, Problem
from attest_gateway.medcom.codes import (
    PROFILE_CARE_COMMUNICATION,
    PROFILE_CARE_COMMUNICATION_MESSAGE,
)
from attest_gateway.medcom.errors import BUNDLE_ERROR_CODES
from attest_gateway.medcom.fhir_xml import json_to_xml
from attest_gateway.medcom.rules import ATTACHMENT_ERROR_CODES

# code → (HTTP status, title, an example detail). Details are the gateway's own sentences.
ERROR_CATALOGUE: dict[str, tuple[int, str, str]] = {
    "malformed-json": (400, "Bad request", "the request body is not valid JSON"),
    "malformed-xml": (400, "Bad request", "the body is not well-formed XML"),
    "xml-not-allowed": (
        400,
        "Bad request",
        "the XML declares a DTD or entities, or refers outside the document",
    ),
    "unsupported-body": (400, "Bad request", "send a FHIR Bundle or a sealed envelope"),
    "invalid-envelope": (400, "Bad request", "the sealed envelope is malformed"),
    "invalid-bundle": (400, "Bad request", "the envelope does not hold JSON"),
    "idempotency-key-required": (
        400,
        "Idempotency-Key required",
        "send an Idempotency-Key header: in production every creating call needs one, so that "
        "a retry cannot create the same thing twice",
    ),
    "unauthenticated": (401, "Authentication required", "the API key is not valid"),
    "unknown-client-certificate": (
        401,
        "Authentication required",
        "the client certificate is not registered to an organisation, or is revoked",
    ),
    "credentials-disagree": (
        401,
        "Authentication required",
        "the client certificate and the API key name different organisations",
    ),
    "forbidden": (403, "Forbidden", "this organisation's role may not use this endpoint"),
    "outside-scope": (
        403,
        "Forbidden",
        "region 1083 is outside this organisation's scope (a region's or a municipality's "
        "analysts see their own place's figures only)",
    ),
    "jobcenter-mismatch": (403, "Forbidden", "the job centre in the request is not the caller"),
    "sender-mismatch": (403, "Forbidden", "the Bundle's sender organisation is not the caller"),
    "not-found": (404, "Not found", "no such resource"),
    "unknown-request": (404, "Not found", "the message answers no request of this organisation"),
    "method-not-allowed": (405, "Method not allowed", "the resource does not take this method"),
    "case-conflict": (
        409,
        "Conflict",
        "the job centre already registered another case under this case id (change the "
        "psychiatric course or close it with PATCH)",
    ),
    "idempotency-key-reused": (
        409,
        "Conflict",
        "this Idempotency-Key was used with a different request body",
    ),
    "message-id-conflict": (409, "Conflict", "that message id is already in use"),
    "replayed-message-id": (409, "Conflict", "that message id belongs to another message"),
    "request-cancelled": (409, "Conflict", "the request was cancelled"),
    "request-answered": (409, "Conflict", "the receiver already sent the attest"),
    "reminder-limit": (
        409,
        "Conflict",
        "this request was reminded by hand today already: one reminder a day",
    ),
    "invalid-cursor": (422, "Unprocessable content", "the cursor is not one this list handed out"),
    "payload-too-large": (413, "Payload too large", "the body exceeds 10485760 bytes"),
    "unsupported-media-type": (415, "Unsupported media type", "send application/fhir+json"),
    "invalid-request": (422, "Unprocessable content", "the request does not match the schema"),
    "unknown-parameter": (
        422,
        "Unprocessable content",
        "this endpoint does not take region_code (it takes: attest_type, by, format, from, "
        "period, region, series, to)",
    ),
    "invalid-cpr": (422, "Unprocessable content", "the request does not match the schema"),
    "invalid-gln": (422, "Unprocessable content", "the request does not match the schema"),
    "invalid-sor": (422, "Unprocessable content", "the request does not match the schema"),
    "invalid-ydernummer": (422, "Unprocessable content", "the request does not match the schema"),
    "invalid-kommunekode": (
        422,
        "Unprocessable content",
        "the request does not match the schema",
    ),
    "unknown-attest-type": (
        422,
        "Unprocessable content",
        "the attest type is not in the LÆ catalogue",
    ),
    "unknown-receiver": (
        422,
        "Unprocessable content",
        "no healthcare organisation has that identifier",
    ),
    "receiver-cannot-issue": (422, "Unprocessable content", "a gp does not issue LÆ 155"),
    "invalid-reply-deadline": (
        422,
        "Unprocessable content",
        "the reply deadline must be in the future",
    ),
    "invalid-first-day-of-absence": (
        422,
        "Unprocessable content",
        "the first day of absence is more than a year ahead",
    ),
    "date-out-of-range": (
        422,
        "Unprocessable content",
        "the request does not match the schema",
    ),
    "control-character": (
        422,
        "Unprocessable content",
        "the request does not match the schema",
    ),
    "cpr-in-reference": (
        422,
        "Unprocessable content",
        "the request does not match the schema",
    ),
    "actor-required": (
        422,
        "Unprocessable content",
        "send Attest-Actor: the gateway records which of your people acts",
    ),
    "actor-mismatch": (
        422,
        "Unprocessable content",
        "Attest-Actor-Authorisation is not the autorisations-ID of the Bundle's author",
    ),
    "receiver-has-no-key": (
        422,
        "Unprocessable content",
        "the receiver has no usable encryption key",
    ),
    "patient-mismatch": (
        422,
        "Unprocessable content",
        "the reply's Patient is not the citizen the request is about",
    ),
    "conversation-mismatch": (
        422,
        "Unprocessable content",
        "the reply's Communication.identifier is not the request's conversation",
    ),
    "receiver-mismatch": (
        422,
        "Unprocessable content",
        "the message is not addressed to the request's sender",
    ),
    "unsupported-message": (
        422,
        "Unprocessable content",
        "only acknowledgements and attest replies can be sent",
    ),
    "empty-reply": (
        422,
        "Unprocessable content",
        "an attest reply needs text or a PDF attachment",
    ),
    "consent-required": (
        422,
        "Unprocessable content",
        "LÆ 125 needs the citizen's consent (retssikkerhedsloven § 11 c): give consent.given "
        "and consent.date",
    ),
    "wrong-reply-form": (
        422,
        "Unprocessable content",
        "the reply is on LÆ 155, the request asked for LÆ 125",
    ),
    "invalid-reply-kind": (
        422,
        "Unprocessable content",
        "a cannot-answer reply needs a text saying why",
    ),
    "invalid-webhook-url": (
        422,
        "Unprocessable content",
        "a webhook endpoint is an absolute https URL",
    ),
    "invalid-webhook-events": (
        422,
        "Unprocessable content",
        "this organisation's role may subscribe to message.waiting only",
    ),
    "unknown-key": (422, "Envelope rejected", "the envelope names a key that is not usable"),
    "not-addressed-to-gateway": (422, "Envelope rejected", "the envelope is for someone else"),
    "key-not-valid": (422, "Envelope rejected", "the signing key is revoked or expired"),
    "header-mismatch": (
        422,
        "Envelope rejected",
        "the envelope's header does not match its Bundle",
    ),
    "signature-invalid": (422, "Envelope rejected", "the envelope's signature does not verify"),
    "open-failed": (422, "Envelope rejected", "the envelope could not be opened"),
    "unsupported-suite": (
        422,
        "Envelope rejected",
        "the envelope's HPKE suite is not supported",
    ),
    "invalid-contact-date": (
        422,
        "Unprocessable content",
        "a contact cannot be registered in advance",
    ),
    "invalid-closed-date": (
        422,
        "Unprocessable content",
        "the case cannot close before the first day of absence",
    ),
    "invalid-case-ref": (
        422,
        "Unprocessable content",
        "the case ref was not made with the gateway's current pseudonym key: ask the job "
        "centre for the current one, or send the CPR number",
    ),
    "unknown-jobcenter": (
        422,
        "Unprocessable content",
        "the municipality has no job centre in the gateway",
    ),
    "unknown-case": (
        422,
        "Unprocessable content",
        "the job centre has registered no case of this citizen: send case_kind and "
        "first_day_of_absence",
    ),
    "invalid-period": (422, "Unprocessable content", "'from' is after 'to'"),
    "unknown-metric": (422, "Unprocessable content", "metric is one of […]"),
    "rate-limited": (
        429,
        "Too many requests",
        "this organisation sends more requests of this endpoint class (reads, writes, "
        "reports) than its limit; retry after Retry-After seconds",
    ),
    "too-many-concurrent-requests": (
        429,
        "Too many requests",
        "this organisation has too many reads in progress at once; retry after Retry-After seconds",
    ),
    "authentication-locked-out": (
        429,
        "Too many requests",
        "too many failed authentications from this address; retry after Retry-After seconds",
    ),
    "internal-error": (500, "Internal error", "an internal error occurred"),
    "database-unavailable": (
        503,
        "Service unavailable",
        "the gateway's database cannot be reached right now; retry later",
    ),
    "database-busy": (
        503,
        "Service unavailable",
        "every database connection of the gateway is in use; retry shortly",
    ),
    "outbox-full": (
        503,
        "Service unavailable",
        "the gateway cannot forward messages right now; retry later",
    ),
}
# Bundle errors from the MedCom parser (medcom/parse.py, medcom/rules.py) answer 422 with
# their own code.
for _code in sorted(BUNDLE_ERROR_CODES - {"invalid-bundle"}):
    ERROR_CATALOGUE[_code] = (422, "Unprocessable content", "the Bundle breaks a MedCom rule")
for _code in sorted(ATTACHMENT_ERROR_CODES):
    ERROR_CATALOGUE[_code] = (
        422,
        "Unprocessable content",
        "an attachment must be inline data of a MedCom MIME type (PDF, GIF, JPEG, PNG, TIFF, BMP)",
    )

_IDENTIFIER_CODES = [
    "invalid-request",
    "invalid-cpr",
    "invalid-gln",
    "invalid-sor",
    "invalid-ydernummer",
    "invalid-kommunekode",
]
# Validation codes of the bounds (core/bounds.py), with a location they are found at, by
# path prefix (none: the code comes without a list of errors there).
_BOUND_LOCS: dict[str, dict[str, list[str]]] = {
    "date-out-of-range": {
        "/ministry/": ["query", "from"],
        "/jobcenter/": ["body", "first_day_of_absence"],
    },
    "control-character": {
        "/ministry/": ["query", "attest_type"],
        "/jobcenter/v1/contacts": ["header", "idempotency-key"],
        "/jobcenter/": ["body", "caseworker_ref"],
    },
    "cpr-in-reference": {
        "/jobcenter/v1/contacts": ["header", "idempotency-key"],
        "/jobcenter/": ["body", "caseworker_ref"],
    },
}
AUTHENTICATED = [
    "unauthenticated",
    "unknown-client-certificate",
    "credentials-disagree",
    "forbidden",
    "authentication-locked-out",
    "rate-limited",
    "too-many-concurrent-requests",
]
COMMON = ["internal-error", "database-unavailable", "database-busy"]
WITH_BODY = ["malformed-json", "payload-too-large"]

# The ministry's filters (period, from, to, attest type, region, municipality) and the
# caller's scope.
_MINISTRY_FILTER_CODES = [
    "invalid-request",
    "date-out-of-range",
    "control-character",
    "invalid-period",
    "invalid-kommunekode",
    "outside-scope",
]

# (method, path) → the codes this endpoint can answer, beyond COMMON (and AUTHENTICATED for
# the partner APIs, WITH_BODY for requests with a body, which are added automatically).
ENDPOINT_ERRORS: dict[tuple[str, str], list[str]] = {
    ("post", "/jobcenter/v1/attest-requests"): [
        "jobcenter-mismatch",
        "actor-required",
        "idempotency-key-required",
        "idempotency-key-reused",
        "unsupported-media-type",
        *_IDENTIFIER_CODES,
        "date-out-of-range",
        "control-character",
        "cpr-in-reference",
        "unknown-attest-type",
        "unknown-receiver",
        "receiver-cannot-issue",
        "invalid-first-day-of-absence",
        "invalid-reply-deadline",
        "consent-required",
        "receiver-has-no-key",
        "outbox-full",
    ],
    ("get", "/jobcenter/v1/attest-types"): [],
    ("get", "/jobcenter/v1/attest-requests/{conversation_id}"): ["not-found"],
    ("get", "/jobcenter/v1/attest-requests"): ["invalid-request", "invalid-cursor"],
    ("post", "/jobcenter/v1/attest-requests/{conversation_id}/cancel"): [
        "not-found",
        "request-answered",
        "receiver-has-no-key",
        "outbox-full",
    ],
    ("post", "/jobcenter/v1/attest-requests/{conversation_id}/extend"): [
        "unsupported-media-type",
        "not-found",
        "request-cancelled",
        "request-answered",
        "invalid-reply-deadline",
        "date-out-of-range",
        "outbox-full",
    ],
    ("post", "/jobcenter/v1/attest-requests/{conversation_id}/remind"): [
        "not-found",
        "request-cancelled",
        "request-answered",
        "reminder-limit",
        "idempotency-key-required",
        "receiver-has-no-key",
        "outbox-full",
    ],
    ("get", "/jobcenter/v1/inbox"): ["invalid-request", "unknown-key", "actor-required"],
    ("post", "/jobcenter/v1/inbox/{message_id}/ack"): [
        "not-found",
        "unknown-key",
        "receiver-has-no-key",
        "outbox-full",
    ],
    ("get", "/medcom/v1/mailbox"): ["invalid-request", "actor-required"],
    ("post", "/medcom/v1/mailbox/{message_id}/collected"): ["not-found"],
    ("post", "/medcom/v1/messages"): [
        "unsupported-body",
        "invalid-envelope",
        "invalid-bundle",
        "sender-mismatch",
        "actor-required",
        "actor-mismatch",
        "unknown-request",
        "not-found",
        "message-id-conflict",
        "unsupported-media-type",
        "malformed-xml",
        "xml-not-allowed",
        *sorted(BUNDLE_ERROR_CODES - {"invalid-bundle"}),
        "control-character",
        "not-addressed-to-gateway",
        "unknown-key",
        "key-not-valid",
        "signature-invalid",
        "header-mismatch",
        "replayed-message-id",
        "request-cancelled",
        "open-failed",
        "unsupported-suite",
        "receiver-mismatch",
        "patient-mismatch",
        "conversation-mismatch",
        *sorted(ATTACHMENT_ERROR_CODES),
        "unsupported-message",
        "empty-reply",
        "wrong-reply-form",
        "invalid-reply-kind",
        "receiver-has-no-key",
        "outbox-full",
    ],
    ("post", "/jobcenter/v1/contacts"): [
        "invalid-request",
        "date-out-of-range",
        "control-character",
        "cpr-in-reference",
        "invalid-first-day-of-absence",
        "invalid-contact-date",
        "idempotency-key-required",
        "idempotency-key-reused",
        "unsupported-media-type",
    ],
    ("post", "/jobcenter/v1/cases/close"): [
        "invalid-request",
        "invalid-cpr",
        "not-found",
        "unsupported-media-type",
    ],
    ("get", "/ministry/v1/report"): _MINISTRY_FILTER_CODES,
    ("get", "/ministry/v1/durations"): [*_MINISTRY_FILTER_CODES, "unknown-metric"],
    ("get", "/ministry/v1/deadlines"): _MINISTRY_FILTER_CODES,
    ("get", "/ministry/v1/contacts"): _MINISTRY_FILTER_CODES,
    ("get", "/ministry/v1/coverage"): _MINISTRY_FILTER_CODES,
    ("get", "/ministry/v1/latency"): _MINISTRY_FILTER_CODES,
    ("get", "/ministry/v1/request-timing"): _MINISTRY_FILTER_CODES,
    ("get", "/ministry/v1/overdue"): _MINISTRY_FILTER_CODES,
    ("get", "/ministry/v1/rehabilitation"): _MINISTRY_FILTER_CODES,
    ("post", "/jobcenter/v1/cases"): [
        "invalid-request",
        *_IDENTIFIER_CODES,
        "date-out-of-range",
        "control-character",
        "cpr-in-reference",
        "jobcenter-mismatch",
        "invalid-first-day-of-absence",
        "invalid-closed-date",
        "case-conflict",
        "unsupported-media-type",
    ],
    ("patch", "/jobcenter/v1/cases/{case_id}"): [
        "invalid-request",
        "date-out-of-range",
        "not-found",
        "invalid-closed-date",
        "unsupported-media-type",
    ],
    ("post", "/psychiatry/v1/treatments"): [
        "invalid-request",
        "invalid-period",
        "invalid-cpr",
        "date-out-of-range",
        "invalid-case-ref",
        "idempotency-key-required",
        "idempotency-key-reused",
        "unsupported-media-type",
    ],
    ("post", "/psychiatry/v1/contacts"): [
        "invalid-request",
        "invalid-cpr",
        "invalid-kommunekode",
        "date-out-of-range",
        "invalid-case-ref",
        "unknown-jobcenter",
        "unknown-case",
        "invalid-first-day-of-absence",
        "invalid-contact-date",
        "idempotency-key-required",
        "idempotency-key-reused",
        "unsupported-media-type",
    ],
    ("get", "/metrics"): ["unauthenticated"],
    ("post", "/webhooks/v1/endpoints"): [
        "invalid-request",
        "invalid-webhook-url",
        "invalid-webhook-events",
    ],
    ("get", "/directory/v1/organisations/{org_id}/keys"): ["not-found"],
    ("delete", "/webhooks/v1/endpoints/{endpoint_id}"): ["not-found"],
    ("post", "/webhooks/v1/endpoints/{endpoint_id}/rotate"): ["not-found"],
    ("post", "/webhooks/v1/endpoints/{endpoint_id}/ping"): ["not-found"],
    ("post", "/webhooks/v1/deliveries/{delivery_id}/redeliver"): ["not-found"],
}

_PARTNER_PREFIXES = (
    "/jobcenter/",
    "/medcom/",
    "/psychiatry/",
    "/ministry/",
    "/audit/",
    "/webhooks/",
    "/directory/",
)

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details. `type` ends with the stable `code`; `detail` "
    "never repeats the rejected input.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "retryable"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": sorted(ERROR_CATALOGUE)},
        "retryable": {"type": "boolean"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "validation errors: location, type and message, never the input",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "type": {"type": "string"},
                    "msg": {"type": "string"},
                },
            },
        },
        "retry_after": {"type": "integer", "description": "seconds, as in Retry-After"},
    },
}

CONVERSATION_ID = "6f1c2d9e-3b7a-4c61-9d2e-0a4b8c7d5e31"
MESSAGE_ID = "0b6a9a3e-52a4-4d0c-a0a1-5b5c8a2f4e10"
BUNDLE_ID = "7d0e5c1b-9a8f-4e3d-b2c1-0f9e8d7c6b5a"
REPLY_ID = "c4f1e2d3-b5a6-4978-8a9b-1c2d3e4f5a6b"
AT = "2026-10-29T09:30:00+00:00"

_HEADER_EXAMPLE: dict[str, Any] = {
    "v": 1,
    "message_id": MESSAGE_ID,
    "bundle_id": BUNDLE_ID,
    "conversation_id": CONVERSATION_ID,
    "message_type": "attest-request",
    "sender": "jc-koebenhavn",
    "receiver": "psyk-kbh",
    "suite": "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM",
    "recipient_key_id": "hpke-3f9a1c2b7d4e",
    "signer": "gateway",
    "signer_key_id": "sig-8b2d4f6a1c3e",
    "created_at": AT,
}
_ENVELOPE_EXAMPLE: dict[str, Any] = {
    "header": _HEADER_EXAMPLE,
    # base64 of HPKE enc || AEAD ciphertext (shortened here), and of the Ed25519 signature
    "ciphertext": "chYmsf+SkCuvwUJc69wJOm4qBtlCOlXUUxBvnOoGhbLrbe/EOhrVpSR0mNz1",
    "signature": "W9X8kpcgSJDlNgkZN0NfBMVbup8h6HAYN7FExti2OC2MrPweps9ZZ92sCeX0zSE9"
    "xXhwwoN6iHZcB2opNXglaA==",
}

_ACK_BUNDLE_EXAMPLE = {
    "resourceType": "Bundle",
    "id": BUNDLE_ID,
    "type": "message",
    "timestamp": AT,
    "entry": [
        {
            "fullUrl": f"MessageHeader/{MESSAGE_ID}",
            "resource": {
                "resourceType": "MessageHeader",
                "id": MESSAGE_ID,
                "eventCoding": {
                    "system": "http://medcomfhir.dk/ig/terminology/CodeSystem/"
                    "medcom-messaging-eventCodes",
                    "code": "acknowledgement-message",
                },
                "response": {"identifier": REPLY_ID, "code": "ok"},
                "sender": {"reference": "Organization/…"},
                "destination": [{"receiver": {"reference": "Organization/…"}}],
                "source": {"endpoint": "https://sor2.sum.dsdn.dk/#id=715381000016006"},
            },
        },
        {"fullUrl": "Organization/…", "resource": {"resourceType": "Organization"}},
        {"fullUrl": "Provenance/…", "resource": {"resourceType": "Provenance"}},
    ],
}

_ACTION_EXAMPLE = {
    "conversation_id": CONVERSATION_ID,
    "at": AT,
    "message_id": MESSAGE_ID,
    "reply_deadline": "2026-12-29",
    "status_url": f"/jobcenter/v1/attest-requests/{CONVERSATION_ID}",
}

_SUCCESS_EXAMPLES: dict[tuple[str, str], Any] = {
    ("get", "/jobcenter/v1/attest-requests"): {
        "items": [
            {
                "conversation_id": CONVERSATION_ID,
                "attest_type": "LÆ 155",
                "case_kind": "sygedagpenge",
                "caseworker_ref": "sag-2026-0042",
                "created_at": AT,
                "reply_deadline": "2026-12-29",
                "stage": "in_mailbox",
                "overdue": False,
                "status_url": f"/jobcenter/v1/attest-requests/{CONVERSATION_ID}",
                "reply_kind": None,
            }
        ],
        "next_cursor": "WyIyMDI2LTEyLTE1VDA5OjMwOjAwKzAwOjAwIiwiOWYxYyJd",
    },
    ("post", "/jobcenter/v1/attest-requests/{conversation_id}/cancel"): {
        **_ACTION_EXAMPLE,
        "action": "cancel",
    },
    ("post", "/jobcenter/v1/attest-requests/{conversation_id}/extend"): {
        **_ACTION_EXAMPLE,
        "action": "extend",
        "message_id": None,
        "reply_deadline": "2027-01-12",
    },
    ("post", "/jobcenter/v1/attest-requests/{conversation_id}/remind"): {
        **_ACTION_EXAMPLE,
        "action": "remind",
    },
    ("post", "/jobcenter/v1/attest-requests"): {
        "conversation_id": CONVERSATION_ID,
        "message_id": MESSAGE_ID,
        "status_url": f"/jobcenter/v1/attest-requests/{CONVERSATION_ID}",
        "reply_deadline": "2026-12-29",
    },
    ("get", "/jobcenter/v1/attest-types"): {
        "items": [
            {
                "code": "LÆ 125",
                "title": "Statusattest",
                "request_form": "LÆ 121",
                "reply_form": "LÆ 125",
                "request_form_source": "observed",
                "issuers": ["gp", "hospital", "psychiatry", "specialist"],
                "reply_deadline": {"amount": 14, "unit": "days"},
                "consent_required": True,
                "legal_bases": [],
            },
            {
                "code": "LÆ 285",
                "title": "Attest til sygedagpengeopfølgning",
                "request_form": "LÆ 281",
                "reply_form": "LÆ 285",
                "request_form_source": "observed",
                "issuers": ["gp"],
                "reply_deadline": {"amount": 14, "unit": "days"},
                "consent_required": False,
                "legal_bases": ["sygedagpengeloven § 11 a"],
            },
        ]
    },
    ("get", "/jobcenter/v1/attest-requests/{conversation_id}"): {
        "conversation_id": CONVERSATION_ID,
        "attest_type": "LÆ 155",
        "request_form": "LÆ 151",
        "reply_form": "LÆ 155",
        "case_kind": "sygedagpenge",
        "caseworker_ref": "sag-2026-0042",
        "receiver": {
            "name": "Psykiatrisk Center København",
            "sor": "715381000016006",
            "gln": "5790004210014",
            "ydernummer": None,
        },
        "reply_deadline": "2026-12-29",
        "stage": "in_mailbox",
        "stages": {"submitted": AT, "published": AT, "in_mailbox": AT},
        "timeline": [
            {"stage": "submitted", "at": AT, "message_id": MESSAGE_ID, "detail": None},
            {"stage": "published", "at": AT, "message_id": MESSAGE_ID, "detail": None},
            {"stage": "in_mailbox", "at": AT, "message_id": MESSAGE_ID, "detail": None},
        ],
        "reply_kind": None,
    },
    ("get", "/jobcenter/v1/inbox"): {
        "items": [
            {
                "message_id": REPLY_ID,
                "conversation_id": CONVERSATION_ID,
                "caseworker_ref": "sag-2026-0042",
                "attest_type": "LÆ 155",
                "sender": {"name": "Psykiatrisk Center København", "sor": "715381000016006"},
                "received_at": AT,
                "attest_text": "Borgeren er i ambulant behandling.",
                "attachments": [
                    {
                        "content_type": "application/pdf",
                        "title": "attest.pdf",
                        "data_base64": "JVBERi0xLjQK",
                    }
                ],
                "reply_kind": "attest",
                "suggested_attest_type": None,
            },
            {
                "message_id": "3b0e7d52-1c9a-4f86-b2d4-6a8e0f1c3d57",
                "conversation_id": "8c2d4e6f-0a1b-4c3d-9e5f-7a8b9c0d1e2f",
                "caseworker_ref": "sag-2026-0043",
                "attest_type": "LÆ 155",
                "sender": {"name": "Psykiatrisk Center København", "sor": "715381000016006"},
                "received_at": AT,
                "attest_text": "Borgeren er ikke i behandling hos os.",
                "attachments": [],
                "reply_kind": "not-in-treatment",
                "suggested_attest_type": None,
            },
        ]
    },
    ("post", "/jobcenter/v1/inbox/{message_id}/ack"): {
        "message_id": REPLY_ID,
        "acknowledged": True,
        "changed": True,
    },
    ("get", "/medcom/v1/mailbox"): {
        "items": [
            {
                "message_id": MESSAGE_ID,
                "conversation_id": CONVERSATION_ID,
                "message_type": "attest-request",
                "delivered_at": AT,
                "envelope": _ENVELOPE_EXAMPLE,
            }
        ]
    },
    ("post", "/jobcenter/v1/cases/close"): {
        "closure_id": "6f1c2b8e-0d4a-4b7e-9a53-2c8f1e7d9b10",
        "case_kind": "sygedagpenge",
        "conversations": 2,
        "closed_at": AT,
        "erase_after": "2026-11-28T09:30:00+00:00",
    },
    ("post", "/medcom/v1/mailbox/{message_id}/collected"): {
        "message_id": MESSAGE_ID,
        "collected": True,
        "changed": True,
    },
    ("post", "/medcom/v1/messages"): {
        "message_id": MESSAGE_ID,
        "bundle_id": BUNDLE_ID,
        "conversation_id": CONVERSATION_ID,
        "message_type": MessageType.ACKNOWLEDGEMENT.value,
        "status": "accepted",
        "accepted_at": AT,
    },
    ("get", "/directory/v1/organisations/{org_id}/keys"): {
        "org_id": "psyk-kbh",
        "message_format": "xml",
        "keys": [
            {
                "key_id": "hpke-psyk-kbh-2026-11",
                "purpose": "hpke",
                "algorithm": "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM",
                "public_key": "qnr8dX1yTCm0wW7d…",
                "valid_from": "2026-11-01T00:00:00Z",
                "valid_until": None,
                "revoked_at": None,
                "usable": True,
            },
            {
                "key_id": "sig-psyk-kbh-2026-11",
                "purpose": "signing",
                "algorithm": "Ed25519",
                "public_key": "3d8CkZ0mF2yQ…",
                "valid_from": "2026-11-01T00:00:00Z",
                "valid_until": "2027-11-01T00:00:00Z",
                "revoked_at": None,
                "usable": True,
            },
        ],
    },
    ("get", "/audit/v1/entries"): {
        "entries": [
            {
                "seq": 41,
                "at": AT,
                "actor": "psyk-kbh",
                "action": "mailbox.fetch",
                "source": "192.0.2.10",
                "subject_org": "psyk-kbh",
                "message_id": MESSAGE_ID,
                "conversation_id": CONVERSATION_ID,
                "detail": None,
                "prev_hash": "3b1f0c…(sha256 hex of entry 40)",
                "hash": "9d4e7a…(sha256 hex)",
            }
        ],
        "next_after_seq": 41,
    },
    ("get", "/healthz"): {"status": "ok"},
    ("get", "/asyncapi.json"): {
        "asyncapi": "3.0.0",
        "info": {"title": "attest gateway — Kafka topics", "version": "0.1.0"},
        "channels": {"medcomMessages": {"address": "medcom.messages"}},
        "operations": {"publishSealedEnvelope": {"action": "send"}},
        "components": {"messages": {"SealedEnvelope": {"contentType": "…"}}},
    },
    ("get", "/readyz"): {
        "status": "ready",
        "checks": {
            "database": {"ok": True, "ms": 1.2},
            "kafka": {"ok": True, "ms": 3.4},
            "keys": {"ok": True, "ms": 0.9},
        },
    },
}

_CASE_REF = "3f9a1c.8d2e5b7a0c4f6e1d9b3a2c5e7f0a1b2c"
_CASE = {
    "case_id": "sag-2026-0042",
    "case_ref": _CASE_REF,
    "municipality": "101",
    "case_kind": "sygedagpenge",
    "psychiatric_course": True,
    "first_day_of_absence": "2026-10-01",
    "closed_on": None,
}
_SUCCESS_EXAMPLES.update(
    {
        ("post", "/jobcenter/v1/contacts"): {
            "contact_id": "5e2d8c1a-7b3f-4a90-8c6e-1d2f3a4b5c6d",
            "contact_date": "2026-10-20",
            "psychiatry": "Psykiatrisk Center København",
            "jobcenter": "Jobcenter København",
            "registered_by": "jobcenter",
        },
        ("post", "/jobcenter/v1/cases"): _CASE,
        ("patch", "/jobcenter/v1/cases/{case_id}"): {**_CASE, "closed_on": "2026-12-18"},
        ("post", "/psychiatry/v1/treatments"): {
            "treatment_id": "b6f1e0de-3c2a-4f55-9d61-2f7a9e1c0b44",
            "start_date": "2026-09-14",
            "end_date": None,
        },
        ("post", "/psychiatry/v1/contacts"): {
            "contact_id": "0c9b7f0e-5d1a-4b7e-a3f2-6e8d1c2b9a70",
            "contact_date": "2026-10-20",
            "psychiatry": "Psykiatrisk Center København",
            "jobcenter": "Jobcenter København",
            "registered_by": "psychiatry",
        },
        ("get", "/ministry/v1/coverage"): {
            "filters": {
                "period": "month",
                "from": "2026-01-01",
                "to": "2026-12-31",
                "attest_type": None,
                "region": None,
            },
            "min_cell_citizens": 5,
            "baseline": 0.75,
            "target": 0.5,
            "window_weeks": 8,
            "contact_counts": ["attest", "meeting", "other", "phone", "video", "written"],
            "rows": [
                {
                    "group": "1084",
                    "label": "Region Hovedstaden",
                    "suppressed": False,
                    "baseline": 0.75,
                    "target": 0.5,
                    "cases": 412,
                    "with_contact": 131,
                    "without_contact": 281,
                    "share_without_contact": 0.682,
                    "contact_by_jobcenter": 64,
                    "contact_by_psychiatry": 22,
                    "contact_by_attest": 45,
                    "contact_by_request": 0,
                    "pending": 57,
                    "closed_early": 19,
                },
                {
                    "group": "1085",
                    "label": "Region Sjælland",
                    "suppressed": True,
                    "baseline": 0.75,
                    "target": 0.5,
                    "cases": None,
                    "with_contact": None,
                    "without_contact": None,
                    "share_without_contact": None,
                    "contact_by_jobcenter": None,
                    "contact_by_psychiatry": None,
                    "contact_by_attest": None,
                    "contact_by_request": None,
                    "pending": None,
                    "closed_early": None,
                },
            ],
        },
        ("get", "/ministry/v1/latency"): {
            "filters": {
                "period": "month",
                "from": None,
                "to": None,
                "attest_type": None,
                "region": None,
            },
            "min_cell_citizens": 5,
            "unit": "seconds",
            "rows": [
                {
                    "group": "psychiatry",
                    "label": "psychiatry",
                    "suppressed": False,
                    "requests": 240,
                    "answered": 171,
                    "open": 69,
                    "share_open": 0.2875,
                    "median": 3412800.0,
                    "p90": None,
                    "answered_only_median": 2592000.0,
                }
            ],
        },
        ("get", "/ministry/v1/request-timing"): {
            "filters": {
                "period": "month",
                "from": None,
                "to": None,
                "attest_type": None,
                "region": None,
            },
            "min_cell_citizens": 5,
            "follow_up_weeks": {"sygedagpenge": 8},
            "rows": [
                {
                    "group": "DK",
                    "label": "Danmark",
                    "suppressed": False,
                    "week": 6,
                    "requests": 118,
                    "share": 0.094,
                }
            ],
        },
        ("get", "/ministry/v1/overdue"): {
            "filters": {
                "period": "month",
                "from": None,
                "to": None,
                "attest_type": None,
                "region": None,
            },
            "min_cell_citizens": 5,
            "decisions_as_of": "2026-12-07T09:55:00+00:00",
            "rows": [
                {
                    "label": "Psykiatrisk Center København",
                    "receiver_kind": "psychiatry",
                    "suppressed": False,
                    "open_overdue": 23,
                    "most_days_overdue": 41,
                }
            ],
        },
        ("get", "/ministry/v1/rehabilitation"): {
            "filters": {
                "period": "quarter",
                "from": "2026-01-01",
                "to": "2026-12-31",
                "attest_type": None,
                "region": "1083",
                "municipality": None,
            },
            "min_cell_citizens": 5,
            "unit": "days",
            "health_information": [["LÆ 265"], ["LÆ 155", "LÆ 105", "LÆ 115"]],
            "rows": [
                {
                    "group": "1083",
                    "label": "Region Syddanmark",
                    "suppressed": False,
                    "cases": 38,
                    "complete": 21,
                    "incomplete": 17,
                    "share_incomplete": 0.447,
                    "median_days": 61.5,
                    "p90_days": None,
                    "missing_lae265": 3,
                    "missing_lae155_or_lae105_or_lae115": 16,
                }
            ],
        },
    }
)

_METRICS = (
    "# HELP attest_gateway_http_requests_total HTTP requests answered\n"
    "# TYPE attest_gateway_http_requests_total counter\n"
    'attest_gateway_http_requests_total{method="POST",route="/jobcenter/v1/attest-requests",'
    'status="202"} 42.0\n'
)

_CSV = (
    "group,label,suppressed,requests,late_requests,late_request_rate\n"
    "1084,Region Hovedstaden,False,412,37,0.09\n"
)

_REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/jobcenter/v1/attest-requests/{conversation_id}/extend"): {
        "application/json": {"reply_deadline": "2027-01-12"}
    },
    ("post", "/jobcenter/v1/cases/close"): {
        "application/json": {"citizen_cpr": "0101901234", "case_kind": "sygedagpenge"}
    },
    ("post", "/jobcenter/v1/cases"): {
        "application/json": {
            "municipality": "101",
            "case_id": "sag-2026-0042",
            "citizen_cpr": "0101901234",
            "case_kind": "sygedagpenge",
            "psychiatric_course": True,
            "first_day_of_absence": "2026-10-01",
        }
    },
    ("patch", "/jobcenter/v1/cases/{case_id}"): {"application/json": {"closed_on": "2026-12-18"}},
    ("post", "/psychiatry/v1/treatments"): {
        "application/json": {"citizen_cpr": "0101901234", "start_date": "2026-09-14"}
    },
    ("post", "/jobcenter/v1/contacts"): {
        "application/json": {
            "municipality": "101",
            "citizen_cpr": "0101901234",
            "psychiatry_sor": "715381000016006",
            "case_kind": "sygedagpenge",
            "first_day_of_absence": "2026-10-01",
            "contact_date": "2026-10-20",
            "channel": "meeting",
        }
    },
    ("post", "/psychiatry/v1/contacts"): {
        "application/json": {
            "municipality": "101",
            "case_ref": "3f9a1c.8d2e5b7a0c4f6e1d9b3a2c5e7f0a1b2c",
            "contact_date": "2026-10-20",
            "channel": "phone",
        }
    },
    ("post", "/jobcenter/v1/attest-requests"): {
        "application/json": {
            "municipality": "101",
            "jobcenter_gln": "5790001010010",
            "caseworker_ref": "sag-2026-0042",
            "citizen_cpr": "0101901234",
            "citizen_name": {"given": ["Anne", "Marie"], "family": "Jensen"},
            "caseworker": {
                "given": ["Lars"],
                "family": "Nielsen",
                "phone": "+4587131313",
                "email": "lars.nielsen@jobcenter.example",
            },
            "attest_type": "LÆ 155",
            "receiver": {"sor": "715381000016006"},
            "case_kind": "sygedagpenge",
            "first_day_of_absence": "2026-10-01",
            "psychiatric_course": True,
            "questions": "Hvad er borgerens aktuelle funktionsevne?",
            "consent": {"given": True, "date": "2026-10-20"},
        }
    },
}

_MESSAGES_BODY = {
    "required": True,
    "description": "A MedCom acknowledgement or attest reply (FHIR Bundle of type message), "
    "or the same sealed for the gateway and signed by the sender.",
    "content": {
        "application/fhir+json": {
            "schema": {
                "$ref": "#/components/schemas/FhirBundle",
            },
            "example": _ACK_BUNDLE_EXAMPLE,
        },
        "application/fhir+xml": {
            "schema": {
                "type": "string",
                "description": "The same Bundle in FHIR XML (http://hl7.org/fhir/R4/xml.html); "
                "no DTD, no entities",
            },
            "example": json_to_xml(_ACK_BUNDLE_EXAMPLE).decode("utf-8"),
        },
        "application/vnd.attest-gateway.envelope+json": {
            "schema": {"$ref": "#/components/schemas/SealedEnvelope"},
            "example": {**_ENVELOPE_EXAMPLE, "header": {
                **_HEADER_EXAMPLE, "message_type": "acknowledgement",
                "sender": "psyk-kbh", "receiver": "gateway", "signer": "psyk-kbh"}},
        },
    },
}  # fmt: skip


_SUCCESS_EXAMPLES.update({("get", path): body for path, body in MINISTRY_EXAMPLES.items()})

SERVERS: list[dict[str, Any]] = [
    {
        "url": "https://{host}",
        "description": "an installation: its operator gives the host name (mutual TLS or "
        "API keys; HTTPS only in production)",
        "variables": {"host": {"default": "attest-gateway.example.dk"}},
    },
    {"url": "https://localhost:8000", "description": "development: `make run`"},
]

DESCRIPTION = """\
The attest gateway carries medical attests (LÆ forms) between Danish job centres and the \
health sector. A job centre asks for an attest in plain JSON (`/jobcenter/v1`); the gateway \
turns it into a MedCom FHIR message, seals it (HPKE, RFC 9180) for the receiving clinic and \
signs it (Ed25519). The clinic reads its mailbox of sealed envelopes (`/medcom/v1`), opens \
them with its own key after checking the signature against the directory's published keys \
(`/directory/v1`), and answers with a MedCom acknowledgement and an attest reply. The job \
centre reads the reply, opened and translated to JSON, from its inbox. Webhooks \
(`/webhooks/v1`, Standard Webhooks signatures) tell either side that something arrived; the \
ministry reads aggregated figures (`/ministry/v1`), never a person.

Every call is made by an organisation: a client certificate pinned to it (mutual TLS) or its \
API key (`Authorization: Bearer`), or both naming the same organisation. Errors are RFC 9457 \
`application/problem+json` with a stable `code`; every answer and every error code of every \
operation has an example here. Creating calls take an `Idempotency-Key`. The Kafka topics \
are described by the AsyncAPI document (`/asyncapi.json`). A Python client and the \
`attest-client` command (`attest_gateway.client`) implement this API for partners."""

# The operations whose route has no docstring of its own: their description here.
OPERATION_DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("post", "/jobcenter/v1/attest-requests"): "Ask a health organisation for an attest. The "
    "request is checked (CPR number, GLN, receiver, attest type and who may issue it), turned "
    "into a MedCom CareCommunication message, sealed for the receiver and signed by the "
    "gateway for the job centre, all in one transaction with its first stage; 202 with the "
    "conversation id, the status URL (also `Location`) and the reply deadline. Send an "
    "`Idempotency-Key`: a retry with the same key and body answers the first answer again.",
    ("get", "/jobcenter/v1/attest-requests/{conversation_id}"): "The status of one of the job "
    "centre's attest requests: the stage it reached, when each stage was reached, and the "
    "timeline of its messages. Another organisation's conversation is not found.",
    ("get", "/jobcenter/v1/inbox"): "The attest replies waiting for the job centre, opened with "
    "its key and translated to job-centre JSON, oldest first; replies that cannot be read now "
    "are listed apart (`unreadable`). A read is an audit entry.",
    ("post", "/jobcenter/v1/inbox/{message_id}/ack"): "Acknowledge a reply of the inbox: it "
    "leaves the inbox and the gateway sends the clinic the MedCom acknowledgement for the job "
    "centre. Repeating it changes nothing (`changed: false`).",
    ("get", "/medcom/v1/mailbox"): "The sealed envelopes waiting for this health organisation, "
    "oldest first (at most `limit`). Open each with the organisation's private HPKE key after "
    "checking its signature against the signer's keys (`/directory/v1`); an envelope stays "
    "until it is acknowledged or marked collected. A read is an audit entry.",
    ("post", "/medcom/v1/mailbox/{message_id}/collected"): "Take a message out of the "
    "mailbox's waiting list without acknowledging it (an acknowledgement does this too). "
    "Repeating it changes nothing (`changed: false`).",
    ("post", "/medcom/v1/messages"): "Send a MedCom acknowledgement or attest reply: a FHIR "
    "Bundle (`application/fhir+json` or `application/fhir+xml`) or the same sealed for the "
    "gateway and signed by the sender. It is checked against MedCom's rules and the "
    "conversation it answers (sender, receiver, request), then accepted (202) in one "
    "transaction with its stage. A message id "
    "sent before answers the first answer again (`Idempotent-Replayed: true`).",
    ("get", "/healthz"): "Liveness: the process answers. No dependency is checked.",
    ("get", "/readyz"): "Readiness: the database, Kafka and the key ring answer, each with "
    "its time; 503 while one does not.",
    ("get", "/asyncapi.json"): "The AsyncAPI 3 document of the gateway's Kafka topics: "
    "channels, messages (headers and payloads) and who sends and receives them.",
}

# The FHIR Bundle of `/medcom/v1/messages`: its envelope checked by schema, the rest by
# MedCom's rules on the server (a full FHIR schema would not say more a vendor needs).
FHIR_BUNDLE: dict[str, Any] = {
    "title": "FhirBundle",
    "type": "object",
    "description": "A FHIR R4 Bundle of type `message` following MedCom's CareCommunication "
    f"message profile ({PROFILE_CARE_COMMUNICATION_MESSAGE}; the Communication: "
    f"{PROFILE_CARE_COMMUNICATION}), or a MedCom acknowledgement (the messaging IG's "
    "Acknowledgement message). The first entry is the MessageHeader (its id is the message "
    "id); the gateway checks MedCom's rules and answers `invalid-bundle`, "
    "`invalid-attachment` and the other codes listed per operation.",
    "externalDocs": {
        "description": "MedCom's FHIR implementation guides (CareCommunication, "
        "Acknowledgement, core)",
        "url": "https://medcomfhir.dk/ig/carecommunication/",
    },
    "required": ["resourceType"],
    "properties": {
        "resourceType": {"const": "Bundle", "description": "always Bundle"},
        # FHIR strings: no control character but tab, line feed and carriage return.
        "id": {
            "type": "string",
            "pattern": TEXT_PATTERN,
            "description": "Bundle.id: new on every send",
        },
        "type": {
            "type": "string",
            "pattern": TEXT_PATTERN,
            "description": "message: MedCom messages are message Bundles",
        },
        "timestamp": {
            "type": "string",
            "pattern": TEXT_PATTERN,
            "description": "when the Bundle was made (FHIR instant)",
        },
        "meta": {
            "$ref": "#/components/schemas/FhirJson",
            "description": "meta.profile names the MedCom profile the Bundle follows",
        },
        "entry": {
            "type": "array",
            "description": "the resources: MessageHeader first, then Communication, Patient, "
            "Organizations, Practitioner, Provenance … as the profile asks",
            "items": {"$ref": "#/components/schemas/FhirJson"},
        },
    },
    "propertyNames": {"pattern": TEXT_PATTERN},
    "additionalProperties": {"$ref": "#/components/schemas/FhirJson"},
}

# Answers the routes return as plain data: their schema comes from the wire contracts
# (contracts/mailbox.py), which the partner client parses them with.
TYPED_ANSWERS: dict[tuple[str, str], type[BaseModel]] = {
    ("get", "/medcom/v1/mailbox"): Mailbox,
    ("post", "/medcom/v1/mailbox/{message_id}/collected"): Collected,
    ("post", "/medcom/v1/messages"): MessageAccepted,
    ("post", "/jobcenter/v1/inbox/{message_id}/ack"): ReplyAcknowledged,
}


# Any FHIR JSON value: no string, key or value, holds a control character but tab, line feed
# and carriage return (FHIR's string type; the gateway refuses others, `control-character`).
FHIR_JSON: dict[str, Any] = {
    "description": "FHIR JSON: strings (keys and values) hold no control character but tab, "
    "line feed and carriage return",
    "anyOf": [
        {"type": "string", "pattern": TEXT_PATTERN},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/FhirJson"}},
        {
            "type": "object",
            "propertyNames": {"pattern": TEXT_PATTERN},
            "additionalProperties": {"$ref": "#/components/schemas/FhirJson"},
        },
    ],
}


def problem_example(code: str, path: str) -> dict[str, Any]:
    status, title, detail = ERROR_CATALOGUE[code]
    body = Problem(status, title, code, detail).body(instance=path)
    if status == 422 and code in _IDENTIFIER_CODES:
        loc = {"invalid-cpr": "citizen_cpr", "invalid-gln": "jobcenter_gln"}.get(code, "body")
        body["errors"] = [{"loc": ["body", loc], "type": code.replace("-", "_"), "msg": "…"}]
    for prefix, where in _BOUND_LOCS.get(code, {}).items():
        if path.startswith(prefix):  # the first that fits
            body["errors"] = [{"loc": where, "type": code.replace("-", "_"), "msg": "…"}]
            break
    if status == 503:
        body["retryable"] = True
        body["retry_after"] = 5
    if status == 429:
        body["retryable"] = True
        body["retry_after"] = 1
    return body


# Not an answer of any operation: every path answers a method it does not list with this.
METHOD_NOT_ALLOWED: dict[str, Any] = {
    "description": "method-not-allowed: any path answers a method it does not list with 405 "
    "and the `Allow` header naming the methods it takes (RFC 9110).",
    "headers": {"Allow": {"schema": {"type": "string"}, "example": "GET"}},
    "content": {
        PROBLEM_JSON: {
            "schema": {"$ref": "#/components/schemas/Problem"},
            "examples": {
                "method-not-allowed": {
                    "summary": ERROR_CATALOGUE["method-not-allowed"][2],
                    "value": problem_example("method-not-allowed", "/jobcenter/v1/inbox"),
                }
            },
        }
    },
}


def codes_for(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    codes = list(ENDPOINT_ERRORS.get((method, path), []))
    if path.startswith(_PARTNER_PREFIXES):
        codes += AUTHENTICATED
    if method in ("post", "put", "patch") and path.startswith(_PARTNER_PREFIXES):
        codes += WITH_BODY
    if operation.get("parameters") and path.startswith(_PARTNER_PREFIXES):
        codes.append("invalid-request")
    if path.startswith(_PARTNER_PREFIXES):  # a query parameter the endpoint does not take
        codes.append("unknown-parameter")
    codes += COMMON
    return list(dict.fromkeys(codes))


def _error_responses(method: str, path: str, operation: dict[str, Any]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes_for(method, path, operation):
        by_status.setdefault(ERROR_CATALOGUE[code][0], []).append(code)
    responses: dict[str, Any] = {}
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = {
            "description": " | ".join(codes),
            "content": {
                PROBLEM_JSON: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "examples": {
                        code: {
                            "summary": ERROR_CATALOGUE[code][2],
                            "value": problem_example(code, path),
                        }
                        for code in codes
                    },
                }
            },
        }
        if status == 401:
            responses["401"]["headers"] = {
                "WWW-Authenticate": {"schema": {"type": "string"}, "example": "Bearer"}
            }
        if status in (429, 503):
            responses[str(status)]["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "example": 1 if status == 429 else 5}
            }
    return responses


def _headers_are_strings(doc: dict[str, Any]) -> None:
    """An optional header is absent or a string: never JSON null (FastAPI writes `str | None`
    as anyOf string/null, and a client reading that may send the text "null")."""
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                schema = parameter.get("schema", {})
                if parameter.get("in") != "header" or "anyOf" not in schema:
                    continue
                kept = [s for s in schema["anyOf"] if s.get("type") != "null"]
                if len(kept) == 1:
                    rest = {k: v for k, v in schema.items() if k != "anyOf"}
                    parameter["schema"] = kept[0] | rest


def complete_document(document: dict[str, Any]) -> dict[str, Any]:
    """Add the problem schema, security, and examples for every answer of every endpoint."""
    doc = copy.deepcopy(document)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    envelope_schema = SealedEnvelope.model_json_schema(
        ref_template="#/components/schemas/{model}", mode="serialization"
    )
    for name, sub in envelope_schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas["SealedEnvelope"] = envelope_schema
    schemas["FhirJson"] = FHIR_JSON
    schemas["FhirBundle"] = FHIR_BUNDLE
    for model in {m.__name__: m for m in TYPED_ANSWERS.values()}.values():
        model_schema = model.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="serialization"
        )
        for name, sub in model_schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = model_schema
    _headers_are_strings(doc)
    doc["servers"] = SERVERS
    doc["info"]["description"] = DESCRIPTION
    components["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "One API key per organisation: `Authorization: Bearer <api key>`.",
        },
        "mutualTLS": {
            "type": "mutualTLS",
            "description": "A client certificate pinned to the organisation in the directory "
            "(its SHA-256 fingerprint), issued by a CA the installation trusts "
            "(API_TLS_CLIENT_CAFILE). With an API key as well, both must name the same "
            "organisation (`credentials-disagree`).",
        },
        "metricsToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "METRICS_TOKEN, for Prometheus.",
        },
    }
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            # FastAPI's default 422 (HTTPValidationError) is not what the gateway answers.
            responses.pop("422", None)
            if not operation.get("description"):
                described = OPERATION_DESCRIPTIONS.get((method, path))
                if described is not None:
                    operation["description"] = described
            if path.startswith(_PARTNER_PREFIXES):
                operation["security"] = [{"apiKey": []}, {"mutualTLS": []}]
            elif path == "/metrics":
                operation["security"] = [{"metricsToken": []}, {}]
            example = _SUCCESS_EXAMPLES.get((method, path))
            typed = TYPED_ANSWERS.get((method, path))
            for status, response in responses.items():
                if not status.startswith("2"):
                    continue
                if typed is not None:
                    response["description"] = " ".join((typed.__doc__ or "").split())
                    ref = {"$ref": f"#/components/schemas/{typed.__name__}"}
                    response.setdefault("content", {}).setdefault("application/json", {})
                    response["content"]["application/json"]["schema"] = ref
                for media in response.setdefault("content", {}).values():
                    if example is not None:
                        media["example"] = example
            if (method, path) == ("get", "/metrics"):
                responses["200"]["content"] = {
                    "text/plain; version=0.0.4": {"schema": {"type": "string"}, "example": _METRICS}
                }
            if any(p.get("name") == "format" for p in operation.get("parameters", [])):
                # The ministry's figures as CSV (`format=csv`): the same rows, one a line.
                responses["200"]["content"]["text/csv"] = {
                    "schema": {"type": "string"},
                    "example": _CSV,
                }
            if (method, path) == ("post", "/medcom/v1/messages"):
                operation["requestBody"] = _MESSAGES_BODY
            for media_type, example in _REQUEST_EXAMPLES.get((method, path), {}).items():
                content = operation.get("requestBody", {}).get("content", {})
                if media_type in content:
                    content[media_type]["example"] = example
            responses.update(_error_responses(method, path, operation))
    components["responses"] = {"MethodNotAllowed": METHOD_NOT_ALLOWED}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    describe(schemas)
    _describe_answers(doc)
    return doc


def _describe_answers(doc: dict[str, Any]) -> None:
    """A success answer FastAPI describes only as "Successful Response" gets the description
    of the schema it returns."""
    schemas = doc["components"]["schemas"]
    for operations in doc["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if not status.startswith("2") or response.get("description") not in (
                    None,
                    "Successful Response",
                ):
                    continue
                for media in response.get("content", {}).values():
                    ref = str(media.get("schema", {}).get("$ref", ""))
                    described = schemas.get(ref.rsplit("/", 1)[-1], {}).get("description")
                    if ref and described:
                        response["description"] = described
                        break


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so `/openapi.json`) return the completed document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            base = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            app.openapi_schema = complete_document(base)
        return app.openapi_schema

    setter: Callable[[], dict[str, Any]] = openapi
    app.openapi = setter  # type: ignore[method-assign]
