"""The open overdue requests, kept as a rollup (`tracker_overdue_cells`, `tracker_overdue`,
`tracker_overdue_citizens`; docs/tracker.md, "Open overdue, by who is late").

A request is open and overdue while the tracker has settled it `overdue`, no attest has come
(`replied_at` unset) and it has been made (`submitted_at` set). It is counted in 24 cells: the
week and the month of the day it was made (Danish time), the country, its region and its
municipality, all receiving units and its own (`receiver` empty or the unit's directory id),
its attest type and `*`. Per cell the rollup keeps its open overdue requests per due date
(`tracker_overdue`: the most days overdue is today − the earliest), the citizens with one
(`tracker_overdue_citizens`, a count per case ref) and the totals (`tracker_overdue_cells`:
requests, and distinct citizens, the cell's weight for disclosure control).

Unlike the other rollups it goes down as well as up: whoever changes or deletes a
`tracker_conversations` row calls :func:`move` with the request as it was and as it is (the
tracker, at the end of each batch: `tracker.consumer.Conversations`) or :func:`forget` before
deleting it (retention and the erasure of closed cases), in the same transaction. So an attest
that comes after the deadline, an answer without attest, a deadline moved after the request
was flagged, an overdue event before the request's own (its due date unknown then), a replay
and a deletion each move the request exactly once. A citizen's membership counts their open
overdue requests in the cell; the cell's `citizens` moves when that count goes from 0 to 1 or
from 1 to 0 (the upsert returns it, under the row's lock). Rows that reach 0 are deleted, so
the tables hold the requests open and overdue now, nothing more.

A request overdue without a due date (its `overdue` event applied before its `submitted` one,
when no due date could be set) is kept under :data:`NO_DUE_DATE` and counts 0 days overdue, as
the rows reference (`tracker.overdue.open_overdue_rows`) counts it.

Cells are referred to by a digest of their six columns (:func:`cell_id`), as the tracker's
other cells are (`tracker.store.cell_id`); the cells' upsert returns the row under each id and
refuses a write whose id holds another cell.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db.coverage import period_start
from attest_gateway.infra.db.engine import dialect_insert, local_date
from attest_gateway.infra.db.tables import (
    tracker_conversations,
    tracker_overdue,
    tracker_overdue_cells,
    tracker_overdue_citizens,
)

ALL = "*"  # the attest-type coordinate of a cell over every type
ALL_RECEIVERS = ""  # the receiver coordinate of a cell over every receiving unit
PERIOD_KINDS = ("week", "month")
NO_DUE_DATE = dt.date(9999, 12, 31)
OVERDUE = "overdue"
CELL_COLUMNS = ("period_kind", "period_start", "grain", "place", "receiver", "attest_type")
_CHUNK = 500  # conversation ids per IN list

# period kind, period start, grain, place, receiving unit (or ""), attest type (or "*")
OverdueCell = tuple[str, dt.date, str, str, str, str]


@dataclass(frozen=True, slots=True)
class Overdue:
    """An open overdue request, as the rollup counts it."""

    day: dt.date  # made on (the tracker's time zone)
    due_date: dt.date  # NO_DUE_DATE when unknown
    attest_type: str
    region: str
    municipality: str
    receiver: str
    case_ref: str


def key_of(row: Any, timezone: str) -> Overdue | None:
    """The request of a `tracker_conversations` row while it is open and overdue, else None."""
    if row.outcome != OVERDUE or row.replied_at is not None or row.submitted_at is None:
        return None
    return Overdue(
        local_date(row.submitted_at, timezone),
        row.due_date if row.due_date is not None else NO_DUE_DATE,
        str(row.attest_type),
        str(row.region_code),
        str(row.municipality),
        str(row.receiver_org),
        str(row.case_ref),
    )


def cells_of(q: Overdue) -> list[OverdueCell]:
    """The 24 cells a request counts in."""
    places = (("national", "DK"), ("region", q.region), ("municipality", q.municipality))
    return [
        (kind, period_start(q.day, kind), grain, place, receiver, attest_type)
        for kind in PERIOD_KINDS
        for grain, place in places
        for receiver in (ALL_RECEIVERS, q.receiver)
        for attest_type in (q.attest_type, ALL)
    ]


@lru_cache(maxsize=65_536)
def cell_id(cell: OverdueCell) -> int:
    """The first 8 bytes of SHA-256 over the cell's six columns (a unit separator between
    them, the date as ISO text), as a signed 64-bit integer."""
    kind, start, grain, place, receiver, attest_type = cell
    text = "\x1f".join((kind, start.isoformat(), grain, place, receiver, attest_type))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


@dataclass(slots=True)
class Changes:
    """The rollup's changes, summed: per cell its requests, per (cell, due date) and per
    (cell, case ref) the requests."""

    cells: dict[int, OverdueCell]
    requests: Counter[int]
    due: Counter[tuple[int, dt.date]]
    members: Counter[tuple[int, str]]

    @classmethod
    def of(cls, gone: Iterable[Overdue], came: Iterable[Overdue]) -> Changes:
        out = cls({}, Counter(), Counter(), Counter())
        for sign, requests in ((-1, gone), (1, came)):
            for q in requests:
                for cell in cells_of(q):
                    i = cell_id(cell)
                    out.cells[i] = cell
                    out.requests[i] += sign
                    out.due[(i, q.due_date)] += sign
                    out.members[(i, q.case_ref)] += sign
        out.requests = Counter({k: n for k, n in out.requests.items() if n})
        out.due = Counter({k: n for k, n in out.due.items() if n})
        out.members = Counter({k: n for k, n in out.members.items() if n})
        return out

    def __bool__(self) -> bool:
        return bool(self.due or self.members)


@lru_cache(maxsize=4)
def _statements(dialect: str) -> dict[str, Any]:
    cells, due, members = tracker_overdue_cells, tracker_overdue, tracker_overdue_citizens
    i = dialect_insert(dialect, cells)
    j = dialect_insert(dialect, due)
    k = dialect_insert(dialect, members)
    return {
        "members": k.on_conflict_do_update(
            index_elements=["cell_id", "case_ref"], set_={"n": members.c.n + k.excluded.n}
        ).returning(members.c.cell_id, members.c.case_ref, members.c.n),
        "cells": i.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "requests": cells.c.requests + i.excluded.requests,
                "citizens": cells.c.citizens + i.excluded.citizens,
            },
        ).returning(cells.c.id, cells.c.requests, *(cells.c[c] for c in CELL_COLUMNS)),
        "due": j.on_conflict_do_update(
            index_elements=["cell_id", "due_date"], set_={"n": due.c.n + j.excluded.n}
        ).returning(due.c.cell_id, due.c.due_date, due.c.n),
        "drop_members": members.delete().where(
            members.c.cell_id == sa.bindparam("b_cell"),
            members.c.case_ref == sa.bindparam("b_ref"),
            members.c.n <= 0,
        ),
        "drop_due": due.delete().where(
            due.c.cell_id == sa.bindparam("b_cell"),
            due.c.due_date == sa.bindparam("b_due"),
            due.c.n <= 0,
        ),
        "drop_cells": cells.delete().where(
            cells.c.id == sa.bindparam("b_cell"), cells.c.requests <= 0
        ),
    }


async def move(conn: AsyncConnection, gone: Iterable[Overdue], came: Iterable[Overdue]) -> None:
    """Take the requests `gone` out of the rollup and count those that `came`, in the
    caller's transaction; rows in key order (concurrent trackers lock them in the same order)."""
    await apply(conn, Changes.of(gone, came))


