"""The retention settings: defaults that agree with each other, and combinations refused
because one retention period would undo another (docs/data-lifecycle.md)."""

from __future__ import annotations

import pydantic
import pytest

from attest_gateway.config import DAY, load_settings


def test_the_defaults_agree() -> None:
    s = load_settings()
    assert s.seen_ids_retention_seconds >= s.mailbox_retention_seconds
    assert s.seen_ids_retention_seconds >= s.kafka_messages_retention_days * DAY
    assert s.sealed_cpr_retention_days <= s.conversation_retention_days


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"seen_ids_retention_seconds": 10 * DAY}, "MAILBOX_RETENTION_SECONDS"),
        (
            {"seen_ids_retention_seconds": 6 * DAY, "mailbox_retention_seconds": DAY},
            "OUTBOX_RETENTION_SECONDS",
        ),
        (
            {"seen_ids_retention_seconds": 40 * DAY, "kafka_messages_retention_days": 60},
            "KAFKA_MESSAGES_RETENTION_DAYS",
        ),
        (
            {"sealed_cpr_retention_days": 400, "conversation_retention_days": 300},
            "SEALED_CPR_RETENTION_DAYS",
        ),
        ({"audit_retention_days": 1, "audit_checkpoint_seconds": 2 * DAY}, "AUDIT_CHECKPOINT"),
    ],
)
def test_retention_periods_that_undo_each_other_are_refused(
    settings: dict[str, float], named: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=named):
        load_settings(**settings)


def test_a_topic_kept_forever_puts_no_bound_on_the_seen_ids() -> None:
    s = load_settings(kafka_messages_retention_days=-1, seen_ids_retention_seconds=60 * DAY)
    assert s.seen_ids_retention_seconds == 60 * DAY
