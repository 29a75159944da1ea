"""Request → attest latency that counts the open requests (Kaplan–Meier), read from the
rollup `tracker_latency` (`docs/tracker.md`, "Latency with the open requests").

The tracker keeps, per request cell (period of the request, place, attest type and `*`) and
per receiver kind (the `rk:` cells, `rules.kind_cells`), how many requests were answered
with an attest after each number of calendar days (Danish time), and how many made on each
day of the period are still open. An open request is censored at its age when read (today −
the day it was made), so the estimate needs no sweep as time passes. A report then reads a
few rows per cell, whatever the number of requests.

The estimate is at day resolution: a request answered the day it was made is an event at 0
days, one made on Monday and answered on Wednesday at 2. Row for row it equals
:func:`latency_rows`, which reads one row per request (`tracker_conversations`) the same way:
the tests compare both, and the benchmark times both.

Disclosure control as for the other figures (`disclosure.decide_cube` over the whole cube);
a cell's weight is its distinct citizens (`tracker_counts.citizens` of the stored week or
month cell: exact), for a quarter or a year the most of its months (a lower bound, as in
report.py: such a cell may be suppressed where the rows would show it, never the other way).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    tracker_cells,
    tracker_conversations,
    tracker_counts,
    tracker_latency,
)
from attest_gateway.tracker import disclosure
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.coverage import (
    GEOGRAPHY,
    Item,
    LatencyBy,
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
from attest_gateway.tracker.store import ANSWERED, OPEN
from attest_gateway.tracker.survival import kaplan_meier_counts

DAY = 86_400.0  # the answer is in seconds, as the other durations


def latency_fields(answered: Mapping[int, int], open_: Mapping[int, int]) -> dict[str, Any]:
    """A group's figures from its answered requests per days to the attest and its open
    requests per days since they were made (censored there)."""
    curve = kaplan_meier_counts(answered, open_)
    return {
        "requests": curve.n,
        "answered": curve.events,
        "open": curve.censored,
        "share_open": r.rate(curve.censored, curve.n),
        "median": _seconds(curve.quantile(0.5)),
        "p90": _seconds(curve.quantile(0.9)),
        "answered_only_median": _seconds(median_of_counts(answered)),
    }


def _seconds(days: float | None) -> float | None:
    return None if days is None else days * DAY


def median_of_counts(counts: Mapping[int, int]) -> float | None:
    """The median of the values `counts` holds (value → how many), the mean of the middle
    two for an even number."""
    values = sorted((v, n) for v, n in counts.items() if n > 0)
    total = sum(n for _, n in values)
    if total == 0:
        return None
    middle = ((total - 1) // 2, total // 2)  # 0-based ranks of the middle one or two
    found: list[int] = []
    seen = 0
    for v, n in values:
        while len(found) < 2 and middle[len(found)] < seen + n:
            found.append(v)
        seen += n
    return (found[0] + found[1]) / 2


# --- from the rollup --------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    """One cell of the cube: its weight (citizens) and its counts."""

    citizens: int = 0
    answered: Counter[int] = field(default_factory=Counter)
    open: Counter[dt.date] = field(default_factory=Counter)

    def add(self, other: _Group) -> None:
        self.citizens = max(self.citizens, other.citizens)
        self.answered.update(other.answered)
        self.open.update(other.open)


def _read(f: Filters, by: LatencyBy) -> tuple[list[str], list[str] | None]:
    """The stored cells' grains and attest types the cube needs (None: every type)."""
    base = f.attest_type or r.ALL_TYPES
    grains = list(GEOGRAPHY)
    if by == "receiver_kind":
        grains += [r.KIND_GRAINS[g] for g in GEOGRAPHY]
    if by == "attest_type" and f.attest_type is None:
        return grains, None
    return grains, [base]


def _coords(f: Filters, by: LatencyBy, row: Any) -> list[disclosure.Coord]:
    """The cube's cells a stored cell adds into: a week itself; a month itself, its quarter
    and its year (whose weight is then the most of its months': a lower bound)."""
    grain, dim, attest_type = str(row.grain), str(row.dim), str(row.attest_type)
    values: list[str]
    if grain.startswith("rk:"):
        grain = grain.removeprefix("rk:")
        dim, kind = dim.rsplit("/", 1)
        values = [kind]
    elif by == "attest_type":
        values = [disclosure.ALL] if attest_type == r.ALL_TYPES else [attest_type]
        if f.attest_type is not None:  # the type asked is the whole and its one part
            values = [disclosure.ALL, attest_type]
    else:
        values = [disclosure.ALL]
    periods = disclosure.stored_periods(str(row.period_kind), row.period_start)
    return [(kind, first, grain, dim, value) for kind, first in periods for value in values]


def _cells_read(f: Filters, by: LatencyBy, grains: list[str], *, rows: bool = False) -> list[Any]:
    """The stored cells of `grains` the cube holds (`rows`: only those the answer's rows are
    made of)."""
    cells = tracker_cells
    _, types = _read(f, by)
    stored: r.PeriodKind = "week" if f.period == "week" else "month"
    conds: list[Any] = [cells.c.grain.in_(grains), cells.c.period_kind == stored]
    lo, hi = rows_range(f) if rows else cube_range(f)
    if lo is not None:
        conds.append(cells.c.period_start >= r.period_start(lo, stored))
    if hi is not None:
        conds.append(cells.c.period_start <= hi)
    if types is not None:
        conds.append(cells.c.attest_type.in_(types))
    else:
        conds.append(cells.c.attest_type != "-")
    return conds


def _own_grains(f: Filters, by: LatencyBy) -> list[str]:
    """The stored grains the answer's rows are made of: its own place grain, and its
    receiver-kind grain when by receiver kind."""
    own = _own(by, f)
    return [own, r.KIND_GRAINS[own]] if by == "receiver_kind" else [own]


