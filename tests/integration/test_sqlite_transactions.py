"""A transaction on SQLite holds the one write lock from its first write until it ends, on
every pooled connection: the audit chain's head lock and a conversation's `lock()` rely on
it. A connection left in autocommit (pysqlite's `isolation_level` None) commits each
statement alone, so two such "transactions" interleave: two audit appends take the same
sequence number, a cancellation and a reply both win. A task cancelled while switching a
connection to AUTOCOMMIT left one so (aiosqlite applies the switch in the connection's
thread; SQLAlchemy registers the reset at check-in only once the switch has returned)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.infra.db import audit
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.tables import audit_log, mailbox
from attest_gateway.infra.housekeeping.retention import _Pace, _prune_table
from attest_gateway.infra.kafka.topics import Topics

TOPICS = Topics(medcom_messages="m", tracking="t", dead_letter="d", audit="a", canary="c")
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@pytest_asyncio.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    await upgrade_async(url)
    engine = make_engine(url, pool_size=2)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE conv (id TEXT PRIMARY KEY)")
        await conn.exec_driver_sql("CREATE TABLE action (cid TEXT, kind TEXT)")
    async with engine.connect() as a, engine.connect() as b:  # both pooled connections open
        await a.exec_driver_sql("SELECT 1")
        await b.exec_driver_sql("SELECT 1")
    try:
        yield engine
    finally:
        await engine.dispose()


async def _audit_appends_at_once(engine: AsyncEngine, pairs: int) -> list[BaseException]:
    async def append(i: int) -> None:
        async with engine.begin() as conn:
            await audit.record(
                conn, TOPICS, actor="gw", action="test.append", source="test",
                at=dt.datetime.now(dt.UTC), detail={"i": str(i)},
            )  # fmt: skip

    failed: list[BaseException] = []
    for i in range(pairs):
        done = await asyncio.gather(append(2 * i), append(2 * i + 1), return_exceptions=True)
        failed += [r for r in done if isinstance(r, BaseException)]
    return failed


async def _both_won(engine: AsyncEngine, conversations: int, *, prefix: str = "c") -> int:
    """Lock-then-check-then-write twice at once per conversation, as a cancellation and a reply
    do (`SqlConversations.lock` on SQLite: a write that takes the lock): how often both won."""

    async def act(cid: str, kind: str) -> bool:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE conv SET id = id WHERE id = :c"), {"c": cid})
            found = await conn.execute(sa.text("SELECT 1 FROM action WHERE cid = :c"), {"c": cid})
            if found.first() is not None:
                return False
            await asyncio.sleep(0.002)
            await conn.execute(sa.text("INSERT INTO action VALUES (:c, :k)"), {"c": cid, "k": kind})
            return True

    both = 0
    for n in range(conversations):
        cid = f"{prefix}{n}"
        async with engine.begin() as conn:
            await conn.execute(sa.text("INSERT INTO conv VALUES (:c)"), {"c": cid})
        a, b = await asyncio.gather(act(cid, "cancel"), act(cid, "reply"))
        both += a and b
    return both


async def _chain_is_whole(engine: AsyncEngine, appended: int) -> None:
    async with engine.connect() as conn:
        seqs = [row.seq for row in await conn.execute(sa.select(audit_log.c.seq))]
    assert sorted(seqs) == list(range(1, appended + 1))


async def test_a_prune_cancelled_at_any_moment_leaves_transactions_whole(
    engine: AsyncEngine,
) -> None:
    """Retention's batches cancelled after every number of event-loop turns (as stopping the
    sweeper does mid-pass): the transactions after it still hold the write lock."""
    pace = _Pace(500)
    both = 0
    failed: list[BaseException] = []
    for turns in range(1, 30):
        task = asyncio.create_task(
            _prune_table(engine, mailbox, mailbox.c.collected_at < LONG_AGO,
                         [mailbox.c.message_id], pace)
        )  # fmt: skip
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # at once: a later prune that finishes resets a connection it left in autocommit
        both += await _both_won(engine, 2, prefix=f"t{turns}-")
        failed += await _audit_appends_at_once(engine, 2)
    assert both == 0
    assert failed == []
    await _chain_is_whole(engine, 29 * 4)


async def test_a_connection_left_in_autocommit_is_not_handed_out(engine: AsyncEngine) -> None:
    """A pooled connection left in autocommit behind SQLAlchemy's back (as the cancelled
    switch did) is replaced at checkout, not used for a transaction."""

    def autocommit_unseen(sync_conn: sa.Connection) -> None:
        sync_conn.connection.dbapi_connection.isolation_level = None  # type: ignore[union-attr]

    async with engine.connect() as conn:
        await conn.run_sync(autocommit_unseen)
    assert await _both_won(engine, 20) == 0
    assert await _audit_appends_at_once(engine, 20) == []
    await _chain_is_whole(engine, 40)
