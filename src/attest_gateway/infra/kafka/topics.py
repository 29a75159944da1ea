"""The gateway's topics: their names (with the deployment's prefix), their settings, and their
creation at start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from attest_gateway.config import Settings
from attest_gateway.infra.kafka.connection import kafka_common

MEDCOM_MESSAGES = "medcom.messages"


TRACKING = "gateway.tracking"


DEAD_LETTER = "gateway.dead-letter"


AUDIT = "gateway.audit"


# Never produced to or consumed: if it is gone, the broker lost its state (the embedded one
# keeps everything in memory), even if clients have since auto-created the other topics.
CANARY = "gateway.canary"


ALL_TOPICS = (MEDCOM_MESSAGES, TRACKING, DEAD_LETTER, AUDIT)


Headers = list[tuple[str, bytes]]


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


DAY_MS = 24 * 3600 * 1000


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """The configuration the gateway creates a topic with, and checks an existing one against
    (`infra/kafka/topic_check.py`). Every topic deletes old records (`cleanup.policy=delete`):
    compaction would keep only the last record of a key, and the keys are conversation ids.
    The canary never expires: its one record is the broker's epoch, and a canary emptied by
    retention would look like a broker that lost its state. Dead letters are kept long enough
    for an operator to notice, fix the cause and replay them; the audit copy long enough for
    `audit verify` to hold old entries against it. Sealed messages and stage events are
    kept as long as a consumer may need to read them again (docs/data-lifecycle.md). Where
    demanded (`Settings.effective_min_insync_replicas`: production, or set), every topic has
    `min.insync.replicas`."""

    def retention(days: int) -> dict[str, str]:
        return {"retention.ms": str(days * DAY_MS) if days > 0 else "-1"}

    configs = {"cleanup.policy": "delete"}
    if topic == settings.topic(CANARY):
        configs |= {"retention.ms": "-1", "retention.bytes": "-1"}
    elif topic == settings.topic(MEDCOM_MESSAGES):
        configs |= retention(settings.kafka_messages_retention_days)
    elif topic == settings.topic(TRACKING):
        configs |= retention(settings.kafka_tracking_retention_days)
    elif topic == settings.topic(DEAD_LETTER):
        configs |= retention(settings.kafka_dead_letter_retention_days)
    elif topic == settings.topic(AUDIT):
        configs |= retention(settings.kafka_audit_retention_days)
    insync = settings.effective_min_insync_replicas
    if insync is not None:
        configs["min.insync.replicas"] = str(insync)
    return configs


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What one of the gateway's topics must be: at least `partitions` partitions and
    `replication_factor` replicas, and exactly the configuration `configs`."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


def topic_spec(settings: Settings, topic: str) -> TopicSpec:
    return TopicSpec(
        topic,
        settings.kafka_partitions,
        settings.kafka_replication_factor,
        topic_configs(settings, topic),
    )


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
