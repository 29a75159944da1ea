"""The gateway keeps time by the clock it is given: a `ManualClock` that stands days away from
the machine's stamps what the gateway records (the HTTP `Date`, stages, mailbox, audit,
tracker), and the tracker's overdue rule and reminders fire when that clock is moved past a
deadline, without waiting for anything but the work itself."""

from __future__ import annotations

import datetime as dt
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from attest_gateway.core.clock import ManualClock, SystemClock
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    audit_log,
    mailbox,
    stages,
    tracker_conversations,
    tracker_reminders,
)
from tests.integration.conftest import DB_KINDS, Harness, running_gateway
from tests.support.harness import attest_request_body, wait_for
from tests.support.kafka import TestKafka

JC, PSY = "jc-koebenhavn", "psyk-kbh"


async def _row(h: Harness, query: Any) -> Any:
    async def probe() -> Any:
        async with h.gw.engine.connect() as conn:
            return (await conn.execute(query)).first()

    return await wait_for(probe)


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_the_gateway_stamps_and_sweeps_by_its_injected_clock(
    kind: str, broker: TestKafka, tmp_path: Path
) -> None:
    start = (SystemClock().now() - dt.timedelta(days=10)).replace(microsecond=0)
    clock = ManualClock(start)
    # the live sweep runs once at start, then not again during the test: this test sweeps
    async with running_gateway(
        kind, tmp_path, broker.bootstrap, clock=clock, tracker_sweep_seconds=3600
    ) as h:
        assert h.gw.clock is clock
        tracker = h.running.tracker
        assert tracker is not None
        body = attest_request_body(
            jobcenter_gln=h.gln(JC), reply_deadline=(start.date() + dt.timedelta(2)).isoformat()
        )
        response = await h.client.post(
            "/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC)
        )
        assert response.status_code == 202, response.text
        assert parsedate_to_datetime(response.headers["date"]) == start
        cid = response.json()["conversation_id"]
        message_id = response.json()["message_id"]

        submitted = await _row(h, sa.select(stages.c.at).where(stages.c.conversation_id == cid))
        assert aware(submitted.at) == start
        delivered = await _row(
            h, sa.select(mailbox.c.delivered_at).where(mailbox.c.message_id == message_id)
        )
        assert aware(delivered.delivered_at) == start
        tracked = await _row(
            h,
            sa.select(tracker_conversations).where(
                tracker_conversations.c.conversation_id == cid,
                tracker_conversations.c.due_date.is_not(None),
            ),
        )
        assert aware(tracked.submitted_at) == start

        clock.advance(dt.timedelta(hours=3))
        fetched = await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500})
        assert message_id in {i["message_id"] for i in fetched["items"]}
        fetch_audit = await _row(
            h,
            sa.select(audit_log.c.at).where(
                audit_log.c.message_id == message_id, audit_log.c.action == "mailbox.fetch"
            ),
        )
        assert aware(fetch_audit.at) == start + dt.timedelta(hours=3)

        # Not overdue on its due date; overdue, and reminded, the morning after.
        clock.set(dt.datetime.combine(tracked.due_date, dt.time(20), tzinfo=dt.UTC))
        assert (await tracker.sweep.run_once())["overdue"] == 0
        morning_after = dt.datetime.combine(
            tracked.due_date + dt.timedelta(days=1), dt.time(8), tzinfo=dt.UTC
        )
        clock.set(morning_after)
        done = await tracker.sweep.run_once()
        assert done["overdue"] == done["reminders"] == 1
        flagged = await _row(
            h,
            sa.select(tracker_conversations).where(
                tracker_conversations.c.conversation_id == cid,
                tracker_conversations.c.overdue_at.is_not(None),  # the overdue stage, applied
            ),
        )
        assert flagged.outcome == "overdue"
        assert aware(flagged.overdue_at) == morning_after
        reminder = await _row(
            h,
            sa.select(tracker_reminders.c.sent_at).where(
                tracker_reminders.c.conversation_id == cid
            ),
        )
        assert aware(reminder.sent_at) == morning_after
        # the same day again: nothing new, as the clock has not moved
        assert (await tracker.sweep.run_once())["reminders"] == 0
