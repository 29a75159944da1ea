"""When in the absence requests are made, read from the rollup `tracker_request_weeks`
(`docs/tracker.md`, "Latency with the open requests", request timing).

The tracker counts each request, when its `submitted` event is applied, in the week of its
citizen's absence it was made in (`rules.absence_week`: 0 before the first day of absence,
27 for week 27 or later), per request cell (week and month; the country, the region, the
municipality; its attest type and `*`) and per case-kind cell (the `ck:` cells,
`rules.case_kind_cells`, whose counters hold requests and distinct citizens). A report then
reads at most 28 rows per cell, whatever the number of requests.

Disclosure control as for latency (`latency.py`): the whole cube is decided together, a
week's or a month's weight is its exact distinct citizens (`tracker_counts.citizens`), a
quarter's or a year's the most of its months' (a lower bound: a cell under the threshold is
always suppressed, one over it may be too, and the secondary suppression that follows may
then pick other cells than from exact weights). Otherwise it equals, row for row,
:func:`request_timing_rows`, which reads one row per request (`tracker_conversations`): the
tests compare both, and the benchmark times both.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    tracker_cells,
    tracker_conversations,
    tracker_counts,
    tracker_request_weeks,
)
from attest_gateway.tracker import disclosure
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.coverage import (
    GEOGRAPHY,
    Item,
    TimingBy,
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

Weeks = Counter[int]  # requests per week of absence


def _rows(
    rules: r.TrackerRules, by: TimingBy, rows: list[tuple[str | None, str, Weeks, bool]]
) -> list[dict[str, Any]]:
    """The answer: per row (period or None, group, its requests per week, shown), one line
    per week of absence 0–27 with the requests and their share of the row's."""
    out_rows = []
    for period, group, weeks, shown in rows:
        total = sum(weeks.values())
        for week in range(r.LAST_WEEK + 1):
            out: dict[str, Any] = {} if period is None else {"period_start": period}
            out |= {
                "group": group,
                "label": label(by, group),
                "suppressed": not shown,
                "week": week,
            }
            n = weeks.get(week, 0)
            fields = {"requests": n, "share": r.rate(n, total)}
            out |= fields if shown else dict.fromkeys(fields)
            out_rows.append(out)
    return out_rows


# --- from the rollup --------------------------------------------------------------------------


def _grains(by: TimingBy, grains: tuple[str, ...]) -> list[str]:
    """The stored grains of the place grains `grains`: theirs, or their case-kind cells'
    too when by case kind (the cube holds every case kind's cells and their whole)."""
    if by == "case_kind":
        return [*grains, *(r.CASE_KIND_GRAINS[g] for g in grains)]
    return list(grains)


def _conds(f: Filters, grains: list[str], *, rows: bool = False) -> list[Any]:
    """The stored cells of `grains` the cube holds (`rows`: only those the answer's rows are
    made of)."""
    cells = tracker_cells.c
    stored: r.PeriodKind = "week" if f.period == "week" else "month"
    conds: list[Any] = [
        cells.grain.in_(grains),
        cells.period_kind == stored,
        cells.attest_type == (f.attest_type or r.ALL_TYPES),
    ]
    lo, hi = rows_range(f) if rows else cube_range(f)
    if lo is not None:
        conds.append(cells.period_start >= r.period_start(lo, stored))
    if hi is not None:
        conds.append(cells.period_start <= hi)
    return conds


def _coords(row: Any) -> list[disclosure.Coord]:
    """The cube's cells a stored cell adds into (its period's and, for a month, its
    quarter's and year's): a place cell as the whole, a case-kind cell as its kind."""
    grain, where, value = str(row.grain), str(row.dim), disclosure.ALL
    if grain.startswith("ck:"):
        grain = grain.removeprefix("ck:")
        where, value = where.rsplit("/", 1)
    periods = disclosure.stored_periods(str(row.period_kind), row.period_start)
    return [(kind, start, grain, where, value) for kind, start in periods]


