"""The tracker on the real broker and both databases: timelines from `gateway.tracking`,
idempotent replays, overdue flags and reminders, late requests, missing contact."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer, ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.bootstrap import make_tracker, tracker_rules
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import Stage
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.errors import Unavailable
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import OrgKeys, open_envelope
from attest_gateway.infra.db.engine import aware, make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.tables import (
    stages,
    tracker_cell_citizens,
    tracker_cells,
    tracker_contacts,
    tracker_conversations,
    tracker_counts,
    tracker_durations,
    tracker_episodes,
    tracker_latency,
    tracker_reminders,
    tracker_request_weeks,
)
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.codes import MESSAGE_KIND_SYSTEM
from attest_gateway.medcom.model import Bundle, Communication, Provenance, to_fhir_json
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import read_message
from attest_gateway.tracker.consumer import TrackerHandler, TrackerState
from attest_gateway.tracker.rules import TrackerRules, period_start
from attest_gateway.tracker.store import Cell, add_counts, add_duration, cell_id, with_cells
from attest_gateway.tracker.sweep import TrackerSweep
from tests.integration.conftest import Harness
from tests.support.events import stage_event
from tests.support.harness import (
    ATTEST_TEXT,
    attest_request_body,
    fresh_database,
    read_topic,
    wait_for,
)
from tests.support.kafka import client_args
from tests.support.medcom_profiles import validate_bundle
from tests.support.people import CLINICIAN

JC, PSY, GP = "jc-koebenhavn", "psyk-kbh", "gp-noerrebro"


def cpr(n: int) -> str:
    """A syntactically valid, test-only CPR number (first six digits a date)."""
    return f"{1 + n % 28:02d}0185{n % 10000:04d}"


def open_item(item: dict[str, Any], keys: OrgKeys) -> Bundle:
    envelope = SealedEnvelope.model_validate(item["envelope"])
    key = next(k for k in keys.hpke_keys if k.key_id == envelope.header.recipient_key_id)
    return parse_bundle(orjson.loads(open_envelope(envelope, key)))


async def request(h: Harness, **overrides: Any) -> dict[str, Any]:
    body = attest_request_body(jobcenter_gln=h.gln(JC), **overrides)
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def mailbox_item(h: Harness, org: str, pick: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        items = (await h.get_json("/medcom/v1/mailbox", org, params={"limit": 500}))["items"]
        return next((i for i in items if pick(i)), None)

    return await wait_for(probe)


async def post_bundle(h: Harness, org: str, bundle: dict[str, Any]) -> None:
    response = await h.client.post(
        "/medcom/v1/messages",
        content=orjson.dumps(bundle),
        headers={**h.auth(org), "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 202, response.text


async def answer(h: Harness, accepted: dict[str, Any], org: str = PSY) -> None:
    """The clinic fetches, acknowledges and replies; the job centre reads the reply."""
    item = await mailbox_item(h, org, lambda i: i["message_id"] == accepted["message_id"])
    req = open_item(item, h.client_keys(org))
    now = dt.datetime.now(dt.UTC)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    await post_bundle(
        h,
        org,
        build_acknowledgement(
            acked=req, message_id=ids[0], bundle_id=ids[1], sent_at=now, code="ok"
        ),
    )
    await post_bundle(
        h,
        org,
        build_attest_reply(
            author=CLINICIAN,
            request=req,
            message_id=ids[2],
            bundle_id=ids[3],
            sent_at=now,
            text=ATTEST_TEXT,
            pdf=None,
        ),
    )

    async def read() -> bool:
        items = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
        return any(i["conversation_id"] == accepted["conversation_id"] for i in items)

    await wait_for(read)


async def tracked(h: Harness, cid: str, column: str) -> Any:
    async def probe() -> Any:
        async with h.gw.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(tracker_conversations).where(
                        tracker_conversations.c.conversation_id == cid
                    )
                )
            ).first()
        return row if row is not None and getattr(row, column) is not None else None

    return await wait_for(probe)


@asynccontextmanager
async def scratch_engine(h: Harness, path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty store of the harness's kind of its own (under `path`), for feeding
    tracking records to a tracker directly: the shared store keeps changing under other
    tests' late events and the live sweep."""
    await asyncio.to_thread(path.mkdir, exist_ok=True)
    async with fresh_database(h.kind, path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        try:
            yield engine
        finally:
            await engine.dispose()


def fresh_state(h: Harness) -> TrackerState:
    """A tracker's state as the harness's gateway builds it, knowing no cells yet."""
    return TrackerState(tracker_rules(h.settings), h.gw.catalogue)


def conversation_of(record: ConsumerRecord[bytes, bytes]) -> str:
    """The conversation id a tracking record names in its headers ("" for none)."""
    value: bytes = dict(record.headers).get("conversation-id", b"")
    return value.decode()


async def snapshot(h: Harness) -> dict[str, list[Any]]:
    return await snapshot_of(h.gw.engine)


async def snapshot_of(engine: AsyncEngine) -> dict[str, list[Any]]:
    out = {}
    async with engine.connect() as conn:
        for table in (tracker_conversations, tracker_episodes):
            rows = await conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(r) for r in rows]
        for table in (tracker_counts, tracker_durations, tracker_cell_citizens):
            # by their cells' columns, as the reports read them
            out[table.name] = [tuple(r) for r in await conn.execute(with_cells(table))]
        # a request's open count that went up and down again (answered later) stays as 0
        rows = await conn.execute(with_cells(tracker_latency))
        out[tracker_latency.name] = [tuple(r) for r in rows if r.n != 0]
        rows = await conn.execute(with_cells(tracker_request_weeks))
        out[tracker_request_weeks.name] = [tuple(r) for r in rows]
    return out


