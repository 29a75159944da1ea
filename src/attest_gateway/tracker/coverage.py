"""Contact over registered sickness cases (from its rollup, `infra/db/coverage.py`, or from
the rows as the reference), and the cube the ministry's other per-case and per-request
figures share: request→attest latency (latency.py), when in the absence requests are made
(timing.py), the open overdue requests (overdue.py) and a ressourceforløb case's wait for its
health information (rehabilitation.py) build their cells and rows with it.

The reports read rollups; the row references (`coverage_rows` here, and the other modules')
read the per-record tracker tables (`tracker_cases`, `tracker_treatments`, `tracker_contacts`,
`tracker_conversations`) of the period asked, at a cost in proportion to its cases and
requests. None holds a CPR number (case refs only, which no answer contains) and the same
disclosure control applies: a group is shown only if it counts at least `min_cell_citizens`
distinct citizens.

Contact over cases (`docs/tracker.md`, "Contact over registered cases"): a case counts when
its kind is one of `contact_case_kinds` and the citizen has a psychiatric course (the job
centre marked it, or a psychiatry unit registered the citizen in treatment during the window).
It has direct contact when, between the first day of absence and the window's last day, a
contact of a counted kind was registered by either side between the case's job centre and
psychiatry, or (`attest`) a request of that job centre to psychiatry was answered with an
attest, or (`request`, off by default) such a request was sent at all. A case without contact
is decided when its window has closed; one closed before its window ends without contact is
left out (nobody needed to meet), one whose window is still open is pending.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.core.directory import Role
from attest_gateway.infra.db import coverage as cr
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    tracker_cases,
    tracker_contacts,
    tracker_conversations,
    tracker_coverage,
    tracker_treatments,
)
from attest_gateway.tracker import disclosure
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.report import (
    Filters,
    cube_range,
    in_place,
    in_range,
    label,
    region_of_municipalities,
    rows_range,
)

CoverageBy = Literal["national", "region", "municipality", "case_kind"]
LatencyBy = Literal["national", "region", "attest_type", "receiver_kind"]
TimingBy = Literal["national", "region", "municipality", "case_kind"]
OverdueBy = Literal["receiver", "municipality"]
RehabBy = Literal["national", "region", "municipality"]

_CHUNK = 500  # case refs per IN list


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def _group_label(by: str, key: str) -> str:
    return label(by, key)


# --- the cube: every record in every cell it counts in, decided together --------------------

GEOGRAPHY = ("national", "region", "municipality")


@dataclass(frozen=True, slots=True)
class Item:
    """One record's place in the cube: the day it counts on, its place, its value of the
    breakdown asked (attest type, case kind, …; None for a geographic grouping) and its
    citizen."""

    record: Any
    day: dt.date
    region: str
    municipality: str
    breakdown: str | None
    citizen: str


@dataclass(frozen=True, slots=True)
class Row:
    key: tuple[str | None, str]  # (period start or None, group)
    records: list[Any]
    citizens: int
    shown: bool


def _periods(f: Filters, day: dt.date) -> list[tuple[str, str]]:
    if f.period == "week":
        return [("week", r.period_start(day, "week").isoformat())]
    return disclosure.months_up("month", day)


def _own(by: str, f: Filters) -> str:
    if by in ("region", "municipality"):
        return by
    return "municipality" if f.municipality else "region" if f.region else "national"


def row_key(
    coord: disclosure.Coord,
    f: Filters,
    by: str,
    region_of: Mapping[str, str],
    *,
    series: bool,
) -> tuple[str | None, str] | None:
    """The answer's row a cube cell belongs to, (its period's start with `series`, its group),
    or None when the cell is not one of the rows asked: another kind of period, grain, range
    or place, or (for a breakdown) the cell of all values."""
    kind, start, grain, where, value = coord
    if kind != f.period or grain != _own(by, f) or not in_range(f, start):
        return None
    breakdown = by not in GEOGRAPHY
    if breakdown == (value == disclosure.ALL):
        return None
    if grain == "municipality" and not in_place(f, where, region_of.get(where)):
        return None
    if grain == "region" and f.region is not None and where != f.region:
        return None
    group = value if breakdown else disclosure.place_of(coord)
    return (start if series else None, group)


def publish(
    items: Iterable[Item], f: Filters, by: str, rules: r.TrackerRules, *, series: bool
) -> list[Row]:
    """The answer's rows: every record counted into every cell of the cube (periods: the
    kind asked, or months, quarters and years; places: the country, its region, its
    municipality; breakdown: all and its own value), the cube's cells decided together
    (`disclosure.decide_cube`), then the rows of the grouping, period range and place asked
    picked; without `series` one row per group over the range, shown only if all its
    periods are."""
    records: dict[disclosure.Coord, list[Any]] = defaultdict(list)
    citizens: dict[disclosure.Coord, set[str]] = defaultdict(set)
    for it in items:
        kinds = [disclosure.ALL] if it.breakdown is None else [disclosure.ALL, it.breakdown]
        for kind, start in _periods(f, it.day):
            for grain, where in zip(GEOGRAPHY, ("DK", it.region, it.municipality), strict=True):
                for value in kinds:
                    coord = (kind, start, grain, where, value)
                    records[coord].append(it.record)
                    citizens[coord].add(it.citizen)
    hidden = disclosure.decide_cube(
        {c: len(v) for c, v in citizens.items()},
        region_of_municipalities(),
        rules.min_cell_citizens,
    )
    region_of = region_of_municipalities()
    rows: dict[tuple[str | None, str], tuple[list[Any], set[str], bool]] = {}
    for coord, recs in records.items():
        key = row_key(coord, f, by, region_of, series=series)
        if key is None:
            continue
        old = rows.get(key, ([], set(), True))
        rows[key] = (old[0] + recs, old[1] | citizens[coord], old[2] and coord not in hidden)
    return [
        Row(key, recs, len(refs), ok and r.publishable(len(refs), rules))
        for key, (recs, refs, ok) in sorted(rows.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
    ]


def _widened(f: Filters) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The instants the cube reads (whole years for months, quarters and years), a day's
    margin either side: a record's period is its day in Danish time."""
    lo, hi = cube_range(f)
    start = dt.datetime.combine(lo - dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC) if lo else None
    end = dt.datetime.combine(hi + dt.timedelta(days=2), dt.time(), tzinfo=dt.UTC) if hi else None
    return start, end


