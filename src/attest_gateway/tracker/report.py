"""Read the rollups for the ministry: distributions, deadlines, contact coverage.

Every figure comes from the rollup tables (`tracker_counts`, `tracker_durations`), never from
a scan of conversations, so a report costs the same at ten thousand or ten million
conversations: it reads at most (periods × cells × buckets) rows.

Grouping: each grouping reads its own grain (`national`, `region`, `municipality`,
`receiver`; per attest type: the national grain), and the cells kept for all attest types
together (`*`) unless one type is asked for, so a figure is read from as few cells as
possible.

Disclosure control: a group is shown only if it certainly counts at least
`min_cell_citizens` citizens. The rollups keep, per stored cell, the exact number of distinct
citizens; a group made of several stored cells counts at least as many citizens as the
largest of them, so that maximum is the lower bound used. (It can suppress a group that
would in fact pass; it never shows one that would not.) A duration group also needs at least
`min_cell_citizens` measurements. Suppressed groups keep their key, with `suppressed: true`
and no figures.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.core.errors import ErrorCode, InvalidInput
from attest_gateway.core.identifiers import municipalities
from attest_gateway.infra.db.tables import tracker_cells, tracker_counts, tracker_durations
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.consumer import CONTACT_ATTEST

By = Literal["national", "region", "municipality", "receiver", "attest_type"]
BY_VALUES: tuple[By, ...] = ("national", "region", "municipality", "receiver", "attest_type")
REGION_NAMES = {
    "1081": "Region Nordjylland",
    "1082": "Region Midtjylland",
    "1083": "Region Syddanmark",
    "1084": "Region Hovedstaden",
    "1085": "Region Sjælland",
}


@dataclass(frozen=True, slots=True)
class Filters:
    period: r.PeriodKind = "month"
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    attest_type: str | None = None
    region: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "from": self.date_from.isoformat() if self.date_from else None,
            "to": self.date_to.isoformat() if self.date_to else None,
            "attest_type": self.attest_type,
            "region": self.region,
        }


def _grain(by: By, f: Filters) -> str:
    if by in ("national", "attest_type"):
        return "region" if f.region is not None else "national"
    return by


def _where(
    table: sa.Table, f: Filters, by: By, *, contact: bool, types_summed: bool = False
) -> list[Any]:
    """The cells a report reads (`table`: `tracker_cells`). `types_summed`: the rollup keeps
    no all-types (`*`) cells (duration histograms): all types are then the sum of every
    type's rows."""
    c = table.c
    grain = _grain(by, f)
    conds: list[Any] = [c.grain == grain, c.period_kind == f.period]
    if f.date_from is not None:
        conds.append(c.period_start >= r.period_start(f.date_from, f.period))
    if f.date_to is not None:
        conds.append(c.period_start <= f.date_to)
    if contact:
        conds.append(c.attest_type == CONTACT_ATTEST)
    elif f.attest_type is not None:
        conds.append(c.attest_type == f.attest_type)
    elif by == "attest_type" or types_summed:
        conds.append(c.attest_type.not_in([CONTACT_ATTEST, r.ALL_TYPES]))
    else:
        conds.append(c.attest_type == r.ALL_TYPES)
    if f.region is not None:
        if grain == "region":
            conds.append(c.dim == f.region)
        elif grain == "municipality":
            codes = [m.kommunekode for m in municipalities().values() if m.region_code == f.region]
            conds.append(c.dim.in_(codes))
    return conds


def _group_cols(table: sa.Table, by: By, series: bool) -> list[Any]:
    cols: list[Any] = []
    if series:
        cols.append(table.c.period_start)
    if by == "attest_type":
        cols.append(table.c.attest_type)
    elif by != "national":
        cols.append(table.c.dim)
    return cols


def _key(row: Any, by: By, series: bool) -> tuple[str | None, str]:
    period = row.period_start.isoformat() if series else None
    if by == "national":
        return period, "DK"
    if by == "attest_type":
        return period, str(row.attest_type)
    return period, str(row.dim)


