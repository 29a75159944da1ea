"""The consumer-lag gauge never holds up the consumer loop: a partition whose position the
broker has not yet answered (a rewind in progress, the broker away) is skipped in time."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from attest_gateway.observability import metrics


class _Resetting:
    """A consumer whose partition is waiting for an offset reset the broker never answers."""

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", 0)}

    def highwater(self, tp: TopicPartition) -> int:
        return 10

    async def position(self, tp: TopicPartition) -> int:
        await asyncio.Event().wait()
        return 0


@pytest.mark.timeout(20)
async def test_lag_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "LAG_POSITION_WAIT_SECONDS", 0.2)
    started = time.monotonic()
    await metrics.observe_lag(_Resetting(), "t")
    assert time.monotonic() - started < 5
