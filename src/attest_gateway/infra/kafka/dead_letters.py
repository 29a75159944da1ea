"""Inspect and re-drive the dead-letter topic.

A dead letter keeps the original key, value and headers, plus `dlq-reason`, `dlq-detail`,
`dlq-source-topic`, `dlq-source-partition` and `dlq-source-offset`. Listing never prints a
value (it may be anything, including health data that failed to parse): only its size, a
digest and, for a sealed envelope, the clear routing header. Replaying sends the original
record back to its source topic; consumers are idempotent on the message id, so replaying
the same dead letter twice has the effect of once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pydantic
from aiokafka import AIOKafkaProducer, ConsumerRecord

from attest_gateway.config import Settings
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.infra.kafka.connection import kafka_common
from attest_gateway.infra.kafka.reading import (
    read_deadline,
    read_to_end,
    started_reader,
    topic_partitions,
)


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    def summary(self) -> dict[str, Any]:
        value = self.value or b""
        out: dict[str, Any] = {
            "id": self.id,
            "reason": self.header("dlq-reason"),
            "detail": self.header("dlq-detail"),
            "source": f"{self.header('dlq-source-topic')}"
            f"[{self.header('dlq-source-partition')}]@{self.header('dlq-source-offset')}",
            "message_type": self.header("message-type"),
            "message_id": self.header("message-id"),
            "size": len(value),
            "sha256": hashlib.sha256(value).hexdigest()[:16],
        }
        try:
            envelope = SealedEnvelope.from_json(value)
        except (pydantic.ValidationError, ValueError):
            return out
        out["envelope_header"] = envelope.header.model_dump(mode="json")
        return out

    def replay_headers(self) -> list[tuple[str, bytes]]:
        kept = [(k, v) for k, v in self.headers if not k.startswith("dlq-")]
        return [*kept, ("dlq-replayed-from", self.id.encode())]


def _from_record(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        record.partition, record.offset, record.key, record.value, tuple(record.headers or ())
    )


async def read_dead_letters(settings: Settings, bootstrap: str) -> list[DeadLetter]:
    """Every record now in the dead-letter topic, oldest first per partition. Raises
    TopicMissing if there is no such topic, KafkaReadTimeout after
    `kafka_read_timeout_seconds`."""
    topic = settings.topic("gateway.dead-letter")
    until = read_deadline(settings)
    tps = await topic_partitions(settings, bootstrap, topic, until=until)
    what = f"reading {topic}"
    async with started_reader(settings, bootstrap, until=until, what=what) as consumer:
        records = await read_to_end(consumer, tps, until=until, what=what)
    return [_from_record(r) for r in records]


async def replay(settings: Settings, bootstrap: str, letters: list[DeadLetter]) -> int:
    """Send each dead letter back to the topic it came from."""
    producer = AIOKafkaProducer(**kafka_common(settings, bootstrap), acks="all")
    try:  # closed even when its start fails
        await producer.start()
        for letter in letters:
            source = letter.header("dlq-source-topic")
            if not source:
                raise ValueError(f"dead letter {letter.id} does not name its source topic")
            await producer.send_and_wait(
                source, value=letter.value, key=letter.key, headers=letter.replay_headers()
            )
    finally:
        await producer.stop()
    return len(letters)