def label(by: By, key: str) -> str:
    if by == "region":
        return REGION_NAMES.get(key, key)
    if by == "municipality":
        m = municipalities().get(key)
        return m.name if m is not None else key
    if by == "national":
        return "Danmark"
    return key


def _group_fields(by: By, key: tuple[str | None, str]) -> dict[str, Any]:
    period, group = key
    out: dict[str, Any] = {}
    if period is not None:
        out["period_start"] = period
    out["group"] = group
    out["label"] = label(by, group)
    return out


async def _counts(
    conn: AsyncConnection, f: Filters, by: By, *, series: bool, contact: bool
) -> dict[tuple[str | None, str], dict[str, int]]:
    t, cells = tracker_counts, tracker_cells
    cols = _group_cols(cells, by, series)
    sums = [sa.func.sum(t.c[name]).label(name) for name in _COUNTERS]
    stmt = (
        sa.select(*cols, *sums, sa.func.max(t.c.citizens).label("citizens_lb"))
        .select_from(cells.join(t, t.c.cell_id == cells.c.id))
        .where(*_where(cells, f, by, contact=contact))
        .group_by(*cols)
    )
    out: dict[tuple[str | None, str], dict[str, int]] = {}
    for row in await conn.execute(stmt):
        values = {name: int(getattr(row, name) or 0) for name in _COUNTERS}
        values["citizens_lb"] = int(row.citizens_lb or 0)
        out[_key(row, by, series)] = values
    return out


_COUNTERS = (
    "requests",
    "late_requests",
    "replied",
    "decided",
    "overdue",
    "reminders",
    "contact_decided",
    "contact_covered",
)


async def _histograms(
    conn: AsyncConnection, metric: str, f: Filters, by: By, *, series: bool
) -> dict[tuple[str | None, str], dict[int, int]]:
    if f.period == "week" and _grain(by, f) in r.WEEKLY_HISTOGRAMS_NOT_KEPT:
        raise InvalidInput(
            ErrorCode.INVALID_PERIOD,
            "weekly distributions are kept nationally and per region; use period=month",
        )
    t, cells = tracker_durations, tracker_cells
    cols = _group_cols(cells, by, series)
    stmt = (
        sa.select(*cols, t.c.bucket, sa.func.sum(t.c.n).label("n"))
        .select_from(cells.join(t, t.c.cell_id == cells.c.id))
        .where(t.c.metric == metric, *_where(cells, f, by, contact=False, types_summed=True))
        .group_by(*cols, t.c.bucket)
    )
    out: dict[tuple[str | None, str], dict[int, int]] = defaultdict(dict)
    for row in await conn.execute(stmt):
        out[_key(row, by, series)][int(row.bucket)] = int(row.n)
    return dict(out)


def _sorted_keys(keys: Any) -> list[tuple[str | None, str]]:
    return sorted(keys, key=lambda k: (k[0] or "", k[1]))


