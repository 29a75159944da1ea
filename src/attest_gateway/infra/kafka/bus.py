"""Kafka through aiokafka: topic names, topic creation, the producer, and the consumer loop.

The consumer loop is a small pipeline: for each record, call the handler (a `BatchHandler`
gets a partition's polled records at once first, in one store transaction); a handler that
raises a retryable error is retried with exponential backoff (tenacity) without committing;
a record that still fails, or that can never succeed (`PermanentError`), goes to the
dead-letter topic with its reason in the headers, and its offset is committed so the
partition is not blocked. Offsets are committed only after the handler's store write.

The embedded broker supports neither idempotent producers nor transactions; the exactly-once
effect comes from the store (unique message ids). With Apache Kafka,
`kafka_idempotent_producer` turns idempotence on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from attest_gateway.config import Settings
from attest_gateway.core.errors import GatewayError
from attest_gateway.core.errors import PermanentError as PermanentError
from attest_gateway.core.errors import TransientError as TransientError
from attest_gateway.observability import metrics

log = structlog.get_logger(__name__)

MEDCOM_MESSAGES = "medcom.messages"
TRACKING = "gateway.tracking"
DEAD_LETTER = "gateway.dead-letter"
AUDIT = "gateway.audit"
# Never produced to or consumed: if it is gone, the broker lost its state (the embedded one
# keeps everything in memory), even if clients have since auto-created the other topics.
CANARY = "gateway.canary"
ALL_TOPICS = (MEDCOM_MESSAGES, TRACKING, DEAD_LETTER, AUDIT)

Headers = list[tuple[str, bytes]]


class KafkaReadTimeout(TransientError):
    """A read of a topic got no answer within `kafka_read_timeout_seconds` (the broker is
    slow or unreachable, or a record it announced never came): the caller tries again later."""


class TopicMissing(GatewayError):
    """A topic the gateway reads does not exist on the broker."""

    status = 503
    title = "Topic missing"


@dataclass(frozen=True, slots=True)
class Topics:
    medcom_messages: str
    tracking: str
    dead_letter: str
    audit: str
    canary: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(*(settings.topic(name) for name in (*ALL_TOPICS, CANARY)))

    def all(self) -> tuple[str, ...]:
        """The topics that carry records (the canary is the sweeper's alone)."""
        return (self.medcom_messages, self.tracking, self.dead_letter, self.audit)


def kafka_common(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """What every Kafka client (producer, consumers, admin) is built with, TLS included."""
    common: dict[str, Any] = {"bootstrap_servers": bootstrap, "client_id": settings.kafka_client_id}
    if settings.kafka_security_protocol == "SSL":
        common["security_protocol"] = "SSL"
        common["ssl_context"] = kafka_ssl_context(settings)
    return common


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS to the brokers: verify them against KAFKA_SSL_CAFILE (else the system CAs), and
    present KAFKA_SSL_CERTFILE/KEYFILE when the brokers ask for a client certificate."""
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.kafka_ssl_certfile is not None:
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    return context


DAY_MS = 24 * 3600 * 1000


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """The configuration the gateway creates a topic with. The canary never expires: its one
    record is the broker's epoch, and a canary emptied by retention would look like a broker
    that lost its state. Dead letters are kept long enough for an operator to notice, fix the
    cause and replay them; the audit copy long enough for `audit verify` to hold old entries
    against it. Other topics take the broker's defaults."""

    def retention(days: int) -> dict[str, str]:
        return {"retention.ms": str(days * DAY_MS) if days > 0 else "-1"}

    if topic == settings.topic(CANARY):
        return {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
    if topic == settings.topic(DEAD_LETTER):
        return {"cleanup.policy": "delete", **retention(settings.kafka_dead_letter_retention_days)}
    if topic == settings.topic(AUDIT):
        return {"cleanup.policy": "delete", **retention(settings.kafka_audit_retention_days)}
    return {}


async def ensure_topics(settings: Settings, bootstrap: str, topics: Sequence[str]) -> None:
    """Create the missing topics with several partitions and their configuration
    (`topic_configs`); existing topics are left as they are."""
    admin = AIOKafkaAdminClient(**kafka_common(settings, bootstrap))
    try:  # closed even when its start fails
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                t,
                settings.kafka_partitions,
                settings.kafka_replication_factor,
                topic_configs=topic_configs(settings, t),
            )
            for t in topics
            if t not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


T = TypeVar("T")


async def bounded(work: Awaitable[T], *, until: float, what: str) -> T:
    """Await a Kafka call, but not past `until` (the event loop's clock): aiokafka waits
    without bound for a record that never comes, or for metadata a broker never sends."""
    try:
        async with asyncio.timeout_at(until):
            return await work
    except TimeoutError:
        raise KafkaReadTimeout("kafka-timeout", f"{what}: no answer from Kafka in time") from None


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
    raise TopicMissing("topic-missing", f"topic {topic} does not exist on the broker")


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
        raise KafkaReadTimeout("kafka-timeout", f"{what}: no answer from Kafka in time")
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


def make_producer(settings: Settings, bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka_common(settings, bootstrap),
        acks="all",
        enable_idempotence=settings.kafka_idempotent_producer,
        linger_ms=2,
        request_timeout_ms=15_000,
        # After a broker lost its state, topics may come back with other partitions; a short
        # metadata age keeps a producer from writing to partitions that no longer exist.
        metadata_max_age_ms=10_000,
    )


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
    batches.
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
    ) -> None:
        self._settings = settings
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
        await self._consumer.stop()

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
                    with contextlib.suppress(asyncio.CancelledError, KafkaError):
                        await commit
                    raise CommitFailedError("the group generation changed during the commit")
        except asyncio.CancelledError:
            commit.cancel()
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
            log.warning("consumer.commit_on_revoke_failed", error=type(exc).__name__)
        finally:
            self._finished = {}
            self._generation += 1

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("consumer.poll_failed", topic=self.topic, error=type(exc).__name__)
                await asyncio.sleep(1)
                continue
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
                log.warning("consumer.commit_failed", topic=self.topic, error=type(exc).__name__)

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
            retry=retry_if_exception(lambda e: isinstance(e, GatewayError) and e.retryable),
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
            # second the line per record was a quarter of the tracker's CPU.
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
        except GatewayError as exc:
            outcome = "dead-lettered"
            await self._dead_letter(record, exc.code, exc.detail)
        except Exception as exc:  # a bug must not block the partition; it is kept in the DLQ
            outcome = "dead-lettered"
            log.exception("consumer.handler_crashed", topic=self.topic)
            await self._dead_letter(record, "handler-crashed", type(exc).__name__)
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
