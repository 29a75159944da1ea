"""The request lifecycle over HTTP on the real broker and both databases: a cancellation
reaches the clinic's mailbox as a MedCom-valid cancellation and stops the tracker's clock and
reminders; an extension moves the tracker's due date so that the old deadline flags nothing;
a reminder by hand reaches the clinic once a day; the list filters and pages; each action is
in the status timeline."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import orjson
import sqlalchemy as sa

from attest_gateway.infra.db.tables import stages
from attest_gateway.medcom.build import build_attest_reply
from attest_gateway.medcom.model import to_fhir_json
from attest_gateway.medcom.read import read_message
from attest_gateway.tracker.consumer import TrackerState
from attest_gateway.tracker.rules import TrackerRules
from attest_gateway.tracker.sweep import TrackerSweep
from tests.integration.conftest import Harness
from tests.integration.test_tracker_consumer import cpr, mailbox_item, open_item, request, tracked
from tests.support.harness import ATTEST_TEXT, wait_for
from tests.support.medcom_profiles import validate_bundle
from tests.support.people import CLINICIAN

JC, PSY = "jc-koebenhavn", "psyk-kbh"


async def _post(h: Harness, path: str, **kw: Any) -> Any:
    return await h.client.post(f"/jobcenter/v1/attest-requests/{path}", headers=h.auth(JC), **kw)


async def _stages_of(h: Harness, cid: str) -> set[str]:
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(sa.select(stages.c.stage).where(stages.c.conversation_id == cid))
        return set(rows.scalars())


def _sweep(h: Harness) -> TrackerSweep:
    rules = TrackerRules.build(reminder_interval_days=1)
    return TrackerSweep(h.gw, TrackerState(rules, h.gw.catalogue), interval=3600)


async def test_a_cancellation_reaches_the_clinic_and_stops_the_clock(harness: Harness) -> None:
    h = harness
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    accepted = await request(h, cpr=cpr(41), reply_deadline=tomorrow.isoformat())
    cid = accepted["conversation_id"]
    requested = await mailbox_item(h, PSY, lambda i: i["message_id"] == accepted["message_id"])

    first = await _post(h, f"{cid}/cancel")
    assert first.status_code == 200, first.text
    again = await _post(h, f"{cid}/cancel")
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()

    item = await mailbox_item(
        h, PSY, lambda i: i["conversation_id"] == cid and i["message_type"] == "attest-cancellation"
    )
    assert item["message_id"] == first.json()["message_id"]
    bundle = open_item(item, h.client_keys(PSY))
    info = read_message(bundle)
    assert (info.message_type, info.conversation_id, info.cpr) == (
        "attest-cancellation",
        cid,
        cpr(41),
    )
    assert [i for i in validate_bundle(to_fhir_json(bundle)) if i.severity == "error"] == []

    status = await h.get_json(f"/jobcenter/v1/attest-requests/{cid}", JC)
    assert status["stage"] == "cancelled"
    row = await tracked(h, cid, "outcome")
    assert row.outcome == "cancelled"

    # Past the deadline the sweep flags and reminds nothing for it.
    t0 = dt.datetime.combine(tomorrow + dt.timedelta(days=3), dt.time(8), tzinfo=dt.UTC)
    await _sweep(h).run_once(now=t0)
    assert not {"overdue", "reminded"} & await _stages_of(h, cid)

    # The clinic's attest for a cancelled request is refused with its code.
    reply = build_attest_reply(
        author=CLINICIAN,
        request=open_item(requested, h.client_keys(PSY)),
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC),
        text=ATTEST_TEXT,
        pdf=None,
    )
    answered = await h.client.post(
        "/medcom/v1/messages",
        content=orjson.dumps(reply),
        headers={**h.auth(PSY), "Content-Type": "application/fhir+json"},
    )
    assert answered.status_code == 409
    assert answered.json()["code"] == "request-cancelled"

    refused = await _post(h, f"{cid}/remind")
    assert refused.status_code == 409
    assert refused.json()["code"] == "request-cancelled"
    listed = await h.get_json("/jobcenter/v1/attest-requests", JC, params={"status": "cancelled"})
    assert cid in [i["conversation_id"] for i in listed["items"]]
    assert all(i["stage"] == "cancelled" for i in listed["items"])


async def test_an_extension_moves_the_due_date(harness: Harness) -> None:
    h = harness
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    accepted = await request(h, cpr=cpr(42), reply_deadline=tomorrow.isoformat())
    cid = accepted["conversation_id"]
    await tracked(h, cid, "due_date")
    later = tomorrow + dt.timedelta(days=21)
    refused = await _post(h, f"{cid}/extend", json={"reply_deadline": tomorrow.isoformat()})
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid-reply-deadline"
    response = await _post(h, f"{cid}/extend", json={"reply_deadline": later.isoformat()})
    assert response.status_code == 200, response.text
    assert response.json()["reply_deadline"] == later.isoformat()
    replay = await _post(h, f"{cid}/extend", json={"reply_deadline": later.isoformat()})
    assert replay.headers["Idempotent-Replayed"] == "true"

    async def moved() -> bool:
        row = await tracked(h, cid, "due_date")
        return bool(row.due_date >= later)

    await wait_for(moved)
    t0 = dt.datetime.combine(tomorrow + dt.timedelta(days=3), dt.time(8), tzinfo=dt.UTC)
    await _sweep(h).run_once(now=t0)
    assert "overdue" not in await _stages_of(h, cid)
    status = await h.get_json(f"/jobcenter/v1/attest-requests/{cid}", JC)
    assert status["reply_deadline"] == later.isoformat()
    assert ("deadline_extended", later.isoformat()) in [
        (e["stage"], e["detail"]) for e in status["timeline"]
    ]


async def test_a_reminder_by_hand_goes_once_a_day(harness: Harness) -> None:
    h = harness
    accepted = await request(h, cpr=cpr(43))
    cid = accepted["conversation_id"]
    first = await _post(h, f"{cid}/remind")
    assert first.status_code == 200, first.text
    second = await _post(h, f"{cid}/remind")
    assert second.status_code == 409
    assert second.headers["content-type"].startswith("application/problem+json")
    assert second.json()["code"] == "reminder-limit"
    item = await mailbox_item(h, PSY, lambda i: i["message_id"] == first.json()["message_id"])
    assert item["message_type"] == "attest-reminder"
    status = await h.get_json(f"/jobcenter/v1/attest-requests/{cid}", JC)
    assert ("reminded", "manual") in [(e["stage"], e["detail"]) for e in status["timeline"]]


async def test_the_list_pages_with_a_cursor_and_refuses_a_bad_one(harness: Harness) -> None:
    h = harness
    for n in range(3):
        await request(h, cpr=cpr(44 + n))
    page = await h.get_json("/jobcenter/v1/attest-requests", JC, params={"limit": 2})
    assert len(page["items"]) == 2
    rest = await h.get_json(
        "/jobcenter/v1/attest-requests", JC, params={"limit": 2, "cursor": page["next_cursor"]}
    )
    first_ids = {i["conversation_id"] for i in page["items"]}
    assert first_ids.isdisjoint(i["conversation_id"] for i in rest["items"])
    bad = await h.client.get(
        "/jobcenter/v1/attest-requests", params={"cursor": "nonsense"}, headers=h.auth(JC)
    )
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid-cursor"
    theirs = await h.get_json("/jobcenter/v1/attest-requests", "jc-aarhus")
    assert first_ids.isdisjoint(i["conversation_id"] for i in theirs["items"])


async def test_a_cancellation_and_a_reply_at_once_do_not_both_win(harness: Harness) -> None:
    """The job centre cancels while the clinic's attest arrives: one of them is refused with
    its code, whichever came second; a conversation never ends both cancelled and replied."""
    h = harness
    for n in range(8101, 8105):
        accepted = await request(h, cpr=cpr(n))
        cid, mid = accepted["conversation_id"], accepted["message_id"]
        item = await mailbox_item(h, PSY, lambda i, mid=mid: i["message_id"] == mid)
        reply = build_attest_reply(
            author=CLINICIAN,
            request=open_item(item, h.client_keys(PSY)),
            message_id=str(uuid.uuid4()),
            bundle_id=str(uuid.uuid4()),
            sent_at=dt.datetime.now(dt.UTC),
            text=ATTEST_TEXT,
            pdf=None,
        )
        cancelled, answered = await asyncio.gather(
            _post(h, f"{cid}/cancel"),
            h.client.post(
                "/medcom/v1/messages",
                content=orjson.dumps(reply),
                headers={**h.auth(PSY), "Content-Type": "application/fhir+json"},
            ),
        )
        outcome = (cancelled.status_code, answered.status_code)
        assert outcome in ((200, 409), (409, 202)), (cancelled.text, answered.text)
        loser = answered if cancelled.status_code == 200 else cancelled
        expected = "request-cancelled" if cancelled.status_code == 200 else "request-answered"
        assert loser.json()["code"] == expected
        assert {"cancelled", "replied"} - await _stages_of(h, cid)