async def test_timeline_of_a_conversation_matches_its_stages(harness: Harness) -> None:
    h = harness
    first_day = dt.date.today() - dt.timedelta(days=70)  # past week 8: a late request
    accepted = await request(h, cpr=cpr(1), first_day_of_absence=first_day.isoformat())
    cid = accepted["conversation_id"]
    await answer(h, accepted)
    row = await tracked(h, cid, "reply_fetched_at")

    async with h.gw.engine.connect() as conn:
        recorded = {
            r.stage: aware(r.at)
            for r in await conn.execute(sa.select(stages).where(stages.c.conversation_id == cid))
        }
    for stage in (
        Stage.SUBMITTED,
        Stage.IN_MAILBOX,
        Stage.FETCHED,
        Stage.ACKNOWLEDGED,
        Stage.REPLIED,
        Stage.REPLY_IN_INBOX,
        Stage.REPLY_FETCHED,
    ):
        assert aware(getattr(row, f"{stage.value}_at")) == recorded[stage.value], stage
    assert row.requested_late is True
    assert row.outcome == "on_time"
    assert row.receiver_role == "psychiatry"
    assert row.due_date >= dt.date.today() + dt.timedelta(days=50)  # LÆ 155: two months

    # The request to psychiatry is a direct contact, but it came after the 8-week window.
    async with h.gw.engine.connect() as conn:
        episode = (
            await conn.execute(
                sa.select(tracker_episodes).where(tracker_episodes.c.case_ref == row.case_ref)
            )
        ).one()
    assert episode.first_contact_at is not None
    assert episode.window_end == first_day + dt.timedelta(days=55)
    assert episode.outcome in (None, "no_contact")  # settled by the sweep, never as contact