# --- contact over cases -----------------------------------------------------------------------


async def _by_refs(
    conn: AsyncConnection, table: sa.Table, refs: Sequence[str], *where: Any
) -> list[Any]:
    rows: list[Any] = []
    for chunk in _chunks(refs):
        rows.extend(await conn.execute(sa.select(table).where(table.c.case_ref.in_(chunk), *where)))
    return rows


@dataclass(frozen=True, slots=True)
class _Decided:
    """One counted case: with contact (its first contact's source), without, pending or
    closed early."""

    status: Literal["with", "without", "pending", "closed_early"]
    source: str | None = None


def _fields(states: Mapping[str, int]) -> dict[str, Any]:
    """A group's figures from its counted cases per state (a source of first contact,
    `without`, `pending`, `closed_early`)."""
    w = sum(states.get(source, 0) for source in cr.SOURCES)
    n = w + states.get("without", 0)
    return {
        "cases": n,
        "with_contact": w,
        "without_contact": n - w,
        "share_without_contact": r.rate(n - w, n),
        "contact_by_jobcenter": states.get("jobcenter", 0),
        "contact_by_psychiatry": states.get("psychiatry", 0),
        "contact_by_attest": states.get("attest", 0),
        "contact_by_request": states.get("request", 0),
        "pending": states.get("pending", 0),
        "closed_early": states.get(cr.CLOSED_EARLY, 0),
    }


def _coverage_coord(f: Filters, row: Any) -> list[disclosure.Coord]:
    """The cube's cells a stored coverage row adds into: a week, month, quarter or year
    itself; a month's states also into its quarter and year (those keep citizens only)."""
    value = disclosure.ALL if row.case_kind == cr.ALL else str(row.case_kind)
    up = row.state != cr.CITIZENS and row.period_kind == "month"
    periods = _periods_of(str(row.period_kind), row.period_start, up=up)
    return [(kind, first, str(row.grain), str(row.place), value) for kind, first in periods]


@functools.lru_cache(maxsize=4096)  # a few hundred periods per read, tens of thousands of rows
def _periods_of(kind: str, start: dt.date, *, up: bool) -> tuple[tuple[str, str], ...]:
    if up:
        return tuple(disclosure.months_up("month", start))
    return ((kind, start.isoformat()),)


