"""The topics' settings on the real broker: the gateway creates each topic with the settings it
needs, and a topic someone else created otherwise is a warning at start in development and a
failed `/readyz` naming the topic and the setting in production. Each test uses topics of its
own (a unique prefix), so the tests can share an external broker."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from structlog.testing import capture_logs

from attest_gateway.config import Settings, load_settings
from attest_gateway.infra.kafka import topic_check
from attest_gateway.infra.kafka.topics import DAY_MS, DEAD_LETTER, Topics, ensure_topics
from tests.integration.conftest import running_gateway
from tests.support.kafka import TestKafka, client_args, settings_for, unique_prefix

THIRTY_DAYS = str(30 * DAY_MS)
ONE_DAY = str(DAY_MS)


async def _create_dead_letter_topic_for_a_day(bootstrap: str, settings: Settings) -> str:
    """The dead-letter topic, made before the gateway starts as an operator might: one day of
    retention where the gateway needs 30."""
    topic = settings.topic(DEAD_LETTER)
    admin = AIOKafkaAdminClient(**client_args(bootstrap))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic,
                    settings.kafka_partitions,
                    settings.kafka_replication_factor,
                    topic_configs={"cleanup.policy": "delete", "retention.ms": ONE_DAY},
                )
            ]
        )
    finally:
        await admin.close()
    return topic


def _prefixes() -> dict[str, Any]:
    prefix = unique_prefix()
    return {"kafka_topic_prefix": prefix, "kafka_group_prefix": f"{prefix}attest-gateway"}


@pytest.mark.timeout(90)
async def test_a_wrong_setting_is_a_warning_at_start_in_development(
    broker: TestKafka, tmp_path: Path
) -> None:
    prefixes = _prefixes()
    settings = load_settings(var_dir=tmp_path, **prefixes, kafka_dead_letter_retention_days=30)
    dead_letter = await _create_dead_letter_topic_for_a_day(broker.bootstrap, settings)
    with capture_logs() as logs:
        async with running_gateway("sqlite", tmp_path, broker.bootstrap, **prefixes) as h:
            ready = await h.client.get("/readyz")
    warnings = [e for e in logs if e["event"] == "kafka.topic_setting_mismatch"]
    assert [(w["log_level"], w["topic"], w["setting"]) for w in warnings] == [
        ("warning", dead_letter, "retention.ms")
    ]
    assert (warnings[0]["expected"], warnings[0]["actual"]) == (THIRTY_DAYS, ONE_DAY)
    assert warnings[0]["fix"] == (
        'kafka-configs.sh --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --alter --entity-type '
        f"topics --entity-name {dead_letter} --add-config retention.ms={THIRTY_DAYS}"
    )
    assert ready.status_code == 200, ready.text  # development works on
    assert ready.json()["checks"]["topics"]["ok"]


@pytest.mark.timeout(90)
async def test_a_wrong_setting_fails_readyz_in_production(
    broker: TestKafka, tmp_path: Path
) -> None:
    """Production mode refuses the embedded broker at start, so the gateway starts in
    development and `/readyz` is then asked of the same gateway with production's settings."""
    prefixes = _prefixes()
    settings = load_settings(var_dir=tmp_path, **prefixes)
    dead_letter = await _create_dead_letter_topic_for_a_day(broker.bootstrap, settings)
    async with running_gateway("sqlite", tmp_path, broker.bootstrap, **prefixes) as h:
        production = h.settings.model_copy(update={"environment": "production"})
        h.app.state.gateway = dataclasses.replace(
            h.gw,
            settings=production,
            topic_check=topic_check.topic_settings_check(production, h.bootstrap, h.gw.topics),
        )
        try:
            answer = await h.client.get("/readyz")
        finally:
            h.app.state.gateway = h.gw
    assert answer.status_code == 503, answer.text
    checks = answer.json()["checks"]
    assert checks["topics"]["ok"] is False
    error = checks["topics"]["error"]
    assert error.startswith("topic settings differ: ")
    assert (
        f"{dead_letter}: retention.ms is {ONE_DAY} (1 day), expected {THIRTY_DAYS} (30 days) "
        f"(fix: kafka-configs.sh "
    ) in error
    assert all(checks[name]["ok"] for name in ("database", "kafka", "keys"))


@pytest.mark.parametrize("environment", ["development", "production"])
async def test_the_topics_the_gateway_creates_pass_its_check(
    broker: TestKafka, tmp_path: Path, environment: str
) -> None:
    settings = load_settings(
        var_dir=tmp_path,
        environment=environment,
        **_prefixes(),
        **settings_for(broker.bootstrap),
    )
    topics = Topics.from_settings(settings)
    names = [*topics.all(), topics.canary]
    await ensure_topics(settings, broker.bootstrap, names)
    assert await topic_check.check_topics(settings, broker.bootstrap, names) == []
    found = await topic_check.read_topics(settings, broker.bootstrap, names)
    assert sorted(found) == sorted(names)
    dead_letter = found[topics.dead_letter]
    assert dead_letter.partitions == settings.kafka_partitions
    assert dead_letter.configs["retention.ms"] == THIRTY_DAYS
    if environment == "production":  # demanded there, and the topics are made with it
        assert dead_letter.configs["min.insync.replicas"] == "1"
