"""`infra.db.engine.rows_insert`: many rows in one statement (PostgreSQL: one JSON array of
rows through `jsonb_array_elements`, cast to the columns' types), with the conflict clause and
RETURNING the caller adds, on both databases. `infra.db.engine.one_of`/`one_of_param`: IN
lists whose SQL text on PostgreSQL does not depend on the number of values."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.infra.db.engine import make_engine, one_of, one_of_param, rows_insert
from tests.integration.conftest import DB_KINDS
from tests.support.harness import fresh_database

metadata = sa.MetaData()
cells = sa.Table(
    "cells",
    metadata,
    sa.Column("name", sa.String(16), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("note", sa.String(32), nullable=True),
)

D = dt.date(2026, 11, 2)


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


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_rows_are_inserted_and_conflicts_summed(kind: str, tmp_path: Path) -> None:
    async with _engine(kind, tmp_path) as engine:
        upsert = rows_insert(engine.dialect.name, cells).on(
            lambda i: i.on_conflict_do_update(
                index_elements=["name", "day"], set_={"n": cells.c.n + i.excluded.n}
            )
        )
        assert upsert.as_json == (kind == "postgres")
        async with engine.begin() as conn:
            await conn.execute(
                upsert.statement, upsert.params([("a", D, 1, None), ("b", D, 2, "bé")])
            )
            await conn.execute(
                upsert.statement,
                upsert.params([("a", D, 10, None), ("a", D + dt.timedelta(1), 5, "x")]),
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(cells).order_by(cells.c.name, cells.c.day))).all()
        assert [tuple(r) for r in rows] == [
            ("a", D, 11, None),
            ("a", D + dt.timedelta(1), 5, "x"),
            ("b", D, 2, "bé"),
        ]


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_returning_gives_only_the_new_rows(kind: str, tmp_path: Path) -> None:
    async with _engine(kind, tmp_path) as engine:
        insert = rows_insert(engine.dialect.name, cells).on(
            lambda i: i.on_conflict_do_nothing().returning(cells.c.name, cells.c.day)
        )
        async with engine.begin() as conn:
            await conn.execute(insert.statement, insert.params([("a", D, 1, None)]))
            result = await conn.execute(
                insert.statement, insert.params([("a", D, 7, None), ("c", D, 3, None)])
            )
            assert sorted(tuple(r) for r in result) == [("c", D)]
            n = (await conn.execute(sa.select(cells.c.n).where(cells.c.name == "a"))).scalar()
        assert n == 1


def test_rows_of_the_wrong_width_are_refused() -> None:
    for dialect in ("sqlite", "postgresql"):
        with pytest.raises(ValueError, match="must have 4 values"):
            rows_insert(dialect, cells).params([("a", D, 1, None), ("b", D, 2)])


@pytest.mark.postgres
async def test_a_value_too_long_fails_the_insert_and_is_not_cut(tmp_path: Path) -> None:
    """The JSON values are cast to the column's type without its length: an explicit cast to
    VARCHAR(16) would cut the value short; the insert's own check refuses it instead.
    (PostgreSQL only: SQLite keeps no lengths.)"""
    async with _engine("postgres", tmp_path) as engine:
        insert = rows_insert(engine.dialect.name, cells)
        with pytest.raises(sa.exc.DBAPIError, match="too long"):
            async with engine.begin() as conn:
                await conn.execute(insert.statement, insert.params([("x" * 17, D, 1, None)]))
        async with engine.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(cells))).scalar() == 0


async def _fill(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            cells.insert(),
            [{"name": name, "day": D, "n": n} for n, name in enumerate(["a", "b", "c", "d" * 16])],
        )


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_one_of_selects_the_rows_with_those_values(kind: str, tmp_path: Path) -> None:
    async with _engine(kind, tmp_path) as engine:
        await _fill(engine)
        texts: list[str] = []
        sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: texts.append(a[2]))
        dialect = engine.dialect.name
        names = sa.select(cells.c.name).order_by(cells.c.name)
        async with engine.connect() as conn:
            for wanted, found in [
                ([], []),
                (["b"], ["b"]),
                (["c", "a", "zz", "a"], ["a", "c"]),
                # Longer than the column: matches nothing (no cast cuts it to 16 characters).
                (["d" * 16 + "e"], []),
            ]:
                result = await conn.scalars(names.where(one_of(dialect, cells.c.name, wanted)))
                assert list(result) == found, wanted
            by_n = sa.select(cells.c.n).where(one_of_param(dialect, cells.c.n, "ns"))
            assert sorted(await conn.scalars(by_n, {"ns": [0, 3, 7]})) == [0, 3]
            assert list(await conn.scalars(by_n, {"ns": []})) == []
        # PostgreSQL: one text for every number of values, so one prepared statement;
        # SQLite: one for each number (none, one, four).
        assert len(set(texts[:4])) == (1 if kind == "postgres" else 3)
        assert len(set(texts[4:])) == (1 if kind == "postgres" else 2)
