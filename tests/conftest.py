"""Shared fixtures: the embedded broker (one per test session) and fresh databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from attest_gateway.gateway.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running