async def coverage(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: CoverageBy,
    *,
    series: bool,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Share of registered cases with a psychiatric course and no direct contact in the
    window, per group (and period of the window's last day), read from the rollup
    (`tracker_coverage`, infra/db/coverage.py): a few rows per cell, whatever the number of
    cases. A case still without contact is kept per the last day of its window: without
    contact when that day is before today, else pending."""
    today = rules.local_date(now)
    t = tracker_coverage.c
    lo, hi = cube_range(f)
    breakdown = by not in GEOGRAPHY
    conds: list[Any] = []
    if lo is not None:
        conds.append(t.period_start >= lo)
    if hi is not None:
        conds.append(t.period_start <= hi)
    # the answer's rows are made of fewer stored cells (for weeks, those of the weeks asked)
    row_lo, row_hi = rows_range(f)
    row_conds: list[Any] = []
    if row_lo is not None:
        row_conds.append(
            t.period_start >= r.period_start(row_lo, "week" if f.period == "week" else "month")
        )
    if row_hi is not None:
        row_conds.append(t.period_start <= row_hi)
    weight_kinds = ["week"] if f.period == "week" else ["month", "quarter", "year"]
    weights: dict[disclosure.Coord, int] = {}
    # the cube's cells, every place: their citizens (a breakdown's cells and their whole)
    for row in await conn.execute(
        sa.select(t.period_kind, t.period_start, t.grain, t.place, t.case_kind, t.state, t.n).where(
            t.state == cr.CITIZENS,
            t.period_kind.in_(weight_kinds),
            t.n > 0,
            *conds,
            *([] if breakdown else [t.case_kind == cr.ALL]),
        )
    ):
        for coord in _coverage_coord(f, row):
            weights[coord] = int(row.n)
    # the states of the answer's own grain (weeks, or months for every coarser period); the
    # open cases of a period over a month ago are all without contact now (their windows
    # ended in it), summed in SQL: only the recent periods' are read per last day
    figures: dict[disclosure.Coord, Counter[str]] = defaultdict(Counter)
    recent = today - dt.timedelta(days=31)
    own_cells = (
        t.period_kind == ("week" if f.period == "week" else "month"),
        t.grain == _own(by, f),
        t.n != 0,
        t.case_kind != cr.ALL if breakdown else t.case_kind == cr.ALL,
        *row_conds,
    )
    state = sa.case((t.state == cr.OPEN, sa.literal("without")), else_=t.state)
    head = (t.period_kind, t.period_start, t.grain, t.place, t.case_kind)
    settled = (
        sa.select(*head, state.label("state"), sa.func.sum(t.n).label("n"))
        .where(
            t.state != cr.CITIZENS,
            sa.or_(t.state != cr.OPEN, t.period_start < recent),
            *own_cells,
        )
        .group_by(*head, state)
    )
    for stored in await conn.execute(settled):
        for coord in _coverage_coord(f, stored):
            figures[coord][str(stored.state)] += int(stored.n)
    for per_day in await conn.execute(
        sa.select(*head, t.state, t.day, t.n).where(
            t.state == cr.OPEN, t.period_start >= recent, *own_cells
        )
    ):
        window_end = per_day.period_start + dt.timedelta(days=int(per_day.day))
        state_now = "without" if window_end < today else "pending"
        for coord in _coverage_coord(f, per_day):
            figures[coord][state_now] += int(per_day.n)
    region_of = region_of_municipalities()
    hidden = disclosure.decide_cube(weights, region_of, rules.min_cell_citizens)
    rows: dict[tuple[str | None, str], tuple[Counter[str], int, bool]] = {}
    for coord, citizens in weights.items():
        key = row_key(coord, f, by, region_of, series=series)
        if key is None:
            continue
        states, most, shown = rows.get(key, (Counter(), 0, True))
        states.update(figures.get(coord, Counter()))
        rows[key] = (states, max(most, citizens), shown and coord not in hidden)
    out_rows = []
    for (period, group), (states, most, shown) in sorted(
        rows.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
    ):
        # shown: every cell of the row is, so each counts the threshold (the row's citizens
        # are at least its largest cell's)
        ok = shown and r.publishable(most, rules)
        out: dict[str, Any] = {"period_start": period} if series else {}
        out |= {
            "group": group,
            "label": _group_label(by, group),
            "suppressed": not ok,
            "baseline": rules.no_contact_baseline,
            "target": rules.no_contact_target,
        }
        fields = _fields(states)
        out |= fields if ok else dict.fromkeys(fields)
        out_rows.append(out)
    return out_rows


async def coverage_rows(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: CoverageBy,
    *,
    series: bool,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """What :func:`coverage` answers, decided from one row per case of the whole cube
    (`tracker_cases`, with its citizen's treatments, contacts and requests), its citizens
    counted exactly: the reference the tests and the benchmark hold the rollup to. Its cost
    grows with the cases of the period."""
    today = rules.local_date(now)
    window_days = 7 * rules.contact_window_weeks
    c = tracker_cases.c
    lo, hi = cube_range(f)
    conds: list[Any] = [c.case_kind.in_(sorted(rules.contact_case_kinds))]
    if lo is not None:  # the window ends in the period asked
        conds.append(c.first_day_of_absence >= lo - dt.timedelta(days=window_days))
    if hi is not None:
        conds.append(c.first_day_of_absence <= hi)
    cases = list(await conn.execute(sa.select(tracker_cases).where(*conds)))
    refs = sorted({row.case_ref for row in cases})
    treatments: dict[str, list[Any]] = defaultdict(list)
    for t in await _by_refs(conn, tracker_treatments, refs):
        treatments[t.case_ref].append(t)
    contacts: dict[tuple[str, str], list[tuple[dt.date, str]]] = defaultdict(list)
    channels = sorted(rules.contact_counts - {"attest", "request"})
    for rec in await _by_refs(
        conn, tracker_contacts, refs, tracker_contacts.c.channel.in_(channels)
    ):
        source = "psychiatry" if rec.registrar_org == rec.psychiatry_org else "jobcenter"
        contacts[(rec.case_ref, rec.jobcenter_org)].append((rec.contact_date, source))
    counts_requests = {"attest", "request"} & rules.contact_counts
    if counts_requests:
        tc = tracker_conversations.c
        for rec in await _by_refs(
            conn, tracker_conversations, refs, tc.receiver_role == Role.PSYCHIATRY.value
        ):
            key = (rec.case_ref, rec.jobcenter_org)
            if "attest" in counts_requests and rec.replied_at is not None:
                contacts[key].append((rules.local_date(aware(rec.replied_at)), "attest"))
            if "request" in counts_requests and rec.submitted_at is not None:
                contacts[key].append((rules.local_date(aware(rec.submitted_at)), "request"))

    items: list[Item] = []
    outer: r.ReportPeriod = "week" if f.period == "week" else "year"
    for case in cases:
        first_day = case.first_day_of_absence
        window_end = rules.contact_window_end(first_day)
        start = r.period_start(window_end, outer)
        if (lo is not None and start < lo) or (hi is not None and start > hi):
            continue  # its window ends outside the cube: its cells would be partial there
        course = case.psychiatric_course or any(
            t.start_date <= window_end and (t.end_date is None or t.end_date >= first_day)
            for t in treatments.get(case.case_ref, ())
        )
        if not course:
            continue
        found = sorted(
            (day, source)
            for day, source in contacts.get((case.case_ref, case.jobcenter_org), ())
            if first_day <= day <= window_end
        )
        if found:
            decided = _Decided("with", found[0][1])
        elif case.closed_on is not None and case.closed_on < window_end:
            decided = _Decided("closed_early")
        elif window_end < today:
            decided = _Decided("without")
        else:
            decided = _Decided("pending")
        items.append(
            Item(
                decided,
                window_end,
                str(case.region_code),
                str(case.municipality),
                str(case.case_kind) if by == "case_kind" else None,
                case.case_ref,
            )
        )
    rows = []
    for row in publish(items, f, by, rules, series=series):
        period, group = row.key
        decided_ = [d for d in row.records if d.status in ("with", "without")]
        with_contact = [d for d in decided_ if d.status == "with"]
        sources: dict[str, int] = defaultdict(int)
        for d in with_contact:
            sources[str(d.source)] += 1
        out: dict[str, Any] = {"period_start": period} if series else {}
        out |= {
            "group": group,
            "label": _group_label(by, group),
            "suppressed": not row.shown,
            "baseline": rules.no_contact_baseline,
            "target": rules.no_contact_target,
        }
        n, w = len(decided_), len(with_contact)
        fields: dict[str, Any] = {
            "cases": n,
            "with_contact": w,
            "without_contact": n - w,
            "share_without_contact": r.rate(n - w, n),
            "contact_by_jobcenter": sources.get("jobcenter", 0),
            "contact_by_psychiatry": sources.get("psychiatry", 0),
            "contact_by_attest": sources.get("attest", 0),
            "contact_by_request": sources.get("request", 0),
            "pending": sum(1 for d in row.records if d.status == "pending"),
            "closed_early": sum(1 for d in row.records if d.status == "closed_early"),
        }
        out |= fields if row.shown else dict.fromkeys(fields)
        rows.append(out)
    return rows


# --- the requests of the cube -------------------------------------------------------------------


def _request_conds(f: Filters) -> list[Any]:
    """The requests the cube reads: of the attest type asked, made in the widened range
    (every place: the rows are picked after the cells are decided)."""
    tc = tracker_conversations.c
    conds: list[Any] = [tc.submitted_at.is_not(None)]
    if f.attest_type is not None:
        conds.append(tc.attest_type == f.attest_type)
    start, end = _widened(f)
    if start is not None:
        conds.append(tc.submitted_at >= start)
    if end is not None:
        conds.append(tc.submitted_at < end)
    return conds
