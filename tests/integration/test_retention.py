"""Retention on the real store (SQLite and PostgreSQL), with the clock moved by hand past each
retention period: replay detection that outlives the mailbox, finished conversations and what
belongs to them removed while open ones stay, the tracker's timelines removed while its
aggregates stay, and an audit chain pruned up to signed checkpoints that still verifies (and
still finds tampering).

The Kafka hop is left out: envelopes are taken from the outbox and handed to the delivery use
case, as in test_use_cases_on_both.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.config import Settings, load_settings
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.audit import AuditEvent
from attest_gateway.entrypoints.cli.audit import covered
from attest_gateway.infra.db import audit, directory, tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.services.delivery import check_envelope, deliver
from tests.integration.conftest import DB_KINDS
from tests.support.harness import fresh_database
from tests.support.world import GATEWAY, PSY, World, make_world

TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
DAY = dt.timedelta(days=1)


@dataclass
class Db:
    world: World
    engine: AsyncEngine
    store: SqlStore
    settings: Settings

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


async def _requested(db: Db, key: str | None = None) -> SealedEnvelope:
    """A job centre's request, accepted and delivered to the clinic's mailbox."""
    accepted, _ = await db.world.request_attest(idempotency_key=key)
    [request] = [
        e
        for e in await _outbox_envelopes(db, MessageType.ATTEST_REQUEST)
        if e.header.message_id == accepted.message_id
    ]
    assert await _deliver(db, request)
    return request


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


async def _checkpoint(db: Db) -> audit.Checkpoint | None:
    async with db.engine.begin() as conn:
        return await audit.checkpoint_if_due(
            conn, db.world.keys(GATEWAY).current_signing, db.world.clock.now(),
            every=5, interval=dt.timedelta(days=1),
        )  # fmt: skip


async def _prune_audit(db: Db, retention: dt.timedelta) -> int:
    now = db.world.clock.now()
    return await audit.prune(
        db.engine, TOPICS, db.world.keys(GATEWAY).current_signing,
        before=now - retention, now=now, batch=3, actor=GATEWAY,
    )  # fmt: skip


async def _verify(db: Db) -> audit.Verdict:
    async with db.engine.connect() as conn:
        return await audit.verify(conn, gateway_org_id=GATEWAY)


async def _pruned_chain(db: Db) -> audit.Checkpoint:
    """Twelve entries, a checkpoint at 12, then six more a year later; pruned with a
    retention of 30 days: entries 1–12 go (in batches of three, each ending at a signed
    checkpoint, each recorded by an `audit.prune` entry)."""
    w = db.world
    await _append(db, 12)
    point = await _checkpoint(db)
    assert point is not None
    assert point.seq == 12
    assert await _checkpoint(db) is None  # not due again: the head did not move
    w.clock.advance(365 * DAY)
    await _append(db, 6)
    assert await _prune_audit(db, dt.timedelta(days=30)) == 12
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
    assert (verdict.first_seq, verdict.last_seq) == (13, 6 + 4 + 12)
    assert covered(verdict, held_against_topic=False) == (
        f"chain intact, 10 entries (seq 13–22) from the signed checkpoint at seq 12 of "
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
    async with db.engine.connect() as conn:
        removed = list(await conn.execute(sa.select(tables.audit_log).order_by("seq")))
    db.world.clock.advance(365 * DAY)
    await _append(db, 2)
    assert await _prune_audit(db, dt.timedelta(days=30)) == 12
    async with db.engine.begin() as conn:
        await conn.execute(tables.audit_log.insert(), [dict(r._mapping) for r in removed])
        await conn.execute(tables.audit_checkpoints.delete())
    verdict = await _verify(db)
    assert verdict.broken_seq == 1
    assert "a removed range was put back" in (verdict.reason or "")


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
