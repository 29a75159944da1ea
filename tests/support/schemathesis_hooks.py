"""Schemathesis checks of our own (loaded through SCHEMATHESIS_HOOKS by the e2e test)."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

from attest_gateway.core.identifiers import GLN_CHECK_DIGIT_WRONG
from attest_gateway.medcom.errors import BUNDLE_ERROR_CODES

# Problem codes of rules that no JSON Schema can state, so that a request the OpenAPI document
# calls valid may still be refused with them. Everything else a validator enforces, the document
# states (patterns, enums, oneOf), and positive data refused with any other code fails the run.
BEYOND_THE_SCHEMA = frozenset(
    {
        # The directory: which organisations, keys and conversations exist, who may do what.
        "unknown-receiver",
        "unknown-jobcenter",
        "unknown-case",
        "case-conflict",
        "receiver-cannot-issue",
        "receiver-has-no-key",
        "receiver-mismatch",
        "unknown-request",
        "unknown-key",
        "key-not-valid",
        "not-addressed-to-gateway",
        "unsupported-suite",
        # The catalogue: what an attest type needs (consent, or a legal basis it allows), the
        # form a reply must be on, what a reply kind needs (a text; a suggestion).
        "consent-required",
        "wrong-reply-form",
        "invalid-reply-kind",
        # The clock: deadlines and dates relative to today.
        "invalid-reply-deadline",
        "invalid-contact-date",
        "invalid-first-day-of-absence",
        "invalid-closed-date",
        # The pseudonym key a case ref was made with.
        "invalid-case-ref",
        # A list's cursor: only one the list handed out names a place in it.
        "invalid-cursor",
        # Relations between parameters ('from' after 'to'; weekly figures only nationally; a
        # municipality outside the region named beside it).
        "invalid-period",
        "invalid-kommunekode",
        # Cryptography: signatures, opening an envelope, its header against its content.
        "signature-invalid",
        "open-failed",
        "header-mismatch",
        # The MedCom profile of a Bundle, which the document names but is no JSON Schema.
        *BUNDLE_ERROR_CODES,
        "unsupported-message",
        "empty-reply",
    }
)


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: Any) -> None:
    """A long-poll's `wait` is time, not input: the run does not wait it out (a read with
    nothing waiting would take its whole `wait`). A valid `wait` is sent as 0, in every phase;
    tests/e2e/test_long_poll.py tests the waiting, and values beyond 30 are still sent."""
    query = case.query
    if not query or "wait" not in query:
        return
    wait = query["wait"]  # an int, or its text (the coverage phase sends some as strings)
    if not isinstance(wait, bool) and str(wait).isdigit() and 0 < int(wait) <= 30:
        case.query = {**query, "wait": 0}


def _header(response: Any, name: str) -> str:
    value = response.headers.get(name) or response.headers.get(name.title()) or ""
    return value[0] if isinstance(value, list) else str(value)


@schemathesis.check
def problem_json_with_a_code(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is RFC 9457 problem+json with a stable code."""
    if response.status_code < 400:
        return None
    content_type = _header(response, "content-type")
    if not content_type.startswith("application/problem+json"):
        raise AssertionError(f"{response.status_code} answered with {content_type!r}")
    body = response.json()
    if not (
        isinstance(body, dict) and body.get("code") and body.get("status") == response.status_code
    ):
        raise AssertionError("the problem document lacks a code or the right status")
    return None


def _refused_beyond_the_schema(response: Any) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    code = body.get("code")
    if code in BEYOND_THE_SCHEMA:
        return True
    # A GLN's GS1 check digit is the one identifier rule a pattern cannot state.
    errors = body.get("errors") or []
    return code == "invalid-gln" and all(e.get("msg") == GLN_CHECK_DIGIT_WRONG for e in errors)


@schemathesis.check
def positive_data_refused_only_beyond_the_schema(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis's `positive_data_acceptance`, except that a schema-valid request may be
    refused for a rule in `BEYOND_THE_SCHEMA`: the built-in check wants every schema-valid
    request accepted, which no gateway that checks signatures, deadlines and its directory
    can do. A refusal for anything the document could have said (a pattern, an enum, a
    type) still fails: that is the schema being looser than the validators."""
    try:
        result: bool | None = positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if _refused_beyond_the_schema(response):
            return None
        raise
    return result
