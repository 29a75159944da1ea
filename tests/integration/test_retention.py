"""Retention on the real store (SQLite and PostgreSQL), with the clock moved by hand past each
retention period: replay detection that outlives the mailbox, finished conversations and what
belongs to them removed while open ones stay, the tracker's timelines removed while its
aggregates stay, and an audit chain pruned up to signed checkpoints that still verifies (and
still finds tampering).

The Kafka hop is left out: envelopes are taken from the outbox and handed to the delivery use
case, as in test_use_cases_on_both.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import pytest_asyncio
import sqlalchemy as sa
from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from attest_gateway.bootstrap import tracker_rules
from attest_gateway.config import Settings, load_settings
from attest_gateway.contracts.audit import AuditEntry
from attest_gateway.contracts.cases import CaseIn
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.audit import CASE_ERASE, AuditEvent
from attest_gateway.core.errors import ErrorCode, Replay, Unknown
from attest_gateway.crypto import pseudonyms
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.entrypoints.cli.audit import covered
from attest_gateway.infra.db import audit, directory, tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.housekeeping import retention
from attest_gateway.infra.housekeeping.retention import prune_store
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.services import cases, closures
from attest_gateway.services.closures import CaseClosed, CaseCloseIn
from attest_gateway.services.contacts import ContactIn
from attest_gateway.services.delivery import check_envelope, deliver, deliver_many
from attest_gateway.tracker.consumer import TrackerHandler, TrackerState
from attest_gateway.tracker.report import Filters
from attest_gateway.tracker.report import report as tracker_report
from tests.integration.conftest import DB_KINDS, Harness
from tests.support.harness import CPR, CPR_2, attest_request_body, fresh_database
from tests.support.world import GATEWAY, JC, PSY, World, make_world

TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
DAY = dt.timedelta(days=1)


@dataclass
class Db:
    world: World
    engine: AsyncEngine
    store: SqlStore
    settings: Settings

    async def prune(self, **settings: object) -> dict[str, int]:
        chosen = self.settings.model_copy(update=settings)
        report = await prune_store(self.engine, chosen, TOPICS, self.world.clock.now())
        return report.counts

    async def count(self, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
        async with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(table).where(*where)
            return int((await conn.execute(query)).scalar_one())


@pytest_asyncio.fixture(params=DB_KINDS)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Db]:
    world = make_world()
    kind: str = request.param
    async with fresh_database(kind, tmp_path_factory.mktemp(f"retention-{kind}")) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        writes = GroupCommit(engine)
        try:
            async with engine.begin() as conn:
                for org in world.orgs.values():
                    await directory.add_organisation(
                        conn, org, world.keys(org.id), api_key=None,
                        now=world.clock.now() - 1000 * DAY,
                    )  # fmt: skip
            world.store = SqlStore(engine, TOPICS, writes)  # type: ignore[assignment]
            settings = load_settings(database_url=url, prune_batch_size=2)
            yield Db(world, engine, SqlStore(engine, TOPICS, writes), settings)
        finally:
            await writes.drain()
            await engine.dispose()


async def _outbox_envelopes(db: Db, message_type: MessageType) -> list[SealedEnvelope]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.outbox.c.value)
            .where(tables.outbox.c.topic == TOPICS.medcom_messages)
            .order_by(tables.outbox.c.id)
        )
        found = [SealedEnvelope.from_json(r.value) for r in rows]
    return [e for e in found if e.header.message_type is message_type]


async def _deliver(db: Db, envelope: SealedEnvelope) -> bool:
    now = db.world.clock.now()
    async with db.store.transaction() as uow:
        await check_envelope(uow.directory, envelope, GATEWAY, now)
        return await deliver(uow, envelope, now)


async def _requested(db: Db, key: str | None = None, **body: Any) -> SealedEnvelope:
    """A job centre's request, accepted and delivered to the clinic's mailbox."""
    accepted, _ = await db.world.request_attest(idempotency_key=key, **body)
    [request] = [
        e
        for e in await _outbox_envelopes(db, MessageType.ATTEST_REQUEST)
        if e.header.message_id == accepted.message_id
    ]
    assert await _deliver(db, request)
    return request


# --- replay protection that outlives the mailbox ---------------------------------------------


async def test_a_message_id_is_known_after_its_mailbox_entry_was_pruned(db: Db) -> None:
    w = db.world
    request = await _requested(db)
    h = request.header
    async with db.store.transaction() as uow:
        assert await uow.mailbox.collect(h.message_id, w.clock.now())
    w.clock.advance(db.settings.mailbox_retention_seconds * dt.timedelta(seconds=1) + DAY)
    assert (await db.prune()).get("mailbox") == 1
    assert await db.count(tables.mailbox, tables.mailbox.c.message_id == h.message_id) == 0

    # the same envelope again (a consumer rewound, a late copy): recognised, not delivered
    assert not await _deliver(db, request)
    assert await db.count(tables.mailbox, tables.mailbox.c.message_id == h.message_id) == 0
    async with db.store.transaction() as uow:  # nor by the batch path
        assert await deliver_many(uow, [request], GATEWAY, w.clock.now()) == []

    # another message under the same MessageHeader.id: a replay
    forged = w.sealed(
        b"{}", to=PSY, by=GATEWAY, message_id=h.message_id, bundle_id=str(uuid.uuid4()),
        conversation_id=h.conversation_id, message_type=MessageType.ATTEST_REMINDER, sender=JC,
    )  # fmt: skip
    with pytest.raises(Replay) as refused:
        await _deliver(db, forged)
    assert refused.value.code is ErrorCode.REPLAYED_MESSAGE_ID

    # a new MessageHeader.id that reuses the Bundle.id: a replay too
    reused_bundle = w.sealed(
        b"{}", to=PSY, by=GATEWAY, message_id=str(uuid.uuid4()), bundle_id=h.bundle_id,
        conversation_id=h.conversation_id, message_type=MessageType.ATTEST_REMINDER, sender=JC,
    )  # fmt: skip
    with pytest.raises(Replay):
        await _deliver(db, reused_bundle)
    assert (
        await db.count(tables.mailbox, tables.mailbox.c.conversation_id == h.conversation_id) == 0
    )

    # a submission at the API reusing either id is refused before it is accepted
    async with db.store.reading() as uow:
        assert await uow.inbound.carried_before(h.message_id, str(uuid.uuid4()))
        assert await uow.inbound.carried_before(str(uuid.uuid4()), h.bundle_id)
        assert not await uow.inbound.carried_before(str(uuid.uuid4()), str(uuid.uuid4()))

    # the seen ids go after their own, longer retention period
    w.clock.advance(db.settings.seen_ids_retention_seconds * dt.timedelta(seconds=1))
    assert (await db.prune()).get("seen_ids") == 2
    assert await _deliver(db, request)  # forgotten: delivered as new


# --- finished conversations, sealed CPR numbers, idempotency records ------------------------


async def _finish(db: Db, request: SealedEnvelope) -> None:
    """Record the conversation's final stage (as the job centre's acknowledgement of the
    reply would) and settle its sent copy."""
    now = db.world.clock.now()
    async with db.store.transaction() as uow:
        conv = await uow.conversations.get(request.header.conversation_id)
        assert conv is not None
        await uow.stages.record(
            conv, Stage.REPLY_ACKNOWLEDGED, message_id=str(uuid.uuid4()),
            message_type=MessageType.ACKNOWLEDGEMENT, at=now,
        )  # fmt: skip
        await uow.sent.acknowledge(request.header.message_id, now)


async def _sealed_cpr(db: Db, conversation_id: str) -> str | None:
    conv = tables.conversations.c
    async with db.engine.connect() as conn:
        sealed: str | None = await conn.scalar(
            sa.select(conv.citizen_sealed).where(conv.id == conversation_id)
        )
    return sealed


async def test_finished_conversations_go_after_their_retention_and_open_ones_stay(db: Db) -> None:
    w = db.world
    finished = [await _requested(db, key=f"k-{i}") for i in range(3)]
    still_open = await _requested(db, key="k-open")
    for request in finished:
        await _finish(db, request)
    done_ids = [r.header.conversation_id for r in finished]
    open_id = still_open.header.conversation_id
    conv = tables.conversations.c

    w.clock.advance(100 * DAY)
    counts = await db.prune(conversation_retention_days=365, sealed_cpr_retention_days=90)
    assert counts.get("sealed_cpr_cleared") == 3  # the finished ones' only
    assert counts.get("idempotency_keys") == 4  # 30 days: all of them, open or not
    assert counts.get("sent_messages") == 3  # settled copies only
    assert "conversations" not in counts
    for cid in done_ids:
        assert await _sealed_cpr(db, cid) is None
    assert await _sealed_cpr(db, open_id) is not None

    w.clock.advance(300 * DAY)
    counts = await db.prune(conversation_retention_days=365, sealed_cpr_retention_days=90)
    assert counts.get("conversations") == 3
    assert await db.count(tables.conversations, conv.id.in_(done_ids)) == 0
    for table in (tables.stages, tables.mailbox):
        assert await db.count(table, table.c.conversation_id.in_(done_ids)) == 0
    # the open conversation keeps everything it has, however old
    assert await db.count(tables.conversations, conv.id == open_id) == 1
    assert await db.count(tables.stages, tables.stages.c.conversation_id == open_id) == 2
    assert await db.count(tables.sent_messages, tables.sent_messages.c.conversation_id == open_id)
    assert await _sealed_cpr(db, open_id) is not None


async def test_an_acknowledged_requests_copy_stays_while_its_conversation_is_open(
    db: Db,
) -> None:
    """A reminder copies the Patient and the caseworker from the gateway's copy of the
    request: the copy of a request the clinic acknowledged stays while no reply has been
    acknowledged, however long past SENT_COPY_RETENTION_DAYS."""
    w = db.world
    request = await _requested(db, key="k-acked")
    sent = tables.sent_messages.c
    async with db.store.transaction() as uow:  # the clinic's acknowledgement of the request
        await uow.sent.acknowledge(request.header.message_id, w.clock.now())

    w.clock.advance(100 * DAY)
    counts = await db.prune(conversation_retention_days=365, sealed_cpr_retention_days=300)
    assert "sent_messages" not in counts
    assert await db.count(tables.sent_messages, sent.message_id == request.header.message_id)

    await _finish(db, request)
    w.clock.advance(db.settings.sent_copy_retention_days * DAY + dt.timedelta(seconds=1))
    counts = await db.prune(conversation_retention_days=365, sealed_cpr_retention_days=300)
    assert counts.get("sent_messages") == 1
    assert not await db.count(tables.sent_messages, sent.message_id == request.header.message_id)


# --- the tracker: timelines go, aggregates stay ------------------------------------------


async def test_the_trackers_timelines_go_and_its_aggregates_stay(db: Db) -> None:
    w = db.world
    old = w.clock.now().date() - 500 * DAY
    tc = tables.tracker_conversations

    def timeline(cid: str, outcome: str | None, due: dt.date) -> dict[str, object]:
        return {
            "conversation_id": cid, "attest_type": "LÆ 265", "case_kind": "sygedagpenge",
            "municipality": "101", "region_code": "1084", "jobcenter_org": JC,
            "receiver_org": PSY, "case_ref": "k1.ref", "psychiatric_course": False,
            "first_day_of_absence": due - 60 * DAY, "request_deadline": due - 30 * DAY,
            "due_date": due, "outcome": outcome,
        }  # fmt: skip

    async with db.engine.begin() as conn:
        await conn.execute(
            tc.insert(),
            [
                timeline("decided-old", "on_time", old),
                timeline("undecided-old", None, old),
                timeline("decided-recent", "overdue", w.clock.now().date() - 10 * DAY),
            ],
        )
        await conn.execute(
            tables.tracker_reminders.insert(),
            [{"conversation_id": "decided-old", "seq": 1, "message_id": "r-1",
              "sent_at": w.clock.now() - 480 * DAY}],
        )  # fmt: skip
        for cell_id, start in ((1, old.replace(day=1)), (2, w.clock.now().date().replace(day=1))):
            await conn.execute(
                tables.tracker_cells.insert().values(
                    id=cell_id, grain="national", period_kind="month", period_start=start,
                    attest_type="*", dim="DK",
                )
            )  # fmt: skip
            await conn.execute(
                tables.tracker_counts.insert().values(cell_id=cell_id, requests=7, citizens=6)
            )
            await conn.execute(
                tables.tracker_cell_citizens.insert(),
                [{"cell_id": cell_id, "case_ref": f"k1.ref-{i}"} for i in range(6)],
            )
    counts = await db.prune()
    assert counts.get("tracker_conversations") == 1
    left = await db.count(tc)
    assert left == 2  # the undecided and the recent one stay
    assert await db.count(tables.tracker_reminders) == 0
    assert counts.get("tracker_cell_citizens") == 6  # the closed period's
    assert await db.count(tables.tracker_cell_citizens) == 6  # the current period's
    async with db.engine.connect() as conn:
        rollups = (await conn.execute(sa.select(tables.tracker_counts.c.requests))).all()
    assert sorted(r.requests for r in rollups) == [7, 7]  # the aggregates unchanged


# --- the audit chain: pruned up to a signed checkpoint, still verified -----------------------


async def _append(db: Db, n: int) -> None:
    now = db.world.clock.now()
    events = [
        AuditEvent(actor=PSY, action="mailbox.fetch", source="10.0.0.1", at=now,
                   message_id=str(uuid.uuid4()))
        for _ in range(n)
    ]  # fmt: skip
    async with db.engine.begin() as conn:
        await audit.record_many(conn, TOPICS, events)
    await audit.chain_all(db.engine, TOPICS)  # as the worker's chainer does


async def _checkpoint(db: Db) -> audit.Checkpoint | None:
    async with db.engine.begin() as conn:
        return await audit.checkpoint_if_due(
            conn, db.world.keys(GATEWAY).current_signing, db.world.clock.now(),
            every=5, interval=dt.timedelta(days=1), topics=TOPICS, actor=GATEWAY,
        )  # fmt: skip


async def _prune_audit(db: Db, retention: dt.timedelta, between: list[int] | None = None) -> int:
    """`audit.prune` in batches of three; `between` counts the pauses between batches."""
    now = db.world.clock.now()

    async def paused() -> None:
        if between is not None:
            between.append(1)

    return await audit.prune(
        db.engine, TOPICS, db.world.keys(GATEWAY).current_signing,
        before=now - retention, now=now, batch=3, actor=GATEWAY, between=paused,
    )  # fmt: skip


async def _verify(db: Db) -> audit.Verdict:
    async with db.engine.connect() as conn:
        return await audit.verify(conn, gateway_org_id=GATEWAY)


async def _pruned_chain(db: Db) -> audit.Checkpoint:
    """Twelve entries, a checkpoint at 12 (and its `audit.checkpoint` entry, 13), then six
    more a year later; pruned with a retention of 30 days: entries 1–12 go (in batches of
    three, each ending at a signed checkpoint, each recorded by an `audit.prune` entry)."""
    w = db.world
    await _append(db, 12)
    point = await _checkpoint(db)
    assert point is not None
    assert point.seq == 12
    assert await _checkpoint(db) is None  # not due again: only its own entry came since
    w.clock.advance(365 * DAY)
    await _append(db, 6)
    pauses: list[int] = []
    assert await _prune_audit(db, dt.timedelta(days=30), pauses) == 12
    assert len(pauses) == 4  # after each batch: the pass's pace (RETENTION_DUTY)
    return point


async def test_a_pruned_audit_chain_verifies_from_its_oldest_checkpoint(db: Db) -> None:
    point = await _pruned_chain(db)
    async with db.engine.connect() as conn:
        seqs = list(await conn.scalars(sa.select(tables.audit_log.c.seq).order_by("seq")))
        kept = await audit.read_checkpoints(conn)
    assert seqs[0] == 13  # entries 1-12 removed, four `audit.prune` entries appended
    assert [p.seq for p in kept] == [12]
    verdict = await _verify(db)
    assert verdict.ok, verdict.reason
    assert verdict.start == point
    assert (verdict.first_seq, verdict.last_seq) == (13, 12 + 1 + 6 + 4)
    assert covered(verdict, held_against_topic=False) == (
        f"chain intact, 11 entries (seq 13–23) from the signed checkpoint at seq 12 of "
        f"{point.at.isoformat(timespec='seconds')} (key {point.key_id}; older entries removed "
        "by retention); 1 signed checkpoint checked; not held against gateway.audit"
    )
    assert await _prune_audit(db, dt.timedelta(days=30)) == 0  # nothing more is due


async def test_tampering_with_a_kept_entry_is_found_after_pruning(db: Db) -> None:
    await _pruned_chain(db)
    log = tables.audit_log
    async with db.engine.begin() as conn:
        await conn.execute(log.update().where(log.c.seq == 15).values(actor="someone-else"))
    verdict = await _verify(db)
    assert (verdict.broken_seq, verdict.reason) == (
        15, "its fields do not match its hash: it was altered"
    )  # fmt: skip


async def test_a_removed_entry_put_back_is_found(db: Db) -> None:
    await _append(db, 12)
    assert await _checkpoint(db) is not None
    async with db.engine.connect() as conn:
        removed = (
            await conn.execute(sa.select(tables.audit_log).where(tables.audit_log.c.seq == 12))
        ).one()
    db.world.clock.advance(365 * DAY)
    await _append(db, 2)
    assert await _prune_audit(db, dt.timedelta(days=30)) == 12
    async with db.engine.begin() as conn:
        await conn.execute(tables.audit_log.insert().values(**removed._mapping))
    verdict = await _verify(db)
    assert verdict.broken_seq == 12
    assert "a removed entry was put back" in (verdict.reason or "")


async def test_all_removed_entries_put_back_are_found(db: Db) -> None:
    """Even the whole removed range, and with the checkpoints gone too, so that the chain
    links from genesis again: the `audit.prune` entries say it was removed."""
    await _append(db, 12)
    assert await _checkpoint(db) is not None
    async with db.engine.connect() as conn:  # 1–12 (13 is the checkpoint's own entry)
        removed = list(
            await conn.execute(
                sa.select(tables.audit_log).where(tables.audit_log.c.seq <= 12).order_by("seq")
            )
        )
    db.world.clock.advance(365 * DAY)
    await _append(db, 2)
    assert await _prune_audit(db, dt.timedelta(days=30)) == 12
    async with db.engine.begin() as conn:
        await conn.execute(tables.audit_log.insert(), [dict(r._mapping) for r in removed])
        await conn.execute(tables.audit_checkpoints.delete())
    verdict = await _verify(db)
    assert verdict.broken_seq == 1
    assert "a removed range was put back" in (verdict.reason or "")


async def test_a_tail_cut_below_a_checkpoint_is_found_with_the_head_moved_back(db: Db) -> None:
    await _append(db, 12)
    assert await _checkpoint(db) is not None
    log, head = tables.audit_log, tables.audit_head
    async with db.engine.begin() as conn:
        kept = (await conn.execute(sa.select(log.c.hash).where(log.c.seq == 9))).scalar_one()
        await conn.execute(log.delete().where(log.c.seq > 9))
        await conn.execute(head.update().values(seq=9, hash=kept))
    verdict = await _verify(db)
    assert verdict.broken_seq == 12
    assert "beyond the chain's head" in (verdict.reason or "")


async def test_a_moved_or_missing_checkpoint_is_found(db: Db) -> None:
    point = await _pruned_chain(db)
    cp = tables.audit_checkpoints
    async with db.engine.begin() as conn:  # moved one entry on: the signature no longer holds
        await conn.execute(cp.update().where(cp.c.seq == point.seq).values(seq=point.seq + 1))
    verdict = await _verify(db)
    assert verdict.broken_seq == point.seq + 1
    assert "does not match its signature" in (verdict.reason or "")

    async with db.engine.begin() as conn:  # gone: nothing covers the removed entries
        await conn.execute(cp.delete())
    verdict = await _verify(db)
    assert (verdict.broken_seq, verdict.reason) == (
        1, "entries 1–12 are missing and no checkpoint covers them"
    )  # fmt: skip

    # a checkpoint signed by another key than the gateway's
    forged = audit.sign_checkpoint(
        db.world.keys(PSY).current_signing, point.seq, point.hash, point.at
    )
    async with db.engine.begin() as conn:
        await conn.execute(cp.insert().values(**dataclasses.asdict(forged)))
    verdict = await _verify(db)
    assert "not a signing key of the gateway" in (verdict.reason or "")


# --- signed chain heads: in the chain and on gateway.audit ------------------------------------
# Each kind of tampering someone with the owner role's write access could try, on a chain of
# twelve entries, a signed head of entry 12 (the `audit.checkpoint` entry 13) and three more.


async def _signed_chain(db: Db) -> audit.Checkpoint:
    await _append(db, 12)
    point = await _checkpoint(db)
    assert point is not None
    assert point.seq == 12
    await _append(db, 3)
    return point


async def _stored(db: Db) -> list[AuditEntry]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(tables.audit_log).order_by(tables.audit_log.c.seq))
        return [audit.entry_from_row(r) for r in rows]


async def _published(db: Db) -> audit.TopicAnchors:
    """What the relay publishes on gateway.audit: the audit outbox rows (the Kafka hop is left
    out here; test_audit.py reads the real topic)."""
    async with db.engine.connect() as conn:
        values = await conn.scalars(
            sa.select(tables.outbox.c.value).where(tables.outbox.c.topic == TOPICS.audit)
        )
        return audit.anchors_of(list(values))


async def _rewrite(db: Db, from_seq: int, change: dict[str, Any], *, to_seq: int) -> None:
    """Replace entries `from_seq`… with the same events, entry `from_seq` changed, every hash
    recomputed and the head moved to the new last one (up to `to_seq`): a consistent rewrite."""
    entries = [e for e in await _stored(db) if e.seq >= from_seq - 1]
    before, rest = entries[0], [e for e in entries[1:] if e.seq <= to_seq]
    events = [
        AuditEvent(e.actor, e.action, e.source, e.at, e.subject_org, e.message_id,
                   e.conversation_id, e.detail)
        for e in rest
    ]  # fmt: skip
    events[0] = dataclasses.replace(events[0], **change)
    rewritten = audit.chain(before.hash, from_seq, events)
    log = tables.audit_log
    pending = tables.audit_pending
    async with db.engine.begin() as conn:
        await conn.execute(log.delete().where(log.c.seq >= from_seq))
        await conn.execute(log.insert(), [audit._row(e) for e in rewritten])
        await conn.execute(
            tables.audit_head.update().values(seq=rewritten[-1].seq, hash=rewritten[-1].hash)
        )
        # and the appended rows they were chained from, which would tell the old fields
        await conn.execute(pending.delete().where(pending.c.seq >= from_seq))


async def _verify_against(db: Db, topic: audit.TopicAnchors | None) -> audit.Verdict:
    async with db.engine.connect() as conn:
        return await audit.verify(
            conn,
            topic.entries if topic is not None else None,
            gateway_org_id=GATEWAY,
            signed_heads=topic.signed_heads if topic is not None else (),
        )


async def test_the_signed_head_is_an_entry_of_the_chain_and_on_the_topic(db: Db) -> None:
    await _append(db, 12)
    point = await _checkpoint(db)
    assert point is not None
    # idle: no other checkpoint, however long, while only its own entry came since
    db.world.clock.advance(3 * DAY)
    assert await _checkpoint(db) is None
    await _append(db, 3)
    stored = await _stored(db)
    assert stored[12].action == audit.AUDIT_CHECKPOINT
    assert audit.checkpoint_of(stored[12]) == point
    topic = await _published(db)
    assert topic.signed_heads == [point]
    verdict = await _verify_against(db, topic)
    assert verdict.ok, verdict.reason
    assert (verdict.last_seq, verdict.anchored) == (16, 16)


async def test_a_consistent_rewrite_before_a_signed_head_is_found_in_the_database(
    db: Db,
) -> None:
    await _signed_chain(db)
    await _rewrite(db, 5, {"actor": "someone-else"}, to_seq=16)
    verdict = await _verify_against(db, None)
    assert verdict.broken_seq == 12
    assert "differs from the signed checkpoint" in (verdict.reason or "")
    # the checkpoint row removed too: the signed head in the chain still names entry 12
    async with db.engine.begin() as conn:
        await conn.execute(tables.audit_checkpoints.delete())
    verdict = await _verify_against(db, None)
    assert verdict.broken_seq == 13
    assert "the entries before it were rewritten" in (verdict.reason or "")


async def test_a_forged_signed_head_is_found(db: Db) -> None:
    """The rewriter writes the new hash into the signed head: the signature does not hold."""
    point = await _signed_chain(db)
    entries = await _stored(db)
    events = [
        AuditEvent(e.actor, e.action, e.source, e.at, e.subject_org, e.message_id,
                   e.conversation_id, e.detail)
        for e in entries[4:12]
    ]  # fmt: skip
    events[0] = dataclasses.replace(events[0], actor="someone-else")
    rewritten = audit.chain(entries[3].hash, 5, events)
    forged = dataclasses.replace(point, hash=rewritten[-1].hash)
    signed_head = AuditEvent(
        GATEWAY, audit.AUDIT_CHECKPOINT, audit.SOURCE_GATEWAY, point.at,
        detail=audit.checkpoint_detail(forged),
    )  # fmt: skip
    rewritten += audit.chain(rewritten[-1].hash, 13, [signed_head])
    log = tables.audit_log
    async with db.engine.begin() as conn:
        await conn.execute(log.delete().where(log.c.seq >= 5))
        await conn.execute(log.insert(), [audit._row(e) for e in rewritten])
        await conn.execute(
            tables.audit_head.update().values(seq=rewritten[-1].seq, hash=rewritten[-1].hash)
        )
        await conn.execute(tables.audit_checkpoints.delete())
    verdict = await _verify_against(db, None)
    assert verdict.broken_seq == 13
    assert "does not match its signature" in (verdict.reason or "")

    # a signed head on the topic, signed by another organisation's key
    other = audit.sign_checkpoint(db.world.keys(PSY).current_signing, 12, forged.hash, point.at)
    verdict = await _verify_against(db, audit.TopicAnchors({}, [other]))
    assert verdict.broken_seq == 12
    assert "on gateway.audit names a key" in (verdict.reason or "")


async def test_a_consistent_rewrite_after_the_last_signed_head_is_found_by_the_topic(
    db: Db,
) -> None:
    await _signed_chain(db)
    topic = await _published(db)
    await _rewrite(db, 15, {"source": "203.0.113.66"}, to_seq=16)
    assert (await _verify_against(db, None)).ok  # the database agrees with itself…
    verdict = await _verify_against(db, topic)  # …the topic does not
    assert verdict.broken_seq == 15
    assert "differs from the entry published on gateway.audit" in (verdict.reason or "")


async def test_a_tail_cut_with_its_signed_heads_is_found_by_the_topic(db: Db) -> None:
    """Entries 10… cut, the checkpoint removed, the head moved back to 9: the database agrees
    with itself; the signed head of entry 12 on the topic does not."""
    await _signed_chain(db)
    topic = await _published(db)
    log = tables.audit_log
    async with db.engine.begin() as conn:
        kept = (await conn.execute(sa.select(log.c.hash).where(log.c.seq == 9))).scalar_one()
        await conn.execute(log.delete().where(log.c.seq > 9))
        await conn.execute(tables.audit_checkpoints.delete())
        await conn.execute(tables.audit_head.update().values(seq=9, hash=kept))
        # and the appended rows marked chained there, which would tell the cut
        await conn.execute(tables.audit_pending.delete().where(tables.audit_pending.c.seq > 9))
    assert (await _verify_against(db, None)).ok
    heads_only = audit.TopicAnchors({}, topic.signed_heads)  # even with the entries gone
    verdict = await _verify_against(db, heads_only)
    assert verdict.broken_seq == 12
    assert "beyond the chain's head" in (verdict.reason or "")
    verdict = await _verify_against(db, topic)
    assert not verdict.ok


async def test_a_deleted_middle_entry_is_found(db: Db) -> None:
    await _signed_chain(db)
    async with db.engine.begin() as conn:
        await conn.execute(tables.audit_log.delete().where(tables.audit_log.c.seq == 7))
    verdict = await _verify_against(db, None)
    assert (verdict.broken_seq, verdict.reason) == (7, "entry 7 is missing")


# --- the operator's view -----------------------------------------------------------------------


def test_prune_and_audit_verify_from_the_command_line(tmp_path: Path) -> None:
    """`prune` says what went by class; `audit verify` then says it started from the signed
    checkpoint retention left (SQLite; the commands as the operator runs them, in process)."""
    runner = CliRunner()
    env = {"VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    for command in (["migrate"], ["setup"]):
        assert runner.invoke(cli.app, command, env=env).exit_code == 0
    first = runner.invoke(cli.app, ["prune"], env=env)
    assert (first.exit_code, first.stdout) == (0, "audit_checkpoints: 1\n")
    # six years on (the development clock moved): the checkpoint's entries are past retention
    later = (dt.datetime.now(dt.UTC) + 6 * 365 * DAY).isoformat()
    second = runner.invoke(cli.app, ["prune"], env=env | {"SIMULATED_CLOCK_START": later})
    assert second.exit_code == 0
    assert second.stdout.startswith("audit_log: ")
    verified = runner.invoke(cli.app, ["audit", "verify", "--no-topic"], env=env)
    assert verified.exit_code == 0, verified.output
    # kept: the checkpoint's own `audit.checkpoint` entry and the `audit.prune` entry
    assert verified.stdout.startswith("chain intact, 2 entries (seq ")
    assert "from the signed checkpoint at seq " in verified.stdout
    again = runner.invoke(cli.app, ["prune"], env=env)
    assert again.stdout == "nothing is past its retention period\n"


# --- case closure and erasure ----------------------------------------------------------------


async def _run_tracker(db: Db) -> None:
    """The tracker applies the stage and contact events now in the outbox (the Kafka hop
    left out), as its consumer would."""
    async with db.engine.connect() as conn:
        values = list(
            await conn.scalars(
                sa.select(tables.outbox.c.value)
                .where(tables.outbox.c.topic == TOPICS.tracking)
                .order_by(tables.outbox.c.id)
            )
        )
    handler = TrackerHandler(db.engine, TrackerState(tracker_rules(db.settings)))
    records = [cast(ConsumerRecord[bytes, bytes], SimpleNamespace(value=v)) for v in values]
    assert await handler.handle_batch(records) == []


async def _report(db: Db) -> dict[str, Any]:
    async with db.engine.connect() as conn:
        return await tracker_report(conn, tracker_rules(db.settings), Filters(period="month"))


async def _coverage_rollup(db: Db) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(tables.tracker_coverage))
        return sorted(tuple(r) for r in rows)


async def _rows_holding(db: Db, *needles: str) -> list[str]:
    """`table.column` of every stored value that contains one of `needles`."""
    found = []
    async with db.engine.connect() as conn:
        for table in tables.metadata.sorted_tables:
            for row in await conn.execute(sa.select(table)):
                for column, value in row._mapping.items():
                    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    if any(n in text for n in needles):
                        found.append(f"{table.name}.{column}")
    return found


async def test_registered_cases_go_a_retention_period_after_they_closed(db: Db) -> None:
    w = db.world
    today = w.clock.now().date()
    for case_id, closed_on in (("sag-closed", today - 10 * DAY), ("sag-open", None)):
        await cases.register_case(
            db.store, w.keyring, w.clock, w.orgs[JC],
            CaseIn(
                municipality="101", case_id=case_id, citizen_cpr=CPR,
                case_kind=CaseKind.SYGEDAGPENGE, psychiatric_course=True,
                first_day_of_absence=today - 60 * DAY, closed_on=closed_on,
            ),
            gateway_org_id=w.gateway_org_id, pseudonym_key=w.pseudonym_key,
        )  # fmt: skip
    ids = tables.tracker_cases.c.jobcenter_case_id
    async with db.engine.connect() as conn:
        case_ids = {
            r.jobcenter_case_id: r.case_id
            for r in await conn.execute(sa.select(ids, tables.tracker_cases.c.case_id))
        }
    decisions = tables.tracker_coverage_cases.c.case_id
    assert await db.count(tables.tracker_coverage_cases, decisions == case_ids["sag-closed"]) == 1
    w.clock.advance(db.settings.tracker_timeline_retention_days * DAY - 11 * DAY)
    assert "tracker_cases" not in await db.prune()
    w.clock.advance(2 * DAY)
    pruned = await db.prune()
    assert pruned.get("tracker_cases") == 1
    assert pruned.get("tracker_coverage_cases") == 1  # its coverage decision with it
    assert await db.count(tables.tracker_cases, ids == "sag-open") == 1
    assert await db.count(tables.tracker_coverage_cases, decisions == case_ids["sag-closed"]) == 0
    assert await db.count(tables.tracker_coverage_cases, decisions == case_ids["sag-open"]) == 1


async def test_a_closed_case_is_erased_and_the_ministrys_report_stays(db: Db) -> None:
    w = db.world
    jc = w.orgs[JC]
    ref = pseudonyms.case_ref(CPR, w.pseudonym_key)
    other_ref = pseudonyms.case_ref(CPR_2, w.pseudonym_key)
    case = [await _requested(db, key=f"case-{i}") for i in range(2)]
    await _finish(db, case[0])
    await _requested(db, key="other", citizen_cpr=CPR_2)
    await w.register_contact(
        ContactIn(
            municipality="101", citizen_cpr=CPR, psychiatry_sor="715381000016006",
            case_kind=CaseKind.SYGEDAGPENGE, first_day_of_absence=w.clock.now().date() - 30 * DAY,
            contact_date=w.clock.now().date() - 2 * DAY,
        )
    )  # fmt: skip
    await cases.register_case(  # the job centre's sickness case of the citizen, too
        db.store, w.keyring, w.clock, jc,
        CaseIn(
            municipality="101", case_id="sag-1", citizen_cpr=CPR, case_kind=CaseKind.SYGEDAGPENGE,
            psychiatric_course=True, first_day_of_absence=w.clock.now().date() - 30 * DAY,
        ),
        gateway_org_id=w.gateway_org_id, pseudonym_key=w.pseudonym_key,
    )  # fmt: skip
    await _run_tracker(db)
    before = await _report(db)
    assert await db.count(tables.tracker_counts, tables.tracker_counts.c.requests > 0)
    assert await db.count(tables.tracker_coverage_cases) == 1  # the case's coverage decision
    coverage_before = await _coverage_rollup(db)
    assert await _rows_holding(db, ref)  # the case is all over the store, as it should be

    body = CaseCloseIn(citizen_cpr=CPR, case_kind=CaseKind.SYGEDAGPENGE)
    erase_after = dt.timedelta(days=db.settings.case_erasure_days)

    async def close() -> tuple[CaseClosed, bool]:
        return await closures.close_case(
            db.store, w.clock, jc, body, pseudonym_key=w.pseudonym_key,
            erase_after=erase_after, source="10.0.0.7",
        )  # fmt: skip

    closed, created = await close()
    assert created
    assert closed.conversations == 2
    assert closed.erase_after == w.clock.now() + erase_after
    w.clock.advance(DAY)
    assert await close() == (closed, False)  # closing again: the first closure's answer
    assert "cases_erased" not in await db.prune()  # not yet: the period runs

    w.clock.advance(erase_after)
    counts = await db.prune()
    assert counts["cases_erased"] == 1
    # nothing derived from the citizen's CPR number is left, in any column of any table
    assert await _rows_holding(db, ref, CPR) == []
    conv_ids = [r.header.conversation_id for r in case]
    for table in (tables.conversations, tables.stages, tables.sent_messages, tables.mailbox):
        key = table.c.id if table is tables.conversations else table.c.conversation_id
        assert await db.count(table, key.in_(conv_ids)) == 0
    assert await db.count(tables.outbox, tables.outbox.c.key.in_(conv_ids)) == 0
    assert await db.count(tables.tracker_contacts) == 0  # its sealed CPR number with it
    assert await db.count(tables.tracker_cases) == 0  # the registered sickness case too
    assert await db.count(tables.tracker_coverage_cases) == 0  # and its coverage decision
    assert await _coverage_rollup(db) == coverage_before  # whose counts stay
    # the other citizen's case is untouched, and the ministry's figures are the same
    assert await _rows_holding(db, other_ref)
    assert await _report(db) == before
    with pytest.raises(Unknown):  # the case is gone
        await close()


async def test_a_job_centre_closes_a_case_over_http(harness: Harness) -> None:
    h = harness
    cpr = "0202021234"  # a citizen of this test alone: the harness is shared
    body = attest_request_body(jobcenter_gln=h.gln(JC), cpr=cpr, case_kind="ressourceforloeb")
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    close = {"citizen_cpr": cpr, "case_kind": "ressourceforloeb"}
    first = await h.client.post("/jobcenter/v1/cases/close", json=close, headers=h.auth(JC))
    assert first.status_code == 200, first.text
    assert first.json()["conversations"] == 1
    again = await h.client.post("/jobcenter/v1/cases/close", json=close, headers=h.auth(JC))
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    unknown = await h.client.post(
        "/jobcenter/v1/cases/close", json=close | {"case_kind": "sygedagpenge"}, headers=h.auth(JC)
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not-found"


async def test_two_closures_of_one_case_at_once_get_one_answer(harness: Harness) -> None:
    """Both requests read "no closure yet" before either writes: the second insert finds the
    first's row (the unique key) and answers it, instead of failing on the key."""
    h = harness
    cpr = "0303031234"  # a citizen of this test alone: the harness is shared
    body = attest_request_body(jobcenter_gln=h.gln(JC), cpr=cpr, case_kind="ressourceforloeb")
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    close = {"citizen_cpr": cpr, "case_kind": "ressourceforloeb"}
    answers = await asyncio.gather(
        *(
            h.client.post("/jobcenter/v1/cases/close", json=close, headers=h.auth(JC))
            for _ in range(8)
        )
    )
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert len({a.json()["closure_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") != "true" for a in answers) == 1


# --- at volume: a walk across batches, cases erased together, every statement indexed ------


async def test_the_walk_of_finished_conversations_crosses_batches_of_equal_times(db: Db) -> None:
    """The finished conversations are walked a batch at a time with a cursor on (time, id):
    with batches of two and final stages at the same instant, every finished conversation
    comes exactly once and no open one comes."""
    w = db.world
    finished: list[str] = []
    for group in range(3):  # three conversations finished at the very same time, thrice
        requests = [await _requested(db, key=f"walk-{group}-{i}") for i in range(3)]
        for request in requests:
            await _finish(db, request)
            finished.append(request.header.conversation_id)
        w.clock.advance(dt.timedelta(seconds=1))
    still_open = (await _requested(db, key="walk-open")).header.conversation_id
    stage_at = tables.stages.c.at
    async with db.engine.connect() as conn:
        times = await conn.scalars(
            sa.select(stage_at).where(tables.stages.c.stage == Stage.REPLY_ACKNOWLEDGED.value)
        )
        assert len(set(times)) == 3  # equal times within each group

    w.clock.advance(DAY)
    walked = [
        ids async for ids in retention._finished(db.engine, w.clock.now(), retention._Pace(batch=2))
    ]
    assert [len(ids) for ids in walked] == [2, 2, 2, 2, 1]
    every = [cid for ids in walked for cid in ids]
    assert sorted(every) == sorted(finished)  # each once, none skipped at a boundary
    assert still_open not in every

    w.clock.advance(db.settings.conversation_retention_days * DAY)
    counts = await db.prune()  # batches of two (the fixture's PRUNE_BATCH_SIZE)
    assert counts["conversations"] == 9
    conv = tables.conversations.c
    assert await db.count(tables.conversations, conv.id.in_(finished)) == 0
    assert await db.count(tables.conversations, conv.id == still_open) == 1


def _cpr(i: int) -> str:
    """A citizen's CPR number of these tests alone (the date checks; no modulus 11)."""
    return f"{i + 1:02d}0385{4000 + i}"


async def test_closed_cases_erased_together_leave_nothing_of_theirs_and_touch_no_one_else(
    db: Db,
) -> None:
    """Five closed cases in one transaction of set-based statements (PRUNE_BATCH_SIZE 100:
    up to twenty cases per transaction): nothing derived from those citizens' CPR numbers is left;
    the citizen whose other case is still open keeps that case and stays counted in the
    cells under its own ref; the citizens whose cases stay open keep everything; the
    ministry's figures are the same; one `case.erase` entry per case."""
    w = db.world
    jc = w.orgs[JC]
    closed = [_cpr(i) for i in range(4)]
    kept = [_cpr(i) for i in range(4, 6)]
    both = _cpr(6)  # one case closed, another (another case kind) still open
    conversations: dict[tuple[str, CaseKind], list[str]] = {}
    for cpr in [*closed, *kept, both]:
        kinds = (
            [CaseKind.SYGEDAGPENGE, CaseKind.RESSOURCEFORLOEB]
            if cpr == both
            else [CaseKind.SYGEDAGPENGE]
        )
        for kind in kinds:
            for i in range(2):
                request = await _requested(
                    db, key=f"{cpr}-{kind.value}-{i}", citizen_cpr=cpr, case_kind=kind.value
                )
                if i == 0:
                    await _finish(db, request)
                conversations.setdefault((cpr, kind), []).append(request.header.conversation_id)
    await _run_tracker(db)
    before = await _report(db)

    erase_after = dt.timedelta(days=db.settings.case_erasure_days)
    for cpr, kind in [*((c, CaseKind.SYGEDAGPENGE) for c in closed), (both, CaseKind.SYGEDAGPENGE)]:
        await closures.close_case(
            db.store, w.clock, jc, CaseCloseIn(citizen_cpr=cpr, case_kind=kind),
            pseudonym_key=w.pseudonym_key, erase_after=erase_after, source="10.0.0.7",
        )  # fmt: skip
    w.clock.advance(erase_after + DAY)
    counts = await db.prune(prune_batch_size=100)
    assert counts["cases_erased"] == 5

    def ref(cpr: str) -> str:
        return pseudonyms.case_ref(cpr, w.pseudonym_key)

    conv = tables.conversations.c
    for cpr in closed:
        assert await _rows_holding(db, ref(cpr), cpr) == [], cpr
    erased = conversations[(both, CaseKind.SYGEDAGPENGE)]
    assert await db.count(tables.conversations, conv.id.in_(erased)) == 0
    assert await db.count(tables.stages, tables.stages.c.conversation_id.in_(erased)) == 0
    open_case = conversations[(both, CaseKind.RESSOURCEFORLOEB)]
    assert await db.count(tables.conversations, conv.id.in_(open_case)) == 2
    tcc = tables.tracker_cell_citizens.c
    assert await db.count(tables.tracker_cell_citizens, tcc.case_ref == ref(both))
    for cpr in kept:
        ids = conversations[(cpr, CaseKind.SYGEDAGPENGE)]
        assert await db.count(tables.conversations, conv.id.in_(ids)) == 2
        timelines = tables.tracker_conversations
        assert await db.count(timelines, timelines.c.conversation_id.in_(ids)) == 2
        assert await db.count(tables.tracker_cell_citizens, tcc.case_ref == ref(cpr))
    assert await _report(db) == before
    await audit.chain_all(db.engine, TOPICS)  # as the worker's chainer does
    log = tables.audit_log.c
    async with db.engine.connect() as conn:
        details = list(await conn.scalars(sa.select(log.detail).where(log.action == CASE_ERASE)))
    assert sorted(json.loads(d)["conversations"] for d in details) == ["2"] * 5


async def _statements_of_a_pass(db: Db) -> list[tuple[str, tuple[Any, ...]]]:
    """Every SELECT, UPDATE and DELETE a pass sends (with its parameters) over a store where
    every class has something past its period, closed cases included."""
    w = db.world
    for i in range(3):  # the first citizen's case is closed and stays open till its erasure
        request = await _requested(db, key=f"plan-{i}", citizen_cpr=_cpr(10 + i))
        if i:
            await _finish(db, request)
        async with db.store.transaction() as uow:
            assert await uow.mailbox.collect(request.header.message_id, w.clock.now())
    await _run_tracker(db)
    await closures.close_case(
        db.store, w.clock, w.orgs[JC],
        CaseCloseIn(citizen_cpr=_cpr(10), case_kind=CaseKind.SYGEDAGPENGE),
        pseudonym_key=w.pseudonym_key, erase_after=DAY, source="10.0.0.7",
    )  # fmt: skip
    async with db.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("ANALYZE")
    w.clock.advance(DAY * 3650)
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in {"SELECT", "UPDATE", "DELETE"}:
            sent.append((statement, tuple(parameters or ())))

    sa.event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        counts = await db.prune(sealed_cpr_retention_days=10, prune_batch_size=100)
    finally:
        sa.event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    assert counts["cases_erased"] == 1
    assert counts["conversations"] == 2
    return sent


def _whole_table_scans(plan: Any, leading: dict[str, str]) -> list[str]:
    """The relations an EXPLAIN (FORMAT JSON) plan reads whole: a sequential scan, or an
    index scan without a condition on the index's leading column (all of the index, in its
    order or filtered on a later column). `leading`: index name → its first column."""
    found = []
    if isinstance(plan, dict):
        node = plan.get("Node Type", "")
        if "Relation Name" in plan and (
            node == "Seq Scan"
            or (
                node.startswith(("Index", "Bitmap Index"))
                and not re.search(
                    rf"\b{leading.get(plan.get('Index Name', ''), '?')}\b",
                    plan.get("Index Cond", ""),
                )
            )
        ):
            found.append(plan["Relation Name"])
        for value in plan.values():
            found += _whole_table_scans(value, leading)
    elif isinstance(plan, list):
        for value in plan:
            found += _whole_table_scans(value, leading)
    return found


# The statements that may read a whole table here: the time predicates no index serves (each
# batch then reads the class's table, which holds about its own retention period's rows;
# docs/data-lifecycle.md), the closed tracker cells' citizen lists, and the deletes of a
# class's batch by its keys (`DELETE … WHERE key IN (SELECT key … LIMIT n)`): on tables this
# small PostgreSQL joins them whole, at volume it probes the primary key with the batch's
# keys (EXPLAINed on the 300,000-conversation database, bench/RESULTS.md). Everything else
# of a pass (the walk of finished conversations, the deletes by conversation, the erasure's
# lookups by case ref) must start from an index.
_MAY_READ_WHOLE = (
    "mailbox.collected_at <", "inbound_messages.created_at <", "idempotency_keys.created_at <",
    "webhook_deliveries.created_at <", "tracker_contacts.created_at <",
    "tracker_cases.closed_on <", "tracker_treatments.end_date <",
    "tracker_cell_citizens.cell_id IN (SELECT",
)  # fmt: skip


def _may_read_whole(statement: str) -> bool:
    batch_by_keys = statement.startswith("DELETE") and " IN (SELECT " in statement
    return batch_by_keys or any(allowed in statement for allowed in _MAY_READ_WHOLE)


_LEADING_COLUMNS = """
SELECT i.relname, a.attname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
"""


@pytest.mark.postgres
async def test_every_statement_of_the_erasure_and_the_walk_can_use_an_index(db: Db) -> None:
    """EXPLAIN, with sequential scans made a last resort, of every statement a pass sends:
    none of the erasure's, the finished-conversation walk's or the deletes by conversation
    reads a whole table (a sequential scan, or an index read whole for its order); only the
    time predicates of the classes listed above may."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's plans")
    sent = await _statements_of_a_pass(db)
    scanned: dict[str, set[str]] = {}
    async with db.engine.connect() as conn:
        indexes: list[Any] = list(await conn.exec_driver_sql(_LEADING_COLUMNS))
        leading = {str(r.relname): str(r.attname) for r in indexes}
        await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in sent:
            [[plan]] = (
                await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
            ).all()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            if _may_read_whole(statement):
                continue
            for relation in _whole_table_scans(plan, leading):
                scanned.setdefault(relation, set()).add(statement[:160])
        await conn.rollback()
    assert len(sent) > 50
    unexpected = scanned
    assert unexpected == {}
