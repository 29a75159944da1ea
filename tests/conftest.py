"""Shared fixtures: the session's Kafka broker and fresh databases.

The broker is the embedded one, started once per session, unless TEST_KAFKA_BOOTSTRAP_SERVERS
names an external broker (tests/support/kafka.py; README, "The two commands").
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import settings

from tests.support.kafka import TestKafka, session_kafka
from tests.support.softhsm import SoftHsm, session_softhsm

# Hypothesis's per-example deadline (200 ms) measures the machine, not the code: on a shared
# 2-core machine an example's first run can pass it while other processes run, and hypothesis
# then reports a flaky failure. pytest-timeout still bounds every test.
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")


def pytest_configure(config: pytest.Config) -> None:
    """`make test` runs two processes of tests (pytest-xdist), each with its gateways, and some
    tests start four gateway processes of their own: at the default of 20 connections a process
    they would exceed PostgreSQL's default `max_connections` (100) together. Ten a process is
    plenty for a test's load; the tests of the pool itself set their own sizes."""
    os.environ.setdefault("DB_POOL_SIZE", "10")


@pytest.fixture(scope="session")
def broker() -> Iterator[TestKafka]:
    with session_kafka() as running:
        yield running


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A SoftHSM2 token for this session (tests/support/softhsm.py)."""
    with session_softhsm(tmp_path_factory.mktemp("softhsm")) as token:
        if token is None:
            pytest.skip(
                "SoftHSM2 is not installed (apt-get install softhsm2; make install and .ci/run "
                "install it): the PKCS#11 key store is tested against it"
            )
        yield token


@pytest.fixture(autouse=True)
def _structlog_not_left_caching() -> Iterator[None]:
    """A command run in-process (`serve`, `prune`, …) configures logging with loggers cached on
    first use; left so, every logger first used by a later test keeps that configuration and
    `structlog.testing.capture_logs` there sees nothing. Put the defaults back after such a
    test."""
    yield
    if structlog.get_config().get("cache_logger_on_first_use"):
        structlog.reset_defaults()
