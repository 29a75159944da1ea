"""The Alembic migrations produce exactly the tables the code declares (both databases), and
the data migrations move the rows they should."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import alembic_config, upgrade_async
from attest_gateway.infra.db.tables import (
    SEALED_COLUMNS,
    conversations,
    mailbox,
    metadata,
    organisations,
    stages,
    tracker_cell_citizens,
    tracker_counts,
    tracker_durations,
)
from attest_gateway.tracker.store import with_cells
from tests.support.harness import fresh_database

COLUMNS_0012 = importlib.import_module(
    "attest_gateway.infra.db.migrations.versions.0012_sealed_columns_uncompressed"
).COLUMNS
COLUMNS_0016 = importlib.import_module(
    "attest_gateway.infra.db.migrations.versions.0016_cases"
).COLUMNS


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


# The rollup tables as migrations 0002-0010 made them: keyed by the cell's five columns.
_CELL = ("grain", "period_kind", "period_start", "attest_type", "dim")
_WIDE = {
    "tracker_durations": ("metric", *_CELL, "bucket", "n"),
    "tracker_counts": (*_CELL, "requests", "citizens", "contact_decided"),
    "tracker_cell_citizens": (*_CELL, "case_ref"),
}


def _wide(name: str) -> sa.TableClause:
    return sa.table(
        name, *(sa.column(c, sa.Date if c == "period_start" else None) for c in _WIDE[name])
    )


async def _write(url: str, rows: dict[str, list[tuple[object, ...]]]) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            for name, values in rows.items():
                columns = _WIDE[name]
                await conn.execute(
                    _wide(name).insert(), [dict(zip(columns, r, strict=True)) for r in values]
                )
    finally:
        await engine.dispose()


async def _read(url: str, name: str, *, wide: bool = True) -> list[tuple[object, ...]]:
    """A rollup table's rows in the columns of `_WIDE`: as stored before 0011 (`wide`), or
    through the cells table after it."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            if wide:
                table = _wide(name)
                rows = await conn.execute(sa.select(*(table.c[c] for c in _WIDE[name])))
            else:
                current = {
                    t.name: t for t in (tracker_counts, tracker_durations, tracker_cell_citizens)
                }
                by_cell = with_cells(current[name]).subquery()
                rows = await conn.execute(sa.select(*(by_cell.c[c] for c in _WIDE[name])))
            return sorted(tuple(r) for r in rows)
    finally:
        await engine.dispose()


async def _durations(url: str) -> list[tuple[object, ...]]:
    return await _read(url, "tracker_durations")


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
        await _write(url, {"tracker_durations": [*typed, row("*", 3, 7), row("*", 4, 1)]})
        await asyncio.to_thread(_migrate, url, "upgrade", "0010")
        assert await _durations(url) == sorted(typed)
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


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_rollups_move_to_cell_ids_and_back(kind: str, tmp_path: Path) -> None:
    """0011: every rollup row keeps its cell (now a row of `tracker_cells`, referred to by
    id) and its figures; the downgrade gives back the rows as they were."""
    week, month = dt.date(2026, 9, 7), dt.date(2026, 9, 1)
    national = ("national", "week", week, "LÆ 155", "DK")
    region = ("region", "month", month, "*", "1084")
    contact = ("municipality", "month", month, "-", "101")
    rows: dict[str, list[tuple[object, ...]]] = {
        "tracker_durations": [
            ("request_to_attest", *national, 3, 2),
            ("request_to_attest", *national, 4, 1),
            ("fetch_to_ack", *national, 3, 5),
            ("request_to_attest", "region", "month", month, "LÆ 155", "1084", 9, 1),
        ],
        "tracker_counts": [(*national, 3, 3, 0), (*region, 7, 5, 0), (*contact, 0, 2, 2)],
        "tracker_cell_citizens": [
            (*cell, ref)
            for cell in (national, region, contact)
            for ref in ("a1b2c3.0001", "a1b2c3.0002")
        ],
    }
    async with fresh_database(kind, tmp_path) as url:
        await asyncio.to_thread(_migrate, url, "upgrade", "0010")
        await _write(url, rows)
        await upgrade_async(url)
        for name, values in rows.items():
            assert await _read(url, name, wide=False) == sorted(values), name
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                cells = (await conn.execute(sa.text("SELECT count(*) FROM tracker_cells"))).one()
        finally:
            await engine.dispose()
        assert cells[0] == 4  # the three above and the regional histogram's own (LÆ 155)
        await asyncio.to_thread(_migrate, url, "downgrade", "0010")
        for name, values in rows.items():
            assert await _read(url, name) == sorted(values), name


