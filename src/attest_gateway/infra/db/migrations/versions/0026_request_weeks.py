"""When in the absence requests are made as a rollup (`tracker_request_weeks`), and the
case-kind cells (grains `ck:national`, `ck:region`, `ck:municipality`, dim
`<place>/<case kind>`) that count its requests and distinct citizens per case kind.

The rollup is filled from the requests already tracked (`tracker_conversations`), as the
tracker would have written it: per request cell (week and month, the country, the region and
the municipality, its attest type and `*`) and case-kind cell, the requests per week of the
citizen's absence they were made in (the first day of absence is day 1 of week 1; 0 before
it, 27 for week 27 or later), the day of the request in `TRACKER_TIMEZONE` (Danish time unless
set); the case-kind cells get their `requests` and `citizens` counters and their citizens'
memberships. The functions are repeated here as they were when this migration was written,
since a migration must not change with the code. It reads the requests in chunks of 20,000
(in Python: the cell ids are digests).

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

FILLFACTOR = 80
CHUNK = 20_000
LAST_WEEK = 27
CASE_KIND_GRAINS = {
    "national": "ck:national",
    "region": "ck:region",
    "municipality": "ck:municipality",
}

Cell = tuple[str, str, dt.date, str, str]


def cell_id(cell: Cell) -> int:
    """SHA-256 over the five columns (unit separator, date as ISO text), first 8 bytes, as a
    signed 64-bit integer (as migration 0011)."""
    grain, period_kind, period_start, attest_type, dim = cell
    text = "\x1f".join((grain, period_kind, period_start.isoformat(), attest_type, dim))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def _period_start(day: dt.date, kind: str) -> dt.date:
    return day - dt.timedelta(days=day.weekday()) if kind == "week" else day.replace(day=1)


def _absence_week(first_day: dt.date, requested: dt.date) -> int:
    days = (requested - first_day).days
    return 0 if days < 0 else min(days // 7 + 1, LAST_WEEK)


def _cells(row: Any, day: dt.date) -> tuple[list[Cell], list[Cell]]:
    """A request's cells (without the receiving unit's) and its case-kind cells."""
    places = (("national", "DK"), ("region", row.region_code), ("municipality", row.municipality))
    own: list[Cell] = []
    kinds: list[Cell] = []
    for period in ("week", "month"):
        start = _period_start(day, period)
        for grain, where in places:
            for t in (row.attest_type, "*"):
                own.append((grain, period, start, t, where))
                kinds.append(
                    (CASE_KIND_GRAINS[grain], period, start, t, f"{where}/{row.case_kind}")
                )
    return own, kinds


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _insert(dialect: str, table: sa.Table) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def upgrade() -> None:
    op.create_table(
        "tracker_request_weeks",
        sa.Column(
            "cell_id",
            sa.BigInteger,
            sa.ForeignKey(
                "tracker_cells.id", name="fk_tracker_request_weeks_cell_id_tracker_cells"
            ),
            nullable=False,
        ),
        sa.Column("week", sa.SmallInteger, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("cell_id", "week", name="pk_tracker_request_weeks"),
        postgresql_with={"fillfactor": FILLFACTOR},
    )
    _backfill(op.get_bind())


def _tables() -> dict[str, sa.Table]:
    meta = sa.MetaData()
    return {
        "conversations": sa.Table(
            "tracker_conversations",
            meta,
            sa.Column("conversation_id", sa.String),
            sa.Column("attest_type", sa.String),
            sa.Column("case_kind", sa.String),
            sa.Column("region_code", sa.String),
            sa.Column("municipality", sa.String),
            sa.Column("case_ref", sa.String),
            sa.Column("first_day_of_absence", sa.Date),
            sa.Column("submitted_at", sa.DateTime(timezone=True)),
        ),
        "cells": sa.Table(
            "tracker_cells",
            meta,
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("grain", sa.String),
            sa.Column("period_kind", sa.String),
            sa.Column("period_start", sa.Date),
            sa.Column("attest_type", sa.String),
            sa.Column("dim", sa.String),
        ),
        "counts": sa.Table(
            "tracker_counts",
            meta,
            sa.Column("cell_id", sa.BigInteger, primary_key=True),
            sa.Column("requests", sa.BigInteger),
            sa.Column("citizens", sa.BigInteger),
        ),
        "citizens": sa.Table(
            "tracker_cell_citizens",
            meta,
            sa.Column("cell_id", sa.BigInteger, primary_key=True),
            sa.Column("case_ref", sa.String, primary_key=True),
        ),
        "weeks": sa.Table(
            "tracker_request_weeks",
            meta,
            sa.Column("cell_id", sa.BigInteger, primary_key=True),
            sa.Column("week", sa.SmallInteger, primary_key=True),
            sa.Column("n", sa.BigInteger),
        ),
    }


def _backfill(bind: sa.Connection) -> None:
    t = _tables()
    dialect = bind.dialect.name
    tz = ZoneInfo(os.environ.get("TRACKER_TIMEZONE") or "Europe/Copenhagen")
    conv = t["conversations"]
    last = ""
    while True:
        rows = list(
            bind.execute(
                sa.select(conv)
                .where(conv.c.submitted_at.is_not(None), conv.c.conversation_id > last)
                .order_by(conv.c.conversation_id)
                .limit(CHUNK)
            )
        )
        if not rows:
            break
        last = rows[-1].conversation_id
        cells: dict[int, Cell] = {}
        weeks: Counter[tuple[int, int]] = Counter()
        requests: Counter[int] = Counter()
        members: set[tuple[int, str]] = set()
        for row in rows:
            sent = _aware(row.submitted_at).astimezone(tz).date()
            week = _absence_week(row.first_day_of_absence, sent)
            own, kinds = _cells(row, sent)
            for cell in (*own, *kinds):
                i = cell_id(cell)
                cells[i] = cell
                weeks[(i, week)] += 1
            for cell in kinds:
                requests[cell_id(cell)] += 1
                members.add((cell_id(cell), row.case_ref))
        _write(bind, dialect, t, cells, weeks, requests, members)
    kind_cells = sa.select(t["cells"].c.id).where(
        t["cells"].c.grain.in_(sorted(CASE_KIND_GRAINS.values()))
    )
    members_of = (
        sa.select(sa.func.count())
        .select_from(t["citizens"])
        .where(t["citizens"].c.cell_id == t["counts"].c.cell_id)
        .scalar_subquery()
    )
    bind.execute(
        t["counts"]
        .update()
        .where(t["counts"].c.cell_id.in_(kind_cells))
        .values(citizens=members_of)
    )


def _write(
    bind: sa.Connection,
    dialect: str,
    t: dict[str, sa.Table],
    cells: dict[int, Cell],
    weeks: Counter[tuple[int, int]],
    requests: Counter[int],
    members: set[tuple[int, str]],
) -> None:
    keys = ("grain", "period_kind", "period_start", "attest_type", "dim")
    bind.execute(
        _insert(dialect, t["cells"]).on_conflict_do_nothing(),
        [{"id": i, **dict(zip(keys, cell, strict=True))} for i, cell in sorted(cells.items())],
    )
    insert_weeks = _insert(dialect, t["weeks"])
    bind.execute(
        insert_weeks.on_conflict_do_update(
            index_elements=["cell_id", "week"],
            set_={"n": t["weeks"].c.n + insert_weeks.excluded.n},
        ),
        [{"cell_id": i, "week": week, "n": n} for (i, week), n in sorted(weeks.items())],
    )
    insert_counts = _insert(dialect, t["counts"])
    bind.execute(
        insert_counts.on_conflict_do_update(
            index_elements=["cell_id"],
            set_={"requests": t["counts"].c.requests + insert_counts.excluded.requests},
        ),
        [{"cell_id": i, "requests": n, "citizens": 0} for i, n in sorted(requests.items())],
    )
    bind.execute(
        _insert(dialect, t["citizens"]).on_conflict_do_nothing(),
        [{"cell_id": i, "case_ref": ref} for i, ref in sorted(members)],
    )


def downgrade() -> None:
    t = _tables()
    op.drop_table("tracker_request_weeks")
    kind_cells = sa.select(t["cells"].c.id).where(
        t["cells"].c.grain.in_(sorted(CASE_KIND_GRAINS.values()))
    )
    bind = op.get_bind()
    bind.execute(t["citizens"].delete().where(t["citizens"].c.cell_id.in_(kind_cells)))
    bind.execute(t["counts"].delete().where(t["counts"].c.cell_id.in_(kind_cells)))
    bind.execute(t["cells"].delete().where(t["cells"].c.id.in_(kind_cells)))