async def test_replayed_events_change_nothing(harness: Harness, tmp_path: Path) -> None:
    """A conversation's events applied once, then replayed out of order, leave the tracker's
    tables as they were. On a store of its own: the shared one keeps changing under other
    tests' late events and the live sweep, which would hide (or fake) a difference."""
    h = harness
    accepted = await request(h, cpr=cpr(2))
    cid = accepted["conversation_id"]
    await answer(h, accepted)
    await tracked(h, cid, "reply_fetched_at")
    records = [
        r for r in await read_topic(h.bootstrap, h.gw.topics.tracking) if r.key == cid.encode()
    ]
    assert len(records) >= 7
    async with scratch_engine(h, tmp_path) as engine:
        handler = TrackerHandler(engine, fresh_state(h))
        for record in records:
            await handler(record)
        before = await snapshot_of(engine)
        assert before["tracker_conversations"]
        assert before["tracker_counts"]
        for record in reversed(records):  # replayed, and out of order
            await handler(record)
        assert await snapshot_of(engine) == before


async def test_events_in_any_order_give_the_same_rollups(harness: Harness) -> None:
    """A fresh tracker state fed the same events backwards ends where the live one did."""
    h = harness
    accepted = await request(h, cpr=cpr(3))
    cid = accepted["conversation_id"]
    await answer(h, accepted)
    live = await tracked(h, cid, "reply_fetched_at")
    records = [
        r for r in await read_topic(h.bootstrap, h.gw.topics.tracking) if r.key == cid.encode()
    ]
    async with h.gw.engine.begin() as conn:
        await conn.execute(
            tracker_conversations.delete().where(tracker_conversations.c.conversation_id == cid)
        )
    handler = TrackerHandler(h.gw.engine, fresh_state(h))
    for record in reversed(records):
        await handler(record)
    again = await tracked(h, cid, "reply_fetched_at")
    assert again._mapping == live._mapping


async def test_overdue_requests_are_flagged_and_reminded_at_most_twice(harness: Harness) -> None:
    h = harness
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    accepted = await request(h, cpr=cpr(4), reply_deadline=tomorrow.isoformat())
    cid = accepted["conversation_id"]
    await mailbox_item(h, PSY, lambda i: i["message_id"] == accepted["message_id"])
    row = await tracked(h, cid, "due_date")
    assert row.due_date >= tomorrow

    # One-day spacing, so that the whole test stays within days of now.
    rules = TrackerRules.build(reminder_interval_days=1)
    sweep = TrackerSweep(h.gw, TrackerState(rules, h.gw.catalogue), interval=3600)
    t0 = dt.datetime.combine(row.due_date + dt.timedelta(days=1), dt.time(8), tzinfo=dt.UTC)

    done = await sweep.run_once(now=t0)
    assert done["overdue"] >= 1
    assert done["reminders"] >= 1
    flagged = await tracked(h, cid, "overdue_at")
    assert flagged.outcome == "overdue"
    reminder = await mailbox_item(
        h, PSY, lambda i: i["conversation_id"] == cid and i["message_type"] == "attest-reminder"
    )
    bundle = open_item(reminder, h.client_keys(PSY))
    info = read_message(bundle)
    assert info.message_type == "attest-reminder"
    assert info.conversation_id == cid
    assert info.receiver.sor == "715381000016006"
    # The Patient and the caseworker come from the gateway's sealed copy of the request: the
    # reminder validates against the MedCom profiles with no error.
    assert info.cpr == cpr(4)
    errors = [i for i in validate_bundle(to_fhir_json(bundle)) if i.severity == "error"]
    assert errors == []
    chain = [e.what.reference for p in bundle.resources(Provenance) for e in p.entity]
    assert f"MessageHeader/{accepted['message_id']}" in chain
    kinds = {
        c.code
        for c in (
            info_coding
            for communication in bundle.resources(Communication)
            if communication.topic is not None
            for info_coding in communication.topic.coding
        )
        if c.system == MESSAGE_KIND_SYSTEM
    }
    assert kinds == {"reminder"}

    # Not again the same day; again after the interval; never more than the maximum.
    await sweep.run_once(now=t0 + dt.timedelta(hours=2))
    await sweep.run_once(now=t0 + dt.timedelta(days=1, hours=1))
    await sweep.run_once(now=t0 + dt.timedelta(days=2, hours=2))
    await sweep.run_once(now=t0 + dt.timedelta(days=3, hours=3))
    async with h.gw.engine.connect() as conn:
        sent = (
            await conn.execute(
                sa.select(tracker_reminders.c.seq).where(tracker_reminders.c.conversation_id == cid)
            )
        ).scalars()
        assert sorted(sent) == [1, 2]
        stage_rows = (
            await conn.execute(sa.select(stages.c.stage).where(stages.c.conversation_id == cid))
        ).scalars()
        assert {"overdue", "reminded"} <= set(stage_rows)

    # The clinic acknowledges the reminder like any message: accepted, and it leaves the mailbox.
    now = dt.datetime.now(dt.UTC)
    ack = build_acknowledgement(
        acked=bundle,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=now,
        code="ok",
    )
    await post_bundle(h, PSY, ack)
    await post_bundle(h, PSY, ack)  # the duplicate gets the identical answer
    items = (await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500}))["items"]
    assert reminder["message_id"] not in {i["message_id"] for i in items}

    async def two_reminders_counted() -> bool:
        r = await tracked(h, cid, "last_reminded_at")
        return bool(r.reminders == 2)

    await wait_for(two_reminders_counted)