async def _cube(
    conn: AsyncConnection, f: Filters, by: TimingBy
) -> tuple[dict[disclosure.Coord, int], dict[disclosure.Coord, Weeks]]:
    """The cube's cells with their weights (every place), and the requests per week of the
    cells of the answer's own grain."""
    cells, counts, weeks = tracker_cells, tracker_counts, tracker_request_weeks
    head = (cells.c.id, cells.c.grain, cells.c.period_kind, cells.c.period_start, cells.c.dim)
    stored = list(
        await conn.execute(
            sa.select(*head, counts.c.citizens)
            .select_from(cells.join(counts, counts.c.cell_id == cells.c.id))
            .where(*_conds(f, _grains(by, GEOGRAPHY)), counts.c.requests > 0)
        )
    )
    own_grain = _own(by, f)
    own_grains = [r.CASE_KIND_GRAINS[own_grain]] if by == "case_kind" else [own_grain]
    own: dict[int, Weeks] = defaultdict(Counter)
    for row in await conn.execute(
        sa.select(weeks.c.cell_id, weeks.c.week, weeks.c.n)
        .select_from(cells.join(weeks, weeks.c.cell_id == cells.c.id))
        .where(*_conds(f, own_grains, rows=True), weeks.c.n != 0)
    ):
        own[row.cell_id][int(row.week)] += int(row.n)
    weights: dict[disclosure.Coord, int] = {}
    figures: dict[disclosure.Coord, Weeks] = defaultdict(Counter)
    for cell in stored:
        citizens = int(cell.citizens or 0)
        counted = own.get(cell.id)
        for coord in _coords(cell):
            if weights.get(coord, 0) < citizens:
                weights[coord] = citizens
            if counted is not None:
                figures[coord].update(counted)
    return weights, figures


async def request_timing(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: TimingBy,
    *,
    series: bool,
) -> list[dict[str, Any]]:
    """Requests per week of absence they were made in, per group (and period of the
    request): the distribution against the first follow-up (end of week
    `late_request_weeks`, 8 for sygedagpenge); read from the rollup."""
    weights, figures = await _cube(conn, f, by)
    region_of = region_of_municipalities()
    hidden = disclosure.decide_cube(weights, region_of, rules.min_cell_citizens)
    rows: dict[tuple[str | None, str], tuple[Weeks, int, bool]] = {}
    for coord, citizens in weights.items():
        key = row_key(coord, f, by, region_of, series=series)
        if key is None:
            continue
        weeks, most, shown = rows.get(key, (Counter(), 0, True))
        weeks.update(figures.get(coord, Counter()))
        rows[key] = (weeks, max(most, citizens), shown and coord not in hidden)
    # shown: every cell of the row is, so each counts the threshold (the row's citizens are
    # at least its largest cell's)
    return _rows(
        rules,
        by,
        [
            (period, group, weeks, shown and r.publishable(most, rules))
            for (period, group), (weeks, most, shown) in sorted(
                rows.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
            )
        ],
    )


# --- from the rows (the reference) ------------------------------------------------------------


async def request_timing_rows(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: TimingBy,
    *,
    series: bool,
) -> list[dict[str, Any]]:
    """What :func:`request_timing` answers, from one row per request of the whole cube
    (`tracker_conversations`), its citizens counted exactly: the reference the tests and the
    benchmark hold the rollup to. Its cost grows with the requests of the period."""
    tc = tracker_conversations.c
    stmt = sa.select(
        tc.submitted_at,
        tc.first_day_of_absence,
        tc.case_kind,
        tc.region_code,
        tc.municipality,
        tc.case_ref,
    ).where(*_request_conds(f))
    items: list[Item] = []
    for rec in await conn.execute(stmt):
        day: dt.date = rules.local_date(aware(rec.submitted_at))
        items.append(
            Item(
                r.absence_week(rec.first_day_of_absence, day),
                day,
                str(rec.region_code),
                str(rec.municipality),
                str(rec.case_kind) if by == "case_kind" else None,
                rec.case_ref,
            )
        )
    return _rows(
        rules,
        by,
        [
            (row.key[0], row.key[1], Counter(row.records), row.shown)
            for row in publish(items, f, by, rules, series=series)
        ],
    )
