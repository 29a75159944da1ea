"""The SQLite cursor that runs a statement in one call in its connection's thread
(infra/db/sqlite_driver.py), against the installed aiosqlite and SQLAlchemy: one hand-over
per statement, and what SQLAlchemy reads from a cursor unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.infra.db.engine import make_engine

T = sa.Table(
    "t",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("v", sa.String, nullable=False, unique=True),
)


@pytest_asyncio.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(T.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_statement_is_one_call_in_the_connections_thread(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn.__name__)
        return await original(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    async with engine.connect() as conn:
        await conn.execute(sa.select(sa.literal(1)))  # the connection's first use done
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        for n in range(5):
            assert (await conn.execute(sa.select(sa.literal(n)))).scalar_one() == n
        await conn.execute(T.insert(), [{"v": "a"}, {"v": "b"}])
        await conn.rollback()
    # five selects and one executemany, one call each (SQLAlchemy's adapter made three or
    # four: open a cursor, execute, fetch, close); then the rollbacks (ours, the pool's)
    assert calls[:6] == ["_run"] * 6
    assert set(calls[6:]) == {"rollback"}


async def test_rows_counts_and_errors_are_those_of_sqlite(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(T.insert().values(v="a").returning(T.c.id, T.c.v))
        assert inserted.all() == [(1, "a")]
        single = await conn.execute(T.insert().values(v="b"))
        assert single.inserted_primary_key == (2,)  # lastrowid
        many = await conn.execute(T.insert(), [{"v": "c"}, {"v": "d"}, {"v": "e"}])
        assert many.rowcount == 3
        updated = await conn.execute(T.update().where(T.c.id > 3).values(v=T.c.v + "!"))
        assert updated.rowcount == 2
        assert (await conn.execute(sa.select(T.c.v).where(T.c.id > 9))).all() == []
        rows = (await conn.execute(sa.select(T).order_by(T.c.id))).mappings().all()
        assert [r["v"] for r in rows] == ["a", "b", "c", "d!", "e!"]
        with pytest.raises(sa.exc.IntegrityError):
            await conn.execute(T.insert().values(v="a"))
    async with engine.connect() as conn:  # the connection went on after the error
        assert (await conn.execute(sa.select(sa.func.count()).select_from(T))).scalar_one() == 5
    async with engine.begin() as conn:
        await conn.execute(T.insert().values(v="x"))
        deleted = await conn.execute(T.delete())
        assert deleted.rowcount == 6  # the five committed before and x
        streamed = await conn.stream(sa.select(sa.literal(7)))  # the server-side cursor
        assert [row async for row in streamed] == [(7,)]