async def test_missing_contact_is_flagged_and_registered_contact_counts(harness: Harness) -> None:
    h = harness
    long_ago = dt.date.today() - dt.timedelta(days=120)
    recent = dt.date.today() - dt.timedelta(days=10)
    gp = {"ydernummer": "012345"}
    # A: psychiatric course, only a GP asked, window closed: no contact.
    a = await request(
        h, cpr=cpr(11), receiver=gp, attest_type="LÆ 265", first_day_of_absence=long_ago.isoformat()
    )
    # B: the same, but the job centre registers a meeting with psychiatry within the window.
    b = await request(
        h, cpr=cpr(12), receiver=gp, attest_type="LÆ 265", first_day_of_absence=long_ago.isoformat()
    )
    contact = {
        "municipality": "101",
        "citizen_cpr": cpr(12),
        "psychiatry_sor": "715381000016006",
        "case_kind": "sygedagpenge",
        "first_day_of_absence": long_ago.isoformat(),
        "contact_date": (long_ago + dt.timedelta(days=20)).isoformat(),
        "channel": "meeting",
    }
    headers = {**h.auth(JC), "Idempotency-Key": f"contact-{uuid.uuid4()}"}
    first = await h.client.post("/jobcenter/v1/contacts", json=contact, headers=headers)
    assert first.status_code == 201, first.text
    again = await h.client.post("/jobcenter/v1/contacts", json=contact, headers=headers)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    # C: a request to psychiatry (a direct message) inside an open window: contact.
    c = await request(h, cpr=cpr(13), first_day_of_absence=recent.isoformat())
    # D: no psychiatric course: outside the measure.
    d = await request(
        h,
        cpr=cpr(14),
        receiver=gp,
        attest_type="LÆ 265",
        psychiatric_course=False,
        first_day_of_absence=long_ago.isoformat(),
    )

    refs = {}
    for name, acc in (("a", a), ("b", b), ("c", c), ("d", d)):
        refs[name] = (await tracked(h, acc["conversation_id"], "submitted_at")).case_ref

    assert h.running.tracker is not None
    await h.running.tracker.sweep.run_once()

    async def outcomes() -> dict[str, str | None] | None:
        # The registered contact travels over Kafka and may reach the tracker after the sweep has
        # settled B as without contact; either way B must end with its contact applied.
        async with h.gw.engine.connect() as conn:
            rows = (await conn.execute(sa.select(tracker_episodes))).all()
        found = {name: r.outcome for name, ref in refs.items() for r in rows if r.case_ref == ref}
        b_contact = any(r.case_ref == refs["b"] and r.first_contact_at for r in rows)
        return found if b_contact and found.get("a") and found.get("c") else None

    found = await wait_for(outcomes)
    assert found == {"a": "no_contact", "b": "contact", "c": "contact"}

    async with h.gw.engine.connect() as conn:
        b_episode = (
            await conn.execute(
                sa.select(tracker_episodes).where(tracker_episodes.c.case_ref == refs["b"])
            )
        ).one()
        registered = (
            await conn.execute(
                sa.select(tracker_contacts).where(tracker_contacts.c.case_ref == refs["b"])
            )
        ).all()
    assert b_episode.contact_source == "registered"
    assert len(registered) == 1


