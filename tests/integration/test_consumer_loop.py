"""The consumer loop on the real broker: with `partitions_at_once` the partitions of a poll are
handled concurrently, each partition still in offset order, every record once, and the
offsets committed; without it one record at a time."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from attest_gateway.gateway.broker import EmbeddedBroker
from attest_gateway.gateway.bus import ConsumerLoop, ensure_topics, kafka_common, make_producer
from attest_gateway.gateway.config import load_settings

PARTITIONS = 4
PER_KEY = 15
KEYS = [f"conversation-{i}" for i in range(12)]


class Recorder:
    """A handler that yields to the event loop while it 'works' and notes what overlapped."""

    def __init__(self, expected: int) -> None:
        self.seen: dict[int, list[tuple[str, int]]] = defaultdict(list)  # partition → records
        self.busy = 0
        self.most_at_once = 0
        self.expected = expected
        self.all_seen = asyncio.Event()

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.busy += 1
        self.most_at_once = max(self.most_at_once, self.busy)
        try:
            await asyncio.sleep(0.002)
            key, _, seq = record.value.decode().rpartition("#")
            self.seen[record.partition].append((key, int(seq)))
            if sum(len(v) for v in self.seen.values()) >= self.expected:
                self.all_seen.set()
        finally:
            self.busy -= 1


@pytest.mark.parametrize("at_once", [True, False], ids=["partitions-at-once", "one-by-one"])
async def test_partitions_at_once_keeps_each_partition_in_order(
    broker: EmbeddedBroker, tmp_path: Path, at_once: bool
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        var_dir=tmp_path, kafka_topic_prefix=prefix, kafka_partitions=PARTITIONS
    )
    topic, dlq, group = f"{prefix}loop", f"{prefix}loop.dlq", f"{prefix}group"
    await ensure_topics(settings, broker.bootstrap, [topic, dlq])
    producer = make_producer(settings, broker.bootstrap)
    await producer.start()
    recorder = Recorder(len(KEYS) * PER_KEY)
    loop = ConsumerLoop(
        settings=settings, bootstrap=broker.bootstrap, topic=topic, group=group,
        handler=recorder, producer=producer, dead_letter_topic=dlq, partitions_at_once=at_once,
    )  # fmt: skip
    try:
        # Everything is on the broker before the loop joins: its polls span partitions.
        sends = [
            await producer.send(topic, value=f"{key}#{seq}".encode(), key=key.encode())
            for seq in range(PER_KEY)
            for key in KEYS
        ]
        metadata = await asyncio.gather(*sends)
        await loop.start()
        async with asyncio.timeout(60):
            await recorder.all_seen.wait()
        await loop.stop()
    finally:
        await producer.stop()

    handled = [item for records in recorder.seen.values() for item in records]
    assert sorted(handled) == sorted((k, s) for k in KEYS for s in range(PER_KEY))  # once each
    for records in recorder.seen.values():
        for key in {k for k, _ in records}:
            assert [s for k, s in records if k == key] == list(range(PER_KEY))  # in order
    if at_once:
        assert recorder.most_at_once > 1, "no two partitions were handled at the same time"
    else:
        assert recorder.most_at_once == 1

    # The offsets were committed: a new member of the group has nothing left to read.
    ends: dict[int, int] = defaultdict(int)
    for m in metadata:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    consumer = AIOKafkaConsumer(**kafka_common(settings, broker.bootstrap), group_id=group)
    await consumer.start()
    try:
        for partition, end in ends.items():
            assert await consumer.committed(TopicPartition(topic, partition)) == end
    finally:
        await consumer.stop()
