"""Bounded reads of a topic from the side (not as a consumer group): its partitions, all its
records up to the end, the canary's epoch record. Every wait has a deadline
(`KAFKA_READ_TIMEOUT_SECONDS`): a broker that does not answer is `KafkaReadTimeout`, never a
hang.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Literal, TypeVar

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient

from attest_gateway.config import Settings
from attest_gateway.core.errors import ErrorCode, Unavailable
from attest_gateway.infra.kafka.connection import kafka_common

log = structlog.get_logger(__name__)


class KafkaReadTimeout(Unavailable):
    """A read of a topic got no answer within `kafka_read_timeout_seconds` (the broker is
    slow or unreachable, or a record it announced never came): the caller tries again later."""


class TopicMissing(Unavailable):
    """A topic the gateway reads does not exist on the broker: trying again does not help
    until someone creates it (the sweeper does, for the gateway's own topics)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(code, detail, retryable=False)


T = TypeVar("T")


async def bounded(work: Awaitable[T], *, until: float, what: str) -> T:
    """Await a Kafka call, but not past `until` (the event loop's clock): aiokafka waits
    without bound for a record that never comes, or for metadata a broker never sends."""
    try:
        async with asyncio.timeout_at(until):
            return await work
    except TimeoutError:
        raise KafkaReadTimeout(
            ErrorCode.KAFKA_TIMEOUT, f"{what}: no answer from Kafka in time"
        ) from None


def read_deadline(settings: Settings) -> float:
    """When a read that starts now must have ended (`kafka_read_timeout_seconds`)."""
    return asyncio.get_running_loop().time() + settings.kafka_read_timeout_seconds


def reader(settings: Settings, bootstrap: str) -> AIOKafkaConsumer:
    """A consumer outside any group that reads assigned partitions. A position the log no
    longer holds (retention removed it) resets to the oldest record, not to the end."""
    return AIOKafkaConsumer(
        **kafka_common(settings, bootstrap),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=max(1000, int(settings.kafka_read_timeout_seconds * 1000)),
    )


@contextlib.asynccontextmanager
async def started_reader(
    settings: Settings, bootstrap: str, *, until: float, what: str
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started `reader`, stopped on the way out (also when its start fails or runs out of
    time)."""
    consumer = reader(settings, bootstrap)
    try:
        await bounded(consumer.start(), until=until, what=what)
        yield consumer
    finally:
        # aiokafka starts a task at start(); cancelled before it first ran, stop() raises
        # CancelledError out of that task. One turn of the loop lets it start.
        await asyncio.sleep(0)
        await consumer.stop()


async def topic_partitions(
    settings: Settings, bootstrap: str, topic: str, *, until: float
) -> list[TopicPartition]:
    """The topic's partitions, asked of the broker. A consumer knows only the topics it was
    sent metadata for, and Apache Kafka sends none at connect (`partitions_for_topic` is then
    None); the admin client asks for every topic's metadata (a request naming the topic could
    create it where the broker auto-creates topics). Raises TopicMissing if there is none."""
    admin = AIOKafkaAdminClient(
        **kafka_common(settings, bootstrap),
        request_timeout_ms=max(1000, int(settings.kafka_read_timeout_seconds * 1000)),
    )
    try:  # closed even when its start fails
        await bounded(admin.start(), until=until, what=f"connecting to read {topic}")
        described = await bounded(admin.describe_topics(), until=until, what=f"metadata of {topic}")
    finally:
        await admin.close()
    for entry in described:
        if entry["topic"] == topic and entry["error_code"] == 0 and entry["partitions"]:
            return [TopicPartition(topic, p["partition"]) for p in entry["partitions"]]
    raise TopicMissing(ErrorCode.TOPIC_MISSING, f"topic {topic} does not exist on the broker")


async def read_to_end(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], *, until: float, what: str
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now on the partitions (from the oldest one kept to at least the end
    offsets), partition by partition in offset order. A partition is done when the
    consumer's position reaches its end offset, so gaps in the offsets end the read too, and
    a position retention removed meanwhile resets to the oldest record kept (`reader`).
    Raises KafkaReadTimeout at `until`."""
    consumer.assign(list(tps))
    await bounded(consumer.seek_to_beginning(*tps), until=until, what=what)
    records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {tp: [] for tp in tps}
    end: dict[TopicPartition, int] = {}
    while True:
        # The end offsets may trail what was just written (the embedded broker's do): read
        # until they stop moving.
        now_end = await bounded(consumer.end_offsets(list(tps)), until=until, what=what)
        if now_end == end:
            return [r for tp in tps for r in records[tp]]
        end = now_end
        remaining = set(tps)
        while remaining:
            for tp in list(remaining):
                if await bounded(consumer.position(tp), until=until, what=what) >= end[tp]:
                    remaining.discard(tp)
            if not remaining:
                break
            await_ms = _poll_ms(until, what)
            batch = await consumer.getmany(*remaining, timeout_ms=await_ms)
            for tp, got in batch.items():
                records[tp].extend(got)  # also any past the end offsets: they are on the log


def _poll_ms(until: float, what: str) -> int:
    """How long one poll may wait: at most a second, and never past `until`."""
    left = until - asyncio.get_running_loop().time()
    if left <= 0:
        raise KafkaReadTimeout(ErrorCode.KAFKA_TIMEOUT, f"{what}: no answer from Kafka in time")
    return max(1, int(min(left, 1.0) * 1000))


EpochAt = int | Literal["empty", "expired"]


def epoch_offset(begin: int, end: int) -> EpochAt:
    """Where the canary's epoch record is, from its partition's offsets: "empty" if nothing
    was ever written (end 0), "expired" if records were written but retention removed them
    all (begin == end > 0: a broker that lost its state starts again from offset 0), else the
    offset of the last record."""
    if end == 0:
        return "empty"
    if begin >= end:
        return "expired"
    return end - 1


# read_epoch's answer for a canary whose epoch record retention removed (an epoch is 32 hex
# digits, so it never reads like this).
EPOCH_EXPIRED = "expired"


async def read_epoch(settings: Settings, bootstrap: str, canary: str) -> str | None:
    """The broker's epoch: the last record on the canary topic; "" if the canary exists but
    holds no epoch yet; EPOCH_EXPIRED if retention removed it; None if there is no canary
    (the broker is new or lost its state). Nothing but the sweeper touches the canary.
    Raises KafkaReadTimeout after `kafka_read_timeout_seconds`."""
    until = read_deadline(settings)
    try:
        tps = await topic_partitions(settings, bootstrap, canary, until=until)
    except TopicMissing:
        return None
    tp = TopicPartition(canary, 0)
    if tp not in tps:
        return None
    what = f"reading the epoch on {canary}"
    async with started_reader(settings, bootstrap, until=until, what=what) as consumer:
        consumer.assign([tp])
        begin = (await bounded(consumer.beginning_offsets([tp]), until=until, what=what))[tp]
        end = (await bounded(consumer.end_offsets([tp]), until=until, what=what))[tp]
        at = epoch_offset(begin, end)
        if at == "empty":
            return ""
        if at == "expired":
            return EPOCH_EXPIRED
        consumer.seek(tp, at)
        while True:
            batch = await consumer.getmany(tp, timeout_ms=_poll_ms(until, what))
            for record in batch.get(tp, ()):
                if record.offset >= at:
                    return record.value.decode("ascii") if record.value else ""
