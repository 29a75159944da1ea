"""The requests open and overdue now as a rollup (`tracker_overdue_cells`, `tracker_overdue`,
`tracker_overdue_citizens`), which `/ministry/v1/overdue` reads.

Filled from the requests already tracked (`tracker_conversations`) as the tracker keeps it:
each request settled `overdue`, made and without an attest counts in 24 cells (week and month
of the day it was made in `TRACKER_TIMEZONE`, Danish time unless set; the country, its region
and its municipality; all receiving units and its own; its attest type and `*`), per due date
(9999-12-31 when it has none) and per citizen. The functions are repeated here as they were
when this migration was written, since a migration must not change with the code. The
citizens are read 5,000 at a time, each with all of their requests.

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import Counter
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

CHUNK = 5_000  # citizens per read
IN_LIST = 500
NO_DUE_DATE = dt.date(9999, 12, 31)
CELL_COLUMNS = ("period_kind", "period_start", "grain", "place", "receiver", "attest_type")

Cell = tuple[str, dt.date, str, str, str, str]


def cell_id(cell: Cell) -> int:
    """SHA-256 over the six columns (unit separator, date as ISO text), first 8 bytes, as a
    signed 64-bit integer."""
    kind, start, grain, place, receiver, attest_type = cell
    text = "\x1f".join((kind, start.isoformat(), grain, place, receiver, attest_type))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def _period_start(day: dt.date, kind: str) -> dt.date:
    return day - dt.timedelta(days=day.weekday()) if kind == "week" else day.replace(day=1)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def upgrade() -> None:
    op.create_table(
        "tracker_overdue_cells",
        sa.Column("id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("period_kind", sa.String(7), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("grain", sa.String(16), nullable=False),
        sa.Column("place", sa.String(4), nullable=False),
        sa.Column("receiver", sa.String(64), nullable=False),
        sa.Column("attest_type", sa.String(16), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("citizens", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracker_overdue_cells"),
    )
    op.create_index(
        "ix_tracker_overdue_cells_period_kind_grain_period_start",
        "tracker_overdue_cells",
        ["period_kind", "grain", "period_start"],
    )
    op.create_table(
        "tracker_overdue",
        sa.Column("cell_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("due_date", sa.Date, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("cell_id", "due_date", name="pk_tracker_overdue"),
    )
    op.create_table(
        "tracker_overdue_citizens",
        sa.Column("cell_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("cell_id", "case_ref", name="pk_tracker_overdue_citizens"),
    )
    _fill(op.get_bind())


def _fill(bind: sa.Connection) -> None:
    meta = sa.MetaData()
    conv = sa.Table(
        "tracker_conversations",
        meta,
        *(
            sa.Column(name, sa.String)
            for name in (
                "conversation_id",
                "outcome",
                "attest_type",
                "region_code",
                "municipality",
                "receiver_org",
                "case_ref",
            )
        ),
        sa.Column("due_date", sa.Date),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        sa.Column("replied_at", sa.DateTime(timezone=True)),
    )
    cells_t = sa.Table(
        "tracker_overdue_cells",
        meta,
        sa.Column("id", sa.BigInteger),
        *(sa.Column(c, sa.Date if c == "period_start" else sa.String) for c in CELL_COLUMNS),
        sa.Column("requests", sa.BigInteger),
        sa.Column("citizens", sa.BigInteger),
    )
    due_t = sa.Table(
        "tracker_overdue",
        meta,
        sa.Column("cell_id", sa.BigInteger),
        sa.Column("due_date", sa.Date),
        sa.Column("n", sa.BigInteger),
    )
    members_t = sa.Table(
        "tracker_overdue_citizens",
        meta,
        sa.Column("cell_id", sa.BigInteger),
        sa.Column("case_ref", sa.String),
        sa.Column("n", sa.BigInteger),
    )
    tz = ZoneInfo(os.environ.get("TRACKER_TIMEZONE") or "Europe/Copenhagen")
    c = conv.c
    open_overdue = (c.outcome == "overdue", c.replied_at.is_(None), c.submitted_at.is_not(None))
    cells: dict[int, Cell] = {}
    requests: Counter[int] = Counter()
    citizens: Counter[int] = Counter()
    due: Counter[tuple[int, dt.date]] = Counter()
    last = ""
    while True:
        refs = list(
            bind.scalars(
                sa.select(c.case_ref)
                .where(c.case_ref > last, *open_overdue)
                .group_by(c.case_ref)
                .order_by(c.case_ref)
                .limit(CHUNK)
            )
        )
        if not refs:
            break
        last = refs[-1]
        members: Counter[tuple[int, str]] = Counter()
        for start in range(0, len(refs), IN_LIST):
            rows = bind.execute(
                sa.select(conv).where(c.case_ref.in_(refs[start : start + IN_LIST]), *open_overdue)
            )
            for row in rows:
                day = _aware(row.submitted_at).astimezone(tz).date()
                due_date = row.due_date if row.due_date is not None else NO_DUE_DATE
                places = (
                    ("national", "DK"),
                    ("region", row.region_code),
                    ("municipality", row.municipality),
                )
                for kind in ("week", "month"):
                    for grain, place in places:
                        for receiver in ("", row.receiver_org):
                            for attest_type in (row.attest_type, "*"):
                                cell = (kind, _period_start(day, kind), grain, place, receiver,
                                        attest_type)  # fmt: skip
                                i = cell_id(cell)
                                cells[i] = cell
                                requests[i] += 1
                                due[(i, due_date)] += 1
                                members[(i, row.case_ref)] += 1
        bind.execute(
            members_t.insert(),
            [{"cell_id": i, "case_ref": ref, "n": n} for (i, ref), n in sorted(members.items())],
        )
        citizens.update(i for i, _ in members)
    if cells:
        bind.execute(
            cells_t.insert(),
            [
                dict(zip(CELL_COLUMNS, cell, strict=True))
                | {"id": i, "requests": requests[i], "citizens": citizens[i]}
                for i, cell in sorted(cells.items())
            ],
        )
        bind.execute(
            due_t.insert(),
            [{"cell_id": i, "due_date": d, "n": n} for (i, d), n in sorted(due.items())],
        )


def downgrade() -> None:
    op.drop_table("tracker_overdue_citizens")
    op.drop_table("tracker_overdue")
    op.drop_table("tracker_overdue_cells")
