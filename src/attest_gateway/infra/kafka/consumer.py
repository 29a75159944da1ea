"""The consumer loop: a small pipeline from a topic to a handler.

For each record, call the handler (a `BatchHandler` gets a partition's polled records at once
first, in one store transaction); a handler that raises a retryable error is retried with
exponential backoff (tenacity) without committing; a record that still fails, or that can
never succeed (any other error), goes to the dead-letter topic with its reason in the headers,
and its offset is committed so the partition is not blocked (`verdict` is the one table that
decides). Offsets are committed only after the handler's store write.

While Kafka is unreachable a failed poll or commit goes to the gateway's `KafkaOutage` (one
warning for the outage, not one per attempt); a poll that returns records again ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, KafkaError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from attest_gateway.config import Settings
from attest_gateway.core.errors import ErrorCode, GatewayError
from attest_gateway.infra.kafka.connection import kafka_common
from attest_gateway.infra.kafka.outage import KafkaOutage, unreachable
from attest_gateway.infra.kafka.topics import Headers
from attest_gateway.observability import metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the consumer loop does with a record whose handler raised."""

    retry: bool  # handle it again, with backoff and without committing
    reason: str  # the dead-letter reason (`dlq-reason`) when it is not, or retries are spent
    detail: str  # the `dlq-detail` header


def verdict(error: BaseException) -> Verdict:
    """The Kafka boundary's one table from a handler's error to retry or dead letter:

        error raised by the handler            retried   dead-letter reason, detail
        GatewayError with `retryable`          yes       its code and detail, once the
          (Unavailable: database, Kafka)                 retries are spent
        any other GatewayError                 no        its code and detail
        anything else (a bug)                  no        handler-crashed, the class name

    The reason is the error's `ErrorCode`, so the dead letters and the HTTP answers name
    the same failure alike."""
    if isinstance(error, GatewayError):
        return Verdict(error.retryable, error.code, error.detail)
    return Verdict(False, ErrorCode.HANDLER_CRASHED, type(error).__name__)


def header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]


