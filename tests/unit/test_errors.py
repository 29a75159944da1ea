"""The error tree's two boundary tables: HTTP status and title (entrypoints/http/problems.py)
and retry or dead letter on Kafka (infra/kafka/consumer.py `verdict`)."""

from __future__ import annotations

import pytest

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
from attest_gateway.entrypoints.http.problems import problem_of, status_of
from attest_gateway.infra.kafka.consumer import verdict
from attest_gateway.infra.kafka.reading import KafkaReadTimeout, TopicMissing
from attest_gateway.medcom.errors import BundleError


@pytest.mark.parametrize(
    ("error", "status", "title"),
    [
        (GatewayError(ErrorCode.INTERNAL_ERROR, "x"), 500, "Internal error"),
        (Malformed(ErrorCode.MALFORMED_JSON, "x"), 400, "Bad request"),
        (InvalidInput(ErrorCode.IDEMPOTENCY_KEY_REQUIRED, "x"), 400, "Idempotency-Key required"),
        (InvalidInput(ErrorCode.UNKNOWN_PARAMETER, "x"), 422, "Unprocessable content"),
        (NotAuthenticated(ErrorCode.UNAUTHENTICATED, "x"), 401, "Authentication required"),
        (NotPermitted(ErrorCode.SENDER_MISMATCH, "x"), 403, "Forbidden"),
        (Unknown(ErrorCode.NOT_FOUND, "x"), 404, "Not found"),
        (Malformed(ErrorCode.METHOD_NOT_ALLOWED, "x"), 405, "Method not allowed"),
        (Replay(ErrorCode.REPLAYED_MESSAGE_ID, "x"), 409, "Conflict"),
        (Malformed(ErrorCode.PAYLOAD_TOO_LARGE, "x"), 413, "Payload too large"),
        (Malformed(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "x"), 415, "Unsupported media type"),
        (InvalidInput(ErrorCode.UNKNOWN_KEY, "x"), 422, "Unprocessable content"),
        (EnvelopeRejected(ErrorCode.UNKNOWN_KEY, "x"), 422, "Envelope rejected"),
        (BundleError(ErrorCode.MISSING_PATIENT, "x"), 422, "Unprocessable content"),
        (Unavailable(ErrorCode.OUTBOX_FULL, "x"), 503, "Service unavailable"),
    ],
)
def test_the_http_table(error: GatewayError, status: int, title: str) -> None:
    assert status_of(type(error), error.code) == (status, title)
    problem = problem_of(error)
    assert (problem.status, problem.title) == (status, title)
    body = problem.body(instance="/x")
    assert body["type"].endswith("/" + error.code.value)
    assert (body["status"], body["title"], body["code"]) == (status, title, error.code.value)


def test_an_unavailable_problem_is_retryable_and_says_when() -> None:
    problem = problem_of(Unavailable(ErrorCode.DATABASE_BUSY, "busy", retry_after=1))
    assert problem.retry_after == 1
    assert problem.body()["retryable"] is True
    assert problem.body()["retry_after"] == 1


def test_a_free_code_is_refused() -> None:
    with pytest.raises(ValueError, match="not-a-code"):
        GatewayError("not-a-code", "x")  # type: ignore[arg-type]


def test_a_bundle_error_is_an_input_error_and_a_value_error() -> None:
    error = BundleError(ErrorCode.INVALID_ID, "Bundle.id must be a FHIR id")
    assert isinstance(error, InvalidInput)
    assert isinstance(error, ValueError)
    assert str(error) == "invalid-id: Bundle.id must be a FHIR id"


@pytest.mark.parametrize(
    ("error", "retry", "reason"),
    [
        (
            Unavailable(ErrorCode.DATABASE_UNAVAILABLE, "OperationalError"),
            True,
            "database-unavailable",
        ),
        (KafkaReadTimeout(ErrorCode.KAFKA_TIMEOUT, "no answer"), True, "kafka-timeout"),
        (TopicMissing(ErrorCode.TOPIC_MISSING, "gone"), False, "topic-missing"),
        (Malformed(ErrorCode.INVALID_ENVELOPE, "no value"), False, "invalid-envelope"),
        (EnvelopeRejected(ErrorCode.SIGNATURE_INVALID, "bad"), False, "signature-invalid"),
        (Replay(ErrorCode.REPLAYED_MESSAGE_ID, "again"), False, "replayed-message-id"),
        (InvalidInput(ErrorCode.STALE_PSEUDONYM, "old key"), False, "stale-pseudonym"),
    ],
)
def test_the_kafka_table(error: GatewayError, retry: bool, reason: str) -> None:
    judged = verdict(error)
    assert (judged.retry, judged.reason, judged.detail) == (retry, reason, error.detail)


def test_a_bug_is_dead_lettered_as_a_crash_without_retry() -> None:
    judged = verdict(KeyError("secret input"))
    assert (judged.retry, judged.reason, judged.detail) == (False, "handler-crashed", "KeyError")
