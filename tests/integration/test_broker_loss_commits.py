"""A consumer never commits offsets of a broker's old log onto its new one.

The embedded broker keeps everything in memory. When it restarts, a consumer may still hold
offsets it finished on the old log. aiokafka retries a commit that failed with a retriable
error (the topic is unknown until the gateway recreates it) with the group generation of the
moment. After the broker forgot the group that is "no generation", which the broker accepts as
a commit from outside the group once the topic exists again. A later assignment then starts
from an old-log offset and skips the new log's records below it (seen as poisoned records that
were never dead-lettered in the fault test). The test restarts a broker of its own while
finished offsets wait to be committed, recreates the topic as the sweeper does, and checks that
the new log's first record is handled and that the group's offset is one of the new log.

That test keeps an embedded broker of its own even when the suite runs on an external broker
(TEST_KAFKA_BOOTSTRAP_SERVERS): what it checks is the embedded broker's loss of every log on
a restart, which Apache Kafka does not do, and it must restart its broker without disturbing
the rest of the run. So does the test of a commit given up while the broker does not answer
(it freezes and kills its broker), which also stops the consumer loop with the broker gone.
The test of `member_generation` uses the session's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord

from attest_gateway.config import load_settings
from attest_gateway.infra.kafka.connection import kafka_common, make_producer
from attest_gateway.infra.kafka.consumer import ConsumerLoop, member_generation
from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from attest_gateway.infra.kafka.topics import ensure_topics
from tests.support.harness import committed_offsets
from tests.support.kafka import TestKafka, settings_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RECORDS = 20


class Gate:
    """A handler that stops at one offset of the old log until it is let through, and notes
    every record it handles."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at
        self.reached = asyncio.Event()
        self.through = asyncio.Event()
        self.seen: list[bytes] = []
        self.new_log = asyncio.Event()

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.offset == self.stop_at and not self.through.is_set():
            self.reached.set()
            await self.through.wait()
        self.seen.append(record.value or b"")
        if record.value == b"new":
            self.new_log.set()


class WatchedLoop(ConsumerLoop):
    """The consumer loop, telling when it gives its partitions up for a rebalance."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.revoked = asyncio.Event()

    async def rebalancing(self) -> None:
        self.revoked.set()
        await super().rebalancing()


async def test_old_offsets_are_not_committed_on_the_new_log(tmp_path: Path) -> None:
    """The records before the gate are finished, not yet committed, when the broker restarts:
    the commit made as the consumer gives its partitions up to rejoin must not carry them."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = load_settings(var_dir=tmp_path, kafka_topic_prefix=prefix, kafka_partitions=1)
    topic, dlq, group = f"{prefix}loop", f"{prefix}loop.dlq", f"{prefix}group"
    tp = TopicPartition(topic, 0)
    stop_at = RECORDS // 2
    gate = Gate(stop_at)
    with EmbeddedBroker() as broker:
        await ensure_topics(settings, broker.bootstrap, [topic, dlq])
        producer = make_producer(settings, broker.bootstrap)
        await producer.start()
        for i in range(RECORDS):
            await producer.send_and_wait(topic, value=str(i).encode(), partition=0)
        await producer.stop()
        loop = WatchedLoop(
            settings=settings, bootstrap=broker.bootstrap, topic=topic, group=group,
            handler=gate, producer=producer, dead_letter_topic=dlq,
        )  # fmt: skip
        await loop.start()
        try:
            async with asyncio.timeout(60):
                await gate.reached.wait()
            assert gate.seen == [str(i).encode() for i in range(stop_at)]  # not yet committed
            loop.revoked.clear()

            broker.stop()  # the broker loses every topic, group and offset
            broker.start()
            # The consumer finds the broker again and learns that its group is gone (a
            # heartbeat or a commit is refused): it gives its partitions up and rejoins.
            async with asyncio.timeout(60):
                await loop.revoked.wait()
            await asyncio.sleep(2)  # commits being retried meanwhile wait for the topic
            await ensure_topics(settings, broker.bootstrap, [topic, dlq])  # as the sweeper does
            producer = make_producer(settings, broker.bootstrap)
            await producer.start()
            try:
                await producer.send_and_wait(topic, value=b"new", partition=0)  # offset 0
            finally:
                await producer.stop()
            gate.through.set()

            # The record at offset 0 of the new log is handled (not skipped for an offset of
            # the old log), and what the group commits is the new log's offset after it.
            async with asyncio.timeout(60):
                await gate.new_log.wait()
            async with asyncio.timeout(30):
                while True:
                    committed = (await committed_offsets(broker.bootstrap, group, [tp]))[tp]
                    if committed == 1:
                        break
                    assert committed in (None, 0), f"offset {committed} of the old log"
                    await asyncio.sleep(0.2)
        finally:
            gate.through.set()
            await loop.stop()