Weights = dict[disclosure.Coord, int]


async def _cube(
    conn: AsyncConnection, f: Filters, by: LatencyBy
) -> tuple[Weights, dict[disclosure.Coord, _Group]]:
    """The cube's cells with their weights (every place: one counter row per stored cell),
    and the latency counts of the cells of the answer's own grain only (the others decide
    suppression, their distributions are not shown)."""
    cells, lat, counts = tracker_cells, tracker_latency, tracker_counts
    grains, _ = _read(f, by)
    head = (
        cells.c.id,
        cells.c.grain,
        cells.c.period_kind,
        cells.c.period_start,
        cells.c.attest_type,
        cells.c.dim,
    )
    read = sa.select(*head, counts.c.citizens).select_from(
        cells.join(counts, counts.c.cell_id == cells.c.id)
    )
    stored = list(
        await conn.execute(
            # a cell without requests (a reply counted before its request's event) is none
            read.where(*_cells_read(f, by, grains), counts.c.requests > 0)
        )
    )
    starts = {row.id: row.period_start for row in stored}
    own: dict[int, _Group] = {}
    distributions = (
        sa.select(lat.c.cell_id, lat.c.state, lat.c.day, lat.c.n)
        .select_from(cells.join(lat, lat.c.cell_id == cells.c.id))
        .where(*_cells_read(f, by, _own_grains(f, by), rows=True), lat.c.n != 0)
    )
    for row in await conn.execute(distributions):
        start = starts.get(row.cell_id)
        if start is None:  # pragma: no cover - a latency row's cell always counts its request
            continue
        group = own.get(row.cell_id)
        if group is None:
            group = own[row.cell_id] = _Group()
        if row.state == ANSWERED:
            group.answered[int(row.day)] += int(row.n)
        elif row.state == OPEN:
            group.open[start + dt.timedelta(days=int(row.day))] += int(row.n)
    weights: Weights = {}
    groups: dict[disclosure.Coord, _Group] = defaultdict(_Group)
    for cell in stored:
        citizens = int(cell.citizens or 0)
        counted = own.get(cell.id)
        for coord in _coords(f, by, cell):
            if weights.get(coord, 0) < citizens:
                weights[coord] = citizens
            if counted is not None:
                groups[coord].add(counted)
    for coord, group in groups.items():
        group.citizens = weights[coord]
    return weights, groups


async def latency(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: LatencyBy,
    *,
    series: bool,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Request → attest per group (and period of the request), Kaplan–Meier with the open
    requests censored at their age today, beside the share still open and the median of the
    answered ones only; read from the rollup."""
    weights, cube = await _cube(conn, f, by)
    region_of = region_of_municipalities()
    hidden = disclosure.decide_cube(weights, region_of, rules.min_cell_citizens)
    rows: dict[tuple[str | None, str], tuple[_Group, bool]] = {}
    for coord, group in cube.items():
        key = row_key(coord, f, by, region_of, series=series)
        if key is None:
            continue
        merged, shown = rows.get(key, (_Group(), True))
        merged.add(group)
        rows[key] = (merged, shown and coord not in hidden)
    today = rules.local_date(now)
    out_rows = []
    for (period, name), (group, shown) in sorted(
        rows.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
    ):
        censored: Counter[int] = Counter()
        for sent, n in group.open.items():
            censored[max(0, (today - sent).days)] += n
        fields = latency_fields(group.answered, censored)
        ok = shown and r.publishable(group.citizens, rules)
        ok = ok and fields["requests"] >= rules.min_cell_citizens
        out: dict[str, Any] = {"period_start": period} if series else {}
        out |= {"group": name, "label": label(by, name), "suppressed": not ok}
        out |= fields if ok else dict.fromkeys(fields)
        out_rows.append(out)
    return out_rows


# --- from the rows (the reference) ------------------------------------------------------------


async def latency_rows(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: LatencyBy,
    *,
    series: bool,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """What :func:`latency` answers, computed from one row per request of the whole cube
    (`tracker_conversations`), its citizens counted exactly: the reference the tests and the
    benchmark hold the rollup to. Its cost grows with the requests of the period."""
    tc = tracker_conversations.c
    stmt = sa.select(
        tc.submitted_at,
        tc.replied_at,
        tc.attest_type,
        tc.receiver_role,
        tc.region_code,
        tc.municipality,
        tc.case_ref,
    ).where(*_request_conds(f))
    today = rules.local_date(now)
    items: list[Item] = []
    for rec in await conn.execute(stmt):
        sent = rules.local_date(aware(rec.submitted_at))
        if rec.replied_at is not None:
            observation = (max(0, (rules.local_date(aware(rec.replied_at)) - sent).days), True)
        else:
            observation = (max(0, (today - sent).days), False)
        breakdown = {
            "attest_type": str(rec.attest_type),
            "receiver_kind": str(rec.receiver_role or "unknown"),
        }.get(by)
        items.append(
            Item(
                observation,
                sent,
                str(rec.region_code),
                str(rec.municipality),
                breakdown,
                rec.case_ref,
            )
        )
    rows = []
    for row in publish(items, f, by, rules, series=series):
        period, name = row.key
        obs: list[tuple[int, bool]] = row.records
        ok = row.shown and len(obs) >= rules.min_cell_citizens
        out: dict[str, Any] = {"period_start": period} if series else {}
        out |= {"group": name, "label": label(by, name), "suppressed": not ok}
        fields = latency_fields(
            Counter(t for t, happened in obs if happened),
            Counter(t for t, happened in obs if not happened),
        )
        out |= fields if ok else dict.fromkeys(fields)
        rows.append(out)
    return rows
