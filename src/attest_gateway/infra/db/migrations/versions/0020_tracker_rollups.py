"""Request → attest latency as a rollup (`tracker_latency`), for Kaplan–Meier with the open
requests, and the receiver-kind cells (grains `rk:national`, `rk:region`,
`rk:municipality`, dim `<place>/<receiver kind>`) that count its requests and distinct
citizens per receiver kind.

The rollup is filled from the requests already tracked (`tracker_conversations`), as the
tracker would have written it: per request cell (week and month, the country, the region and
the municipality, its attest type and `*`) and receiver-kind cell, `answered` requests per
calendar days to the attest and `open` ones per day of the period they were made on (in
`TRACKER_TIMEZONE`, Danish time unless set); the receiver-kind cells get their `requests`
and `citizens` counters and their citizens' memberships. The functions are repeated here as
they were when this migration was written, since a migration must not change with the code.
It reads the requests in chunks of 20,000 (in Python: the cell ids are digests).

Revision ID: 0020
Revises: 0019; depends on 0011 (the tracker's branch)
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

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = "0011"  # the tracker's branch: tracker_cells and the rollups by cell id

FILLFACTOR = 80
CHUNK = 20_000
KIND_GRAINS = {"national": "rk:national", "region": "rk:region", "municipality": "rk:municipality"}

Cell = tuple[str, str, dt.date, str, str]


def cell_id(cell: Cell) -> int:
    """SHA-256 over the five columns (unit separator, date as ISO text), first 8 bytes, as a
    signed 64-bit integer (as migration 0011)."""
    grain, period_kind, period_start, attest_type, dim = cell
    text = "\x1f".join((grain, period_kind, period_start.isoformat(), attest_type, dim))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def _period_start(day: dt.date, kind: str) -> dt.date:
    return day - dt.timedelta(days=day.weekday()) if kind == "week" else day.replace(day=1)


def _cells(row: Any, day: dt.date) -> tuple[list[Cell], list[Cell]]:
    """A request's cells (without the receiving unit's) and its receiver-kind cells."""
    kind_of = row.receiver_role or "unknown"
    places = (("national", "DK"), ("region", row.region_code), ("municipality", row.municipality))
    own: list[Cell] = []
    kinds: list[Cell] = []
    for period in ("week", "month"):
        start = _period_start(day, period)
        for grain, where in places:
            for t in (row.attest_type, "*"):
                own.append((grain, period, start, t, where))
                kinds.append((KIND_GRAINS[grain], period, start, t, f"{where}/{kind_of}"))
    return own, kinds


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _insert(dialect: str, table: sa.Table) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def upgrade() -> None:
    op.create_table(
        "tracker_latency",
        sa.Column(
            "cell_id",
            sa.BigInteger,
            sa.ForeignKey("tracker_cells.id", name="fk_tracker_latency_cell_id_tracker_cells"),
            nullable=False,
        ),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("cell_id", "state", "day", name="pk_tracker_latency"),
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
            sa.Column("region_code", sa.String),
            sa.Column("municipality", sa.String),
            sa.Column("receiver_role", sa.String),
            sa.Column("case_ref", sa.String),
            sa.Column("submitted_at", sa.DateTime(timezone=True)),
            sa.Column("replied_at", sa.DateTime(timezone=True)),
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
        "latency": sa.Table(
            "tracker_latency",
            meta,
            sa.Column("cell_id", sa.BigInteger, primary_key=True),
            sa.Column("state", sa.String, primary_key=True),
            sa.Column("day", sa.Integer, primary_key=True),
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
        latency: Counter[tuple[int, str, int]] = Counter()
        requests: Counter[int] = Counter()
        members: set[tuple[int, str]] = set()
        for row in rows:
            sent = _aware(row.submitted_at).astimezone(tz).date()
            own, kinds = _cells(row, sent)
            replied = row.replied_at
            days = (
                max(0, (_aware(replied).astimezone(tz).date() - sent).days)
                if replied is not None
                else None
            )
            for cell in (*own, *kinds):
                i = cell_id(cell)
                cells[i] = cell
                if days is None:
                    latency[(i, "open", (sent - cell[2]).days)] += 1
                else:
                    latency[(i, "answered", days)] += 1
            for cell in kinds:
                requests[cell_id(cell)] += 1
                members.add((cell_id(cell), row.case_ref))
        _write(bind, dialect, t, cells, latency, requests, members)
    kind_cells = sa.select(t["cells"].c.id).where(
        t["cells"].c.grain.in_(sorted(KIND_GRAINS.values()))
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
    latency: Counter[tuple[int, str, int]],
    requests: Counter[int],
    members: set[tuple[int, str]],
) -> None:
    keys = ("grain", "period_kind", "period_start", "attest_type", "dim")
    insert_cells = _insert(dialect, t["cells"]).on_conflict_do_nothing()
    bind.execute(
        insert_cells,
        [{"id": i, **dict(zip(keys, cell, strict=True))} for i, cell in sorted(cells.items())],
    )
    insert_latency = _insert(dialect, t["latency"])
    bind.execute(
        insert_latency.on_conflict_do_update(
            index_elements=["cell_id", "state", "day"],
            set_={"n": t["latency"].c.n + insert_latency.excluded.n},
        ),
        [
            {"cell_id": i, "state": state, "day": day, "n": n}
            for (i, state, day), n in sorted(latency.items())
        ],
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
    op.drop_table("tracker_latency")
    kind_cells = sa.select(t["cells"].c.id).where(
        t["cells"].c.grain.in_(sorted(KIND_GRAINS.values()))
    )
    bind = op.get_bind()
    bind.execute(t["citizens"].delete().where(t["citizens"].c.cell_id.in_(kind_cells)))
    bind.execute(t["counts"].delete().where(t["counts"].c.cell_id.in_(kind_cells)))
    bind.execute(t["cells"].delete().where(t["cells"].c.id.in_(kind_cells)))
