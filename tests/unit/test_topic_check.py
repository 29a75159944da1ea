"""The topics' intended settings and their comparison with what a broker reports (pure), the
setting that bounds `min.insync.replicas`, and the cached re-reading behind `/readyz`."""

from __future__ import annotations

import pydantic
import pytest
from structlog.testing import capture_logs

from attest_gateway.config import Settings, load_settings
from attest_gateway.infra.kafka import topic_check
from attest_gateway.infra.kafka.topic_check import (
    PARTITIONS,
    REPLICATION_FACTOR,
    Mismatch,
    TopicSettingsCheck,
    TopicState,
    compare,
)
from attest_gateway.infra.kafka.topics import (
    AUDIT,
    CANARY,
    DAY_MS,
    DEAD_LETTER,
    MEDCOM_MESSAGES,
    TRACKING,
    TopicSpec,
    topic_configs,
    topic_spec,
)

DLQ = "gateway.dead-letter"


def _settings(**overrides: object) -> Settings:
    return load_settings(kafka_partitions=6, kafka_replication_factor=3, **overrides)


def _state(name: str = DLQ, partitions: int = 6, replicas: int = 3, **configs: str) -> TopicState:
    return TopicState(
        name, partitions, replicas, {k.replace("_", "."): v for k, v in configs.items()}
    )


def _spec(**configs: str) -> TopicSpec:
    return TopicSpec(DLQ, 6, 3, {k.replace("_", "."): v for k, v in configs.items()})


# --- what each topic must be ------------------------------------------------------------------


def test_each_topic_is_declared_with_its_retention_and_cleanup() -> None:
    settings = _settings(kafka_dead_letter_retention_days=30, kafka_audit_retention_days=0)
    assert topic_configs(settings, CANARY) == {
        "cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1",
    }  # fmt: skip
    assert topic_configs(settings, DEAD_LETTER) == {
        "cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS),
    }  # fmt: skip
    assert topic_configs(settings, AUDIT) == {"cleanup.policy": "delete", "retention.ms": "-1"}
    assert topic_configs(settings, MEDCOM_MESSAGES) == {
        "cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS),
    }  # fmt: skip
    assert topic_configs(settings, TRACKING) == {
        "cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS),
    }  # fmt: skip
    spec = topic_spec(settings, DEAD_LETTER)
    assert (spec.partitions, spec.replication_factor) == (6, 3)


@pytest.mark.parametrize(
    ("environment", "replicas", "setting", "demanded"),
    [
        ("development", 1, None, None),  # one machine: not demanded
        ("development", 3, None, None),
        ("development", 3, 2, "2"),  # set: demanded everywhere
        ("production", 1, None, "1"),
        ("production", 2, None, "2"),
        ("production", 3, None, "2"),
        ("production", 3, 3, "3"),
    ],
)
def test_min_insync_replicas_is_demanded_in_production(
    environment: str, replicas: int, setting: int | None, demanded: str | None
) -> None:
    settings = load_settings(
        environment=environment,
        kafka_replication_factor=replicas,
        kafka_min_insync_replicas=setting,
    )
    configs = topic_configs(settings, MEDCOM_MESSAGES)
    assert configs.get("min.insync.replicas") == demanded


def test_min_insync_replicas_cannot_exceed_the_replicas() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        load_settings(kafka_replication_factor=2, kafka_min_insync_replicas=3)
    [error] = caught.value.errors()
    assert error["loc"] == ("kafka_min_insync_replicas",)
    assert "more than KAFKA_REPLICATION_FACTOR (2)" in error["msg"]
    assert load_settings(kafka_replication_factor=2, kafka_min_insync_replicas=2)


def test_a_copy_in_production_demands_min_insync_replicas() -> None:
    """`model_copy` of development settings into production (as the tests do) is not fooled
    by a value remembered from before."""
    development = load_settings(kafka_replication_factor=3)
    assert development.effective_min_insync_replicas is None
    production = development.model_copy(update={"environment": "production"})
    assert production.effective_min_insync_replicas == 2


# --- the comparison ---------------------------------------------------------------------------


def test_matching_topics_have_no_mismatch() -> None:
    spec = _spec(cleanup_policy="delete", retention_ms="2592000000")
    found = {DLQ: _state(cleanup_policy="delete", retention_ms="2592000000", segment_ms="1")}
    assert compare([spec], found) == []


def test_a_wrong_retention_names_topic_setting_expected_and_actual() -> None:
    spec = _spec(cleanup_policy="delete", retention_ms=str(30 * DAY_MS))
    found = {DLQ: _state(cleanup_policy="delete", retention_ms=str(DAY_MS))}
    [mismatch] = compare([spec], found)
    assert mismatch == Mismatch(DLQ, "retention.ms", str(30 * DAY_MS), str(DAY_MS))
    assert mismatch.sentence() == (
        f"{DLQ}: retention.ms is 86400000 (1 day), expected 2592000000 (30 days)"
    )
    assert mismatch.fix == (
        'kafka-configs.sh --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --alter --entity-type '
        f"topics --entity-name {DLQ} --add-config retention.ms=2592000000"
    )


