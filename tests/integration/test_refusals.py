"""Negative acknowledgements, end to end (real broker, both databases): a clinic's
fatal-error acknowledgement of a request is a refused item in the job centre's inbox with
its reason, the conversation's status says `refused`, and no reminder follows."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa

from attest_gateway.infra.db.tables import stages, tracker_reminders
from attest_gateway.medcom.build import build_acknowledgement
from attest_gateway.tracker.consumer import TrackerState
from attest_gateway.tracker.rules import TrackerRules
from attest_gateway.tracker.sweep import TrackerSweep
from tests.integration.conftest import Harness
from tests.integration.test_tracker_consumer import (
    JC,
    PSY,
    cpr,
    mailbox_item,
    open_item,
    post_bundle,
    request,
    tracked,
)
from tests.support.harness import wait_for

REASON = "Patienten er ikke tilknyttet afdelingen."


async def _refused_inbox_item(h: Harness, cid: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        inbox = await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500})
        return next((i for i in inbox["refused"] if i["conversation_id"] == cid), None)

    return await wait_for(probe)


async def test_a_refused_request_is_in_the_inbox_final_and_never_reminded(
    harness: Harness,
) -> None:
    h = harness
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    accepted = await request(h, cpr=cpr(77), reply_deadline=tomorrow.isoformat())
    cid = accepted["conversation_id"]
    item = await mailbox_item(h, PSY, lambda i: i["message_id"] == accepted["message_id"])
    ack_id = str(uuid.uuid4())
    refusal = build_acknowledgement(
        acked=open_item(item, h.client_keys(PSY)),
        message_id=ack_id,
        bundle_id=str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC),
        code="fatal-error",
        error_code="MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE",
        error_text=REASON,
    )
    await post_bundle(h, PSY, refusal)

    # The job centre's inbox: a refused item with MedCom's code and the clinic's reason.
    got = await _refused_inbox_item(h, cid)
    status_of_request = await h.get_json(f"/jobcenter/v1/attest-requests/{cid}", JC)
    assert got["message_id"] == ack_id
    assert got["code"] == "MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE"
    assert got["reason"] == REASON
    assert got["attest_type"] == status_of_request["attest_type"]
    assert got["sender"]["sor"] == "715381000016006"
    inbox = await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500})
    assert all(i["conversation_id"] != cid for i in inbox["items"])  # not an attest reply

    # Its status says refused, with the code (never the text) as the stage's detail.
    status = await h.get_json(f"/jobcenter/v1/attest-requests/{cid}", JC)
    assert status["stage"] == "refused"
    refused_at = next(e for e in status["timeline"] if e["stage"] == "refused")
    assert refused_at["detail"] == "MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE"

    # The deadline passes: neither overdue nor reminded.
    row = await tracked(h, cid, "due_date")
    rules = TrackerRules.build(reminder_interval_days=1)
    sweep = TrackerSweep(h.gw, TrackerState(rules, h.gw.catalogue), interval=3600)
    t0 = dt.datetime.combine(row.due_date + dt.timedelta(days=1), dt.time(8), tzinfo=dt.UTC)
    for days in range(4):
        await sweep.run_once(now=t0 + dt.timedelta(days=days, hours=days))
    async with h.gw.engine.connect() as conn:
        reached = set(
            (
                await conn.execute(sa.select(stages.c.stage).where(stages.c.conversation_id == cid))
            ).scalars()
        )
        reminders = (
            await conn.execute(
                sa.select(tracker_reminders).where(tracker_reminders.c.conversation_id == cid)
            )
        ).all()
    assert "refused" in reached
    assert not {"overdue", "reminded"} & reached
    assert reminders == []
    mailbox = await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500})
    assert not [
        i
        for i in mailbox["items"]
        if i["conversation_id"] == cid and i["message_type"] == "attest-reminder"
    ]

    # The job centre acknowledges the refusal: it leaves the inbox, nothing is sent on.
    acked = await h.client.post(f"/jobcenter/v1/inbox/{ack_id}/ack", headers=h.auth(JC))
    assert acked.status_code in (200, 202, 204), acked.text
    inbox = await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500})
    assert all(i["conversation_id"] != cid for i in inbox["refused"])
    async with h.gw.engine.connect() as conn:
        reached = set(
            (
                await conn.execute(sa.select(stages.c.stage).where(stages.c.conversation_id == cid))
            ).scalars()
        )
    assert "reply_acknowledged" not in reached
