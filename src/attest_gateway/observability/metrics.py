"""Prometheus metrics: the metric objects and small helpers the other modules call in one line.

Counters and histograms are updated where things happen (HTTP middleware, consumer loop,
relay, error handler). Store gauges (outbox depth, mailbox depth, overdue attests) are facts
about the shared database, so they are computed when Prometheus scrapes, at most every
`STORE_GAUGE_TTL_SECONDS`, and only by processes that run the consumers (role `worker` or
`all`): API replicas would otherwise export the same numbers several times. The query that
fills them is infra/db/gauges.py; the `/metrics` route is entrypoints/http/routes/metrics.py.
This module imports nothing of the store or the web framework, so every layer may count.

Labels never carry personal data: routes are templates (`/inbox/{message_id}/ack`, never
the id), topics, problem codes, organisation ids and LÆ types.

    attest_gateway_http_requests_total{method,route,status}
    attest_gateway_http_request_duration_seconds{method,route}      histogram
    attest_gateway_http_problems_total{code,status}                 problem+json answers
    attest_gateway_kafka_records_produced_total{topic}
    attest_gateway_kafka_records_consumed_total{topic,outcome}      handled | dead-lettered
    attest_gateway_kafka_consumer_lag{topic,partition}              records behind the end
    attest_gateway_dead_letters_total{reason,source_topic}
    attest_gateway_verification_failures_total{where,reason}        signatures, keys, sealing
    attest_gateway_db_statements_total                              SQL statements sent
    attest_gateway_group_commit_requests{outcome}                   histogram: accepted requests
                                                                    per transaction (committed |
                                                                    failed)
    attest_gateway_long_polls_waiting                               `?wait=` reads waiting now
    attest_gateway_outbox_depth{topic}                              not yet published
    attest_gateway_outbox_oldest_age_seconds
    attest_gateway_mailbox_depth{receiver,message_type}             delivered, not collected
    attest_gateway_overdue_attests{attest_type}                     deadline passed, no reply
    attest_gateway_audit_pending                                    audit entries not yet chained
    attest_gateway_audit_pending_oldest_age_seconds
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram, Info

from attest_gateway import __version__
from attest_gateway.core.errors import ErrorCode

log = structlog.get_logger(__name__)

STORE_GAUGE_TTL_SECONDS = 10.0
UNMATCHED_ROUTE = "<unmatched>"

# Dead-letter reasons and problem codes that mean "a signature, key or sealing check failed":
# the alert metric `verification_failures_total` counts them wherever they happen.
VERIFICATION_CODES = frozenset(
    {
        ErrorCode.SIGNATURE_INVALID,
        ErrorCode.UNKNOWN_KEY,
        ErrorCode.KEY_NOT_VALID,
        ErrorCode.SIGNER_NOT_SENDER,
        ErrorCode.NOT_ADDRESSED_TO_RECEIVER,
        ErrorCode.NOT_ADDRESSED_TO_GATEWAY,
        ErrorCode.OPEN_FAILED,
        ErrorCode.UNSUPPORTED_SUITE,
        ErrorCode.SENDER_MISMATCH,
        ErrorCode.HEADER_MISMATCH,
        ErrorCode.CONVERSATION_MISMATCH,
        ErrorCode.REPLAYED_MESSAGE_ID,
    }
)

BUILD = Info("attest_gateway_build", "Version of the running gateway")
BUILD.info({"version": __version__})

HTTP_REQUESTS = Counter(
    "attest_gateway_http_requests", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "attest_gateway_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_PROBLEMS = Counter(
    "attest_gateway_http_problems", "problem+json answers by stable code", ["code", "status"]
)
RECORDS_PRODUCED = Counter(
    "attest_gateway_kafka_records_produced", "Records published to Kafka", ["topic"]
)
RECORDS_CONSUMED = Counter(
    "attest_gateway_kafka_records_consumed", "Records consumed from Kafka", ["topic", "outcome"]
)
CONSUMER_LAG = Gauge(
    "attest_gateway_kafka_consumer_lag",
    "Records between a consumer's position and the partition's end",
    ["topic", "partition"],
)
DEAD_LETTERS = Counter(
    "attest_gateway_dead_letters",
    "Records sent to the dead-letter topic",
    ["reason", "source_topic"],
)
VERIFICATION_FAILURES = Counter(
    "attest_gateway_verification_failures",
    "Envelopes refused by a signature, key or sealing check (where: api or kafka)",
    ["where", "reason"],
)
INBOX_UNREADABLE = Counter(
    "attest_gateway_inbox_unreadable",
    "Job-centre replies the gateway could not open or read (counted when first marked)",
    ["reason"],
)
DB_STATEMENTS = Counter(
    "attest_gateway_db_statements",
    "SQL statements this process sent to the database (an executemany counts once)",
)
GROUP_COMMIT_REQUESTS = Histogram(
    "attest_gateway_group_commit_requests",
    "Accepted requests written in one group-commit transaction (failed: redone one by one)",
    ["outcome"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
LONG_POLLS_WAITING = Gauge(
    "attest_gateway_long_polls_waiting", "Long-polls of a mailbox or inbox waiting in this process"
)
OUTBOX_DEPTH = Gauge("attest_gateway_outbox_depth", "Outbox rows not yet published", ["topic"])
OUTBOX_OLDEST = Gauge(
    "attest_gateway_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row"
)
MAILBOX_DEPTH = Gauge(
    "attest_gateway_mailbox_depth",
    "Messages delivered to a mailbox and not yet collected",
    ["receiver", "message_type"],
)
OVERDUE = Gauge(
    "attest_gateway_overdue_attests",
    "Attest requests whose reply deadline has passed without a reply",
    ["attest_type"],
)
AUDIT_PENDING = Gauge("attest_gateway_audit_pending", "Audit entries appended and not yet chained")
AUDIT_PENDING_OLDEST = Gauge(
    "attest_gateway_audit_pending_oldest_age_seconds",
    "Age of the oldest audit entry not yet chained",
)


# --- one-line helpers for the rest of the code ------------------------------------------------


def observe_group_commit(requests: int, failed: bool) -> None:
    """One group-commit transaction of `requests` accepted requests."""
    GROUP_COMMIT_REQUESTS.labels("failed" if failed else "committed").observe(requests)


def observe_request(method: str, route: object, status: int, seconds: float) -> None:
    """One answered HTTP request. `route` is the matched route (None when nothing matched)."""
    template = getattr(route, "path", None) or UNMATCHED_ROUTE
    HTTP_REQUESTS.labels(method, template, str(status)).inc()
    HTTP_DURATION.labels(method, template).observe(seconds)


def observe_problem(code: str, status: int, *, envelope_rejected: bool = False) -> None:
    """A problem+json answer; envelope checks that failed also count as verification failures."""
    HTTP_PROBLEMS.labels(code, str(status)).inc()
    if envelope_rejected or code in VERIFICATION_CODES:
        VERIFICATION_FAILURES.labels("api", code).inc()


def unreadable_reply(reason: str) -> None:
    """A job centre's reply newly marked unreadable; a failed key or sealing check is also
    a verification failure."""
    INBOX_UNREADABLE.labels(reason).inc()
    if reason in VERIFICATION_CODES:
        VERIFICATION_FAILURES.labels("inbox", reason).inc()


def produced(topics: Iterable[str]) -> None:
    """Records acknowledged by the brokers, one topic name per record."""
    counts: dict[str, int] = {}
    for topic in topics:
        counts[topic] = counts.get(topic, 0) + 1
    for topic, n in counts.items():
        RECORDS_PRODUCED.labels(topic).inc(n)


def db_statement(*_args: object) -> None:
    """A SQLAlchemy `before_cursor_execute` listener (infra/db/engine.py registers it on every
    engine): one round trip to the database, whatever the statement."""
    DB_STATEMENTS.inc()


def consumed(topic: str, outcome: str) -> None:
    RECORDS_CONSUMED.labels(topic, outcome).inc()


def dead_lettered(reason: str, source_topic: str, dead_letter_topic: str) -> None:
    DEAD_LETTERS.labels(reason, source_topic).inc()
    RECORDS_PRODUCED.labels(dead_letter_topic).inc()
    if reason in VERIFICATION_CODES:
        VERIFICATION_FAILURES.labels("kafka", reason).inc()


LAG_POSITION_WAIT_SECONDS = 1.0


async def observe_lag(consumer: Any, topic: str) -> None:
    """Consumer lag per assigned partition: the broker's high watermark minus our position."""
    try:
        assigned = consumer.assignment()
        seen: set[str] = set()
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            # A partition being reset (after a rewind) has no position until the broker
            # answers; the consumer loop must not wait for that here.
            position = await asyncio.wait_for(consumer.position(tp), LAG_POSITION_WAIT_SECONDS)
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
            seen.add(str(tp.partition))
        for labels in _label_sets(CONSUMER_LAG):  # partitions that moved to another member
            if labels[0] == topic and labels[1] not in seen:
                CONSUMER_LAG.remove(*labels)
    except Exception as exc:  # metrics must never break consumption
        log.debug("metrics.lag_failed", error=type(exc).__name__)


def _label_sets(metric: Gauge) -> list[tuple[str, ...]]:
    return [
        tuple(s.labels[name] for name in metric._labelnames)
        for family in metric.collect()
        for s in family.samples
    ]