@runtime_checkable
class BatchHandler(Protocol):
    """A handler that can also take a partition's polled records at once (one store
    transaction). It returns the records it left to be handled one by one; if it raises,
    every record of the batch is handled one by one (and dead-lettered on its own merits)."""

    async def handle_batch(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> Sequence[ConsumerRecord[bytes, bytes]]: ...


def member_generation(consumer: AIOKafkaConsumer) -> int | None:
    """The group generation the consumer is a member of; None while it has none (not yet
    joined, or its membership was lost and it is rejoining).

    aiokafka keeps this on its group coordinator only, so this reads it there
    (tests/integration/test_broker_loss_commits.py pins it to the installed aiokafka).
    aiokafka sends a commit, and retries a failed one, with whatever generation the
    coordinator holds at that moment; "none" is -1, which a broker takes as a commit from
    outside the group. The Java client never commits without a
    generation; the consumer loop keeps to that rule through this function.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    if not isinstance(generation, int):
        raise TypeError("aiokafka's group coordinator keeps no generation")
    return generation if generation >= 0 else None


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: nobody waits for it any more


def retrieve_orphaned_commits(consumer: AIOKafkaConsumer) -> int:
    """aiokafka sends a commit in a task of its own behind `asyncio.shield`
    (`GroupCoordinator._do_commit_offsets`). A commit cancelled while it waits for the
    broker's answer leaves that task running, and Python 3.11's shield then drops the callback
    that would have retrieved its outcome: when it fails (the broker went away, or came back
    without the group), asyncio writes "Task exception was never retrieved" with a traceback.
    The commit was given up on purpose, so its outcome is retrieved here and dropped. Returns
    how many such tasks there were (tests/integration/test_broker_loss_commits.py pins this
    to the installed aiokafka)."""
    coordinator = getattr(consumer, "_coordinator", None)
    found = 0
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if (
            getattr(coro, "__qualname__", "") == "GroupCoordinator._do_commit_offsets"
            and frame is not None
            and frame.f_locals.get("self") is coordinator
        ):
            task.add_done_callback(_retrieve)
            found += 1
    return found


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another group member, commit what this one has finished."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._loop.rebalancing()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("consumer.assigned", topic=self._loop.topic, partitions=len(assigned))


class ConsumerLoop:
    """Consume one topic in one group, handle each record, dead-letter what cannot be handled.

    Offsets are committed only for records whose handler has finished (stored or
    dead-lettered), after each batch and before a rebalance takes partitions away. `stop()`
    lets the record in hand finish (up to `shutdown_grace_seconds`), commits, and leaves the
    group; work cut off after the grace period is not committed, so it is redone.

    `partitions_at_once`: the partitions of a poll are handled concurrently (each in its own
    order), for handlers whose records of different partitions never contend for the same
    rows in the store (delivery: one conversation per key). Otherwise one after the other.

    `batch_spans_partitions`: a batch handler gets all records of a poll at once (each
    partition's records in offset order, the partitions one after the other), for handlers
    that keep no order between partitions and take their locks in one order (the tracker).
    Otherwise it gets one partition's records at a time. `max_poll_records` bounds a poll.
    `batches`: False hands every record to the handler one by one, even one that takes
    batches. `linger_seconds`: a poll that brought records is followed by further polls for
    this long, and all they bring is handled together (for handlers whose cost is per batch
    and whose results nobody waits for: the tracker).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        bootstrap: str,
        topic: str,
        group: str,
        handler: Handler,
        producer: AIOKafkaProducer,
        dead_letter_topic: str,
        partitions_at_once: bool = False,
        batch_spans_partitions: bool = False,
        max_poll_records: int = 200,
        batches: bool = True,
        outage: KafkaOutage | None = None,
        linger_seconds: float = 0.0,
    ) -> None:
        self._settings = settings
        self._linger = linger_seconds
        self._max_poll_records = max_poll_records
        self._partitions_at_once = partitions_at_once
        self._batch_spans_partitions = batch_spans_partitions
        self.topic = topic
        self._handler = handler
        candidate: object = handler
        self._batch_handler = candidate if batches and isinstance(candidate, BatchHandler) else None
        self._producer = producer
        self._dlq = dead_letter_topic
        self._consumer = AIOKafkaConsumer(
            **kafka_common(settings, bootstrap),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        )
        self.outage = outage if outage is not None else KafkaOutage(bootstrap)
        self._client = f"consumer:{topic}"
        self._finished: dict[TopicPartition, int] = {}
        # Bumped at every rebalance: a record fetched before it may not be committed after it
        # (the partition may have moved, or the broker may have restarted with a fresh log).
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except BaseException:
            await self._consumer.stop()  # closed even when it never started
            raise
        self._consumer.subscribe([self.topic], listener=_CommitOnRevoke(self))
        self._task = asyncio.create_task(self._run(), name=f"consume:{self.topic}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._task), self._settings.shutdown_grace_seconds
                )
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        with contextlib.suppress(KafkaError):
            await self.commit_finished()
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's fetcher cancels a fetch that waits out its back-off after a failed
            # request (the broker is away) and lets that CancelledError out of stop(). Only
            # a cancellation of this task itself goes on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    async def commit_finished(self) -> None:
        finished, self._finished = self._finished, {}
        assigned = self._consumer.assignment()
        offsets = {tp: offset + 1 for tp, offset in finished.items() if tp in assigned}
        if offsets:
            await self._commit(offsets)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit as a member of the group's current generation, or not at all.

        After the broker lost its state, aiokafka's retries of a commit would go out with no
        generation, and the broker accepts those once the topic exists again: offsets of the
        old log, committed on the new one, where the next assignment would start from them and
        skip the records below. So a commit is made only while the consumer is a member, and
        given up as soon as its generation changes (or this loop rebalances or rewinds).
        A commit given up only means the records are handled again (handlers are idempotent).
        """
        generation = member_generation(self._consumer)
        if generation is None:
            raise CommitFailedError("not a member of the group: it is rejoining")
        ours = self._generation
        commit = asyncio.ensure_future(self._consumer.commit(offsets))
        try:
            while not commit.done():
                await asyncio.wait({commit}, timeout=0.02)
                if not commit.done() and (
                    member_generation(self._consumer) != generation or self._generation != ours
                ):
                    commit.cancel()
                    retrieve_orphaned_commits(self._consumer)
                    with contextlib.suppress(asyncio.CancelledError, KafkaError):
                        await commit
                    raise CommitFailedError("the group generation changed during the commit")
        except asyncio.CancelledError:
            commit.cancel()
            retrieve_orphaned_commits(self._consumer)
            raise
        commit.result()

    async def rewind(self) -> None:
        """The broker lost its state and starts its logs again from offset 0: read every
        assigned partition from the beginning (handling is idempotent) and forget what was
        finished on the old logs."""
        self._finished = {}
        self._generation += 1
        assigned = list(self._consumer.assignment())
        if assigned:
            await self._consumer.seek_to_beginning(*assigned)
        log.warning("consumer.rewound", topic=self.topic, partitions=len(assigned))

    async def rebalancing(self) -> None:
        """Partitions are about to be revoked: commit what is finished, forget the rest."""
        try:
            await self.commit_finished()
        except KafkaError as exc:  # the records will be handled again (idempotently)
            if self.outage.down or unreachable(exc):
                self.outage.failed(self._client, exc, consumer_commits=1)
            else:
                log.warning("consumer.commit_on_revoke_failed", error=type(exc).__name__)
        finally:
            self._finished = {}
            self._generation += 1

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                if unreachable(exc):
                    self.outage.failed(self._client, exc, consumer_polls=1)
                else:
                    log.warning("consumer.poll_failed", topic=self.topic, error=type(exc).__name__)
                await asyncio.sleep(1)
                continue
            if batch:
                self.outage.succeeded(self._client)
                if self._linger > 0:
                    batch = await self._gathered(batch)
            generation = self._generation
            together: set[tuple[int, int]] | None = None
            if self._batch_spans_partitions:
                together = await self._process_together(
                    [record for records in batch.values() for record in records]
                )
            partitions = [
                self._handle_partition(tp, records, generation, together)
                for tp, records in batch.items()
            ]
            if self._partitions_at_once:
                await asyncio.gather(*partitions)
            else:
                for partition in partitions:
                    await partition
            await metrics.observe_lag(self._consumer, self.topic)
            try:
                await self.commit_finished()
            except KafkaError as exc:  # e.g. a rebalance: the records will be seen again
                if self.outage.down or unreachable(exc):
                    self.outage.failed(self._client, exc, consumer_commits=1)
                else:
                    log.warning(
                        "consumer.commit_failed", topic=self.topic, error=type(exc).__name__
                    )

    async def _gathered(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """`batch` and what further polls bring within `linger_seconds` (at most
        `max_poll_records` in all), each partition's records in offset order. (The consumer
        fetches a partition again only once its last fetch was taken, so the records are
        gathered by polling, not by waiting.)"""
        deadline = time.monotonic() + self._linger
        count = sum(len(records) for records in batch.values())
        while count < self._max_poll_records and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = await self._consumer.getmany(
                timeout_ms=max(1, round(left * 1000)), max_records=self._max_poll_records - count
            )
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                count += len(records)
        return batch

    async def _handle_partition(
        self,
        tp: TopicPartition,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        generation: int,
        together: set[tuple[int, int]] | None = None,
    ) -> None:
        """One partition's polled records, in offset order. `together`: the (partition,
        offset) pairs a batch handler has already handled; None: offer them to it first."""
        if together is None:
            together = await self._process_together(records)
        for record in records:
            if (record.partition, record.offset) in together:
                if self._generation == generation:
                    self._finished[tp] = record.offset
                continue
            if self._stopping.is_set():
                # Not handled: seek back so nothing is skipped if we keep the partition.
                self._consumer.seek(tp, record.offset)
                break
            try:
                await self._process(record)
            except Exception:  # e.g. the dead-letter topic is unreachable: redo it
                log.exception("consumer.record_failed", topic=self.topic)
                self._consumer.seek(tp, record.offset)
                await asyncio.sleep(1)
                break
            if self._generation == generation:
                self._finished[tp] = record.offset

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(lambda e: verdict(e).retry),
            stop=stop_after_attempt(self._settings.consumer_max_retries),
            wait=wait_exponential(multiplier=self._settings.consumer_retry_base_seconds, max=5),
            reraise=True,
        )

    async def _process_together(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> set[tuple[int, int]]:
        """Hand records to a batch handler; the (partition, offset) pairs it handled."""
        if self._batch_handler is None or len(records) < 2 or self._stopping.is_set():
            return set()
        started = time.perf_counter()
        try:
            async for attempt in self._retrying():
                with attempt:
                    left = await self._batch_handler.handle_batch(records)
        except Exception as exc:  # each record is then handled (or dead-lettered) on its own
            # The exception itself, not str(exc): the log chain writes a database error
            # without the database's message (observability/logging.py).
            log.warning("consumer.batch_failed", topic=self.topic, records=len(records), error=exc)
            return set()
        handled = {(r.partition, r.offset) for r in records} - {
            (r.partition, r.offset) for r in left
        }
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = {}
        for record in records:
            if (record.partition, record.offset) in handled:
                metrics.consumed(record.topic, "handled")
                by_partition.setdefault(record.partition, []).append(record)
        for partition, done in by_partition.items():
            # One line per partition of the batch, not per record: at thousands of records a
            # second the lines dominate (docs/decisions/0006-one-log-line-per-batch.md).
            ids = (header(r.headers or (), "conversation-id") for r in done)
            log.info(
                "consumer.batch",
                outcome="handled",
                topic=self.topic,
                partition=partition,
                first_offset=done[0].offset,
                last_offset=done[-1].offset,
                records=len(done),
                batch=len(records),
                duration_ms=duration_ms,
                correlation_ids=sorted({i for i in ids if i is not None}),
            )
        return handled

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        structlog.contextvars.bind_contextvars(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            correlation_id=header(record.headers or (), "conversation-id"),
        )
        started = time.perf_counter()
        outcome = "handled"
        try:
            async for attempt in self._retrying():
                with attempt:
                    await self._handler(record)
        except Exception as exc:  # not retried, or retries spent: kept in the dead letters
            outcome = "dead-lettered"
            judged = verdict(exc)
            if not isinstance(exc, GatewayError):  # a bug must not block the partition
                log.exception("consumer.handler_crashed", topic=self.topic)
            await self._dead_letter(record, judged.reason, judged.detail)
        finally:
            metrics.consumed(record.topic, outcome)
            log.info(
                "consumer.record",
                outcome=outcome,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars(
                "topic", "partition", "offset", "correlation_id"
            )

    async def _dead_letter(
        self, record: ConsumerRecord[bytes, bytes], code: str, detail: str
    ) -> None:
        headers: Headers = [
            *[(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq-")],
            ("dlq-reason", code.encode()),
            ("dlq-detail", detail.encode()),
            ("dlq-source-topic", record.topic.encode()),
            ("dlq-source-partition", str(record.partition).encode()),
            ("dlq-source-offset", str(record.offset).encode()),
        ]
        await self._producer.send_and_wait(
            self._dlq, value=record.value, key=record.key, headers=headers
        )
        metrics.dead_lettered(code, record.topic, self._dlq)
        log.warning("consumer.dead_lettered", reason=code, source_topic=record.topic)
