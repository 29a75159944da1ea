"""A serving gateway takes its startup objects out of the garbage collector's walks
(`bootstrap.freeze_startup_heap`, which `attest-gateway serve` asks for through
`create_app(freeze_heap=True)`), and goes on working."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from attest_gateway.bootstrap import freeze_startup_heap
from tests.integration.conftest import running_gateway
from tests.support.kafka import TestKafka


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """No frozen heap before or after the test (a test process starts many gateways)."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()


def test_freezing_moves_the_live_objects_out_of_the_collectors_generations(
    unfrozen: None,
) -> None:
    startup_object = {"kept": ["for the process's life"]}
    with capture_logs() as logs:
        frozen = freeze_startup_heap()
    assert frozen > 0
    assert gc.get_freeze_count() > 0  # fewer once a frozen object is freed
    assert not any(o is startup_object for o in gc.get_objects())  # no longer walked
    assert [e["event"] for e in logs] == ["gateway.heap_frozen"]
    assert logs[0]["objects"] == frozen
    gc.unfreeze()
    assert any(o is startup_object for o in gc.get_objects())


async def test_a_gateway_started_with_a_frozen_heap_serves(
    unfrozen: None, broker: TestKafka, tmp_path: Path
) -> None:
    assert gc.get_freeze_count() == 0
    async with running_gateway("sqlite", tmp_path, broker.bootstrap, freeze_heap=True) as h:
        assert gc.get_freeze_count() > 0
        gateway_objects = {id(h.gw), id(h.gw.engine), id(h.gw.keyring)}
        assert not gateway_objects & {id(o) for o in gc.get_objects()}
        answer = await h.client.get("/readyz")
        assert answer.status_code == 200, answer.text
