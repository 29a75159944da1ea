"""Reads of Kafka topics on the real (embedded) broker: what Apache Kafka does and the
embedded broker hides. Topic metadata comes only when asked for; a record announced by the
end offsets may never come; the topics' own settings. Every read ends
within `kafka_read_timeout_seconds` with a clear error.

Not created here: a fetch at an offset the log no longer holds (the embedded broker answers
a fetch past the end with no records, not OFFSET_OUT_OF_RANGE, and has no retention); the
readers reset such a position to the oldest record (`reading.reader`) and are bounded anyway."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import client as aiokafka_client
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.metadata import MetadataRequest

from attest_gateway.config import Settings, load_settings
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.errors import ErrorCode
from attest_gateway.infra.db import audit, tables
from attest_gateway.infra.housekeeping.recovery import EPOCH_ROW
from attest_gateway.infra.housekeeping.sweeper import Sweeper
from attest_gateway.infra.kafka import dead_letters as deadletters
from attest_gateway.infra.kafka import reading
from attest_gateway.infra.kafka import topics as kafka_topics
from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from tests.integration.conftest import Harness

TIMEOUT = 2.0  # kafka_read_timeout_seconds in these tests


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    return load_settings(
        var_dir=tmp_path,
        kafka_topic_prefix=prefix,
        kafka_partitions=3,
        kafka_read_timeout_seconds=TIMEOUT,
        **overrides,
    )


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


@pytest.fixture
def no_topics_at_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the embedded broker answer a client's connect as Apache Kafka does: the metadata
    request aiokafka sends at bootstrap names no topics, and Apache Kafka answers it with none
    (the embedded broker answers with every topic). Here it names one that does not exist."""
    real = MetadataRequest

    def request(topics: list[str] | None = None, *args: Any, **kw: Any) -> MetadataRequest:
        if topics == []:
            return real([f"absent-{uuid.uuid4().hex[:8]}"], allow_auto_topic_creation=False)
        return real(topics, *args, **kw)

    monkeypatch.setattr(aiokafka_client, "MetadataRequest", request)