async def test_a_contact_registered_after_the_window_was_settled_corrects_it(
    harness: Harness,
) -> None:
    h = harness
    first_day = dt.date.today() - dt.timedelta(days=200)
    gp = {"ydernummer": "012345"}
    accepted = await request(
        h,
        cpr=cpr(15),
        receiver=gp,
        attest_type="LÆ 265",
        first_day_of_absence=first_day.isoformat(),
    )
    ref = (await tracked(h, accepted["conversation_id"], "submitted_at")).case_ref
    assert h.running.tracker is not None
    ep = tracker_episodes

    async def episode(*outcomes: str | None) -> Any:
        async with h.gw.engine.connect() as conn:
            row = (await conn.execute(sa.select(ep).where(ep.c.case_ref == ref))).first()
        return row if row is not None and row.outcome in outcomes else None

    # The gateway's own periodic sweep may settle the window before this test's sweep does.
    await wait_for(lambda: episode(None, "no_contact"))
    await h.running.tracker.sweep.run_once()
    settled = await wait_for(lambda: episode("no_contact"))
    counts_by_cell = with_cells(tracker_counts).subquery()
    national = (
        (counts_by_cell.c.grain == "national")
        & (counts_by_cell.c.period_kind == "week")
        & (counts_by_cell.c.period_start == period_start(settled.window_end, "week"))
        & (counts_by_cell.c.attest_type == "-")
    )

    async def counts() -> tuple[int, int]:
        async with h.gw.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        counts_by_cell.c.contact_decided, counts_by_cell.c.contact_covered
                    ).where(national)
                )
            ).one()
        return int(row.contact_decided), int(row.contact_covered)

    before = await counts()
    contact = {
        "municipality": "101",
        "citizen_cpr": cpr(15),
        "psychiatry_sor": "715381000016006",
        "case_kind": "sygedagpenge",
        "first_day_of_absence": first_day.isoformat(),
        "contact_date": (first_day + dt.timedelta(days=10)).isoformat(),
        "channel": "phone",
    }
    response = await h.client.post("/jobcenter/v1/contacts", json=contact, headers=h.auth(JC))
    assert response.status_code == 201, response.text

    corrected = await wait_for(lambda: episode("contact"))
    assert corrected.contact_source == "registered"
    decided, covered = await counts()
    assert (decided, covered) == (before[0], before[1] + 1)


async def test_a_contact_for_someone_elses_municipality_is_refused(harness: Harness) -> None:
    h = harness
    body = {
        "municipality": "751",
        "citizen_cpr": cpr(20),
        "psychiatry_sor": "715381000016006",
        "case_kind": "sygedagpenge",
        "first_day_of_absence": "2026-01-05",
        "contact_date": "2026-01-20",
    }
    response = await h.client.post("/jobcenter/v1/contacts", json=body, headers=h.auth(JC))
    assert response.status_code == 403
    assert response.json()["code"] == "jobcenter-mismatch"
    body |= {"municipality": "101", "psychiatry_sor": "486711000016004"}  # a GP, not psychiatry
    response = await h.client.post("/jobcenter/v1/contacts", json=body, headers=h.auth(JC))
    assert response.status_code == 422
    assert response.json()["code"] == "unknown-receiver"


async def test_an_unreadable_tracking_record_is_dead_lettered(harness: Harness) -> None:
    h = harness
    producer = AIOKafkaProducer(**client_args(h.bootstrap))
    await producer.start()
    marker = f"garbage-{uuid.uuid4()}".encode()
    try:
        await producer.send_and_wait(h.gw.topics.tracking, value=b"{not json", key=marker)
    finally:
        await producer.stop()

    async def dead_lettered() -> Any:
        records = await read_topic(h.bootstrap, h.gw.topics.dead_letter)
        return next((r for r in records if r.key == marker), None)

    record = await wait_for(dead_lettered)
    assert dict(record.headers)["dlq-reason"] == b"invalid-tracking-event"


