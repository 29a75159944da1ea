"""A Kafka outage in the log: one warning when it starts, one line when it ends, aiokafka's
per-attempt connection errors counted instead of written."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
)
from structlog.testing import capture_logs

from attest_gateway.core.errors import ErrorCode
from attest_gateway.infra.kafka.outage import (
    ECHO_SECONDS,
    KafkaOutage,
    QuietDuringOutage,
    unreachable,
)
from attest_gateway.infra.kafka.reading import KafkaReadTimeout


class Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(message: str, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_an_outage_is_one_warning_and_one_line_when_it_ends() -> None:
    ticks = Ticks()
    outage = KafkaOutage("broker:9092", monotonic=ticks)
    with capture_logs() as logs:
        outage.failed("relay", KafkaConnectionError("refused"), relay_batches=1, relay_records=5)
        for _ in range(1000):
            ticks.now += 0.01
            outage.failed("consumer:medcom.messages", NodeNotReadyError(), consumer_polls=1)
        outage.failed("relay", KafkaTimeoutError(), relay_batches=1, relay_records=5)
        ticks.now += 2.5
        outage.succeeded("sweeper")
        outage.succeeded("relay")  # not down any more: nothing
    assert [entry["event"] for entry in logs] == ["kafka.unreachable", "kafka.reachable_again"]
    started, ended = logs
    assert started == {
        "event": "kafka.unreachable",
        "log_level": "warning",
        "bootstrap": "broker:9092",
        "client": "relay",
        "error": "KafkaConnectionError",
    }
    assert ended["log_level"] == "info"
    assert ended["down_seconds"] == 12.5
    assert ended["client"] == "sweeper"
    assert ended["clients"] == ["consumer:medcom.messages", "relay"]
    assert ended["retried"] == {"relay_batches": 2, "relay_records": 10, "consumer_polls": 1000}
    assert not outage.down
    assert outage.outages == 1


def test_a_lasting_outage_is_recalled_once_a_minute_at_most() -> None:
    ticks = Ticks()
    outage = KafkaOutage("broker:9092", monotonic=ticks, remind_seconds=60)
    with capture_logs() as logs:
        for _ in range(150):  # a failure a second for 150 seconds
            outage.failed("sweeper", KafkaReadTimeout(ErrorCode.KAFKA_TIMEOUT, "no answer"))
            ticks.now += 1
    assert [entry["event"] for entry in logs] == [
        "kafka.unreachable",
        "kafka.still_unreachable",
        "kafka.still_unreachable",
    ]
    assert logs[0]["error"] == "kafka-timeout"
    assert logs[1]["down_seconds"] == 60
    assert logs[2]["retried"] == {}


def test_the_next_outage_is_told_again() -> None:
    outage = KafkaOutage("broker:9092", monotonic=Ticks())
    with capture_logs() as logs:
        outage.failed("relay", KafkaConnectionError())
        outage.succeeded("relay")
        outage.failed("relay", KafkaConnectionError())
    assert [entry["event"] for entry in logs] == [
        "kafka.unreachable",
        "kafka.reachable_again",
        "kafka.unreachable",
    ]
    assert outage.outages == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaConnectionError(), True),
        (NodeNotReadyError(), True),
        (KafkaTimeoutError(), True),
        (ConnectionRefusedError(), True),
        (MessageSizeTooLargeError(), False),  # Kafka refused a record: not an outage
        (ValueError(), False),
    ],
)
def test_what_counts_as_unreachable(error: BaseException, expected: bool) -> None:
    assert unreachable(error) is expected


def test_aiokafka_connection_errors_open_the_outage_and_are_not_written() -> None:
    quiet = QuietDuringOutage()
    ticks = Ticks()
    outage = KafkaOutage("broker:9092", monotonic=ticks)
    echo = record("Heartbeat session expired - marking coordinator dead")
    other = record("Unexpected error in coordinator routine", name="aiokafka.consumer")
    assert quiet.filter(record("Unable connect to node with id 1: Connection refused"))
    assert quiet.filter(echo)  # no outage watched: every line is written
    quiet.watch(outage)
    assert quiet.filter(echo)  # not an outage by itself
    assert not outage.down
    with capture_logs() as logs:
        for _ in range(500):
            assert not quiet.filter(record("Unable connect to node with id 1: Connection refused"))
            assert not quiet.filter(record("Unable to update metadata from [1]"))
        assert not quiet.filter(echo)  # during an outage, dropped
        assert quiet.filter(other)  # anything else is written
        assert quiet.filter(record("Unable connect to node 1", level=logging.DEBUG))
        outage.succeeded("relay")
        ticks.now += ECHO_SECONDS - 1
        assert not quiet.filter(echo)  # just after it, still an echo of it
    ticks.now += 1
    assert quiet.filter(echo)  # later, written again
    assert [entry["event"] for entry in logs] == ["kafka.unreachable", "kafka.reachable_again"]
    assert logs[0]["client"] == "aiokafka"
    assert "Unable connect" in logs[0]["error"]
    assert logs[1]["retried"] == {"connection_attempts": 1001}
