"""How long a ressourceforløb case waits for the health information its rehabilitation team
needs (`rules.rehab_health_information`: every group answered by an attest of one of its
types; by default LÆ 265 and a specialist's attest), from the job centre's first request for
any of it (docs/tracker.md, "Health information for the rehabilitation team").

Kaplan–Meier over whole calendar days (Danish time): a complete case is an event at its
wait, one still missing a part is censored at its wait so far (today − its first request's
day). A case counts in the period and place of its first request, with all its requests,
also those made after the range asked.

:func:`rehabilitation` reads the rollup (`tracker_rehab`, infra/db/rehabilitation.py): a few
rows per cell, whatever the number of cases. :func:`rehabilitation_rows` decides every case
of the cube from its requests (`tracker_conversations`): the reference the tests and the
benchmark hold the rollup to. Disclosure control as for the other figures
(`disclosure.decide_cube` over the whole cube), each cell weighed by its distinct citizens
(exact in both: the rollup keeps them per week, month, quarter and year).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db import rehabilitation as rh
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import tracker_conversations, tracker_rehab
from attest_gateway.tracker import disclosure
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.coverage import Item, RehabBy, _own, publish, row_key
from attest_gateway.tracker.report import (
    Filters,
    cube_range,
    label,
    region_of_municipalities,
)
from attest_gateway.tracker.survival import kaplan_meier_counts


@dataclass(slots=True)
class _Group:
    """A cell's (or an answer row's) cases: complete per wait, open per first-request day,
    open per missing group."""

    complete: Counter[int] = field(default_factory=Counter)
    open: Counter[int] = field(default_factory=Counter)  # by the day's ordinal
    missing: Counter[int] = field(default_factory=Counter)

    def add(self, other: _Group) -> None:
        self.complete.update(other.complete)
        self.open.update(other.open)
        self.missing.update(other.missing)


def _fields(rules: r.TrackerRules, group: _Group, today: dt.date) -> dict[str, Any]:
    censored: Counter[int] = Counter()
    for first_day, n in group.open.items():
        censored[max(0, today.toordinal() - first_day)] += n
    curve = kaplan_meier_counts(group.complete, censored)
    fields: dict[str, Any] = {
        "cases": curve.n,
        "complete": curve.events,
        "incomplete": curve.censored,
        "share_incomplete": r.rate(curve.censored, curve.n),
        "median_days": _days(curve.quantile(0.5)),
        "p90_days": _days(curve.quantile(0.9)),
    }
    for i, names in enumerate(rules.rehab_health_information):
        fields[f"missing_{_slug(names)}"] = group.missing[i]
    return fields


def _rows(
    rules: r.TrackerRules,
    by: RehabBy,
    found: dict[tuple[str | None, str], tuple[_Group, bool]],
    today: dt.date,
    series: bool,
) -> list[dict[str, Any]]:
    out_rows = []
    for (period, group), (counts, shown) in sorted(
        found.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
    ):
        out: dict[str, Any] = {"period_start": period} if series else {}
        out |= {"group": group, "label": label(by, group), "suppressed": not shown}
        fields = _fields(rules, counts, today)
        out |= fields if shown else dict.fromkeys(fields)
        out_rows.append(out)
    return out_rows


def _days(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _slug(types: Sequence[str]) -> str:
    """`LÆ 265` → `lae265`; several types joined by `_or_`."""
    return "_or_".join(t.lower().replace("æ", "ae").replace(" ", "") for t in types)


# --- from the rollup --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _start_of(kind: r.ReportPeriod, start: dt.date) -> str:
    """The start (ISO) of the period of `kind` a stored week or month falls in."""
    return r.period_start(start, kind).isoformat()


async def rehabilitation(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: RehabBy,
    *,
    series: bool,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """The wait per group (and period of the first request), read from the rollup."""
    t = tracker_rehab.c
    lo, hi = cube_range(f)
    conds: list[Any] = []
    if lo is not None:
        conds.append(t.period_start >= lo)
    if hi is not None:
        conds.append(t.period_start <= hi)
    weight_kinds = ["week"] if f.period == "week" else ["month", "quarter", "year"]
    weights: dict[disclosure.Coord, int] = {}
    for kind, start, grain, place, citizens in await conn.execute(
        sa.select(t.period_kind, t.period_start, t.grain, t.place, t.n).where(
            t.state == rh.CITIZENS, t.period_kind.in_(weight_kinds), t.n > 0, *conds
        )
    ):
        weights[(kind, start.isoformat(), grain, place, disclosure.ALL)] = int(citizens)
    # the cases of the answer's own grain in the periods of its rows (weeks, or months for
    # every coarser period), each into its cell of the kind asked
    asked: r.ReportPeriod = f.period
    stored: r.PeriodKind = "week" if asked == "week" else "month"
    own = [t.period_kind == stored, t.grain == _own(by, f), t.state != rh.CITIZENS, t.n != 0]
    if f.date_from is not None:
        own.append(t.period_start >= r.period_start(f.date_from, asked))
    if hi is not None:
        own.append(t.period_start <= hi)
    cells: dict[disclosure.Coord, _Group] = {}
    for start, grain, place, state, day, n in await conn.execute(
        sa.select(t.period_start, t.grain, t.place, t.state, t.day, t.n).where(*own)
    ):
        coord: disclosure.Coord = (asked, _start_of(asked, start), grain, place, disclosure.ALL)
        group = cells.get(coord)
        if group is None:
            group = cells[coord] = _Group()
        if state == rh.OPEN:
            group.open[start.toordinal() + day] += n
        elif state == rh.COMPLETE:
            group.complete[day] += n
        else:
            group.missing[int(state.removeprefix(rh.MISSING))] += n
    region_of = region_of_municipalities()
    hidden = disclosure.decide_cube(weights, region_of, rules.min_cell_citizens)
    found: dict[tuple[str | None, str], tuple[_Group, int, bool]] = {}
    for coord, citizens in weights.items():
        key = row_key(coord, f, by, region_of, series=series)
        if key is None:
            continue
        merged, most, shown = found.get(key, (_Group(), 0, True))
        if coord in cells:
            merged.add(cells[coord])
        found[key] = (merged, max(most, citizens), shown and coord not in hidden)
    # shown: every cell of the row is, so each counts the threshold (the row's citizens are
    # at least its largest cell's)
    decided = {
        key: (group, shown and r.publishable(most, rules))
        for key, (group, most, shown) in found.items()
    }
    return _rows(rules, by, decided, rules.local_date(now), series)


# --- from the rows (the reference) ------------------------------------------------------------


async def rehabilitation_rows(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: RehabBy,
    *,
    series: bool,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """What :func:`rehabilitation` answers, every case of the cube decided from all its
    requests (the citizens with one made in the cube's range, read whole), its citizens
    counted exactly. Its cost grows with the requests of the period."""
    tc = tracker_conversations.c
    types = sorted({t for needed in rules.rehab_health_information for t in needed})
    of_rehab = (tc.case_kind == rh.CASE_KIND, tc.attest_type.in_(types))
    lo, hi = cube_range(f)
    # a case counts in the week (weekly cube) or year of its first request's day: read the
    # citizens with a request made from a day before the cube to the end of its last week
    in_range: list[Any] = [tc.submitted_at.is_not(None), *of_rehab]
    if lo is not None:
        since = dt.datetime.combine(lo - dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        in_range.append(tc.submitted_at >= since)
    if hi is not None:
        until = dt.datetime.combine(hi + dt.timedelta(days=9), dt.time(), tzinfo=dt.UTC)
        in_range.append(tc.submitted_at < until)
    stmt = sa.select(
        tc.conversation_id, tc.case_ref, tc.jobcenter_org, tc.first_day_of_absence,
        tc.attest_type, tc.submitted_at, tc.replied_at, tc.region_code, tc.municipality,
    ).where(
        tc.case_ref.in_(sa.select(tc.case_ref).where(*in_range)),
        tc.submitted_at.is_not(None),
        *of_rehab,
    )  # fmt: skip
    cases: dict[rh.CaseKey, list[Any]] = defaultdict(list)
    for rec in await conn.execute(stmt):
        cases[(rec.case_ref, rec.jobcenter_org, rec.first_day_of_absence)].append(rec)
    outer: r.ReportPeriod = "week" if f.period == "week" else "year"
    today = rules.local_date(now)
    items: list[Item] = []
    for (ref, _, _), found in cases.items():
        wait, first_day, first = decide_rehab(rules, found, today)
        start = r.period_start(first_day, outer)
        if (lo is not None and start < lo) or (hi is not None and start > hi):
            continue  # a case of another period: its first request is outside the cube
        items.append(
            Item(wait, first_day, str(first.region_code), str(first.municipality), None, ref)
        )
    decided: dict[tuple[str | None, str], tuple[_Group, bool]] = {}
    for row in publish(items, f, by, rules, series=series):
        group = _Group()
        for wait in row.records:
            if wait.complete:
                group.complete[wait.days] += 1
            else:  # censored at today − its first day: kept as that day
                group.open[today.toordinal() - wait.days] += 1
                group.missing.update(i for i, m in enumerate(wait.missing) if m)
        decided[row.key] = (group, row.shown)
    return _rows(rules, by, decided, today, series)


@dataclass(frozen=True, slots=True)
class _Wait:
    days: int  # first request → complete, or → today when not complete (censored)
    complete: bool
    missing: tuple[int, ...]  # per required group: 1 if it has no attest yet


def decide_rehab(
    rules: r.TrackerRules, requests: Sequence[Any], today: dt.date
) -> tuple[_Wait, dt.date, Any]:
    """A case's wait from all its requests (made): in calendar days (Danish time) from its
    first request to the attest that completes it (each group's first), or to today while a
    group has none; the day of its first request and that request, whose place the case
    counts in."""
    first = min(requests, key=lambda x: (aware(x.submitted_at), x.conversation_id))
    first_day = rules.local_date(aware(first.submitted_at))
    answered: list[dt.datetime | None] = []
    for needed in rules.rehab_health_information:
        times = [aware(x.replied_at) for x in requests if x.attest_type in needed and x.replied_at]
        answered.append(min(times) if times else None)
    done = [at for at in answered if at is not None]
    complete = len(done) == len(answered)
    end = rules.local_date(max(done)) if complete else today
    missing = tuple(int(at is None) for at in answered)
    return _Wait(max(0, (end - first_day).days), complete, missing), first_day, first