async def _storage(url: str) -> dict[tuple[str, str], str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT c.relname, a.attname, a.attstorage::text FROM pg_attribute a"
                    " JOIN pg_class c ON c.oid = a.attrelid"
                    " WHERE c.relname = ANY(:tables) AND a.attnum > 0 AND NOT a.attisdropped"
                    " AND a.atttypid IN ('bytea'::regtype, 'text'::regtype)"
                ),
                {"tables": sorted({table for table, _ in SEALED_COLUMNS})},
            )
            return {(table, column): storage for table, column, storage in rows.all()}
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_sealed_columns_are_stored_uncompressed(tmp_path: Path) -> None:
    """0012 and 0016: exactly the ciphertext columns are EXTERNAL (out of line, never
    compressed); the other text columns of those tables keep the default; the downgrade
    restores it. The migrations' frozen lists are the declared one."""
    assert COLUMNS_0012 + COLUMNS_0016 == SEALED_COLUMNS
    async with fresh_database("postgres", tmp_path) as url:
        await upgrade_async(url)
        storage = await _storage(url)
        assert {key for key, kind in storage.items() if kind == "e"} == set(SEALED_COLUMNS)
        assert {kind for key, kind in storage.items() if key not in SEALED_COLUMNS} == {"x"}
        await asyncio.to_thread(_migrate, url, "downgrade", "0008")
        assert set((await _storage(url)).values()) == {"x"}


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_positive_acknowledgements_to_job_centres_are_marked_collected(
    kind: str, tmp_path: Path
) -> None:
    """0024: a positive acknowledgement waiting in a job centre's mailbox is collected as of
    its delivery; a refusal, and an acknowledgement waiting in a clinic's, still wait."""
    at = dt.datetime(2026, 11, 2, 9, 30, tzinfo=dt.UTC)
    orgs = [
        {"id": o, "name": o, "role": role, "created_at": at}
        for o, role in (("jc-1", "jobcenter"), ("psyk-1", "psychiatry"))
    ]
    convs = [
        {
            "id": cid, "jobcenter_org_id": "jc-1", "receiver_org_id": "psyk-1",
            "request_message_id": f"req-{cid}", "attest_type": "LÆ 155", "case_kind": "sickness",
            "caseworker_ref": "cw", "municipality": "101", "region_code": "1084",
            "case_ref": f"ref-{cid}", "psychiatric_course": True,
            "first_day_of_absence": at.date(), "reply_deadline": at.date(), "created_at": at,
        }
        for cid in ("c1", "c2")
    ]  # fmt: skip

    def mail(message_id: str, cid: str, receiver: str, sender: str) -> dict[str, object]:
        return {
            "message_id": message_id, "receiver_org_id": receiver, "sender_org_id": sender,
            "conversation_id": cid, "message_type": "acknowledgement", "envelope": b"{}",
            "delivered_at": at,
        }  # fmt: skip

    rows = [
        mail("positive", "c1", "jc-1", "psyk-1"),
        mail("refusal", "c2", "jc-1", "psyk-1"),
        mail("to-clinic", "c1", "psyk-1", "jc-1"),
    ]
    refused = {"conversation_id": "c2", "stage": "refused", "message_id": "refusal", "at": at}
    async with fresh_database(kind, tmp_path) as url:
        await asyncio.to_thread(_migrate, url, "upgrade", "0023")
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(organisations.insert(), orgs)
                await conn.execute(conversations.insert(), convs)
                await conn.execute(mailbox.insert(), rows)
                await conn.execute(stages.insert(), [refused])
            await upgrade_async(url)
            async with engine.connect() as conn:
                result = await conn.execute(sa.select(mailbox.c.message_id, mailbox.c.collected_at))
                collected = {row.message_id: row.collected_at for row in result}
        finally:
            await engine.dispose()
    assert {k: v is not None for k, v in collected.items()} == {
        "positive": True,
        "refusal": False,
        "to-clinic": False,
    }
    positive = collected["positive"]
    assert positive is not None
    assert positive.replace(tzinfo=dt.UTC) == at
