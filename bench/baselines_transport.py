"""The transport limit: raw aiokafka on the shared broker, records the size of a request envelope.

- `transport.produce`: one producer (acks="all", as the gateway's `make_producer`: linger
  2 ms) sends N records as fast as it can: every `send()` is queued (aiokafka batches them per
  partition), then the producer waits for all acknowledgements and flushes. The clock runs
  from the first `send()` to the end of the flush. Producer start-up (metadata) is outside.
- `transport.passthrough`: the same producer and, in its own consumer group, one consumer of
  the same fresh topic. The consumer joins before the clock starts (Tansu's group join takes
  several seconds, see notes); the clock runs from the first `send()` to the moment the
  consumer has received the N-th record. The consumer does not commit offsets.

Each run uses a fresh topic, created by producing one record to it (the broker auto-creates
topics with its default partition count); the records are keyed by a conversation id (a
seeded UUID), as the relay keys envelopes, so they spread over the partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.baselines_crypto import sealed_request_envelope
from bench.common import SEED, BenchContext, Figure, console, progress, repeat

JOIN_TIMEOUT_S = 60.0


def envelope_record() -> bytes:
    """A real sealed request envelope (the gateway's crypto), as the relay publishes it."""
    return sealed_request_envelope().to_json()


def make_raw_producer(bootstrap: str) -> AIOKafkaProducer:
    # Same reliability settings as the gateway's producer (infra/kafka/connection.py
    # `make_producer`).
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=2,
        request_timeout_ms=15_000,
        max_request_size=4 * 1024 * 1024,
    )


def keys(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode() for _ in range(n)]


async def create_topic(producer: AIOKafkaProducer, topic: str) -> int:
    """Create `topic` by producing one record to it; returns its partition count."""
    await producer.send_and_wait(topic, value=b"create", key=b"create")
    partitions = producer.client.cluster.partitions_for_topic(topic) or set()
    return len(partitions)


async def produce_all(
    producer: AIOKafkaProducer, topic: str, value: bytes, record_keys: list[bytes]
) -> None:
    futures = [await producer.send(topic, value=value, key=k) for k in record_keys]
    await asyncio.gather(*futures)
    await producer.flush()


async def joined_consumer(bootstrap: str, topic: str, group: str) -> tuple[AIOKafkaConsumer, float]:
    """A consumer in its own group, subscribed to `topic` and with partitions assigned.
    Returns it and how long the join took (seconds)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    t0 = time.perf_counter()
    await consumer.start()
    consumer.subscribe([topic])
    deadline = t0 + JOIN_TIMEOUT_S
    while not consumer.assignment():
        if time.perf_counter() > deadline:
            await consumer.stop()
            raise RuntimeError(f"consumer did not join group {group} in {JOIN_TIMEOUT_S} s")
        await consumer.getmany(timeout_ms=100)  # drives the join; the topic holds nothing new
    return consumer, time.perf_counter() - t0


async def run(ctx: BenchContext) -> list[Figure]:
    value = envelope_record()
    n = ctx.size(20_000, 1_000)
    record_keys = keys(n, SEED)
    run_id = uuid.uuid4().hex[:8]
    partitions: list[int] = []
    joins: list[float] = []

    async def once_produce(i: int) -> float:
        topic = f"bench.{run_id}.produce.{i}"
        producer = make_raw_producer(ctx.bootstrap)
        await producer.start()
        try:
            partitions.append(await create_topic(producer, topic))
            t0 = time.perf_counter()
            await produce_all(producer, topic, value, record_keys)
            elapsed = time.perf_counter() - t0
        finally:
            await producer.stop()
        return n / elapsed

    async def once_passthrough(i: int) -> float:
        topic = f"bench.{run_id}.passthrough.{i}"
        producer = make_raw_producer(ctx.bootstrap)
        await producer.start()
        consumer: AIOKafkaConsumer | None = None
        try:
            await create_topic(producer, topic)  # one record (offset 0) before the clock
            consumer, join_s = await joined_consumer(
                ctx.bootstrap, topic, f"bench.{run_id}.passthrough.{i}"
            )
            joins.append(join_s)
            # The creation record may or may not have been read while joining.
            expected = n + 1 - await _already_read(consumer)
            done = asyncio.Event()
            received = 0

            async def consume(c: AIOKafkaConsumer) -> None:
                nonlocal received
                while received < expected:
                    batch = await c.getmany(timeout_ms=200)
                    received += sum(len(records) for records in batch.values())
                done.set()

            with progress() as bar:
                task = bar.add_task("passthrough", total=expected)
                t0 = time.perf_counter()
                reader = asyncio.create_task(consume(consumer))
                await produce_all(producer, topic, value, record_keys)
                while not done.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.25)
                    bar.update(task, completed=received)
                elapsed = time.perf_counter() - t0
                await reader
        finally:
            if consumer is not None:
                await consumer.stop()
            await producer.stop()
        return n / elapsed

    produce = await repeat(ctx, "transport.produce", once_produce)
    passthrough = await repeat(ctx, "transport.passthrough", once_passthrough)
    console.print(f"  consumer-group joins (not timed): {', '.join(f'{j:.1f} s' for j in joins)}")
    common: dict[str, Any] = {
        "records": n,
        "record_bytes": len(value),
        "partitions": partitions[0] if partitions else None,
    }
    size_note = (
        f"{n:,} records of {len(value):,} B (a real sealed request envelope, "
        f"{partitions[0] if partitions else '?'} partitions, keyed by conversation id)"
    )
    return [
        Figure(
            name="transport.produce",
            label="Transport: produce (acks=all)",
            unit="records/s",
            runs=produce,
            notes=f"raw aiokafka producer; {size_note}; clock: first send to end of flush",
            extra=common,
        ),
        Figure(
            name="transport.passthrough",
            label="Transport: produce → consume",
            unit="records/s",
            runs=passthrough,
            notes=(
                f"raw aiokafka, one producer + one consumer (own group, no commits); "
                f"{size_note}; clock: first send to N-th record received; the consumer joins "
                f"before the clock (joins took {min(joins):.1f}–{max(joins):.1f} s)"
            ),
            extra=common | {"join_seconds": joins},
        ),
    ]


async def _already_read(consumer: AIOKafkaConsumer) -> int:
    """Records this consumer has consumed already (its positions summed)."""
    total = 0
    for tp in consumer.assignment():
        total += await consumer.position(tp)
    return total