async def durations(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    metric: str,
    f: Filters,
    by: By,
    *,
    series: bool,
    counts: dict[tuple[str | None, str], dict[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """count, median, p90, p99 (seconds) of one duration per group."""
    hists = await _histograms(conn, metric, f, by, series=series)
    if counts is None:
        counts = await _counts(conn, f, by, series=series, contact=False)
    rows = []
    for key in _sorted_keys(hists):
        h = hists[key]
        citizens = counts.get(key, {}).get("citizens_lb", 0)
        summary = r.summarise(h)
        ok = (
            r.publishable(citizens, rules) and int(summary["count"] or 0) >= rules.min_cell_citizens
        )
        row = _group_fields(by, key) | {"metric": metric, "suppressed": not ok}
        if ok:
            row |= {k: summary[k] for k in ("count", "median", "p90", "p99")}
        else:
            row |= {"count": None, "median": None, "p90": None, "p99": None}
        rows.append(row)
    return rows


async def deadlines(
    conn: AsyncConnection, rules: r.TrackerRules, f: Filters, by: By, *, series: bool
) -> list[dict[str, Any]]:
    """Requests, late-request rate, overdue count and rate, reminders per group."""
    counts = await _counts(conn, f, by, series=series, contact=False)
    rows = []
    for key in _sorted_keys(counts):
        c = counts[key]
        ok = r.publishable(c["citizens_lb"], rules)
        row = _group_fields(by, key) | {"suppressed": not ok}
        fields = {
            "requests": c["requests"],
            "late_requests": c["late_requests"],
            "late_request_rate": r.rate(c["late_requests"], c["requests"]),
            "replied": c["replied"],
            "open": c["requests"] - c["replied"],
            "decided": c["decided"],
            "overdue": c["overdue"],
            "overdue_rate": r.rate(c["overdue"], c["decided"]),
            "reminders": c["reminders"],
        }
        row |= fields if ok else dict.fromkeys(fields)
        rows.append(row)
    return rows


async def contacts(
    conn: AsyncConnection, rules: r.TrackerRules, f: Filters, by: By, *, series: bool
) -> list[dict[str, Any]]:
    """Contact coverage per group: settled episodes, those with contact in the window."""
    if by in ("receiver", "attest_type"):
        by = "national"
    counts = await _counts(conn, f, by, series=series, contact=True)
    rows = []
    for key in _sorted_keys(counts):
        c = counts[key]
        ok = r.publishable(c["citizens_lb"], rules)
        row = _group_fields(by, key) | {"suppressed": not ok, "baseline": rules.contact_baseline}
        fields = {
            "settled": c["contact_decided"],
            "with_contact": c["contact_covered"],
            "without_contact": c["contact_decided"] - c["contact_covered"],
            "coverage": r.rate(c["contact_covered"], c["contact_decided"]),
        }
        row |= fields if ok else dict.fromkeys(fields)
        rows.append(row)
    return rows


async def report(conn: AsyncConnection, rules: r.TrackerRules, f: Filters) -> dict[str, Any]:
    """The ministry's overview: the main aggregates in one answer (what the dashboard shows)."""
    headline = "request_to_attest"
    national = await _counts(conn, f, "national", series=False, contact=False)
    return {
        "filters": f.describe(),
        "min_cell_citizens": rules.min_cell_citizens,
        "contact_baseline": rules.contact_baseline,
        "unit": "seconds",
        "national": {
            "durations": [
                row
                for metric in r.METRICS
                for row in await durations(
                    conn, rules, metric.name, f, "national", series=False, counts=national
                )
            ],
            "deadlines": await deadlines(conn, rules, f, "national", series=False),
            "contacts": await contacts(conn, rules, f, "national", series=False),
        },
        "series": {
            "durations": await durations(conn, rules, headline, f, "national", series=True),
            "deadlines": await deadlines(conn, rules, f, "national", series=True),
            "contacts": await contacts(conn, rules, f, "national", series=True),
        },
        "by_region": {
            "durations": await durations(conn, rules, headline, f, "region", series=False),
            "deadlines": await deadlines(conn, rules, f, "region", series=False),
            "contacts": await contacts(conn, rules, f, "region", series=False),
        },
        "by_attest_type": {
            "durations": await durations(conn, rules, headline, f, "attest_type", series=False),
            "deadlines": await deadlines(conn, rules, f, "attest_type", series=False),
        },
        "by_municipality": {
            "deadlines": await deadlines(conn, rules, f, "municipality", series=False),
            "contacts": await contacts(conn, rules, f, "municipality", series=False),
        },
    }


SECONDS_COLUMNS = frozenset({"median", "p90", "p99", "answered_only_median"})
SECONDS_PER_DAY = 86400


def to_csv_rows(
    rows: Sequence[dict[str, Any]], *, seconds_as_days: bool = False
) -> tuple[list[str], list[list[Any]]]:
    """The rows as a header and lines. `seconds_as_days`: the durations (seconds in JSON) are
    written in days with one decimal, under a header that says so (`median_days`)."""
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    in_days = {c for c in columns if seconds_as_days and c in SECONDS_COLUMNS}

    def cell(column: str, value: Any) -> Any:
        if column in in_days and value is not None:
            return f"{value / SECONDS_PER_DAY:.1f}"
        return value

    header = [f"{c}_days" if c in in_days else c for c in columns]
    return header, [[cell(c, row.get(c)) for c in columns] for row in rows]
