"""Writes to the tracker's rollups: one multi-row upsert per table and event.

Counters are added with `INSERT … ON CONFLICT DO UPDATE SET x = x + excluded.x` (SQLite and
PostgreSQL alike), so concurrent consumers never lose an increment. A cell's `citizens`
counter goes up only when `tracker_cell_citizens` learns a case ref it did not hold.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.gateway.store.tables import (
    tracker_cell_citizens,
    tracker_counts,
    tracker_durations,
)

Cell = tuple[str, str, dt.date, str, str]  # grain, period_kind, period_start, attest_type, dim
CELL_COLUMNS = ("grain", "period_kind", "period_start", "attest_type", "dim")
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


def _insert(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect}")  # pragma: no cover


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    """The three upserts, built once per dialect and executed with a list of rows, so that
    SQLAlchemy compiles each once (compiling multi-row VALUES every time cost most of an
    event's time)."""
    counts = _insert(dialect, tracker_counts)
    counts = counts.on_conflict_do_update(
        index_elements=list(CELL_COLUMNS),
        set_={k: tracker_counts.c[k] + counts.excluded[k] for k in COUNTERS},
    )
    durations = _insert(dialect, tracker_durations)
    durations = durations.on_conflict_do_update(
        index_elements=["metric", *CELL_COLUMNS, "bucket"],
        set_={"n": tracker_durations.c.n + durations.excluded.n},
    )
    citizens = (
        _insert(dialect, tracker_cell_citizens)
        .on_conflict_do_nothing()
        .returning(
            *(tracker_cell_citizens.c[k] for k in CELL_COLUMNS), sort_by_parameter_order=True
        )
    )
    return {"counts": counts, "durations": durations, "citizens": citizens}


def _cell_dict(cell: Cell) -> dict[str, Any]:
    return dict(zip(CELL_COLUMNS, cell, strict=True))


_ZERO = dict.fromkeys(COUNTERS, 0)


async def add_counts(conn: AsyncConnection, cells: Sequence[Cell], **increments: int) -> None:
    """Add the increments (counter name → amount) to every cell."""
    if not cells or not any(increments.values()):
        return
    unknown = set(increments) - set(COUNTERS)
    if unknown:
        raise ValueError(f"unknown counters {sorted(unknown)}")
    rows = [_cell_dict(c) | _ZERO | increments for c in dict.fromkeys(cells)]
    await conn.execute(_statements(conn.dialect.name)["counts"], rows)


async def add_duration(
    conn: AsyncConnection, metric: str, cells: Sequence[Cell], bucket: int
) -> None:
    if not cells:
        return
    rows = [_cell_dict(c) | {"metric": metric, "bucket": bucket, "n": 1} for c in set(cells)]
    await conn.execute(_statements(conn.dialect.name)["durations"], rows)


async def add_citizen(conn: AsyncConnection, cells: Sequence[Cell], case_ref: str) -> None:
    """Count `case_ref` once in each cell that does not count it yet."""
    if not cells:
        return
    rows = [_cell_dict(c) | {"case_ref": case_ref} for c in dict.fromkeys(cells)]
    result = await conn.execute(_statements(conn.dialect.name)["citizens"], rows)
    new_cells: list[Cell] = [
        (r.grain, r.period_kind, r.period_start, r.attest_type, r.dim) for r in result
    ]
    await add_counts(conn, new_cells, citizens=1)
