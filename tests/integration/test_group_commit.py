"""`store.group_commit.GroupCommit` on both databases: the writes of concurrent callers go in
one transaction, each statement once with all their rows; a caller whose writes fail gets the
error alone, with nothing of its writes kept, and the others commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.group_commit import GroupCommit, Write
from tests.integration.conftest import DB_KINDS
from tests.support.harness import fresh_database

metadata = sa.MetaData()
parents = sa.Table("parents", metadata, sa.Column("id", sa.String(16), primary_key=True))
notes = sa.Table(
    "notes",
    metadata,
    sa.Column("parent_id", sa.ForeignKey("parents.id"), primary_key=True),
    sa.Column("text", sa.String(32), nullable=False),
)
children = sa.Table(
    "children",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("parent_id", sa.ForeignKey("parents.id"), nullable=False),
)
PARENT, NOTE, CHILD = parents.insert(), notes.insert(), children.insert()


@asynccontextmanager
async def _engine(kind: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with fresh_database(kind, tmp_path) as url:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            yield engine
        finally:
            await engine.dispose()


def _family(n: int, *, note: bool = False) -> list[Write]:
    writes: list[Write] = [(PARENT, {"id": f"p{n}"})]
    if note:
        writes.append((NOTE, {"parent_id": f"p{n}", "text": f"note {n}"}))
    writes.append(
        (CHILD, [{"id": f"c{n}a", "parent_id": f"p{n}"}, {"id": f"c{n}b", "parent_id": f"p{n}"}])
    )
    return writes


async def _ids(engine: AsyncEngine, table: sa.Table) -> set[Any]:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(table.c[0]))).scalars())


class _Statements:
    """Counts the statements an engine executes, and the commits."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.executes = 0
        self.commits = 0
        sa.event.listen(engine.sync_engine, "after_execute", self._execute)
        sa.event.listen(engine.sync_engine, "commit", self._commit)

    def _execute(self, *_: Any) -> None:
        self.executes += 1

    def _commit(self, *_: Any) -> None:
        self.commits += 1


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_concurrent_writes_share_one_transaction(kind: str, tmp_path: Path) -> None:
    async with _engine(kind, tmp_path) as engine:
        flushed: list[tuple[int, bool]] = []
        writer = GroupCommit(engine, on_flush=lambda n, failed: flushed.append((n, failed)))
        seen = _Statements(engine)
        # Twenty callers at once, some with a statement the others lack (in the middle).
        await asyncio.gather(*(writer.run(_family(n, note=n % 3 == 0)) for n in range(20)))
        # The first flush starts after all twenty queued: one transaction, three statements.
        assert (writer.flushes, writer.fallbacks) == (1, 0)
        assert (seen.commits, seen.executes) == (1, 3)
        assert flushed == [(20, False)]
        assert await _ids(engine, parents) == {f"p{n}" for n in range(20)}
        assert await _ids(engine, notes) == {f"p{n}" for n in range(0, 20, 3)}
        assert await _ids(engine, children) == {f"c{n}{x}" for n in range(20) for x in "ab"}


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_one_callers_error_is_its_own(kind: str, tmp_path: Path) -> None:
    async with _engine(kind, tmp_path) as engine:
        flushed: list[tuple[int, bool]] = []
        writer = GroupCommit(engine, on_flush=lambda n, failed: flushed.append((n, failed)))
        await writer.run(_family(0))
        # Caller 3's child repeats an existing id: its parent must not stay behind either.
        bad: list[Write] = [(PARENT, {"id": "p3"}), (CHILD, {"id": "c0a", "parent_id": "p3"})]
        results = await asyncio.gather(
            *(writer.run(bad if n == 3 else _family(n)) for n in range(1, 6)),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == [
            "NoneType", "NoneType", "IntegrityError", "NoneType", "NoneType"
        ]  # fmt: skip
        assert await _ids(engine, parents) == {"p0", "p1", "p2", "p4", "p5"}
        assert await _ids(engine, children) == {f"c{n}{x}" for n in (0, 1, 2, 4, 5) for x in "ab"}
        assert writer.fallbacks == 1
        assert flushed == [(1, False), (5, True), *[(1, False)] * 2, (1, True), *[(1, False)] * 2]
        # Afterwards the writer goes on merging.
        await asyncio.gather(*(writer.run(_family(n)) for n in range(6, 9)))
        assert {"p6", "p7", "p8"} <= await _ids(engine, parents)


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_units_in_conflicting_orders_are_written_one_by_one(
    kind: str, tmp_path: Path
) -> None:
    async with _engine(kind, tmp_path) as engine:
        writer = GroupCommit(engine)
        await writer.run([(PARENT, {"id": "p0"}), (PARENT, {"id": "p1"})])
        notes_then_children: list[Write] = [
            (NOTE, {"parent_id": "p0", "text": "x"}),
            (CHILD, {"id": "c0", "parent_id": "p0"}),
        ]
        children_then_notes: list[Write] = [
            (CHILD, {"id": "c1", "parent_id": "p1"}),
            (NOTE, {"parent_id": "p1", "text": "y"}),
        ]
        flushes = writer.flushes
        await asyncio.gather(writer.run(notes_then_children), writer.run(children_then_notes))
        assert await _ids(engine, children) == {"c0", "c1"}
        assert await _ids(engine, notes) == {"p0", "p1"}
        assert (writer.flushes - flushes, writer.fallbacks) == (2, 0)


async def test_a_writer_of_one_unit_per_flush_commits_each_alone(tmp_path: Path) -> None:
    async with _engine("sqlite", tmp_path) as engine:
        writer = GroupCommit(engine, max_units=1, max_flushes=1)
        await asyncio.gather(*(writer.run(_family(n)) for n in range(4)))
        assert writer.flushes == 4
        assert await _ids(engine, parents) == {f"p{n}" for n in range(4)}
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(engine, max_units=0)
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(engine, max_flushes=0)


async def test_drain_waits_for_what_is_queued(tmp_path: Path) -> None:
    async with _engine("sqlite", tmp_path) as engine:
        writer = GroupCommit(engine, max_units=2, max_flushes=1)
        callers = [asyncio.create_task(writer.run(_family(n))) for n in range(5)]
        await asyncio.sleep(0)  # every caller has queued its writes
        await writer.drain()  # what a stopping gateway does
        assert await _ids(engine, parents) == {f"p{n}" for n in range(5)}
        assert writer.flushes == 3
        await asyncio.gather(*callers)
