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

The cube by receiving unit (every unit in every place) is as large as the receiver
drill-down's, and deciding it takes seconds at national volume: the decisions' publisher
(`tracker/decisions.py`) decides it in the background one year at a time (a year is decided
alike in every cube that holds it: `disclosure.decide_cube`), of months (with their quarters
and the year) and of weeks, of all attest types and of each, and stores, with the decision,
the cells' figures of that moment; the list by unit reads the years it asks from them
(`decisions_as_of`: the oldest). The list by municipality decides its cube when asked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.infra.db import overdue as ov
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    organisations,
    tracker_conversations,
    tracker_decision_cells,
    tracker_decisions,
    tracker_overdue,
    tracker_overdue_cells,
)
from attest_gateway.tracker import disclosure
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.coverage import (
    GEOGRAPHY,
    Item,
    OverdueBy,
    Row,
    _own,
    _request_conds,
    row_key,
)
from attest_gateway.tracker.coverage import publish as publish_items
from attest_gateway.tracker.report import (
    Filters,
    Memo,
    cube_range,
    decided_as_of,
    in_place,
    in_range,
    label,
    region_of_municipalities,
    rows_range,
    year_filters,
    years_asked,
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


@dataclass(frozen=True, slots=True)
class _Entry:
    """A cube cell's part of the answer: its open overdue requests, its earliest and latest
    due date, whether it is shown and its weight."""

    coord: disclosure.Coord
    requests: int
    earliest: dt.date
    latest: dt.date
    shown: bool
    citizens: int


async def _weights(conn: AsyncConnection, f: Filters, by: OverdueBy) -> dict[disclosure.Coord, int]:
    """The cube's cells and their weights (distinct citizens with an open overdue request)."""
    c = tracker_overdue_cells.c
    weights: dict[disclosure.Coord, int] = {}
    for cell in await conn.execute(
        sa.select(c.period_kind, c.period_start, c.grain, c.place, c.receiver, c.citizens).where(
            *_conds(f, by, cube_range(f)), c.citizens > 0
        )
    ):
        for coord in _coords(cell):
            weights[coord] = max(weights.get(coord, 0), int(cell.citizens))
    return weights


async def _entries(
    conn: AsyncConnection,
    f: Filters,
    by: OverdueBy,
    grains: list[str],
    days: tuple[dt.date | None, dt.date | None],
    weights: dict[disclosure.Coord, int],
    hidden: set[disclosure.Coord],
) -> list[_Entry]:
    """The stored cells of `grains` in `days` with their requests and due dates (the cells
    picked first by their index, their due dates then), as the cube's cells they add into."""
    c, d = tracker_overdue_cells.c, tracker_overdue.c
    cell_columns = (c.id, c.period_kind, c.period_start, c.grain, c.place, c.receiver, c.requests)
    stmt = (
        sa.select(
            *cell_columns,
            sa.func.min(d.due_date).label("earliest"),
            sa.func.max(d.due_date).label("latest"),
        )
        .select_from(tracker_overdue_cells.join(tracker_overdue, d.cell_id == c.id))
        .where(*_conds(f, by, days), c.grain.in_(grains), c.requests > 0, d.n > 0)
        .group_by(*cell_columns)
    )
    if by == "receiver":
        stmt = stmt.where(c.receiver != ov.ALL_RECEIVERS)
    return [
        _Entry(
            coord,
            int(row.requests),
            row.earliest,
            row.latest,
            coord not in hidden,
            weights.get(coord, 0),
        )
        for row in await conn.execute(stmt)
        for coord in _coords(row)
    ]


def _groups(
    entries: Iterable[_Entry], f: Filters, by: OverdueBy, rules: r.TrackerRules, today: dt.date
) -> dict[str, _Group]:
    """The answer's rows from the cube cells' parts: each cell of the period kind, place
    and range asked adds into the row of its group."""
    region_of = region_of_municipalities()
    groups: dict[str, _Group] = defaultdict(_Group)
    for e in entries:
        key = row_key(e.coord, f, by, region_of, series=False)
        if key is None:
            continue
        g = groups[key[1]]
        g.requests += e.requests
        g.shown = g.shown and e.shown
        g.citizens = max(g.citizens, e.citizens)
        if e.earliest != ov.NO_DUE_DATE:
            g.late((today - e.earliest).days)
        if e.latest == ov.NO_DUE_DATE:
            g.late(0)
    for group in groups.values():
        group.shown = group.shown and r.publishable(group.citizens, rules)
    return dict(groups)


async def open_overdue(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: OverdueBy,
    *,
    now: dt.datetime,
    memo: Memo | None = None,
) -> list[dict[str, Any]]:
    """Requests past their deadline without an attest now, per receiving unit (its directory
    name) or per municipality, with the most days one of them is overdue; read from the
    rollup. By receiving unit from the published decisions of its cube's years when every
    one is published (`memo` says when the oldest was made)."""
    memo = memo if memo is not None else Memo()
    today = rules.local_date(now)
    published = await published_decision(conn, f, by, rules) if memo.use_published else None
    if published is not None:
        cubes_of, at = published
        memo.published(at)
        groups = await _published_groups(conn, cubes_of, f, rules, today)
    else:
        weights = await _weights(conn, f, by)
        hidden = disclosure.decide_cube(
            weights, region_of_municipalities(), rules.min_cell_citizens
        )
        memo.at_request = True
        entries = await _entries(conn, f, by, [_own(by, f)], rows_range(f), weights, hidden)
        groups = _groups(entries, f, by, rules, today)
    names = await _names(conn, sorted(groups)) if by == "receiver" else {}
    return _answer(by, groups, names, rules)


# --- the published decisions of the cube by receiving unit ------------------------------------

Cube = tuple[r.PeriodKind, str, int]  # stored period kind, attest type (or ALL), year
KINDS: tuple[r.PeriodKind, ...] = ("month", "week")


def cube_name(kind: r.PeriodKind, attest_type: str, year: int, threshold: int) -> str:
    """The key of the published decision of one year of the cube by receiving unit: months
    (with their quarters and the year) or weeks (those starting in the year), of one attest
    type or all (`ov.ALL`)."""
    return f"overdue:receiver:{kind}:{attest_type}:{year}:{threshold}"


async def data_years(conn: AsyncConnection, kind: r.PeriodKind = "month") -> tuple[int, int] | None:
    """The first and last year with an open overdue request in a cell of `kind` (a week's
    year is the one it starts in; None: none)."""
    c = tracker_overdue_cells.c
    lo, hi = (
        await conn.execute(
            sa.select(sa.func.min(c.period_start), sa.func.max(c.period_start)).where(
                c.period_kind == kind, c.grain == "national"
            )
        )
    ).one()
    return None if lo is None or hi is None else (lo.year, hi.year)


async def cubes(conn: AsyncConnection) -> list[Cube]:
    """The year cubes published: per period kind every year between its first and last with
    an open overdue request, of all attest types and of each type with one (a year without
    cells is an empty cube, so that every run of years is published whole)."""
    c = tracker_overdue_cells.c
    out: list[Cube] = []
    for kind in KINDS:
        years = await data_years(conn, kind)
        if years is None:
            continue
        types = set(
            (
                await conn.execute(
                    sa.select(c.attest_type)
                    .where(c.period_kind == kind, c.grain == "national")
                    .distinct()
                )
            ).scalars()
        )
        for attest_type in [ov.ALL, *sorted(types - {ov.ALL})]:
            out += [(kind, attest_type, year) for year in range(years[0], years[1] + 1)]
    return out


async def published_decision(
    conn: AsyncConnection, f: Filters, by: OverdueBy, rules: r.TrackerRules
) -> tuple[list[str], dt.datetime] | None:
    """The keys of the published year cubes of the answer's cube and when the oldest of them
    was decided, or None when one of them is not published (only the cubes by receiving
    unit are)."""
    if by != "receiver":
        return None
    kind: r.PeriodKind = "week" if f.period == "week" else "month"
    asked = years_asked(f, await data_years(conn, kind))
    if asked is None:
        return None
    threshold = rules.min_cell_citizens
    names = [
        cube_name(kind, f.attest_type or ov.ALL, year, threshold)
        for year in range(asked[0], asked[1] + 1)
    ]
    return await decided_as_of(conn, names)


async def _published_groups(
    conn: AsyncConnection, names: list[str], f: Filters, rules: r.TrackerRules, today: dt.date
) -> dict[str, _Group]:
    """The rows by receiving unit from the cells of published decisions: what `_groups`
    makes of their entries, folded as they are read (a weekly answer over years is a
    hundred thousand cells at national volume). Due dates stay ISO text until the end: they
    order as the dates do."""
    grain = _own("receiver", f)
    d = tracker_decision_cells.c
    stmt = sa.select(d.cells).where(d.cube.in_(names), d.period_kind == f.period, d.grain == grain)
    region_of = region_of_municipalities()
    placed: dict[str, bool] = {}  # place → in the place asked
    folded: dict[str, list[Any]] = {}  # unit → [requests, shown, citizens, earliest, any undue]
    no_due = ov.NO_DUE_DATE.isoformat()
    for (cells,) in await conn.execute(stmt):
        for start, place, receiver, shown, citizens, requests, earliest, latest in orjson.loads(
            cells
        ):
            if receiver == disclosure.ALL or not in_range(f, start):
                continue
            ok = placed.get(place)
            if ok is None:
                ok = placed[place] = (
                    in_place(f, place, region_of.get(place))
                    if grain == "municipality"
                    else grain != "region" or f.region is None or place == f.region
                )
            if not ok:
                continue
            part = folded.get(receiver)
            first = earliest if earliest != no_due else None
            if part is None:
                folded[receiver] = [requests, bool(shown), citizens, first, latest == no_due]
                continue
            part[0] += requests
            part[1] = part[1] and bool(shown)
            part[2] = max(part[2], citizens)
            if first is not None and (part[3] is None or first < part[3]):
                part[3] = first
            part[4] = part[4] or latest == no_due
    groups: dict[str, _Group] = {}
    for receiver, (requests, shown, citizens, earliest, undue) in folded.items():
        g = groups[receiver] = _Group(requests, None, shown, citizens)
        if earliest is not None:
            g.late((today - dt.date.fromisoformat(earliest)).days)
        if undue:
            g.late(0)
        g.shown = g.shown and r.publishable(g.citizens, rules)
    return groups


async def digests(conn: AsyncConnection, f: Filters | None = None) -> dict[Cube, str]:
    """The digest of what each year cube's decision is made of and publishes (every stored
    cell's weight, requests and due dates), of every cube in one read, or of the one of `f`.
    A cube without cells has none."""
    c, d = tracker_overdue_cells.c, tracker_overdue.c
    cell = (c.id, c.period_kind, c.period_start, c.attest_type, c.citizens, c.requests)
    stmt = (
        sa.select(*cell, sa.func.min(d.due_date), sa.func.max(d.due_date))
        .select_from(tracker_overdue_cells.join(tracker_overdue, d.cell_id == c.id))
        .where(d.n > 0)
        .group_by(*cell)
    )
    if f is not None:
        stmt = stmt.where(*_conds(f, "receiver", cube_range(f)))
    parts: dict[Cube, list[tuple[Any, ...]]] = defaultdict(list)
    for (
        cell_id,
        kind,
        start,
        attest_type,
        citizens,
        requests,
        earliest,
        latest,
    ) in await conn.execute(
        stmt
    ):  # a cell is in the cube of its period's start's year (a week's: the year it starts in)
        key: Cube = (kind, str(attest_type), start.year)
        parts[key].append((cell_id, citizens, requests, earliest.isoformat(), latest.isoformat()))
    out: dict[Cube, str] = {}
    for key, rows in parts.items():
        h = hashlib.blake2b(digest_size=32)
        for part in sorted(rows):
            h.update(orjson.dumps(list(part)))
        out[key] = h.hexdigest()
    return out


EMPTY = hashlib.blake2b(digest_size=32).hexdigest()  # the digest of a cube without cells


async def publish_cube(
    engine: AsyncEngine, rules: r.TrackerRules, cube: Cube, made_of: str, *, now: dt.datetime
) -> bool:
    """Decides one year cube by receiving unit, read as its digest `made_of` says, and
    publishes the decision with the cells' figures (so that a figure and its suppression are
    of one moment). False when its cells changed meanwhile (the next round decides it)."""
    threshold = rules.min_cell_citizens
    kind, attest_type, year = cube
    name = cube_name(kind, attest_type, year, threshold)
    f = year_filters(year, kind, None if attest_type == ov.ALL else attest_type)
    async with engine.connect() as conn:
        weights = await _weights(conn, f, "receiver")
        hidden = await asyncio.to_thread(  # seconds at national volume: off the event loop
            disclosure.decide_cube, weights, region_of_municipalities(), threshold
        )
        entries = await _entries(
            conn, f, "receiver", list(GEOGRAPHY), cube_range(f), weights, hidden
        )
        after = (await digests(conn, f)).get(cube, EMPTY)
    if after != made_of:  # written to meanwhile: the cube read may be neither; next time
        return False
    cells: dict[tuple[str, str], dict[disclosure.Coord, list[Any]]] = defaultdict(dict)
    for e in entries:  # a quarter's or a year's cell summed from its months
        kind_of, start, grain, place, receiver = e.coord
        part = cells[(kind_of, grain)].get(e.coord)
        if part is None:
            cells[(kind_of, grain)][e.coord] = [
                start, place, receiver, int(e.shown), e.citizens, e.requests,
                e.earliest.isoformat(), e.latest.isoformat(),
            ]  # fmt: skip
        else:
            part[5] += e.requests
            part[6] = min(part[6], e.earliest.isoformat())
            part[7] = max(part[7], e.latest.isoformat())
    c, d = tracker_decision_cells.c, tracker_decisions.c
    async with engine.begin() as conn:
        await conn.execute(tracker_decision_cells.delete().where(c.cube == name))
        await conn.execute(tracker_decisions.delete().where(d.cube == name))
        await conn.execute(
            tracker_decisions.insert().values(
                cube=name, digest=made_of, decided_at=now, cells=len(weights),
                suppressed=len(hidden),
            )
        )  # fmt: skip
        parts = [
            {
                "cube": name,
                "period_kind": kind_of,
                "grain": grain,
                "attest_type": attest_type,
                "cells": orjson.dumps(sorted(coords.values())).decode(),
            }
            for (kind_of, grain), coords in sorted(cells.items())
        ]
        if parts:
            await conn.execute(tracker_decision_cells.insert(), parts)
    return True


@dataclass(frozen=True, slots=True)
class Round:
    """What one round did: the keys of the year cubes decided, of those unchanged (their
    decisions stand), and of all it keeps (the round removes the others)."""

    decided: list[str]
    unchanged: list[str]
    kept: set[str]


async def publish(engine: AsyncEngine, rules: r.TrackerRules, *, now: dt.datetime) -> Round:
    """Publishes the year cubes by receiving unit (`cubes`) whose figures changed since
    their published decision."""
    threshold = rules.min_cell_citizens
    d = tracker_decisions.c
    async with engine.connect() as conn:
        wanted = await cubes(conn)
        made_of = await digests(conn)
        found = await conn.execute(
            sa.select(d.cube, d.digest).where(d.cube.like("overdue:receiver:%"))
        )
        stored = {str(cube): str(digest) for cube, digest in found}
    done: list[str] = []
    unchanged: list[str] = []
    for cube in wanted:
        name = cube_name(*cube, threshold)
        now_of = made_of.get(cube, EMPTY)
        if stored.get(name) == now_of:
            unchanged.append(name)
        elif await publish_cube(engine, rules, cube, now_of, now=now):
            done.append(name)
    return Round(done, unchanged, {cube_name(*cube, threshold) for cube in wanted})


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
    published: list[Row] = publish_items(items, f, by, rules, series=False)
    groups = {
        row.key[1]: _Group(len(row.records), max(row.records), row.shown) for row in published
    }
    names = await _names(conn, sorted(groups)) if by == "receiver" else {}
    return _answer(by, groups, names, rules)