async def test_a_stored_date_at_the_calendar_s_end_does_not_poison_the_tracker(
    harness: Harness,
) -> None:
    """Events of a conversation accepted before the API bounded its dates (first day of absence
    and reply deadline 9999-12-31), on the topic as the gateway wrote them: the live tracker
    applies every one (no OverflowError, nothing dead-lettered); the deadline, the follow-up
    limit and the contact window stay at the calendar's last day, so the conversation is never
    overdue or late and its window never closes."""
    h = harness
    cid = str(uuid.uuid4())
    now = SystemClock().now()
    first = stage_event(pseudonyms.case_ref(cpr(40), h.gw.pseudonym_key)).model_copy(
        update={
            "conversation_id": cid,
            "message_id": str(uuid.uuid4()),
            "at": now,
            "attest_type": "LÆ 225",
            "jobcenter_org": JC,
            "receiver_org": GP,
            "first_day_of_absence": dt.date.max,
            "reply_deadline": dt.date.max,
        }
    )
    events = [first] + [
        first.model_copy(
            update={
                "event_id": str(uuid.uuid4()),
                "stage": stage,
                "at": now + dt.timedelta(seconds=n),
            }
        )
        for n, stage in enumerate((Stage.IN_MAILBOX, Stage.REPLIED), start=1)
    ]
    producer = AIOKafkaProducer(**client_args(h.bootstrap))
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                h.gw.topics.tracking,
                value=event.model_dump_json().encode(),
                key=cid.encode(),
                headers=[  # as the gateway writes them (the contract test reads the topic)
                    ("content-type", b"application/json"),
                    ("schema-version", b"1"),
                    ("message-type", b"stage"),
                    ("conversation-id", cid.encode()),
                ],
            )
    finally:
        await producer.stop()

    row = await tracked(h, cid, "replied_at")
    assert row.in_mailbox_at is not None
    assert row.due_date == dt.date.max
    assert row.requested_late is False
    assert row.outcome == "on_time"
    async with h.gw.engine.connect() as conn:
        episode = (
            await conn.execute(
                sa.select(tracker_episodes).where(tracker_episodes.c.case_ref == row.case_ref)
            )
        ).one()
    assert episode.window_end == dt.date.max
    dead = await read_topic(h.bootstrap, h.gw.topics.dead_letter)
    assert not [r for r in dead if r.key == cid.encode()]


@pytest.mark.parametrize("column", ["case_ref"])
async def test_no_cpr_number_in_any_tracker_table(harness: Harness, column: str) -> None:
    h = harness
    accepted = await request(h, cpr=cpr(30))
    await tracked(h, accepted["conversation_id"], "submitted_at")
    numbers = {cpr(n) for n in (1, 2, 3, 4, 11, 12, 13, 14, 30)}
    async with h.gw.engine.connect() as conn:
        for table in (
            tracker_conversations,
            tracker_reminders,
            tracker_episodes,
            tracker_contacts,
            tracker_cells,
            tracker_counts,
            tracker_durations,
            tracker_latency,
            tracker_request_weeks,
            tracker_cell_citizens,
        ):
            for row in await conn.execute(sa.select(table)):
                text = " ".join(str(v) for v in row)
                assert not any(n in text for n in numbers), table.name