async def apply(conn: AsyncConnection, changes: Changes) -> None:
    if not changes:
        return
    s = _statements(conn.dialect.name)
    citizens: Counter[int] = Counter()
    emptied_members: list[dict[str, Any]] = []
    if changes.members:
        rows = [
            {"cell_id": cell, "case_ref": ref, "n": n}
            for (cell, ref), n in sorted(changes.members.items())
        ]
        for row in await conn.execute(s["members"], rows):
            delta = changes.members[(row.cell_id, row.case_ref)]
            if delta > 0 and row.n == delta:  # had none: a citizen more
                citizens[row.cell_id] += 1
            elif delta < 0 and row.n <= 0:  # has none left
                citizens[row.cell_id] -= 1
                emptied_members.append({"b_cell": row.cell_id, "b_ref": row.case_ref})
    ids = sorted(set(changes.requests) | set(citizens))
    emptied_cells: list[dict[str, Any]] = []
    if ids:
        rows = [
            dict(zip(CELL_COLUMNS, changes.cells[i], strict=True))
            | {"id": i, "requests": changes.requests[i], "citizens": citizens[i]}
            for i in ids
        ]
        for row in await conn.execute(s["cells"], rows):
            if tuple(row[2:]) != changes.cells[row.id]:  # pragma: no cover - a collision
                raise RuntimeError(
                    f"overdue rollup cell id {row.id} holds another cell than the one written "
                    "(a collision of cell ids): the rollup is not written"
                )
            if row.requests <= 0:
                emptied_cells.append({"b_cell": row.id})
    emptied_due: list[dict[str, Any]] = []
    if changes.due:
        rows = [
            {"cell_id": cell, "due_date": due, "n": n}
            for (cell, due), n in sorted(changes.due.items())
        ]
        for row in await conn.execute(s["due"], rows):
            if row.n <= 0:
                emptied_due.append({"b_cell": row.cell_id, "b_due": row.due_date})
    for name, keys in (
        ("drop_members", emptied_members),
        ("drop_due", emptied_due),
        ("drop_cells", emptied_cells),
    ):
        if keys:
            await conn.execute(s[name], keys)