async def test_member_generation_reads_the_installed_aiokafka(
    broker: TestKafka, tmp_path: Path
) -> None:
    """`member_generation` reads aiokafka's coordinator: a generation once the consumer has
    joined, None once its membership is reset (as after a heartbeat the broker refused)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        var_dir=tmp_path,
        kafka_topic_prefix=prefix,
        kafka_partitions=1,
        **settings_for(broker.bootstrap),
    )
    topic = f"{prefix}member"
    await ensure_topics(settings, broker.bootstrap, [topic])
    consumer = AIOKafkaConsumer(**kafka_common(settings, broker.bootstrap), group_id=topic)
    await consumer.start()
    try:
        assert member_generation(consumer) is None  # not joined yet
        consumer.subscribe([topic])
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
        generation = member_generation(consumer)
        assert generation is not None
        assert generation >= 0
        consumer._coordinator.reset_generation()  # what aiokafka does when the group is gone
        assert member_generation(consumer) is None
    finally:
        await consumer.stop()


async def test_a_commit_given_up_leaves_no_exception_unretrieved(tmp_path: Path) -> None:
    """aiokafka sends a commit in a task behind `asyncio.shield`. The consumer loop gives a
    commit up when the group generation changes (here: as a rewind does) while the broker
    has not answered; when the broker then goes away, that task fails. Its exception must be
    retrieved, not reported by asyncio as "Task exception was never retrieved" (seen after a
    broker restart). The broker is frozen (SIGSTOP) so that the commit waits for its answer."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = load_settings(var_dir=tmp_path, kafka_topic_prefix=prefix, kafka_partitions=1)
    topic, dlq, group = f"{prefix}loop", f"{prefix}loop.dlq", f"{prefix}group"
    tp = TopicPartition(topic, 0)
    gate = Gate(stop_at=1)
    reported: list[dict[str, Any]] = []
    event_loop = asyncio.get_running_loop()
    previous = event_loop.get_exception_handler()
    event_loop.set_exception_handler(lambda _loop, context: reported.append(context))
    broker = EmbeddedBroker().start()
    loop: ConsumerLoop | None = None
    try:
        await ensure_topics(settings, broker.bootstrap, [topic, dlq])
        producer = make_producer(settings, broker.bootstrap)
        await producer.start()
        for i in range(3):
            await producer.send_and_wait(topic, value=str(i).encode(), partition=0)
        await producer.stop()
        loop = ConsumerLoop(
            settings=settings, bootstrap=broker.bootstrap, topic=topic, group=group,
            handler=gate, producer=producer, dead_letter_topic=dlq,
        )  # fmt: skip
        await loop.start()
        async with asyncio.timeout(60):
            await gate.reached.wait()  # the loop waits in the handler: it commits nothing now
        assert broker.pid is not None
        sent: list[asyncio.Task[Any]] = []
        for _ in range(3):
            os.kill(broker.pid, signal.SIGSTOP)  # the broker takes requests, never answers
            commit = asyncio.create_task(loop._commit({tp: 1}))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    while not (sent := _commit_requests()):  # noqa: ASYNC110 (aiokafka's task)
                        await asyncio.sleep(0.05)
            if sent:
                break
            # Not sent: the consumer was still looking for its coordinator (a heartbeat
            # failed on a loaded machine) when the broker froze. Thaw it, let the commit
            # finish, and freeze it again.
            os.kill(broker.pid, signal.SIGCONT)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(60):
                    await commit
        assert sent, "the commit request never went out to the frozen broker"
        loop._generation += 1  # as a rewind or a rebalance does: the commit is given up
        with pytest.raises(CommitFailedError):
            await commit
        os.kill(broker.pid, signal.SIGKILL)  # the connection breaks: the sent commit fails
        # Waiting does not retrieve their outcome (asking for it would).
        _done, pending = await asyncio.wait(sent, timeout=60)
        assert not pending
        del sent, commit, _done
        gc.collect()
        await asyncio.sleep(0)
        unretrieved = [c for c in reported if "never retrieved" in str(c.get("message"))]
        assert unretrieved == []
    finally:
        event_loop.set_exception_handler(previous)
        gate.through.set()
        broker.stop()
        if loop is not None:
            await loop.stop()


def _commit_requests() -> list[asyncio.Task[Any]]:
    """aiokafka's tasks that send a commit and wait for the answer."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "GroupCoordinator._do_commit_offsets"
    ]
