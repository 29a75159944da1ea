"""The consumer loop on the real broker: with `partitions_at_once` the partitions of a poll are
handled concurrently, each partition still in offset order, every record once, and the
offsets committed; without it one record at a time."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, RecordMetadata

from attest_gateway.config import Settings, load_settings
from attest_gateway.infra.kafka.connection import make_producer
from attest_gateway.infra.kafka.consumer import ConsumerLoop
from attest_gateway.infra.kafka.topics import ensure_topics
from tests.support.harness import committed_offsets, wait_for
from tests.support.kafka import TestKafka, settings_for

PARTITIONS = 4
PER_KEY = 15
KEYS = [f"conversation-{i}" for i in range(12)]


async def _topics(broker: TestKafka, tmp_path: Path) -> tuple[Settings, str, str, str]:
    """Settings with a fresh topic prefix; the loop's topic and dead-letter topic, created,
    and its group."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        var_dir=tmp_path,
        kafka_topic_prefix=prefix,
        kafka_partitions=PARTITIONS,
        **settings_for(broker.bootstrap),
    )
    topic, dlq, group = f"{prefix}loop", f"{prefix}loop.dlq", f"{prefix}group"
    await ensure_topics(settings, broker.bootstrap, [topic, dlq])
    return settings, topic, dlq, group


def _ends(metadata: Sequence[RecordMetadata]) -> dict[int, int]:
    """Per partition, the offset after the last record produced."""
    ends: dict[int, int] = defaultdict(int)
    for m in metadata:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    return ends


async def _committed(
    broker: TestKafka, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int | None]:
    """What the group has committed on these partitions of the topic."""
    tps = [TopicPartition(topic, p) for p in partitions]
    committed = await committed_offsets(broker.bootstrap, group, tps)
    return {tp.partition: offset for tp, offset in committed.items()}


class _Counting(Protocol):
    all_seen: asyncio.Event

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None: ...


async def _consume_all(
    broker: TestKafka,
    tmp_path: Path,
    handler: _Counting,
    *,
    marked: Iterable[str] = (),
    **options: Any,
) -> tuple[list[RecordMetadata], str, str]:
    """Put every key's PER_KEY records (`key#seq`, keyed by `key`; those in `marked` get the
    suffix `#left`) on a fresh topic before a ConsumerLoop (with `options`) joins, so that its
    polls span partitions; run it until the handler has seen them all, and stop it. Returns
    where the records landed, the group and the topic."""
    settings, topic, dlq, group = await _topics(broker, tmp_path)
    producer = make_producer(settings, broker.bootstrap)
    await producer.start()
    loop = ConsumerLoop(
        settings=settings, bootstrap=broker.bootstrap, topic=topic, group=group,
        handler=handler, producer=producer, dead_letter_topic=dlq, **options,
    )  # fmt: skip
    marked = set(marked)

    def value(key: str, seq: int) -> bytes:
        v = f"{key}#{seq}"
        return (f"{v}#left" if v in marked else v).encode()

    try:
        sends = [
            await producer.send(topic, value=value(key, seq), key=key.encode())
            for seq in range(PER_KEY)
            for key in KEYS
        ]
        metadata = await asyncio.gather(*sends)
        await loop.start()
        async with asyncio.timeout(60):
            await handler.all_seen.wait()
        await loop.stop()
    finally:
        await producer.stop()
    return metadata, group, topic


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
    broker: TestKafka, tmp_path: Path, at_once: bool
) -> None:
    recorder = Recorder(len(KEYS) * PER_KEY)
    # Everything is on the broker before the loop joins: its polls span partitions.
    metadata, group, topic = await _consume_all(
        broker, tmp_path, recorder, partitions_at_once=at_once
    )

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
    ends = _ends(metadata)
    assert await _committed(broker, group, topic, ends) == ends