_COLUMNS = (
    "conversation_id",
    "outcome",
    "replied_at",
    "submitted_at",
    "due_date",
    "attest_type",
    "region_code",
    "municipality",
    "receiver_org",
    "case_ref",
)


def _open_overdue() -> list[Any]:
    tc = tracker_conversations.c
    return [tc.outcome == OVERDUE, tc.replied_at.is_(None), tc.submitted_at.is_not(None)]


async def forget(conn: AsyncConnection, timezone: str, conversation_ids: Sequence[str]) -> None:
    """Take out of the rollup the open overdue requests among `conversation_ids`, whose rows
    the caller is about to delete in this transaction."""
    tc = tracker_conversations.c
    gone: list[Overdue] = []
    for start in range(0, len(conversation_ids), _CHUNK):
        chunk = list(conversation_ids[start : start + _CHUNK])
        stmt = sa.select(*(tc[c] for c in _COLUMNS)).where(
            tc.conversation_id.in_(chunk), *_open_overdue()
        )
        gone.extend(
            q for row in await conn.execute(stmt) if (q := key_of(row, timezone)) is not None
        )
    await move(conn, gone, ())


async def rebuild(conn: AsyncConnection, timezone: str, *, chunk: int = 5_000) -> int:
    """Write the rollup again from the rows (after a change of `TRACKER_TIMEZONE`, or to
    build it in bulk): emptied, then every open overdue request counted, the citizens `chunk`
    at a time (each citizen's requests together, so their memberships are written whole).
    Returns how many requests it counted."""
    for table in (tracker_overdue, tracker_overdue_citizens, tracker_overdue_cells):
        await conn.execute(table.delete())
    tc = tracker_conversations.c
    total = Changes({}, Counter(), Counter(), Counter())
    citizens: Counter[int] = Counter()
    last = ""
    counted = 0
    while True:
        refs = list(
            await conn.scalars(
                sa.select(tc.case_ref)
                .where(tc.case_ref > last, *_open_overdue())
                .group_by(tc.case_ref)
                .order_by(tc.case_ref)
                .limit(chunk)
            )
        )
        if not refs:
            break
        last = refs[-1]
        found: list[Overdue] = []
        for start in range(0, len(refs), _CHUNK):
            stmt = sa.select(*(tc[c] for c in _COLUMNS)).where(
                tc.case_ref.in_(refs[start : start + _CHUNK]), *_open_overdue()
            )
            found.extend(
                q for row in await conn.execute(stmt) if (q := key_of(row, timezone)) is not None
            )
        counted += len(found)
        part = Changes.of((), found)
        members = part.members
        await conn.execute(
            tracker_overdue_citizens.insert(),
            [{"cell_id": i, "case_ref": ref, "n": n} for (i, ref), n in sorted(members.items())],
        )
        citizens.update(i for i, _ in members)
        total.cells.update(part.cells)
        total.requests.update(part.requests)
        total.due.update(part.due)
    cells, requests, due = total.cells, total.requests, total.due
    if cells:
        await conn.execute(
            tracker_overdue_cells.insert(),
            [
                dict(zip(CELL_COLUMNS, cell, strict=True))
                | {"id": i, "requests": requests[i], "citizens": citizens[i]}
                for i, cell in sorted(cells.items())
            ],
        )
        await conn.execute(
            tracker_overdue.insert(),
            [{"cell_id": i, "due_date": d, "n": n} for (i, d), n in sorted(due.items())],
        )
    return counted