async def test_a_batch_gives_the_same_rollups_as_one_event_at_a_time(
    harness: Harness, tmp_path: Path
) -> None:
    """The consumer loop hands the tracker a partition's polled records at once; the rollups it
    writes in one go must be exactly those of the events applied one by one. A batch costs a
    few statements, not some per event: a replay of a known batch only reads."""
    h = harness
    accepted = [await request(h, cpr=cpr(40 + i)) for i in range(3)]
    for acc in accepted:
        await answer(h, acc)
    for acc in accepted:
        await tracked(h, acc["conversation_id"], "reply_fetched_at")
    records = [
        r
        for r in await read_topic(h.bootstrap, h.gw.topics.tracking)
        if r.value and r.value.startswith(b'{"')  # not the garbage another test sent
    ]
    garbage = dataclasses.replace(records[5], value=b"{not json", offset=-1)
    mixed = [*records[:5], garbage, *records[5:]]

    async def applied(batched: bool, sub: str) -> dict[str, list[Any]]:
        async with scratch_engine(h, tmp_path / sub) as engine:
            state = fresh_state(h)
            handler = TrackerHandler(engine, state)
            if batched:
                left = []
                for start in range(0, len(mixed), 40):
                    left += await handler.handle_batch(mixed[start : start + 40])
                assert left == [garbage]  # left for the loop to dead-letter on its own
                sent: list[str] = []

                def count(*args: Any) -> None:
                    sent.append(args[2])

                sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
                assert await handler.handle_batch(mixed) == [garbage]  # a replay: no change
                sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
                # the known conversations: an insert that inserts nothing, one locked read
                # (contact registrations on the topic, from other tests, each check their
                # citizen's episode)
                about_conversations = [s for s in sent if "tracker_episodes" not in s]
                assert len(about_conversations) == 2, about_conversations
                assert about_conversations[0].startswith("INSERT INTO tracker_conversations")
                assert about_conversations[1].startswith("SELECT")
            else:
                for record in records:
                    await handler(record)
            return await snapshot_of(engine)

    one_by_one = await applied(False, "one")
    together = await applied(True, "batch")
    assert one_by_one["tracker_counts"]
    assert together == one_by_one


async def test_cell_ids_are_looked_up_again_after_a_failed_batch(
    harness: Harness, tmp_path: Path
) -> None:
    """A tracker remembers the ids of the rollup cells it wrote. If the store loses them under
    it (here: emptied, as by a restore), the batch fails once (a retryable error), the
    tracker forgets every id, and the retry writes the same rollups as a fresh tracker."""
    h = harness
    accepted = await request(h, cpr=cpr(50))
    await answer(h, accepted)
    await tracked(h, accepted["conversation_id"], "reply_fetched_at")
    records = [
        r
        for r in await read_topic(h.bootstrap, h.gw.topics.tracking)
        if r.value and r.value.startswith(b'{"')
    ]
    async with scratch_engine(h, tmp_path) as engine:
        state = fresh_state(h)
        handler = TrackerHandler(engine, state)
        await handler.handle_batch(records)
        expected = await snapshot_of(engine)
        assert len(state.cells) > 0
        async with engine.begin() as conn:
            for table in (
                tracker_cell_citizens,
                tracker_latency,
                tracker_request_weeks,
                tracker_durations,
                tracker_counts,
                tracker_cells,
                tracker_episodes,
                tracker_conversations,
            ):
                await conn.execute(table.delete())
        with pytest.raises(Unavailable):
            await handler.handle_batch(records)  # the remembered cells are gone
        assert len(state.cells) == 0
        await handler.handle_batch(records)
        assert await snapshot_of(engine) == expected


