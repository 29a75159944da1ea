"""Writes to the tracker's rollups: one multi-row upsert per table and event, or per batch.

Counters are added with `INSERT … ON CONFLICT DO UPDATE SET x = x + excluded.x` (SQLite and
PostgreSQL alike), so concurrent consumers never lose an increment. A cell's `citizens`
counter goes up only when `tracker_cell_citizens` learns a case ref it did not hold.

Inside :func:`buffered_rollups` the increments are summed in memory instead and written by
:meth:`RollupBuffer.flush` in one upsert per table: a batch of events then costs five
statements for all its rollups (citizen memberships, counters, duration histograms, the
request → attest distribution of `tracker_latency`, whose open count of a request goes down
by one when its attest comes, and the requests per week of absence of
`tracker_request_weeks`). Outside it, each call is a flush of its own.

Cells (`tracker_cells`) are referred to by an integer id (migration 0011), a digest of the
cell's five columns (:func:`cell_id`). A flush first makes sure its cells exist: those a
tracker knows exist (`KnownCells`) cost nothing; the others are inserted in one statement
(`ON CONFLICT DO NOTHING RETURNING id`), and those it did not insert are read back in one
select, which also checks that the row under the id is that cell. On PostgreSQL that insert
is a short transaction of its own, committed before the flush writes: a new cell inserted in
the caller's transaction made every other tracker transaction that needed the same cell (all
of them, at the start of a week) wait until the caller committed. On SQLite, whose one
writer is the caller's transaction, it is part of that transaction, and its cells are
remembered only once it has committed (:meth:`KnownCells.remember`): a cell inserted by a
transaction that rolled back does not exist. Because the id follows from the cell, a
remembered cell can only be missing (the store restored or emptied: the write fails on the
foreign key, and the tracker forgets every cell), never stand for another.

On PostgreSQL each upsert sends its rows as one JSON parameter (`infra.db.engine.rows_insert`) and
the server inserts them in key order, so two consumers' transactions take the row locks in
the same order (they wait for each other instead of deadlocking). SQLite has one writer at a
time; there the order does not matter.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db.engine import RowsInsert, one_of_param, rows_insert
from attest_gateway.infra.db.tables import (
    tracker_cell_citizens,
    tracker_cells,
    tracker_counts,
    tracker_durations,
    tracker_latency,
    tracker_request_weeks,
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

DURATION_KEY = ("cell_id", "metric", "bucket")
CITIZEN_KEY = ("cell_id", "case_ref")
LATENCY_KEY = ("cell_id", "state", "day")
WEEKS_KEY = ("cell_id", "week")
ANSWERED, OPEN = "answered", "open"  # tracker_latency's states
_COUNTER_INDEX = {name: i for i, name in enumerate(COUNTERS)}
LOOKUP_CHUNK = 1000  # cell ids per select


@functools.cache
def _statements(dialect: str) -> dict[str, RowsInsert]:
    """The upserts, built once per dialect and executed with all of a flush's rows (on
    PostgreSQL as one JSON parameter: see `RowsInsert`), so that SQLAlchemy compiles each
    once and processes one parameter."""
    cells = rows_insert(dialect, tracker_cells, order_by=("id",)).on(
        lambda i: i.on_conflict_do_nothing().returning(tracker_cells.c.id)
    )
    counts = rows_insert(dialect, tracker_counts, order_by=("cell_id",)).on(
        lambda i: i.on_conflict_do_update(
            index_elements=["cell_id"],
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
        lambda i: i.on_conflict_do_nothing().returning(tracker_cell_citizens.c.cell_id)
    )
    latency = rows_insert(dialect, tracker_latency, order_by=LATENCY_KEY).on(
        lambda i: i.on_conflict_do_update(
            index_elements=list(LATENCY_KEY),
            set_={"n": tracker_latency.c.n + i.excluded.n},
        )
    )
    weeks = rows_insert(dialect, tracker_request_weeks, order_by=WEEKS_KEY).on(
        lambda i: i.on_conflict_do_update(
            index_elements=list(WEEKS_KEY),
            set_={"n": tracker_request_weeks.c.n + i.excluded.n},
        )
    )
    # The rows are built as tuples in these columns' order.
    assert cells.columns == ("id", *CELL_COLUMNS)
    assert counts.columns == ("cell_id", *COUNTERS)
    assert durations.columns == (*DURATION_KEY, "n")
    assert citizens.columns == CITIZEN_KEY
    assert latency.columns == (*LATENCY_KEY, "n")
    assert weeks.columns == (*WEEKS_KEY, "n")
    return {
        "cells": cells,
        "counts": counts,
        "durations": durations,
        "citizens": citizens,
        "latency": latency,
        "weeks": weeks,
    }


@functools.cache
def _lookup(dialect: str) -> Any:
    return sa.select(tracker_cells).where(one_of_param(dialect, tracker_cells.c.id, "b_ids"))


@functools.lru_cache(maxsize=65_536)
def cell_id(cell: Cell) -> int:
    """A cell's id: the first 8 bytes of SHA-256 over its five columns (separated by a unit
    separator, the date as ISO text), as a signed 64-bit integer. Stable across processes and
    versions; two cells share an id with odds of about n² / 2⁶⁵ for n cells, and
    :func:`ensure_cells` refuses that case instead of mixing them."""
    grain, period_kind, period_start, attest_type, dim = cell
    text = "\x1f".join((grain, period_kind, period_start.isoformat(), attest_type, dim))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def _cell(row: sa.Row[Any]) -> Cell:
    return (row.grain, row.period_kind, row.period_start, row.attest_type, row.dim)


async def ensure_cells(conn: AsyncConnection, cells: Iterable[Cell]) -> None:
    """Make sure `cells` are rows of `tracker_cells` (in the caller's transaction)."""
    wanted = {cell_id(cell): cell for cell in cells}
    if not wanted:
        return
    insert = _statements(conn.dialect.name)["cells"]
    rows = [(i, *cell) for i, cell in sorted(wanted.items())]
    inserted = {row.id for row in await conn.execute(insert.statement, insert.params(rows))}
    rest = sorted(set(wanted) - inserted)
    found: dict[int, Cell] = {}
    for start in range(0, len(rest), LOOKUP_CHUNK):
        result = await conn.execute(
            _lookup(conn.dialect.name), {"b_ids": rest[start : start + LOOKUP_CHUNK]}
        )
        found.update((row.id, _cell(row)) for row in result)
    wrong = [i for i in rest if found.get(i) != wanted[i]]
    if wrong:  # pragma: no cover - a digest collision (or a row changed by hand)
        raise RuntimeError(
            f"rollup cell ids {wrong[:5]} hold other cells than the ones written "
            "(a collision of cell ids): the rollups are not written"
        )


class KnownCells:
    """Cells known to exist in the store (committed), shared by a tracker's transactions.

    Bounded: past `limit` cells the earliest remembered are forgotten (a quarter at a time).
    Cells are created as periods begin, so those are mostly of past periods; a forgotten
    cell that is written again costs a place in one insert. The limit bounds the memory the
    cache takes (its size per cell: bench/RESULTS.md, "Figures moved out of the code")."""

    def __init__(self, limit: int = 200_000) -> None:
        self._cells: dict[Cell, None] = {}
        self._limit = limit

    def __contains__(self, cell: object) -> bool:
        return cell in self._cells

    def remember(self, cells: Iterable[Cell]) -> None:
        """Cells a transaction wrote, once it has committed."""
        known = self._cells
        known.update(dict.fromkeys(cells))
        if len(known) > self._limit:
            for cell in list(itertools.islice(known, len(known) - self._limit * 3 // 4)):
                del known[cell]

    def forget(self) -> None:
        """After a failed transaction: a remembered cell may be gone (a store restored or
        emptied under a running tracker), so every cell is made sure of again."""
        self._cells.clear()

    def __len__(self) -> int:
        return len(self._cells)


class RollupBuffer:
    """Rollup increments summed in memory until :meth:`flush` writes them.

    A cell counts as often as a call names it: callers name each once (`rules.cells_for`
    gives distinct cells), the citizens' flush names a cell once per citizen it learnt."""

    def __init__(self, known: KnownCells | None = None) -> None:
        self.counts: dict[Cell, list[int]] = {}  # a cell's counters, in COUNTERS' order
        self.durations: dict[tuple[str, Cell, int], int] = {}
        self.citizens: set[tuple[Cell, str]] = set()
        self.latency: dict[tuple[Cell, str, int], int] = {}
        self.weeks: dict[tuple[Cell, int], int] = {}
        self.known = known if known is not None else KnownCells()
        self.written: set[Cell] = set()  # cells made sure of by this buffer's flushes

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

    def add_latency(
        self, cells: Sequence[Cell], *, answered_days: int | None, sent_on: dt.date, n: int
    ) -> None:
        latency = self.latency
        for cell in cells:
            if answered_days is not None:
                key = (cell, ANSWERED, answered_days)
            else:
                key = (cell, OPEN, (sent_on - cell[2]).days)
            latency[key] = latency.get(key, 0) + n

    def add_week(self, cells: Sequence[Cell], week: int) -> None:
        weeks = self.weeks
        for cell in cells:
            key = (cell, week)
            weeks[key] = weeks.get(key, 0) + 1

    async def _ids(self, conn: AsyncConnection) -> dict[Cell, int]:
        """The ids of every cell this flush writes, each made sure of."""
        cells = {cell for cell, _ in self.citizens}
        cells.update(self.counts)
        cells.update(cell for _, cell, _ in self.durations)
        cells.update(cell for cell, _, _ in self.latency)
        cells.update(cell for cell, _ in self.weeks)
        known, written = self.known, self.written
        missing = [c for c in cells if c not in known and c not in written]
        if missing and conn.dialect.name == "postgresql":
            # Committed on their own first (a connection of the pool, a short transaction):
            # a cell inserted in the caller's transaction would hold every other tracker
            # transaction that needs it until this one commits. A cell without rollup rows
            # is invisible to the reports (they join from the rollups).
            async with conn.engine.begin() as own:
                await ensure_cells(own, missing)
            known.remember(missing)
        elif missing:  # SQLite: the caller's transaction holds the one write lock already
            await ensure_cells(conn, missing)
        written.update(cells)
        return {cell: cell_id(cell) for cell in cells}

    async def flush(self, conn: AsyncConnection) -> None:
        """Write the sums: one statement per table, rows in key order (on PostgreSQL, sorted
        by the server: see the module)."""
        statements = _statements(conn.dialect.name)
        ids = await self._ids(conn)
        if self.citizens:  # first: the cells that learn a new citizen count it
            insert = statements["citizens"]
            members = [(ids[cell], ref) for cell, ref in self.citizens]
            result = await conn.execute(insert.statement, insert.params(members))
            by_id = {cid: cell for cell, cid in ids.items()}
            self.add_counts([by_id[row.cell_id] for row in result], {"citizens": 1})
        counts = [(ids[cell], *added) for cell, added in self.counts.items() if any(added)]
        if counts:
            insert = statements["counts"]
            await conn.execute(insert.statement, insert.params(counts))
        if self.durations:
            insert = statements["durations"]
            buckets = [
                (ids[cell], metric, bucket, n)
                for (metric, cell, bucket), n in self.durations.items()
            ]
            await conn.execute(insert.statement, insert.params(buckets))
        latency = [
            (ids[cell], state, day, n) for (cell, state, day), n in self.latency.items() if n
        ]
        if latency:
            insert = statements["latency"]
            await conn.execute(insert.statement, insert.params(latency))
        if self.weeks:
            insert = statements["weeks"]
            weeks = [(ids[cell], week, n) for (cell, week), n in self.weeks.items()]
            await conn.execute(insert.statement, insert.params(weeks))
        self.counts, self.durations, self.citizens, self.latency = {}, {}, set(), {}
        self.weeks = {}


_buffer: ContextVar[RollupBuffer | None] = ContextVar("tracker_rollup_buffer", default=None)


@contextmanager
def buffered_rollups(known: KnownCells | None = None) -> Iterator[RollupBuffer]:
    """Collect the rollup writes of the code inside; the caller flushes in its transaction
    and, once that has committed, passes the buffer's `written` cells to `known`."""
    buffer = RollupBuffer(known)
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


async def add_latency(
    conn: AsyncConnection,
    cells: Sequence[Cell],
    *,
    sent_on: dt.date,
    answered_days: int | None = None,
    n: int = 1,
) -> None:
    """Count `n` requests made on `sent_on` in each cell's request → attest distribution:
    answered after `answered_days` calendar days, or (None) still open (-1: no longer)."""
    if cells:
        await _add(
            conn, lambda b: b.add_latency(cells, answered_days=answered_days, sent_on=sent_on, n=n)
        )


async def add_request_week(conn: AsyncConnection, cells: Sequence[Cell], week: int) -> None:
    """Count a request made in week `week` of its citizen's absence in each cell."""
    if cells:
        await _add(conn, lambda b: b.add_week(cells, week))


def with_cells(table: sa.Table) -> sa.Select[Any]:
    """A rollup table's rows with each cell's five columns in place of its id, ordered by
    them: what the rows mean, readable where tests and benchmarks compare two stores."""
    cells = tracker_cells
    own = [c for c in table.c if c.name != "cell_id"]
    key = [cells.c[k] for k in CELL_COLUMNS]
    return (
        sa.select(*key, *own)
        .select_from(table.join(cells, table.c.cell_id == cells.c.id))
        .order_by(*key, *(c for c in own if c.primary_key))
    )
