"""The requests open and overdue now, per receiving unit (its directory name) or per
municipality: who is late (`docs/tracker.md`, "Open overdue, by who is late"). Read from the
rollup `infra/db/overdue.py`, which the tracker and retention keep to the requests open and
overdue at this moment.

A request counts in the period of the day it was made (the range asked selects by that day);
its days overdue are today − its due date (0 without a known due date). Disclosure control as
for the other figures (`disclosure.decide_cube` over the whole cube: periods, the country, the
regions and the municipalities, all units and each): a cell's weight is its distinct citizens
with an open overdue request, exact for a week or a month, for a quarter or a year the most
of its months' (a lower bound: a cell under the threshold is always suppressed). Otherwise it
equals, row for row, :func:`open_overdue_rows`, which reads one row per request
(`tracker_conversations`): the tests compare both, and the benchmark times both.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db import overdue as ov
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    organisations,
    tracker_conversations,
    tracker_overdue,
    tracker_overdue_cells,
)
from attest_gateway.tracker import disclosure
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.coverage import (
    Item,
    OverdueBy,
    Row,
    _own,
    _request_conds,
    publish,
    row_key,
)
from attest_gateway.tracker.report import (
    Filters,
    cube_range,
    label,
    region_of_municipalities,
    rows_range,
)

Names = dict[str, tuple[str, str | None]]  # receiving unit → (directory name, role)


@dataclass(slots=True)
class _Group:
    """One row of the answer: its open overdue requests, the most days one of them is past
    its due date, and whether every cube cell it is made of is shown."""

    requests: int = 0
    most_days: int | None = None
    shown: bool = True
    citizens: int = 0  # a lower bound of its distinct citizens

    def late(self, days: int) -> None:
        self.most_days = days if self.most_days is None else max(self.most_days, days)


def _answer(
    by: OverdueBy, groups: dict[str, _Group], names: Names, rules: r.TrackerRules
) -> list[dict[str, Any]]:
    """The rows, most open overdue requests first, then by name (then by id: two units may
    share a name)."""

    def name(group: str) -> str:
        return names[group][0] if by == "receiver" else label("municipality", group)

    rows = []
    for group, g in sorted(groups.items(), key=lambda kv: (-kv[1].requests, name(kv[0]), kv[0])):
        out: dict[str, Any] = (
            {"group": group, "label": name(group)}
            if by == "municipality"
            else {"label": names[group][0], "receiver_kind": names[group][1]}
        )
        out["suppressed"] = not g.shown
        fields = {"open_overdue": g.requests, "most_days_overdue": g.most_days}
        out |= fields if g.shown else dict.fromkeys(fields)
        rows.append(out)
    return rows


async def _names(conn: AsyncConnection, ids: list[str]) -> Names:
    o = organisations.c
    found: Names = dict.fromkeys(ids, ("?", None))
    for start in range(0, len(ids), 500):
        for row in await conn.execute(
            sa.select(o.id, o.name, o.role).where(o.id.in_(ids[start : start + 500]))
        ):
            found[row.id] = (row.name or "?", row.role)
    return found


# --- from the rollup --------------------------------------------------------------------------


def _conds(f: Filters, by: OverdueBy, days: tuple[dt.date | None, dt.date | None]) -> list[Any]:
    c = tracker_overdue_cells.c
    stored: r.PeriodKind = "week" if f.period == "week" else "month"
    conds: list[Any] = [c.period_kind == stored, c.attest_type == (f.attest_type or ov.ALL)]
    if by == "municipality":
        conds.append(c.receiver == ov.ALL_RECEIVERS)
    lo, hi = days
    if lo is not None:
        conds.append(c.period_start >= r.period_start(lo, stored))
    if hi is not None:
        conds.append(c.period_start <= hi)
    return conds


def _coords(row: Any) -> list[disclosure.Coord]:
    value = disclosure.ALL if row.receiver == ov.ALL_RECEIVERS else str(row.receiver)
    periods = disclosure.stored_periods(str(row.period_kind), row.period_start)
    return [(kind, start, str(row.grain), str(row.place), value) for kind, start in periods]


async def open_overdue(
    conn: AsyncConnection, rules: r.TrackerRules, f: Filters, by: OverdueBy, *, now: dt.datetime
) -> list[dict[str, Any]]:
    """Requests past their deadline without an attest now, per receiving unit (its directory
    name) or per municipality, with the most days one of them is overdue; read from the
    rollup."""
    c = tracker_overdue_cells.c
    weights: dict[disclosure.Coord, int] = {}
    for cell in await conn.execute(
        sa.select(c.period_kind, c.period_start, c.grain, c.place, c.receiver, c.citizens).where(
            *_conds(f, by, cube_range(f)), c.citizens > 0
        )
    ):
        for coord in _coords(cell):
            weights[coord] = max(weights.get(coord, 0), int(cell.citizens))
    region_of = region_of_municipalities()
    hidden = disclosure.decide_cube(weights, region_of, rules.min_cell_citizens)
    # the answer's own cells: their requests and due dates (the earliest, and whether one
    # has none), the cells picked first (by their index), their due dates then
    d = tracker_overdue.c
    own = _own(by, f)
    cell_columns = (c.id, c.period_kind, c.period_start, c.grain, c.place, c.receiver, c.requests)
    stmt = (
        sa.select(
            *cell_columns,
            sa.func.min(d.due_date).label("earliest"),
            sa.func.max(d.due_date).label("latest"),
        )
        .select_from(tracker_overdue_cells.join(tracker_overdue, d.cell_id == c.id))
        .where(*_conds(f, by, rows_range(f)), c.grain == own, c.requests > 0, d.n > 0)
        .group_by(*cell_columns)
    )
    if by == "receiver":
        stmt = stmt.where(c.receiver != ov.ALL_RECEIVERS)
    today = rules.local_date(now)
    groups: dict[str, _Group] = defaultdict(_Group)
    for row in await conn.execute(stmt):
        for coord in _coords(row):
            key = row_key(coord, f, by, region_of, series=False)
            if key is None:
                continue
            g = groups[key[1]]
            g.requests += int(row.requests)
            g.shown = g.shown and coord not in hidden
            g.citizens = max(g.citizens, weights.get(coord, 0))
            if row.earliest != ov.NO_DUE_DATE:
                g.late((today - row.earliest).days)
            if row.latest == ov.NO_DUE_DATE:
                g.late(0)
    for group in groups.values():
        group.shown = group.shown and r.publishable(group.citizens, rules)
    names = await _names(conn, sorted(groups)) if by == "receiver" else {}
    return _answer(by, dict(groups), names, rules)


# --- from the rows (the reference) ------------------------------------------------------------


async def open_overdue_rows(
    conn: AsyncConnection, rules: r.TrackerRules, f: Filters, by: OverdueBy, *, now: dt.datetime
) -> list[dict[str, Any]]:
    """What :func:`open_overdue` answers, from one row per open overdue request of the whole
    cube (`tracker_conversations`), its citizens counted exactly: the reference the tests and
    the benchmark hold the rollup to. Its cost grows with the open overdue requests."""
    tc = tracker_conversations.c
    conds = [*_request_conds(f), tc.outcome == "overdue", tc.replied_at.is_(None)]
    stmt = sa.select(
        tc.receiver_org,
        tc.municipality,
        tc.region_code,
        tc.due_date,
        tc.submitted_at,
        tc.case_ref,
    ).where(*conds)
    today = rules.local_date(now)
    items: list[Item] = []
    for rec in await conn.execute(stmt):
        late = (today - rec.due_date).days if rec.due_date is not None else 0
        items.append(
            Item(
                late,
                rules.local_date(aware(rec.submitted_at)),
                str(rec.region_code),
                str(rec.municipality),
                str(rec.receiver_org) if by == "receiver" else None,
                rec.case_ref,
            )
        )
    # the list is over the whole range asked, one row per unit or municipality
    published: list[Row] = publish(items, f, by, rules, series=False)
    groups = {
        row.key[1]: _Group(len(row.records), max(row.records), row.shown) for row in published
    }
    names = await _names(conn, sorted(groups)) if by == "receiver" else {}
    return _answer(by, groups, names, rules)