async def test_consumers_of_one_group_at_once_give_the_same_rollups_as_one(
    harness: Harness, tmp_path: Path
) -> None:
    """`TRACKER_CONSUMERS` > 1: the consumers of one group apply the polls of their own
    partitions in transactions of their own, at the same time, and share the rollup rows and,
    for a citizen whose conversations sit in two partitions, the contact episode and the
    citizen memberships. Split as a group splits the topic (each conversation wholly on one
    side), applied concurrently in small batches, the store must end as one consumer leaves
    it."""
    h = harness
    shared = cpr(60)  # one citizen, a conversation on each side
    accepted = [await request(h, cpr=shared), await request(h, cpr=shared)]
    accepted += [await request(h, cpr=cpr(61 + i)) for i in range(2)]
    for acc in accepted:
        await answer(h, acc)
    for acc in accepted:
        await tracked(h, acc["conversation_id"], "reply_fetched_at")
    ids = [acc["conversation_id"] for acc in accepted]
    records = [
        r for r in await read_topic(h.bootstrap, h.gw.topics.tracking) if conversation_of(r) in ids
    ]
    sides = [
        [r for r in records if conversation_of(r) in (ids[0], ids[2])],
        [r for r in records if conversation_of(r) in (ids[1], ids[3])],
    ]
    assert all(sides)
    assert sum(map(len, sides)) == len(records)

    async def applied(concurrent: bool, sub: str) -> dict[str, list[Any]]:
        async with scratch_engine(h, tmp_path / sub) as engine:
            state = fresh_state(h)
            if not concurrent:
                assert await TrackerHandler(engine, state).handle_batch(records) == []
                return await snapshot_of(engine)

            async def consume(side: list[Any]) -> None:
                handler = TrackerHandler(engine, state)  # one per consumer, state shared
                for start in range(0, len(side), 3):
                    assert await handler.handle_batch(side[start : start + 3]) == []

            await asyncio.gather(*(consume(side) for side in sides))
            return await snapshot_of(engine)

    one = await applied(False, "one")
    two = await applied(True, "two")
    assert one["tracker_cell_citizens"]
    assert one["tracker_episodes"]
    assert two == one


async def test_tracker_consumers_are_members_of_one_group(harness: Harness) -> None:
    """`TRACKER_CONSUMERS`: that many consumer loops on the tracking topic, one group, one
    shared state; the running gateway's own tracker has the default, one."""
    h = harness
    settings = h.settings.model_copy(update={"tracker_consumers": 3})
    tracker = make_tracker(dataclasses.replace(h.gw, settings=settings), h.bootstrap)
    try:  # not started
        assert len(tracker.consumers) == 3
        groups = {loop._consumer._group_id for loop in tracker.consumers}
        assert groups == {f"{h.settings.kafka_group_prefix}.tracker"}
        assert {loop.topic for loop in tracker.consumers} == {h.gw.topics.tracking}
        handlers = [loop._handler for loop in tracker.consumers]
        assert all(isinstance(x, TrackerHandler) for x in handlers)
        assert all(x._state is tracker.state for x in handlers)  # type: ignore[attr-defined]
        assert h.running.tracker is not None
        assert len(h.running.tracker.consumers) == 1
        assert h.running.tracker.consumers[0] in h.running.consumers
    finally:
        await asyncio.gather(*(loop.stop() for loop in tracker.consumers))


async def test_a_new_rollup_cell_is_committed_before_the_transaction_that_writes_to_it(
    harness: Harness, tmp_path: Path
) -> None:
    """PostgreSQL: a flush makes sure of its new cells in a short transaction of its own, so a
    second tracker transaction that needs the same new cell does not wait for the first to
    commit (inside the first, it waited: every new week's cells held all consumers but one).
    A cell whose writer then rolls back stays, without rollup rows, which the reports (joined
    from the rollups) never see."""
    h = harness
    if h.kind != "postgres":
        pytest.skip("SQLite has one writer: the cell is part of its transaction")
    cell: Cell = ("national", "month", dt.date(2026, 1, 1), "LÆ 265", "DK")
    async with scratch_engine(h, tmp_path) as engine:
        async with engine.connect() as first:
            await first.begin()
            await add_counts(first, [cell], requests=1)  # not committed yet
            async with engine.begin() as second:
                await second.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
                await add_duration(second, "request_to_reply", [cell], 3)
            await first.rollback()
        async with engine.connect() as conn:
            cells = (await conn.execute(sa.select(tracker_cells.c.id))).scalars().all()
            assert cells == [cell_id(cell)]
            assert (await conn.execute(sa.select(tracker_counts))).all() == []
            durations = (await conn.execute(with_cells(tracker_durations))).all()
            assert [tuple(d) for d in durations] == [(*cell, "request_to_reply", 3, 1)]
