"""The Alembic migrations produce exactly the tables the code declares (both databases), and
the data migrations move the rows they should."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from attest_gateway.gateway.store.db import make_engine
from attest_gateway.gateway.store.migrate import alembic_config, upgrade_async
from attest_gateway.gateway.store.tables import metadata, tracker_counts, tracker_durations
from tests.support.harness import fresh_database


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_migrations_match_the_declared_schema(kind: str, tmp_path: Path) -> None:
    async with fresh_database(kind, tmp_path) as url:
        await upgrade_async(url)
        await upgrade_async(url)  # running them again changes nothing
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                diff = await conn.run_sync(_diff)
        finally:
            await engine.dispose()
    assert diff == []


def _migrate(url: str, verb: str, target: str) -> None:
    getattr(command, verb)(alembic_config(url), target)


async def _durations(url: str) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(tracker_durations).order_by(*tracker_durations.primary_key.columns)
            )
            return [tuple(r) for r in rows]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_all_types_histograms_are_dropped_and_rebuilt_on_downgrade(
    kind: str, tmp_path: Path
) -> None:
    """0009: the `*` histograms written before are the types' sums again: the upgrade deletes
    them, the downgrade builds them from the types' rows."""
    month = dt.date(2026, 9, 1)
    cell = ("request_to_attest", "national", "month", month)

    def row(attest_type: str, bucket: int, n: int) -> tuple[object, ...]:
        return (*cell, attest_type, "DK", bucket, n)

    typed = [row("LÆ 155", 3, 2), row("LÆ 155", 4, 1), row("LÆ 265", 3, 5)]
    async with fresh_database(kind, tmp_path) as url:
        await asyncio.to_thread(_migrate, url, "upgrade", "0002")
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                columns = tracker_durations.c.keys()
                await conn.execute(
                    tracker_durations.insert(),
                    [
                        dict(zip(columns, r, strict=True))
                        for r in [*typed, row("*", 3, 7), row("*", 4, 1)]
                    ],
                )
        finally:
            await engine.dispose()
        await upgrade_async(url)
        assert await _durations(url) == typed
        await asyncio.to_thread(_migrate, url, "downgrade", "0002")
        assert sorted(await _durations(url)) == sorted([*typed, row("*", 3, 7), row("*", 4, 1)])


async def _fillfactors(url: str) -> dict[str, object]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text("SELECT relname, reloptions FROM pg_class WHERE relname = ANY(:names)"),
                {"names": [tracker_counts.name, tracker_durations.name]},
            )
            return dict(rows.all())
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_rollup_tables_leave_room_for_updates(tmp_path: Path) -> None:
    """0010: the counter and histogram tables get the fillfactor the declared tables name;
    the downgrade resets it."""
    async with fresh_database("postgres", tmp_path) as url:
        await upgrade_async(url)
        declared = {
            t.name: [f"fillfactor={t.dialect_options['postgresql']['with']['fillfactor']}"]
            for t in (tracker_counts, tracker_durations)
        }
        assert declared == {
            "tracker_counts": ["fillfactor=80"],
            "tracker_durations": ["fillfactor=80"],
        }
        assert await _fillfactors(url) == declared
        await asyncio.to_thread(_migrate, url, "downgrade", "0009")
        assert await _fillfactors(url) == {"tracker_counts": None, "tracker_durations": None}
