"""Where a conversation stands: `current_stage` over its timeline."""

from __future__ import annotations

import datetime as dt

import pytest

from attest_gateway.contracts.stages import FINAL_STAGES, Stage, current_stage

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


S = Stage


@pytest.mark.parametrize(
    ("timeline", "expected"),
    [
        ([], S.SUBMITTED),
        ([(S.SUBMITTED, at(0))], S.SUBMITTED),
        ([(S.SUBMITTED, at(0)), (S.PUBLISHED, at(0)), (S.IN_MAILBOX, at(0.1))], S.IN_MAILBOX),
        # No acknowledgement: resent, then undeliverable.
        ([(S.SUBMITTED, at(0)), (S.IN_MAILBOX, at(0.1)), (S.RESENT, at(0.6))], S.RESENT),
        (
            [(S.IN_MAILBOX, at(0.1)), (S.RESENT, at(0.6)), (S.UNDELIVERABLE, at(1.5))],
            S.UNDELIVERABLE,
        ),
        # A resend that was then acknowledged: progress wins again.
        ([(S.IN_MAILBOX, at(0.1)), (S.RESENT, at(0.6)), (S.ACKNOWLEDGED, at(0.7))], S.ACKNOWLEDGED),
        # Acknowledged, then the deadline passed and a reminder went out.
        (
            [(S.ACKNOWLEDGED, at(1)), (S.OVERDUE, at(200)), (S.REMINDED, at(200))],
            S.REMINDED,
        ),
        ([(S.ACKNOWLEDGED, at(1)), (S.OVERDUE, at(200))], S.OVERDUE),
        # The attest came after the reminder: it is replied, whatever the order of events.
        (
            [(S.ACKNOWLEDGED, at(1)), (S.REMINDED, at(200)), (S.REPLIED, at(230))],
            S.REPLIED,
        ),
        (
            [(S.REPLY_FETCHED, at(240)), (S.REMINDED, at(241)), (S.REPLIED, at(230))],
            S.REPLY_FETCHED,
        ),
        # Refused by the receiver: final, whatever happened after it.
        ([(S.IN_MAILBOX, at(0.1)), (S.ACKNOWLEDGED, at(1)), (S.REFUSED, at(1))], S.REFUSED),
        ([(S.ACKNOWLEDGED, at(1)), (S.REFUSED, at(1)), (S.OVERDUE, at(200))], S.REFUSED),
    ],
)
def test_current_stage(timeline: list[tuple[Stage, dt.datetime]], expected: Stage) -> None:
    assert current_stage(timeline) is expected


def test_side_events_before_the_latest_progress_do_not_count() -> None:
    timeline = [(S.IN_MAILBOX, at(0.1)), (S.RESENT, at(0.6)), (S.FETCHED, at(0.8))]
    assert current_stage(timeline) is S.FETCHED


def test_a_cancelled_request_stays_cancelled() -> None:
    t = dt.datetime(2026, 5, 1, 9, tzinfo=dt.UTC)
    timeline = [
        (Stage.SUBMITTED, t),
        (Stage.IN_MAILBOX, t + dt.timedelta(minutes=1)),
        (Stage.CANCELLED, t + dt.timedelta(hours=1)),
        (Stage.DEADLINE_EXTENDED, t + dt.timedelta(hours=2)),  # an earlier extension's echo
    ]
    assert current_stage(timeline) is Stage.CANCELLED
    assert Stage.CANCELLED in FINAL_STAGES
    assert current_stage(timeline[:2] + timeline[3:]) is Stage.DEADLINE_EXTENDED
