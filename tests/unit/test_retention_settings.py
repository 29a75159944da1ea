"""The retention settings: defaults that agree with each other, and combinations refused
because one retention period would undo another (docs/data-lifecycle.md); the pass's pace."""

from __future__ import annotations

import pydantic
import pytest

from attest_gateway.config import DAY, load_settings
from attest_gateway.infra.housekeeping import retention


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


@pytest.mark.parametrize(
    ("duty", "busy", "pause"),
    [(1.0, 0.3, 0.01), (0.5, 0.3, 0.3), (0.25, 0.2, 0.6), (0.5, 0.001, 0.01)],
)
def test_a_pass_pauses_to_stay_within_its_duty(duty: float, busy: float, pause: float) -> None:
    """At most `duty` of the pass's time busy, and never less than the minimum pause."""
    assert retention._Pace(500, 0.01, duty).after(busy) == pytest.approx(pause)


@pytest.mark.parametrize("duty", [0.0, -0.5, 1.5])
def test_a_duty_outside_its_range_is_refused(duty: float) -> None:
    with pytest.raises(ValueError, match="share of the time"):
        retention._Pace(500, 0.01, duty)
    with pytest.raises(pydantic.ValidationError):
        load_settings(retention_duty=duty)
