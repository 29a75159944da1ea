"""The tracker's rollup cells get a table of their own, and the rollups refer to a cell by its
integer id: `tracker_cells` (id, grain, period kind, period start, attest type, dim; unique on
the five), and `tracker_counts`, `tracker_durations` and `tracker_cell_citizens` keyed by
`cell_id` instead of the five columns. Every tracker event writes several rollup rows; an
upsert keyed by one integer costs PostgreSQL much less than one keyed by five columns, and the
cell's columns are stored once instead of in every histogram bucket and citizen membership.

A cell's id is a digest of its five columns (`tracker.store.cell_id`; the function is
repeated here as it was when this migration was written, since a migration must not change
with the code). The rows are carried over (each old key becomes a cell); the downgrade puts
them back.

Revision ID: 0011
Revises: 0010 (the tracker's branch)
"""

from __future__ import annotations

import datetime as dt
import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CELL = ("grain", "period_kind", "period_start", "attest_type", "dim")
COUNTERS = (
    "requests",
    "citizens",
    "late_requests",
    "replied",
    "decided",
    "overdue",
    "reminders",
    "contact_decided",
    "contact_covered",
)
FILLFACTOR = 80
TABLES = ("tracker_counts", "tracker_durations", "tracker_cell_citizens")


def _cell_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("grain", sa.String(16), nullable=False),
        sa.Column("period_kind", sa.String(5), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("attest_type", sa.String(16), nullable=False),
        sa.Column("dim", sa.String(64), nullable=False),
    ]


def _counters() -> list[sa.Column[object]]:
    return [sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in COUNTERS]


def _rename_old(postgresql: bool) -> None:
    """The old tables (and, on PostgreSQL, their key indexes) move aside as `<name>_old`."""
    for table in TABLES:
        op.rename_table(table, f"{table}_old")
        if postgresql:
            op.execute(f"ALTER INDEX pk_{table} RENAME TO pk_{table}_old")


def cell_id(cell: tuple[str, str, dt.date, str, str]) -> int:
    """SHA-256 over the five columns (unit separator, date as ISO text), first 8 bytes, as a
    signed 64-bit integer."""
    grain, period_kind, period_start, attest_type, dim = cell
    text = "\x1f".join((grain, period_kind, period_start.isoformat(), attest_type, dim))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def _fk(table: str) -> sa.Column[object]:
    return sa.Column(
        "cell_id",
        sa.BigInteger,
        sa.ForeignKey("tracker_cells.id", name=f"fk_{table}_cell_id_tracker_cells"),
        nullable=False,
    )


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    _rename_old(postgresql)
    op.create_table(
        "tracker_cells",
        sa.Column("id", sa.BigInteger, nullable=False, autoincrement=False),
        *_cell_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_tracker_cells"),
        sa.UniqueConstraint(*CELL, name="uq_tracker_cells_key"),
    )
    op.create_table(
        "tracker_counts",
        _fk("tracker_counts"),
        *_counters(),
        sa.PrimaryKeyConstraint("cell_id", name="pk_tracker_counts"),
        postgresql_with={"fillfactor": FILLFACTOR},
    )
    op.create_table(
        "tracker_durations",
        _fk("tracker_durations"),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("bucket", sa.SmallInteger, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("cell_id", "metric", "bucket", name="pk_tracker_durations"),
        postgresql_with={"fillfactor": FILLFACTOR},
    )
    op.create_table(
        "tracker_cell_citizens",
        _fk("tracker_cell_citizens"),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("cell_id", "case_ref", name="pk_tracker_cell_citizens"),
    )
    cell = ", ".join(CELL)
    union = " UNION ".join(f"SELECT {cell} FROM {t}_old" for t in TABLES)  # noqa: S608
    cells = sa.table(
        "tracker_cells",
        sa.column("id", sa.BigInteger),
        *(sa.column(k, sa.Date if k == "period_start" else sa.String) for k in CELL),
    )
    bind = op.get_bind()
    found = bind.execute(
        sa.text(f"SELECT {cell} FROM ({union}) AS k").columns(  # noqa: S608
            *(cells.c[k] for k in CELL)
        )
    )
    rows = [dict(zip(("id", *CELL), (cell_id(tuple(r)), *r), strict=True)) for r in found]
    if rows:
        bind.execute(cells.insert(), rows)
    join = " AND ".join(f"c.{k} = o.{k}" for k in CELL)
    counters = ", ".join(COUNTERS)
    o_counters = ", ".join(f"o.{k}" for k in COUNTERS)
    op.execute(
        f"INSERT INTO tracker_counts (cell_id, {counters}) "  # noqa: S608
        f"SELECT c.id, {o_counters} FROM tracker_counts_old o JOIN tracker_cells c ON {join}"
    )
    op.execute(
        "INSERT INTO tracker_durations (cell_id, metric, bucket, n) "  # noqa: S608
        f"SELECT c.id, o.metric, o.bucket, o.n FROM tracker_durations_old o "
        f"JOIN tracker_cells c ON {join}"
    )
    op.execute(
        "INSERT INTO tracker_cell_citizens (cell_id, case_ref) "  # noqa: S608
        f"SELECT c.id, o.case_ref FROM tracker_cell_citizens_old o JOIN tracker_cells c ON {join}"
    )
    for table in TABLES:
        op.drop_table(f"{table}_old")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    _rename_old(postgresql)
    op.create_table(
        "tracker_counts",
        *_cell_columns(),
        *_counters(),
        sa.PrimaryKeyConstraint(*CELL, name="pk_tracker_counts"),
        postgresql_with={"fillfactor": FILLFACTOR},
    )
    op.create_table(
        "tracker_durations",
        sa.Column("metric", sa.String(32), nullable=False),
        *_cell_columns(),
        sa.Column("bucket", sa.SmallInteger, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("metric", *CELL, "bucket", name="pk_tracker_durations"),
        postgresql_with={"fillfactor": FILLFACTOR},
    )
    op.create_table(
        "tracker_cell_citizens",
        *_cell_columns(),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint(*CELL, "case_ref", name="pk_tracker_cell_citizens"),
    )
    cell = ", ".join(CELL)
    c_cell = ", ".join(f"c.{k}" for k in CELL)
    counters = ", ".join(COUNTERS)
    o_counters = ", ".join(f"o.{k}" for k in COUNTERS)
    join = "JOIN tracker_cells c ON c.id = o.cell_id"
    op.execute(
        f"INSERT INTO tracker_counts ({cell}, {counters}) "  # noqa: S608
        f"SELECT {c_cell}, {o_counters} FROM tracker_counts_old o {join}"
    )
    op.execute(
        f"INSERT INTO tracker_durations (metric, {cell}, bucket, n) "  # noqa: S608
        f"SELECT o.metric, {c_cell}, o.bucket, o.n FROM tracker_durations_old o {join}"
    )
    op.execute(
        f"INSERT INTO tracker_cell_citizens ({cell}, case_ref) "  # noqa: S608
        f"SELECT {c_cell}, o.case_ref FROM tracker_cell_citizens_old o {join}"
    )
    for table in TABLES:
        op.drop_table(f"{table}_old")
    op.drop_table("tracker_cells")