class PollRecorder:
    """A batch handler that notes each batch it is given and leaves the records marked
    `#left` to the one-by-one path (as the tracker leaves unreadable events)."""

    def __init__(self, expected: int) -> None:
        self.batches: list[list[tuple[int, int]]] = []  # (partition, offset) per batch
        self.one_by_one: list[bytes] = []
        self.seen: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.expected = expected
        self.all_seen = asyncio.Event()

    def _note(self, record: ConsumerRecord[bytes, bytes]) -> None:
        key, _, seq = record.value.decode().removesuffix("#left").rpartition("#")
        self.seen[record.partition].append((key, int(seq)))
        if sum(len(v) for v in self.seen.values()) >= self.expected:
            self.all_seen.set()

    async def handle_batch(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        self.batches.append([(r.partition, r.offset) for r in records])
        left = [r for r in records if r.value.endswith(b"#left")]
        for record in records:
            if record not in left:
                self._note(record)
        return left

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.one_by_one.append(record.value)
        self._note(record)


async def test_a_batch_may_span_the_partitions_of_a_poll(broker: TestKafka, tmp_path: Path) -> None:
    """With `batch_spans_partitions` the batch handler gets a whole poll at once: records of
    several partitions in one batch, each partition's in offset order; what it leaves is
    handled one by one; every record once, and the offsets committed."""
    recorder = PollRecorder(len(KEYS) * PER_KEY)
    left = {f"{KEYS[0]}#3#left", f"{KEYS[5]}#9#left"}
    metadata, group, topic = await _consume_all(
        broker, tmp_path, recorder, marked={v.removesuffix("#left") for v in left},
        batch_spans_partitions=True, max_poll_records=1000,
    )  # fmt: skip

    handled = [item for records in recorder.seen.values() for item in records]
    assert sorted(handled) == sorted((k, s) for k in KEYS for s in range(PER_KEY))  # once each
    # In order, but for the records left to the one-by-one path: they come after the batch.
    left_items = {(k, int(s)) for k, s, _ in (v.split("#") for v in left)}
    for records in recorder.seen.values():
        for key in {k for k, _ in records}:
            expected = [s for s in range(PER_KEY) if (key, s) not in left_items]
            assert [s for k, s in records if k == key and (k, s) not in left_items] == expected
    assert sorted(recorder.one_by_one) == sorted(v.encode() for v in left)
    assert any(len({p for p, _ in batch}) > 1 for batch in recorder.batches), recorder.batches
    for batch in recorder.batches:
        for partition in {p for p, _ in batch}:
            offsets = [o for p, o in batch if p == partition]
            assert offsets == sorted(offsets)

    ends = _ends(metadata)
    assert await _committed(broker, group, topic, ends) == ends


async def test_without_batches_a_batch_handler_gets_every_record_one_by_one(
    broker: TestKafka, tmp_path: Path
) -> None:
    """`batches=False` (e.g. DELIVERY_POLL_IN_ONE_TRANSACTION=false): a handler that could
    take batches gets each record on its own, in order, and the offsets are committed."""
    recorder = PollRecorder(len(KEYS) * PER_KEY)
    metadata, group, topic = await _consume_all(
        broker, tmp_path, recorder, batch_spans_partitions=True, batches=False
    )

    assert recorder.batches == []
    assert len(recorder.one_by_one) == len(KEYS) * PER_KEY
    for records in recorder.seen.values():
        for key in {k for k, _ in records}:
            assert [s for k, s in records if k == key] == list(range(PER_KEY))
    ends = _ends(metadata)
    assert await _committed(broker, group, topic, ends) == ends


@pytest.mark.parametrize("linger", [0.0, 2.0])
async def test_a_lingering_loop_handles_what_arrives_meanwhile_together(
    broker: TestKafka, tmp_path: Path, linger: float
) -> None:
    """`linger_seconds`: after a poll that brought records the loop waits before the next, so
    records sent one by one in the meantime reach the batch handler in one batch; without it
    each comes on its own."""
    settings, topic, dlq, group = await _topics(broker, tmp_path)
    producer = make_producer(settings, broker.bootstrap)
    await producer.start()
    recorder = PollRecorder(expected=4)
    loop = ConsumerLoop(
        settings=settings, bootstrap=broker.bootstrap, topic=topic, group=group,
        handler=recorder, producer=producer, dead_letter_topic=dlq,
        batch_spans_partitions=True, linger_seconds=linger,
    )  # fmt: skip
    try:
        await (await producer.send(topic, value=b"k#0", key=b"k"))
        await loop.start()

        async def first() -> bool | None:  # the first poll (one record) is handled
            return True if recorder.one_by_one else None

        await wait_for(first, interval=0.01)
        for seq in range(1, 4):
            await (await producer.send(topic, value=f"k#{seq}".encode(), key=b"k"))
            await asyncio.sleep(0.3)  # longer than a fetch takes to bring it
        async with asyncio.timeout(60):
            await recorder.all_seen.wait()
    finally:
        await loop.stop()
        await producer.stop()
    # (a poll of one record goes to the handler's one-by-one path)
    sizes = [len(batch) for batch in recorder.batches]
    assert (len(recorder.one_by_one), sizes) == ((1, [3]) if linger else (4, [])), sizes