def test_a_setting_the_broker_does_not_report_is_a_mismatch() -> None:
    [mismatch] = compare([_spec(min_insync_replicas="2")], {DLQ: _state()})
    assert mismatch.actual is None
    assert mismatch.sentence() == f"{DLQ}: min.insync.replicas is not reported, expected 2"


def test_cleanup_policy_is_compared_as_a_list() -> None:
    spec = _spec(cleanup_policy="compact,delete")
    assert compare([spec], {DLQ: _state(cleanup_policy="delete, compact")}) == []
    [mismatch] = compare([_spec(cleanup_policy="delete")],
                         {DLQ: _state(cleanup_policy="compact")})  # fmt: skip
    assert (mismatch.setting, mismatch.expected, mismatch.actual) == (
        "cleanup.policy", "delete", "compact",
    )  # fmt: skip


def test_forever_reads_as_forever() -> None:
    [mismatch] = compare([_spec(retention_ms="-1")], {DLQ: _state(retention_ms="604800000")})
    assert (
        mismatch.sentence() == f"{DLQ}: retention.ms is 604800000 (7 days), expected -1 (forever)"
    )


def test_partitions_and_replicas_are_at_least_what_is_configured() -> None:
    assert compare([_spec()], {DLQ: _state(partitions=12, replicas=5)}) == []
    mismatches = compare([_spec()], {DLQ: _state(partitions=3, replicas=1)})
    assert [(m.setting, m.expected, m.actual, m.at_least) for m in mismatches] == [
        (PARTITIONS, "6", "3", True),
        (REPLICATION_FACTOR, "3", "1", True),
    ]
    assert mismatches[0].sentence() == f"{DLQ}: partitions is 3, expected at least 6"
    assert mismatches[0].fix.startswith("kafka-topics.sh ")
    assert mismatches[0].fix.endswith(f"--alter --topic {DLQ} --partitions 6")
    assert "kafka-reassign-partitions.sh" in mismatches[1].fix


def test_a_topic_the_broker_lacks_is_not_compared() -> None:
    assert compare([_spec(retention_ms="1")], {}) == []


def test_the_reason_lists_each_mismatch_with_its_fix() -> None:
    mismatches = [
        Mismatch("a", "retention.ms", "-1", "5"),
        Mismatch("b", "cleanup.policy", "delete", "compact"),
    ]
    text = topic_check.reason(mismatches)
    assert text.startswith("a: retention.ms is 5, expected -1 (forever) (fix: kafka-configs.sh")
    assert "; b: cleanup.policy is compact, expected delete (fix: " in text


# --- reading again, at most every max_age seconds ----------------------------------------------


class _Reads:
    def __init__(self, *results: list[Mismatch] | Exception) -> None:
        self.results = list(results)
        self.count = 0

    async def __call__(self) -> list[Mismatch]:
        self.count += 1
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


async def test_the_check_reads_again_only_after_max_age() -> None:
    wrong = Mismatch(DLQ, "retention.ms", "1", "2")
    reads = _Reads([wrong], [wrong], [])
    now = [100.0]
    check = TopicSettingsCheck(reads, max_age=60, now=lambda: now[0])
    with capture_logs() as logs:
        assert await check.mismatches() == [wrong]
        now[0] += 59
        assert await check.mismatches() == [wrong]  # the last reading
        assert reads.count == 1
        now[0] += 2
        assert await check.mismatches() == [wrong]  # read again, logged only once
        now[0] += 61
        assert await check.mismatches() == []  # the operator fixed it
    assert reads.count == 3
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("kafka.topic_setting_mismatch", "warning"),
        ("kafka.topic_setting_fixed", "info"),
    ]
    assert logs[0]["fix"] == wrong.fix


async def test_a_failed_reading_keeps_nothing() -> None:
    reads = _Reads(OSError("refused"), [])
    check = TopicSettingsCheck(reads, max_age=60, now=lambda: 0.0)
    with pytest.raises(OSError, match="refused"):
        await check.mismatches()
    assert await check.mismatches() == []  # tried again at once
    assert reads.count == 2


async def test_a_failed_reading_at_start_is_a_warning() -> None:
    check = TopicSettingsCheck(_Reads(topic_check.TopicCheckFailed("error 29")), max_age=60)
    with capture_logs() as logs:
        assert await check.at_start(limit=1.0) == []
    assert [(e["event"], e["error"]) for e in logs] == [
        ("kafka.topic_check_failed", "TopicCheckFailed")
    ]
