"""Writes to the tracker's rollups: one multi-row upsert per table and event, or per batch.

Counters are added with `INSERT … ON CONFLICT DO UPDATE SET x = x + excluded.x` (SQLite and
PostgreSQL alike), so concurrent consumers never lose an increment. A cell's `citizens`
counter goes up only when `tracker_cell_citizens` learns a case ref it did not hold.

Inside :func:`buffered_rollups` the increments are summed in memory instead and written by
:meth:`RollupBuffer.flush` in one upsert per table, in sorted key order: a batch of events
then costs three statements for all its rollups (citizen memberships, counters, duration
histograms), and two consumers' transactions take the row locks in the same order (so they
wait for each other instead of deadlocking).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.gateway.store.db import dialect_insert
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


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    """The three upserts, built once per dialect and executed with a list of rows, so that
    SQLAlchemy compiles each once (compiling multi-row VALUES every time cost most of an
    event's time)."""
    counts = dialect_insert(dialect, tracker_counts)
    counts = counts.on_conflict_do_update(
        index_elements=list(CELL_COLUMNS),
        set_={k: tracker_counts.c[k] + counts.excluded[k] for k in COUNTERS},
    )
    durations = dialect_insert(dialect, tracker_durations)
    durations = durations.on_conflict_do_update(
        index_elements=["metric", *CELL_COLUMNS, "bucket"],
        set_={"n": tracker_durations.c.n + durations.excluded.n},
    )
    # Unordered RETURNING: SQLAlchemy then sends the rows as one multi-row INSERT (asking for
    # parameter order made it send one statement per row: 22 round trips per request).
    citizens = (
        dialect_insert(dialect, tracker_cell_citizens)
        .on_conflict_do_nothing()
        .returning(*(tracker_cell_citizens.c[k] for k in CELL_COLUMNS))
    )
    return {"counts": counts, "durations": durations, "citizens": citizens}


@functools.lru_cache(maxsize=65_536)
def _cell_dict(cell: Cell) -> dict[str, Any]:
    """A cell's columns (cached and shared: callers merge it into a new dict, never change
    it)."""
    return dict(zip(CELL_COLUMNS, cell, strict=True))


_ZERO = dict.fromkeys(COUNTERS, 0)


class RollupBuffer:
    """Rollup increments summed in memory until :meth:`flush` writes them."""

    def __init__(self) -> None:
        self.counts: dict[Cell, Counter[str]] = {}
        self.durations: Counter[tuple[str, Cell, int]] = Counter()
        self.citizens: set[tuple[Cell, str]] = set()

    def add_counts(self, cells: Sequence[Cell], increments: dict[str, int]) -> None:
        for cell in dict.fromkeys(cells):
            self.counts.setdefault(cell, Counter()).update(increments)

    def add_duration(self, metric: str, cells: Sequence[Cell], bucket: int) -> None:
        for cell in set(cells):
            self.durations[(metric, cell, bucket)] += 1

    def add_citizen(self, cells: Sequence[Cell], case_ref: str) -> None:
        self.citizens.update((cell, case_ref) for cell in cells)

    async def flush(self, conn: AsyncConnection) -> None:
        statements = _statements(conn.dialect.name)
        if self.citizens:  # first: the cells that learn a new citizen count it
            rows = [_cell_dict(cell) | {"case_ref": ref} for cell, ref in sorted(self.citizens)]
            result = await conn.execute(statements["citizens"], rows)
            for r in result:
                cell = (r.grain, r.period_kind, r.period_start, r.attest_type, r.dim)
                self.counts.setdefault(cell, Counter())["citizens"] += 1
        counts = [
            _cell_dict(cell) | _ZERO | dict(added)
            for cell, added in sorted(self.counts.items())
            if any(added.values())
        ]
        if counts:
            await conn.execute(statements["counts"], counts)
        durations = [
            _cell_dict(cell) | {"metric": metric, "bucket": bucket, "n": n}
            for (metric, cell, bucket), n in sorted(self.durations.items())
        ]
        if durations:
            await conn.execute(statements["durations"], durations)
        self.counts, self.durations, self.citizens = {}, Counter(), set()


_buffer: ContextVar[RollupBuffer | None] = ContextVar("tracker_rollup_buffer", default=None)


@contextmanager
def buffered_rollups() -> Iterator[RollupBuffer]:
    """Collect the rollup writes of the code inside; the caller flushes in its transaction."""
    buffer = RollupBuffer()
    token = _buffer.set(buffer)
    try:
        yield buffer
    finally:
        _buffer.reset(token)


async def add_counts(conn: AsyncConnection, cells: Sequence[Cell], **increments: int) -> None:
    """Add the increments (counter name → amount) to every cell."""
    if not cells or not any(increments.values()):
        return
    unknown = set(increments) - set(COUNTERS)
    if unknown:
        raise ValueError(f"unknown counters {sorted(unknown)}")
    buffer = _buffer.get()
    if buffer is not None:
        buffer.add_counts(cells, increments)
        return
    rows = [_cell_dict(c) | _ZERO | increments for c in dict.fromkeys(cells)]
    await conn.execute(_statements(conn.dialect.name)["counts"], rows)


async def add_duration(
    conn: AsyncConnection, metric: str, cells: Sequence[Cell], bucket: int
) -> None:
    if not cells:
        return
    buffer = _buffer.get()
    if buffer is not None:
        buffer.add_duration(metric, cells, bucket)
        return
    rows = [_cell_dict(c) | {"metric": metric, "bucket": bucket, "n": 1} for c in set(cells)]
    await conn.execute(_statements(conn.dialect.name)["durations"], rows)


async def add_citizen(conn: AsyncConnection, cells: Sequence[Cell], case_ref: str) -> None:
    """Count `case_ref` once in each cell that does not count it yet."""
    if not cells:
        return
    buffer = _buffer.get()
    if buffer is not None:
        buffer.add_citizen(cells, case_ref)
        return
    rows = [_cell_dict(c) | {"case_ref": case_ref} for c in sorted(dict.fromkeys(cells))]
    result = await conn.execute(_statements(conn.dialect.name)["citizens"], rows)
    new_cells: list[Cell] = [
        (r.grain, r.period_kind, r.period_start, r.attest_type, r.dim) for r in result
    ]
    await add_counts(conn, new_cells, citizens=1)
