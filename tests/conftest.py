"""Shared fixtures: the session's Kafka broker and fresh databases.

The broker is the embedded one, started once per session, unless TEST_KAFKA_BOOTSTRAP_SERVERS
names an external broker (tests/support/kafka.py; README, "The two commands").
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kafka import TestKafka, session_kafka


@pytest.fixture(scope="session")
def broker() -> Iterator[TestKafka]:
    with session_kafka() as running:
        yield running
