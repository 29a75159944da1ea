"""The audit chainer on both databases: entries appended unchained (`audit_pending`) reach
the chain in order, once, whoever chains them and whenever (infra/db/audit.py,
infra/db/audit_chainer.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from attest_gateway.contracts.audit import GENESIS, AuditEntry
from attest_gateway.core.audit import AuditEvent
from attest_gateway.entrypoints.cli.audit import covered
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.audit_chainer import AuditChainer
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.tables import audit_log, audit_pending, outbox
from attest_gateway.infra.kafka.topics import Topics
from tests.integration.conftest import DB_KINDS
from tests.support.harness import fresh_database, wait_for

TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
AT = dt.datetime(2026, 12, 6, 9, 30, 0, 123456, tzinfo=dt.UTC)


@pytest_asyncio.fixture(params=DB_KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        await upgrade_async(url)
        yield url


@pytest_asyncio.fixture
async def engine(db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db)
    try:
        yield engine
    finally:
        await engine.dispose()


def _reads(actor: str, n: int, *, at: dt.datetime = AT) -> list[AuditEvent]:
    return [
        AuditEvent(
            actor=actor, action="mailbox.fetch", source="192.0.2.10", at=at,
            subject_org=actor, message_id=str(uuid.uuid4()), detail={"n": str(i)},
        )
        for i in range(n)
    ]  # fmt: skip


async def _append(engine: AsyncEngine, events: list[AuditEvent]) -> None:
    async with engine.begin() as conn:
        await audit.record_many(conn, TOPICS, events)


async def _verify(engine: AsyncEngine) -> audit.Verdict:
    async with engine.connect() as conn:
        return await audit.verify(conn)


async def _chain(engine: AsyncEngine) -> list[AuditEntry]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(audit_log).order_by(audit_log.c.seq))
        return [audit.entry_from_row(r) for r in rows]


async def test_an_append_takes_no_place_in_the_chain_until_chained(engine: AsyncEngine) -> None:
    events = _reads("psyk-kbh", 3)
    await _append(engine, events)
    # Committed, not chained: the chain is empty and intact, the pending entries counted.
    before = await _verify(engine)
    assert before.ok, before.reason
    assert (before.entries, before.pending, before.oldest_pending) == (0, 3, AT)
    assert covered(before, held_against_topic=False).endswith(
        "; 3 entries appended, not chained yet (the oldest of 2026-12-06T09:30:00+00:00)"
    )
    async with engine.connect() as conn:
        head = await audit.read_head(conn)
        published = (await conn.execute(sa.select(sa.func.count()).select_from(outbox))).scalar()
    assert head == audit.ChainHead(0, GENESIS)
    assert published == 0  # the `gateway.audit` records are written when chained

    assert await audit.chain_all(engine, TOPICS) == 3
    chained = await _chain(engine)
    assert [e.seq for e in chained] == [1, 2, 3]
    assert [(e.actor, e.action, e.source, e.at, e.message_id, e.detail) for e in chained] == [
        (e.actor, e.action, e.source, e.at, e.message_id, e.detail) for e in events
    ]
    after = await _verify(engine)
    assert after.ok, after.reason
    assert (after.entries, after.pending, after.oldest_pending) == (3, 0, None)
    async with engine.connect() as conn:
        records = list(await conn.execute(sa.select(outbox.c.topic, outbox.c.value)))
        marks = list(
            await conn.execute(sa.select(audit_pending.c.seq).order_by(audit_pending.c.id))
        )
    assert {topic for topic, _ in records} == {TOPICS.audit}
    published_entries = [AuditEntry.model_validate_json(v) for _, v in records]
    assert sorted(published_entries, key=lambda e: e.seq) == chained
    assert [m.seq for m in marks] == [1, 2, 3]
    assert await audit.chain_all(engine, TOPICS) == 0  # chained once


async def test_a_crash_before_chaining_loses_nothing(db: str) -> None:
    # A process appends and stops before any chainer ran (its engine gone, as with kill -9).
    first = make_engine(db)
    try:
        await _append(first, _reads("jc-koebenhavn", 4))
    finally:
        await first.dispose()
    # The next start chains what waits, before anything new arrives.
    again = make_engine(db)
    chainer = AuditChainer(again, TOPICS, batch=3)  # two batches
    try:
        chainer.start()
        await wait_for(lambda: _chained_at_least(again, 4))
        await _append(again, _reads("jc-koebenhavn", 1))
        chainer.wake()
        await wait_for(lambda: _chained_at_least(again, 5))
        verdict = await _verify(again)
        assert verdict.ok, verdict.reason
        assert (verdict.entries, verdict.pending) == (5, 0)
    finally:
        await chainer.stop()
        await again.dispose()


async def _chained_at_least(engine: AsyncEngine, n: int) -> bool | None:
    async with engine.connect() as conn:
        head = await audit.read_head(conn)
    return True if head is not None and head.seq >= n else None


async def test_appenders_and_chainers_on_several_connections_make_one_chain(db: str) -> None:
    # Two "processes" (engines of their own): each appends from several connections at once
    # and runs a chainer, as an API and a worker (or two workers) do.
    engines = [make_engine(db), make_engine(db)]
    chainers = [AuditChainer(e, TOPICS, batch=7, poll_seconds=0.01) for e in engines]
    try:
        for chainer in chainers:
            chainer.start()

        async def appender(engine: AsyncEngine, actor: str) -> None:
            for _ in range(6):
                await _append(engine, _reads(actor, 3))

        actors = [f"org-{i}" for i in range(6)]
        await asyncio.gather(*(appender(engines[i % 2], actor) for i, actor in enumerate(actors)))
        for chainer in chainers:
            await chainer.stop()  # a last pass each
        # On a loaded machine a pass may fail (SQLite: "database is locked" after its busy
        # timeout): what it left is chained by the next start, as here.
        await audit.chain_all(engines[0], TOPICS)
        entries = await _chain(engines[0])
        assert [e.seq for e in entries] == list(range(1, 6 * 6 * 3 + 1))
        verdict = await _verify(engines[0])
        assert verdict.ok, verdict.reason
        assert verdict.pending == 0
        # one appender's entries keep their order in the chain
        for actor in actors:
            mine = [int(e.detail["n"]) for e in entries if e.actor == actor and e.detail]
            assert mine == [0, 1, 2] * 6
    finally:
        for chainer in chainers:
            await chainer.stop()
        for engine in engines:
            await engine.dispose()


async def test_verify_finds_a_pending_entry_dropped_as_if_chained(engine: AsyncEngine) -> None:
    await _append(engine, _reads("psyk-kbh", 2))
    await audit.chain_all(engine, TOPICS)
    await _append(engine, _reads("psyk-kbh", 1))
    pending = audit_pending
    # Marked with a seq (the one UPDATE the runtime role may make) without being chained: it
    # left the pending entries, and no entry in the chain is it.
    for seq in (3, 99):
        async with engine.connect() as conn:
            transaction = await conn.begin()
            try:
                await conn.execute(pending.update().where(pending.c.seq.is_(None)).values(seq=seq))
                verdict = await audit.verify(conn)
            finally:
                await transaction.rollback()
        assert not verdict.ok
        assert verdict.broken_seq == seq
        assert f"marked chained at seq {seq}" in (verdict.reason or "")
    intact = await _verify(engine)
    assert intact.ok, intact.reason
    assert (intact.entries, intact.pending) == (2, 1)


async def test_a_cut_tail_with_its_head_reset_is_found_by_the_marks(engine: AsyncEngine) -> None:
    """Before pending rows, a tail cut with the head reset agreed with itself in the database
    (only `gateway.audit` told); now the rows the cut entries were chained from still say."""
    await _append(engine, _reads("psyk-kbh", 3))
    await audit.chain_all(engine, TOPICS)
    second = (await _chain(engine))[1]
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            await conn.execute(audit_log.delete().where(audit_log.c.seq == 3))
            await conn.execute(
                sa.text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"),
                {"seq": second.seq, "hash": second.hash},
            )
            verdict = await audit.verify(conn)
        finally:
            await transaction.rollback()
    assert (verdict.ok, verdict.broken_seq) == (False, 3)
    assert "marked chained at seq 3" in (verdict.reason or "")


async def test_the_chainer_outlives_a_failed_pass(engine: AsyncEngine) -> None:
    """A pass that fails (here: the head row gone) is logged; the entries wait, committed,
    and are chained by a later pass once it can succeed."""
    await _append(engine, _reads("psyk-kbh", 2))
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM audit_head"))
    chainer = AuditChainer(engine, TOPICS, poll_seconds=0.05)
    with capture_logs() as logs:
        chainer.start()
        try:

            async def failed() -> bool | None:
                return True if any(e["event"] == "audit.chain_failed" for e in logs) else None

            await wait_for(failed)
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :genesis)"),
                    {"genesis": GENESIS},
                )
            await wait_for(lambda: _chained_at_least(engine, 2))
        finally:
            await chainer.stop()
    verdict = await _verify(engine)
    assert verdict.ok, verdict.reason
    assert (verdict.entries, verdict.pending) == (2, 0)


async def test_a_wake_gathers_the_next_commits_entries_into_one_pass(engine: AsyncEngine) -> None:
    """Woken, the chainer lingers, so that entries committed one after another in the next
    moments are chained together: one pass (one lock of the head) for all three."""
    passes = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal passes
        passes += statement.startswith("UPDATE audit_head SET seq=audit_head.seq")

    chainer = AuditChainer(engine, TOPICS, poll_seconds=60, linger_seconds=1.0)
    chainer.start()
    try:
        await asyncio.sleep(0.2)  # the pass at start: nothing pending, the head not locked
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        for _ in range(3):
            await _append(engine, _reads("psyk-kbh", 1))
            chainer.wake()
            await asyncio.sleep(0.02)  # the chainer's task runs between the commits
        await wait_for(lambda: _chained_at_least(engine, 3))
    finally:
        await chainer.stop()
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert passes == 1