async def test_the_emulation_hides_topics_at_connect(
    broker: EmbeddedBroker, tmp_path: Path, no_topics_at_connect: None
) -> None:
    """The fixture above does what it says: right after start a consumer knows no topic."""
    settings = _settings(tmp_path)
    topic = settings.topic(kafka_topics.DEAD_LETTER)
    await kafka_topics.ensure_topics(settings, broker.bootstrap, [topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    try:
        assert consumer.partitions_for_topic(topic) is None
    finally:
        await asyncio.sleep(0)  # see reading.started_reader
        await consumer.stop()


@pytest.mark.timeout(60)
async def test_dead_letters_are_read_when_connect_sends_no_topics(
    broker: EmbeddedBroker, tmp_path: Path, no_topics_at_connect: None
) -> None:
    settings = _settings(tmp_path)
    topic = settings.topic(kafka_topics.DEAD_LETTER)
    await kafka_topics.ensure_topics(settings, broker.bootstrap, [topic])
    await _produce(broker.bootstrap, topic, [b"one", b"two", b"three"])
    letters = await deadletters.read_dead_letters(settings, broker.bootstrap)
    assert sorted(d.value or b"" for d in letters) == [b"one", b"three", b"two"]


@pytest.mark.timeout(60)
async def test_audit_anchors_are_read_when_connect_sends_no_topics(
    harness: Harness, no_topics_at_connect: None
) -> None:
    h = harness
    async with h.gw.engine.begin() as conn:
        await audit.record(
            conn, h.gw.topics, actor="test-anchors", action="test.append",
            source=audit.SOURCE_GATEWAY, at=SystemClock().now(),
        )  # fmt: skip
    async with h.gw.engine.connect() as conn:
        head = await audit.read_head(conn)
    assert head is not None
    anchors: dict[int, set[str]] = {}
    deadline = time.monotonic() + 20
    while head.seq not in anchors and time.monotonic() < deadline:  # the relay publishes it
        await asyncio.sleep(0.2)
        anchors = await audit.read_anchors(h.settings, h.bootstrap)
    assert anchors[head.seq] == {head.hash}


@pytest.mark.timeout(60)
async def test_a_topic_that_does_not_exist_is_a_clear_error(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)  # its topics were never created
    with pytest.raises(reading.TopicMissing, match="does not exist"):
        await deadletters.read_dead_letters(settings, broker.bootstrap)
    with pytest.raises(reading.TopicMissing, match="does not exist"):
        await audit.read_anchors(settings, broker.bootstrap)
    assert (
        await reading.read_epoch(settings, broker.bootstrap, settings.topic(kafka_topics.CANARY))
        is None
    )


@pytest.fixture
def records_that_never_come(monkeypatch: pytest.MonkeyPatch) -> None:
    """End offsets one past the last record: a record the broker announces and no fetch
    returns (as after a transaction marker, or the log truncated under the reader)."""
    real = AIOKafkaConsumer.end_offsets

    async def end_offsets(self: AIOKafkaConsumer, partitions: list[TopicPartition]) -> Any:
        return {tp: offset + 1 for tp, offset in (await real(self, partitions)).items()}

    monkeypatch.setattr(AIOKafkaConsumer, "end_offsets", end_offsets)


@pytest.mark.timeout(60)
async def test_a_record_that_never_comes_ends_the_read_in_time(
    broker: EmbeddedBroker, tmp_path: Path, records_that_never_come: None
) -> None:
    settings = _settings(tmp_path)
    canary, dlq = settings.topic(kafka_topics.CANARY), settings.topic(kafka_topics.DEAD_LETTER)
    await kafka_topics.ensure_topics(settings, broker.bootstrap, [canary, dlq])
    await _produce(broker.bootstrap, dlq, [b"letter"])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(canary, uuid.uuid4().hex.encode(), partition=0)
    finally:
        await producer.stop()
    for read in (
        reading.read_epoch(settings, broker.bootstrap, canary),
        deadletters.read_dead_letters(settings, broker.bootstrap),
    ):
        started = time.monotonic()
        with pytest.raises(reading.KafkaReadTimeout, match="no answer from Kafka in time"):
            await read
        assert time.monotonic() - started < TIMEOUT + 5


async def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}


@pytest.mark.timeout(60)
async def test_topics_are_created_with_their_retention(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The embedded broker takes a topic's configuration at creation and describes it."""
    settings = _settings(tmp_path, kafka_dead_letter_retention_days=30)
    topics = kafka_topics.Topics.from_settings(settings)
    await kafka_topics.ensure_topics(settings, broker.bootstrap, [*topics.all(), topics.canary])
    canary = await _topic_config(broker.bootstrap, topics.canary)
    assert (canary["retention.ms"], canary["retention.bytes"]) == ("-1", "-1")
    dlq = await _topic_config(broker.bootstrap, topics.dead_letter)
    assert dlq["retention.ms"] == str(30 * 24 * 3600 * 1000)
    audit_topic = await _topic_config(broker.bootstrap, topics.audit)
    assert audit_topic["retention.ms"] == str(400 * 24 * 3600 * 1000)
    for topic in (topics.medcom_messages, topics.tracking):  # a week: Apache Kafka's default
        config = await _topic_config(broker.bootstrap, topic)
        assert config["retention.ms"] == str(7 * 24 * 3600 * 1000)


def test_where_the_epoch_is() -> None:
    """The canary's offsets decide: nothing written, retention removed the epoch (what only a
    broker with retention can create), or the last record."""
    assert reading.epoch_offset(0, 0) == "empty"
    assert reading.epoch_offset(5, 5) == "expired"
    assert reading.epoch_offset(0, 5) == 4
    assert reading.epoch_offset(4, 5) == 4


async def _remembered(h: Harness) -> str | None:
    async with h.gw.engine.connect() as conn:
        holder: str | None = (
            await conn.execute(
                sa.select(tables.leases.c.holder).where(tables.leases.c.name == EPOCH_ROW)
            )
        ).scalar_one_or_none()
    return holder


@pytest.mark.timeout(60)
async def test_an_expired_epoch_is_written_again_without_a_replay(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention removed the epoch record: the broker kept its state, so the sweeper writes
    the epoch the database remembers again; it replays nothing and rewinds no consumer."""
    h = harness
    sweeper = Sweeper(h.gw, h.bootstrap, h.running.consumers)
    await sweeper.sweep_once()
    known = await _remembered(h)
    assert known
    rewound: list[str] = []
    for consumer in h.running.consumers:
        monkeypatch.setattr(consumer, "rewind", lambda c=consumer: rewound.append(c.topic))
    real = reading.read_epoch
    calls = 0

    async def expired_once(*args: Any) -> str | None:
        nonlocal calls
        calls += 1
        return reading.EPOCH_EXPIRED if calls == 1 else await real(*args)

    monkeypatch.setattr("attest_gateway.infra.housekeeping.recovery.read_epoch", expired_once)
    report = await sweeper.sweep_once(SystemClock().now())
    assert (report.topics_recreated, report.replayed) == (False, 0)
    assert rewound == []
    assert await real(h.settings, h.bootstrap, h.gw.topics.canary) == known
    assert await _remembered(h) == known


@pytest.mark.timeout(60)
async def test_the_sweeper_goes_on_after_a_read_runs_out_of_time(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    gw = dataclasses.replace(
        h.gw, settings=h.gw.settings.model_copy(update={"sweep_interval_seconds": 0.05})
    )
    sweeps = 0
    three = asyncio.Event()

    async def timing_out(*args: Any) -> str | None:
        nonlocal sweeps
        sweeps += 1
        if sweeps >= 3:
            three.set()
        raise reading.KafkaReadTimeout(ErrorCode.KAFKA_TIMEOUT, "reading the epoch: no answer")

    monkeypatch.setattr("attest_gateway.infra.housekeeping.recovery.read_epoch", timing_out)
    sweeper = Sweeper(gw, h.bootstrap, h.running.consumers)
    sweeper.start()
    try:
        await asyncio.wait_for(three.wait(), 10)
    finally:
        await sweeper.stop()
    assert sweeps >= 3
