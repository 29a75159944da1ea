"""The gateway's topics on the broker, held against what they must be (`topics.topic_spec`).

The gateway owns its topics' settings: it creates each topic with them (`ensure_topics`), and
at start it reads the existing topics back (DescribeTopics: partitions and replicas;
DescribeConfigs: the configuration) and compares. Each difference is a `Mismatch` that names
the topic, the setting, the value expected and the value found, and the command that fixes it.
The gateway never changes an existing topic: the topic is the operator's, who may have had a
reason, and a gateway that rewrote topics at start would undo an operator's emergency change
on every restart (the embedded broker cannot alter a topic's configuration anyway).

In development each mismatch is one warning in the log (`kafka.topic_setting_mismatch`), and
the gateway works on. In production it also fails `/readyz` (the `topics` check) with a reason
naming the topic and the setting, for as long as the topic differs (`TopicSettingsCheck`).
A topic the broker does not have is not compared: the gateway creates the missing ones, and
the `kafka` readiness check names any still missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from attest_gateway.config import Settings
from attest_gateway.infra.kafka.connection import kafka_common
from attest_gateway.infra.kafka.topics import DAY_MS, Topics, TopicSpec, topic_spec

log = structlog.get_logger(__name__)

PARTITIONS = "partitions"
REPLICATION_FACTOR = "replication factor"

_BOOTSTRAP = '--bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS"'


class TopicCheckFailed(Exception):
    """The broker did not tell a topic's settings (an error code in its answer)."""


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic as the broker describes it: `configs` holds what DescribeConfigs reported
    (Apache Kafka reports every setting, defaults included; the embedded broker only those
    the topic was created with)."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One setting of one topic that is not what the gateway needs. `actual` is None when
    the broker did not report the setting; `at_least`: any value from `expected` up is right
    (partitions, replication factor)."""

    topic: str
    setting: str
    expected: str
    actual: str | None
    at_least: bool = False

    @property
    def fix(self) -> str:
        """The operator's command that makes the topic right (Apache Kafka's tools; with TLS
        add `--command-config` naming the client's properties)."""
        if self.setting == PARTITIONS:
            return (
                f"kafka-topics.sh {_BOOTSTRAP} --alter --topic {self.topic} "
                f"--partitions {self.expected}"
            )
        if self.setting == REPLICATION_FACTOR:
            return (
                f"kafka-reassign-partitions.sh {_BOOTSTRAP} --execute --reassignment-json-file "
                f"<a plan giving each partition of {self.topic} {self.expected} replicas>"
            )
        return (
            f"kafka-configs.sh {_BOOTSTRAP} --alter --entity-type topics "
            f"--entity-name {self.topic} --add-config {self.setting}={self.expected}"
        )

    def sentence(self) -> str:
        """`<topic>: <setting> is <actual>, expected <expected>`."""
        actual = "not reported" if self.actual is None else _shown(self.setting, self.actual)
        least = "at least " if self.at_least else ""
        return (
            f"{self.topic}: {self.setting} is {actual}, "
            f"expected {least}{_shown(self.setting, self.expected)}"
        )


def _shown(setting: str, value: str) -> str:
    """A value as an operator reads it: retention in days besides the milliseconds."""
    if setting == "retention.ms":
        if value == "-1":
            return "-1 (forever)"
        if value.isdigit() and int(value) % DAY_MS == 0:
            days = int(value) // DAY_MS
            return f"{value} ({days} day{'' if days == 1 else 's'})"
    return value


def _normal(setting: str, value: str) -> str:
    value = value.strip()
    if setting == "cleanup.policy":  # a list: `compact,delete` is `delete,compact`
        return ",".join(sorted(p.strip().lower() for p in value.strip("[]").split(",")))
    return value


def compare(specs: Iterable[TopicSpec], found: Mapping[str, TopicState]) -> list[Mismatch]:
    """Every way the topics `found` on the broker differ from their `specs`, topic by topic
    in the specs' order. Topics the broker does not have are left out."""
    mismatches: list[Mismatch] = []
    for spec in specs:
        state = found.get(spec.name)
        if state is None:
            continue
        if state.partitions < spec.partitions:
            mismatches.append(
                Mismatch(spec.name, PARTITIONS, str(spec.partitions), str(state.partitions), True)
            )
        if state.replication_factor < spec.replication_factor:
            mismatches.append(
                Mismatch(
                    spec.name,
                    REPLICATION_FACTOR,
                    str(spec.replication_factor),
                    str(state.replication_factor),
                    True,
                )
            )
        for setting, expected in spec.configs.items():
            actual = state.configs.get(setting)
            if actual is None or _normal(setting, actual) != _normal(setting, expected):
                mismatches.append(Mismatch(spec.name, setting, expected, actual))
    return mismatches


