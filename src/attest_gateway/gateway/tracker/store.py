"""Writes to the tracker's rollups: one multi-row upsert per table and event, or per batch.

Counters are added with `INSERT … ON CONFLICT DO UPDATE SET x = x + excluded.x` (SQLite and
PostgreSQL alike), so concurrent consumers never lose an increment. A cell's `citizens`
counter goes up only when `tracker_cell_citizens` learns a case ref it did not hold.

Inside :func:`buffered_rollups` the increments are summed in memory instead and written by
:meth:`RollupBuffer.flush` in one upsert per table: a batch of events then costs three
statements for all its rollups (citizen memberships, counters, duration histograms). Outside
it, each call is a flush of its own.

On PostgreSQL each upsert sends its rows as one JSON parameter (`store.db.rows_insert`) and
the server inserts them in key order, so two consumers' transactions take the row locks in
the same order (they wait for each other instead of deadlocking). SQLite has one writer at a
time; there the order does not matter.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.gateway.store.db import RowsInsert, rows_insert
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

DURATION_KEY = ("metric", *CELL_COLUMNS, "bucket")
CITIZEN_KEY = (*CELL_COLUMNS, "case_ref")
_COUNTER_INDEX = {name: i for i, name in enumerate(COUNTERS)}


@functools.cache
def _statements(dialect: str) -> dict[str, RowsInsert]:
    """The three upserts, built once per dialect and executed with all of a flush's rows (on
    PostgreSQL as one JSON parameter: see `RowsInsert`), so that SQLAlchemy compiles each
    once and processes one parameter."""
    counts = rows_insert(dialect, tracker_counts, order_by=CELL_COLUMNS).on(
        lambda i: i.on_conflict_do_update(
            index_elements=list(CELL_COLUMNS),
            set_={k: tracker_counts.c[k] + i.excluded[k] for k in COUNTERS},
        )
    )
    durations = rows_insert(dialect, tracker_durations, order_by=DURATION_KEY).on(
        lambda i: i.on_conflict_do_update(
            index_elements=list(DURATION_KEY),
            set_={"n": tracker_durations.c.n + i.excluded.n},
        )
    )
    # Unordered RETURNING: on SQLite, SQLAlchemy then sends the rows as one multi-row INSERT
    # (asking for parameter order made it send one statement per row).
    citizens = rows_insert(dialect, tracker_cell_citizens, order_by=CITIZEN_KEY).on(
        lambda i: i.on_conflict_do_nothing().returning(
            *(tracker_cell_citizens.c[k] for k in CELL_COLUMNS)
        )
    )
    # The rows are built as tuples in these columns' order.
    assert counts.columns == (*CELL_COLUMNS, *COUNTERS)
    assert durations.columns == (*DURATION_KEY, "n")
    assert citizens.columns == CITIZEN_KEY
    return {"counts": counts, "durations": durations, "citizens": citizens}


class RollupBuffer:
    """Rollup increments summed in memory until :meth:`flush` writes them.

    A cell counts as often as a call names it: callers name each once (`rules.cells_for`
    gives distinct cells), the citizens' flush names a cell once per citizen it learnt."""

    def __init__(self) -> None:
        self.counts: dict[Cell, list[int]] = {}  # a cell's counters, in COUNTERS' order
        self.durations: dict[tuple[str, Cell, int], int] = {}
        self.citizens: set[tuple[Cell, str]] = set()

    def add_counts(self, cells: Sequence[Cell], increments: dict[str, int]) -> None:
        added = [(_COUNTER_INDEX[k], n) for k, n in increments.items() if n]
        counts = self.counts
        for cell in cells:
            row = counts.get(cell)
            if row is None:
                row = counts[cell] = [0] * len(COUNTERS)
            for i, n in added:
                row[i] += n

    def add_duration(self, metric: str, cells: Sequence[Cell], bucket: int) -> None:
        durations = self.durations
        for cell in cells:
            key = (metric, cell, bucket)
            durations[key] = durations.get(key, 0) + 1

    def add_citizen(self, cells: Sequence[Cell], case_ref: str) -> None:
        self.citizens.update((cell, case_ref) for cell in cells)

    async def flush(self, conn: AsyncConnection) -> None:
        """Write the sums: one statement per table, rows in key order (on PostgreSQL, sorted
        by the server: see the module)."""
        statements = _statements(conn.dialect.name)
        if self.citizens:  # first: the cells that learn a new citizen count it
            insert = statements["citizens"]
            members = [(*cell, ref) for cell, ref in self.citizens]
            result = await conn.execute(insert.statement, insert.params(members))
            self.add_counts([tuple(r) for r in result], {"citizens": 1})
        counts = [(*cell, *added) for cell, added in self.counts.items() if any(added)]
        if counts:
            insert = statements["counts"]
            await conn.execute(insert.statement, insert.params(counts))
        if self.durations:
            insert = statements["durations"]
            buckets = [
                (metric, *cell, bucket, n) for (metric, cell, bucket), n in self.durations.items()
            ]
            await conn.execute(insert.statement, insert.params(buckets))
        self.counts, self.durations, self.citizens = {}, {}, set()


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


async def _add(conn: AsyncConnection, add: Callable[[RollupBuffer], None]) -> None:
    """`add` to the caller's buffer (inside `buffered_rollups`), else written at once."""
    buffer = _buffer.get()
    if buffer is not None:
        add(buffer)
        return
    own = RollupBuffer()
    add(own)
    await own.flush(conn)


async def add_counts(conn: AsyncConnection, cells: Sequence[Cell], **increments: int) -> None:
    """Add the increments (counter name → amount) to every cell."""
    if not cells or not any(increments.values()):
        return
    unknown = set(increments) - set(COUNTERS)
    if unknown:
        raise ValueError(f"unknown counters {sorted(unknown)}")
    await _add(conn, lambda b: b.add_counts(cells, increments))


async def add_duration(
    conn: AsyncConnection, metric: str, cells: Sequence[Cell], bucket: int
) -> None:
    if cells:
        await _add(conn, lambda b: b.add_duration(metric, cells, bucket))


async def add_citizen(conn: AsyncConnection, cells: Sequence[Cell], case_ref: str) -> None:
    """Count `case_ref` once in each cell that does not count it yet."""
    if cells:
        await _add(conn, lambda b: b.add_citizen(cells, case_ref))