def reason(mismatches: Sequence[Mismatch]) -> str:
    """What `/readyz` says: each mismatch and its fix."""
    return "; ".join(f"{m.sentence()} (fix: {m.fix})" for m in mismatches)


async def read_topics(
    settings: Settings, bootstrap: str, names: Sequence[str]
) -> dict[str, TopicState]:
    """The topics among `names` that the broker has, as it describes them."""
    admin = AIOKafkaAdminClient(**kafka_common(settings, bootstrap))
    try:  # closed even when its start fails
        await admin.start()
        listed = set(await admin.list_topics())
        existing = [n for n in names if n in listed]
        if not existing:
            return {}
        described: list[dict[str, Any]] = await admin.describe_topics(existing)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in existing]
        )
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[:5]
            if error_code:
                error = for_code(error_code).__name__
                raise TopicCheckFailed(f"the broker refused DescribeConfigs of {name}: {error}")
            configs[name] = {e[0]: e[1] for e in entries if e[1] is not None}
    states: dict[str, TopicState] = {}
    for topic in described:
        name, partitions = topic["topic"], topic["partitions"]
        if topic["error_code"] or not partitions:  # gone meanwhile: not ours to compare
            continue
        states[name] = TopicState(
            name,
            len(partitions),
            min(len(p["replicas"]) for p in partitions),
            configs.get(name, {}),
        )
    return states


async def check_topics(settings: Settings, bootstrap: str, names: Sequence[str]) -> list[Mismatch]:
    """The mismatches of the topics `names` on the broker at `bootstrap`."""
    found = await read_topics(settings, bootstrap, names)
    return compare((topic_spec(settings, n) for n in names), found)


class TopicSettingsCheck:
    """The last reading of the topics' settings, read again when older than `max_age`
    seconds (KAFKA_TOPIC_CHECK_SECONDS).

    `/readyz` is probed every few seconds by every orchestrator and load balancer, and each
    reading is an admin connection and two requests to the broker; settings change rarely and
    by hand. So a probe answers from the last reading, and the first probe after `max_age`
    reads again (one at a time: concurrent probes wait for that reading). An operator's fix
    thus shows within `max_age` without a restart. A reading that fails keeps nothing, so the
    next probe tries again. Each mismatch is logged when first seen, and its end when fixed.
    """

    def __init__(
        self,
        read: Callable[[], Awaitable[list[Mismatch]]],
        *,
        max_age: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._max_age = max_age
        self._now = now
        self._lock = asyncio.Lock()
        self._last: list[Mismatch] | None = None
        self._read_at = 0.0

    async def at_start(self, limit: float) -> list[Mismatch]:
        """The first reading, logged; a failure (a broker without DescribeConfigs, no
        permission, no answer within `limit` seconds) is a warning, not a failed start:
        in production `/readyz` then says why."""
        try:
            async with asyncio.timeout(limit):
                return await self.mismatches()
        except (KafkaError, OSError, TimeoutError, TopicCheckFailed) as exc:
            log.warning("kafka.topic_check_failed", error=type(exc).__name__, detail=str(exc))
            return []

    async def mismatches(self) -> list[Mismatch]:
        async with self._lock:
            last = self._last
            if last is not None and self._now() - self._read_at < self._max_age:
                return last
            current = await self._read()
            self._log(last or [], current)
            self._last, self._read_at = current, self._now()
            return current

    @staticmethod
    def _log(before: list[Mismatch], now: list[Mismatch]) -> None:
        for m in now:
            if m not in before:
                log.warning(
                    "kafka.topic_setting_mismatch",
                    topic=m.topic,
                    setting=m.setting,
                    expected=m.expected,
                    actual=m.actual,
                    fix=m.fix,
                )
        for m in before:
            if m not in now:
                log.info("kafka.topic_setting_fixed", topic=m.topic, setting=m.setting)


def topic_settings_check(settings: Settings, bootstrap: str, topics: Topics) -> TopicSettingsCheck:
    """The check of the gateway's topics, the canary included (once the sweeper made it)."""
    names = (*topics.all(), topics.canary)

    async def read() -> list[Mismatch]:
        return await check_topics(settings, bootstrap, names)

    return TopicSettingsCheck(read, max_age=settings.kafka_topic_check_seconds)
