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
import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.core.errors import ErrorCode, InvalidInput
from attest_gateway.core.identifiers import municipalities
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    tracker_cells,
    tracker_counts,
    tracker_decision_cells,
    tracker_decision_histograms,
    tracker_decisions,
    tracker_durations,
)
from attest_gateway.tracker import disclosure
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
    period: r.ReportPeriod = "month"
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    attest_type: str | None = None
    region: str | None = None
    municipality: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "from": self.date_from.isoformat() if self.date_from else None,
            "to": self.date_to.isoformat() if self.date_to else None,
            "attest_type": self.attest_type,
            "region": self.region,
            "municipality": self.municipality,
        }


def region_of_municipalities() -> dict[str, str]:
    return {m.kommunekode: m.region_code for m in municipalities().values()}


def place(f: Filters) -> str:
    """The group key of the whole of what the filters select: a municipality, a region or
    the country ("DK")."""
    return f.municipality or f.region or "DK"


def in_place(f: Filters, municipality: str | None, region: str | None) -> bool:
    """Whether a record of `municipality` and `region` lies in what the filters select."""
    if f.municipality is not None:
        return municipality == f.municipality
    return f.region is None or region == f.region


# --- reading the rollup cells -----------------------------------------------------------------

Coord = disclosure.Coord


def _levels(by: By) -> tuple[str, ...]:
    """The grains read: always the whole geography (and the receiving units for them), so
    that a cell is decided alike whatever is asked (the rows are picked afterwards)."""
    if by == "receiver":
        return ("national", "receiver")
    return ("national", "region", "municipality")


def _own(by: By, f: Filters) -> str:
    """The grain of the answer's rows."""
    if by in ("region", "municipality", "receiver"):
        return by
    return "municipality" if f.municipality else "region" if f.region else "national"


def _types(*, contact: bool) -> list[str] | None:
    """The attest types read (None: every type and `*`, decided together)."""
    return [CONTACT_ATTEST] if contact else None


def _stored_kind(f: Filters) -> r.PeriodKind:
    return "week" if f.period == "week" else "month"


def cube_range(f: Filters) -> tuple[dt.date | None, dt.date | None]:
    """The days whose cells decide the suppression: the range asked, widened to whole years
    (so that a quarter's or a year's cell is whole, its months are decided with it, and a
    cell is decided alike whatever the range asked). A week belongs to the year it starts in:
    a weekly cube runs from the first Monday of the first year to the last day of the last."""
    lo, hi = f.date_from, f.date_to
    if f.period == "week":
        first = first_week(r.period_start(lo, "week").year) if lo else None
        return first, (dt.date(r.period_start(hi, "week").year, 12, 31) if hi else None)
    return (dt.date(lo.year, 1, 1) if lo else None), (dt.date(hi.year, 12, 31) if hi else None)


def rows_range(f: Filters) -> tuple[dt.date | None, dt.date | None]:
    """The days whose stored cells make the answer's rows (the cube's cells are decided over
    more, `cube_range`): for weeks the weeks asked; for months, quarters and years as the
    cube (a quarter's or a year's row is its months')."""
    if f.period == "week":
        return (r.period_start(f.date_from, "week") if f.date_from else None), f.date_to
    return cube_range(f)


def first_week(year: int) -> dt.date:
    """The start of the first week that starts in `year` (its first Monday)."""
    jan1 = dt.date(year, 1, 1)
    return jan1 + dt.timedelta(days=-jan1.weekday() % 7)


@functools.lru_cache(maxsize=4096)
def in_range(f: Filters, period: str) -> bool:
    """Whether a period (its start, ISO) of the kind asked is in the range asked."""
    start = dt.date.fromisoformat(period)
    if f.date_from is not None and start < r.period_start(f.date_from, f.period):
        return False
    return f.date_to is None or start <= f.date_to


def _where(
    table: sa.Table,
    f: Filters,
    grains: Sequence[str],
    types: list[str] | None,
    days: tuple[dt.date | None, dt.date | None],
) -> list[Any]:
    """The cells read (`table`: `tracker_cells`): every place of the grains, so that a cell is
    suppressed alike whatever the filters (the rows are picked afterwards)."""
    c = table.c
    conds: list[Any] = [c.grain.in_(list(grains)), c.period_kind == _stored_kind(f)]
    lo, hi = days
    if lo is not None:
        conds.append(c.period_start >= r.period_start(lo, _stored_kind(f)))
    if hi is not None:
        conds.append(c.period_start <= hi)
    if types is not None:
        conds.append(c.attest_type.in_(types))
    else:
        conds.append(c.attest_type != CONTACT_ATTEST)
    return conds


def _coords(f: Filters, row: Any) -> list[Coord]:
    """The cube's cells a stored cell adds into: a week its own; a month itself, its quarter
    and its year."""
    where = (str(row.grain), str(row.dim), str(row.attest_type))
    if f.period == "week":
        return [("week", row.period_start.isoformat(), *where)]
    return [
        (kind, start, *where) for kind, start in disclosure.months_up("month", row.period_start)
    ]


async def _cube(
    conn: AsyncConnection, f: Filters, by: By, *, contact: bool
) -> dict[Coord, dict[str, int]]:
    """The counters per cell of the cube, months summed into quarters and years;
    `citizens_lb` is the most citizens of one stored cell (a lower bound of the distinct
    citizens)."""
    return await cube_of(conn, f, _levels(by), _types(contact=contact))


async def cube_of(
    conn: AsyncConnection, f: Filters, grains: Sequence[str], types: list[str] | None
) -> dict[Coord, dict[str, int]]:
    """`_cube` over the cells of `grains` and `types` (None: every type but the contact one)."""
    t, cells = tracker_counts, tracker_cells
    cols = [cells.c.period_start, cells.c.grain, cells.c.dim, cells.c.attest_type]
    sums = [sa.func.sum(t.c[name]).label(name) for name in COUNTERS]
    where = _where(cells, f, grains, types, cube_range(f))
    stmt = (
        sa.select(*cols, *sums, sa.func.max(t.c.citizens).label("citizens_lb"))
        .select_from(cells.join(t, t.c.cell_id == cells.c.id))
        .where(*where)
        .group_by(*cols)
    )
    out: dict[Coord, dict[str, int]] = {}
    for row in await conn.execute(stmt):
        for coord in _coords(f, row):
            values = out.get(coord)
            if values is None:
                values = out[coord] = dict.fromkeys((*COUNTERS, "citizens_lb"), 0)
            for name in COUNTERS:
                values[name] += int(getattr(row, name) or 0)
            values["citizens_lb"] = max(values["citizens_lb"], int(row.citizens_lb or 0))
    return out


COUNTERS = (
    "requests",
    "late_requests",
    "replied",
    "decided",
    "overdue",
    "reminders",
    "contact_decided",
    "contact_covered",
)


def _wanted(by: By, f: Filters, coord: Coord, *, contact: bool, own: str) -> str | None:
    """The group of a cube cell that is a row of the answer, or None."""
    kind, period, grain, dim, attest_type = coord
    if kind != f.period or grain != own or not in_range(f, period):
        return None
    if by == "attest_type" and f.attest_type is None and not contact:
        if attest_type == r.ALL_TYPES:
            return None
    elif attest_type != (CONTACT_ATTEST if contact else (f.attest_type or r.ALL_TYPES)):
        return None
    if grain == "municipality":
        region = municipalities().get(dim)
        if not in_place(f, dim, region.region_code if region else None):
            return None
    if grain == "region" and f.region is not None and dim != f.region:
        return None
    return attest_type if by == "attest_type" else disclosure.place_of(coord)


@dataclass(frozen=True, slots=True)
class Table:
    """A grouping's rows: counters per (period, group) key and which are shown (primary and
    secondary suppression over the whole cube); with `series` false one row per group over
    the range, shown only if all its periods are."""

    counts: dict[tuple[str | None, str], dict[str, int]]
    shown: set[tuple[str | None, str]]


Decided = tuple[dict[Coord, dict[str, int]], set[Coord]]


@dataclass
class Memo:
    """What one answer has read and decided: the cubes (the overview asks for several
    groupings of the same cube), and when the published decisions it used were made."""

    decided: dict[tuple[Any, ...], Decided] = field(default_factory=dict)
    #: the oldest published decision used (None: every cube was decided when asked)
    decided_at: dt.datetime | None = None
    #: whether some cube was decided when asked (no published decision of it)
    at_request: bool = False
    #: whether a published decision may be read (False: every cube decided when asked)
    use_published: bool = True
    #: the published decision of each cube looked up (None: not published)
    names: dict[tuple[Any, ...], tuple[list[str], dt.datetime] | None] = field(default_factory=dict)

    def published(self, at: dt.datetime) -> None:
        if self.decided_at is None or at < self.decided_at:
            self.decided_at = at

    def describe(self) -> dict[str, Any]:
        """`decisions_as_of`: when the suppression shown was decided or last found to stand
        (the oldest of the decisions read; None: decided when asked)."""
        at = None if self.decided_at is None else self.decided_at.isoformat()
        return {"decisions_as_of": at}


async def _decided(
    conn: AsyncConnection,
    f: Filters,
    by: By,
    rules: r.TrackerRules,
    *,
    contact: bool,
    memo: Memo | None,
) -> Decided:
    """The cube and its suppressed cells; read and decided once per answer (`memo`).

    When the cube's decision is published (tracker/decisions.py), the cells of the answer's
    period kind, grain and types are read from it, with their counters and suppression as
    they were when it was decided (`decisions_as_of`). Otherwise the whole cube is read and
    decided now."""
    memo = memo if memo is not None else Memo()
    key: tuple[Any, ...] = (contact, _levels(by))
    if key in memo.decided:
        return memo.decided[key]
    if key not in memo.names:
        memo.names[key] = (
            await published_decision(conn, f, by, rules, contact=contact)
            if memo.use_published
            else None
        )
    published = memo.names[key]
    if published is not None:
        names, at = published
        grain, types = _selection(by, f, contact=contact)
        selected = (*key, grain, tuple(types or ()))
        if selected not in memo.decided:
            memo.decided[selected] = await _snapshot(conn, names, f.period, grain, types)
        memo.published(at)
        return memo.decided[selected]
    cube = await _cube(conn, f, by, contact=contact)
    hidden = disclosure.decide_cube(
        {c: v["citizens_lb"] for c, v in cube.items()},
        region_of_municipalities(),
        rules.min_cell_citizens,
    )
    memo.decided[key] = (cube, hidden)
    memo.at_request = True
    return cube, hidden


# --- published decisions (tracker/decisions.py publishes them) --------------------------------


def _selection(by: By, f: Filters, *, contact: bool) -> tuple[str, list[str] | None]:
    """The grain and the types of the cells an answer's rows are made of (None: every type
    but the contact one, as `_where` reads them)."""
    own = _own(by, f)
    if contact:
        return own, [CONTACT_ATTEST]
    if by == "attest_type" and f.attest_type is None:
        return own, None
    return own, [f.attest_type or r.ALL_TYPES]


def cube_name(
    levels: Sequence[str],
    *,
    contact: bool,
    year: int,
    threshold: int,
    kind: r.PeriodKind = "month",
) -> str:
    """The key of a published decision: the grains, the figure (contact or the requests),
    the stored period kind (weeks, or months with their quarters and years), the year and the
    threshold of the cube decided. A year is decided alike in every cube that holds it
    (`disclosure.decide_cube`), so a run of years reads its years' decisions."""
    figure = "contact" if contact else "requests"
    return f"{figure}:{'+'.join(levels)}:{kind}:{year}:{threshold}"


#: the grains whose weekly cubes are published
PUBLISHED_WEEKS: Final = frozenset(
    {("national", "region", "municipality"), ("national", "receiver")}
)


async def data_years(
    conn: AsyncConnection, grains: Sequence[str], kind: r.PeriodKind = "month"
) -> tuple[int, int] | None:
    """The first and last year with a cell of `kind` of `grains` (None: none); a week's
    year is the year it starts in."""
    c = tracker_cells.c
    first: dt.date | None = None
    last: dt.date | None = None
    for grain in grains:  # one grain a statement: each is two ends of the cells' key index
        lo, hi = (
            await conn.execute(
                sa.select(sa.func.min(c.period_start), sa.func.max(c.period_start)).where(
                    c.grain == grain, c.period_kind == kind
                )
            )
        ).one()
        if lo is not None:
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
    return None if first is None or last is None else (first.year, last.year)


def years_asked(f: Filters, years: tuple[int, int] | None) -> tuple[int, int] | None:
    """The whole years of the cube an answer decides (`cube_range`) within the years that
    have cells (`years`; the cells of other years are none, so the cube is the same), or
    None when none is left."""
    if years is None:
        return None
    lo, hi = cube_range(f)
    first = max(years[0], lo.year) if lo is not None else years[0]
    last = min(years[1], hi.year) if hi is not None else years[1]
    return None if first > last else (first, last)


def year_filters(year: int, kind: r.PeriodKind, attest_type: str | None = None) -> Filters:
    """The filters of one year's cube: its months (from 1 January) or the weeks that start
    in it (from its first Monday), to 31 December."""
    start = first_week(year) if kind == "week" else dt.date(year, 1, 1)
    return Filters(kind, start, dt.date(year, 12, 31), attest_type=attest_type)


async def decided_as_of(
    conn: AsyncConnection, names: list[str]
) -> tuple[list[str], dt.datetime] | None:
    """The published decisions `names` and when the oldest of them was made (or last found
    to stand), or None when one of them is not published."""
    d = tracker_decisions.c
    found = list((await conn.execute(sa.select(d.decided_at).where(d.cube.in_(names)))).scalars())
    return (names, aware(min(found))) if found and len(found) == len(names) else None


async def published_decision(
    conn: AsyncConnection, f: Filters, by: By, rules: r.TrackerRules, *, contact: bool
) -> tuple[list[str], dt.datetime] | None:
    """The keys of the published decisions of the years of the cube an answer decides and
    when the oldest of them was made, or None when one is not published. The cube's years
    are those asked (`cube_range`) within the years that have cells (the cells of other
    years are none, so the cube is the same). Weeks are published for the geography's cubes
    only (`PUBLISHED_WEEKS`)."""
    if not contact and f.attest_type == CONTACT_ATTEST:
        return None
    levels = _levels(by)
    kind = _stored_kind(f)
    if kind == "week" and tuple(levels) not in PUBLISHED_WEEKS:
        return None
    asked = years_asked(f, await data_years(conn, levels, kind))
    if asked is None:
        return None
    threshold = rules.min_cell_citizens
    names = [
        cube_name(levels, contact=contact, year=year, threshold=threshold, kind=kind)
        for year in range(asked[0], asked[1] + 1)
    ]
    return await decided_as_of(conn, names)


async def _snapshot(
    conn: AsyncConnection, names: list[str], kind: str, grain: str, types: list[str] | None
) -> Decided:
    """The cells of `kind`, `grain` and `types` of the published decisions `names`: their
    counters and which are suppressed, as decided."""
    d = tracker_decision_cells.c
    stmt = sa.select(d.attest_type, d.cells).where(
        d.cube.in_(names), d.period_kind == kind, d.grain == grain
    )
    if types is not None:
        stmt = stmt.where(d.attest_type.in_(types))
    cube: dict[Coord, dict[str, int]] = {}
    hidden: set[Coord] = set()
    fields = ("citizens_lb", *COUNTERS)
    for attest_type, cells in await conn.execute(stmt):
        for period, dim, shown, *values in orjson.loads(cells):
            coord = (kind, period, grain, dim, attest_type)
            cube[coord] = dict(zip(fields, values, strict=True))
            if not shown:
                hidden.add(coord)
    return cube, hidden


def snapshot_rows(
    cube: dict[Coord, dict[str, int]], hidden: set[Coord]
) -> dict[tuple[str, str, str], list[list[Any]]]:
    """A decided cube as `_snapshot` reads it: per (period kind, grain, type) the cells, each
    [period start, place, shown (1 or 0), citizens_lb, the counters …], sorted."""
    out: dict[tuple[str, str, str], list[list[Any]]] = defaultdict(list)
    for c in sorted(cube):
        v = cube[c]
        row = [c[1], c[3], 0 if c in hidden else 1, v["citizens_lb"], *(v[n] for n in COUNTERS)]
        out[(c[0], c[2], c[4])].append(row)
    return out


def _table(
    cube: dict[Coord, dict[str, int]],
    hidden: set[Coord],
    by: By,
    f: Filters,
    rules: r.TrackerRules,
    *,
    series: bool,
    contact: bool,
) -> Table:
    own = _own(by, f)
    counts: dict[tuple[str | None, str], dict[str, int]] = {}
    shown: set[tuple[str | None, str]] = set()
    any_hidden: set[tuple[str | None, str]] = set()
    for coord, values in cube.items():
        group = _wanted(by, f, coord, contact=contact, own=own)
        if group is None:
            continue
        key = (coord[1] if series else None, group)
        total = counts.setdefault(key, dict.fromkeys((*COUNTERS, "citizens_lb"), 0))
        for name in COUNTERS:
            total[name] += values[name]
        total["citizens_lb"] = max(total["citizens_lb"], values["citizens_lb"])
        if coord in hidden:
            any_hidden.add(key)
    for key, c in counts.items():
        if key not in any_hidden and r.publishable(c["citizens_lb"], rules):
            shown.add(key)
    return Table(counts, shown)


def label(by: str, key: str) -> str:
    if by in ("national", "region", "municipality"):
        if key == "DK":
            return "Danmark"
        if key in REGION_NAMES:
            return REGION_NAMES[key]
        m = municipalities().get(key)
        return m.name if m is not None else key
    return key


def _group_fields(by: By, key: tuple[str | None, str]) -> dict[str, Any]:
    period, group = key
    out: dict[str, Any] = {}
    if period is not None:
        out["period_start"] = period
    out["group"] = group
    out["label"] = label(by, group)
    return out


def _weekly_kept(f: Filters, own: str) -> None:
    if f.period == "week" and own in r.WEEKLY_HISTOGRAMS_NOT_KEPT:
        raise InvalidInput(
            ErrorCode.INVALID_PERIOD,
            "weekly distributions are kept nationally and per region; use period=month",
        )


async def _histograms(
    conn: AsyncConnection, metric: str, f: Filters, by: By, *, series: bool
) -> dict[tuple[str | None, str], dict[int, int]]:
    own = _own(by, f)
    _weekly_kept(f, own)
    t, cells = tracker_durations, tracker_cells
    # the histograms are per type: summed in SQL into the all-types one unless by type
    summed = by != "attest_type" and f.attest_type is None
    key = [cells.c.period_start, cells.c.grain, cells.c.dim]
    if not summed:
        key.append(cells.c.attest_type)
    of_type = sa.literal(r.ALL_TYPES) if summed else cells.c.attest_type
    types = [f.attest_type] if f.attest_type is not None else None
    days = rows_range(f)  # whole quarters and years, as the counts'
    stmt = (
        sa.select(*key[:3], of_type.label("attest_type"), t.c.bucket, sa.func.sum(t.c.n).label("n"))
        .select_from(cells.join(t, t.c.cell_id == cells.c.id))
        .where(
            t.c.metric == metric,
            *_where(cells, f, [own], types, days),
            cells.c.attest_type != r.ALL_TYPES,
        )
        .group_by(*key, t.c.bucket)
    )
    out: dict[tuple[str | None, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for row in await conn.execute(stmt):
        coord = _coords(f, row)[
            0 if f.period in ("week", "month") else 1 if f.period == "quarter" else 2
        ]
        group = _wanted(by, f, coord, contact=False, own=own)
        if group is None:
            continue
        out[(coord[1] if series else None, group)][int(row.bucket)] += int(row.n)
    return {k: dict(v) for k, v in out.items()}


#: the duration distributions published per grain (tracker/decisions.py): `all`, every
#: type's cells summed (an answer not by or of a type); `each`, per type in one row a year;
#: `type`, a row a year per type (the many units' grains: an answer of one type reads its own)
PUBLISHED_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "receiver": ("all", "type"),
    "municipality": ("all", "type"),
    "region": ("all", "each"),
    "national": ("all", "each"),
}
#: the `types` of rows that are not one type's
SUMMED_OR_ALL = ("all", "each")


async def _published_histograms(
    conn: AsyncConnection, metric: str, f: Filters, by: By, *, series: bool
) -> tuple[dict[tuple[str | None, str], dict[int, int]], dt.datetime] | None:
    """`_histograms` from the published distributions, and the oldest time they were made;
    None when they are not published for the answer's grain and types or some year asked."""
    own = _own(by, f)
    merged = by != "attest_type" and f.attest_type is None
    modes = PUBLISHED_HISTOGRAMS.get(own, ())
    mode = "all" if merged else "each" if "each" in modes else "type"
    if mode not in modes or f.period == "week":
        return None
    years = await data_years(conn, [own])
    if years is None:
        return None
    lo, hi = cube_range(f)
    first = max(years[0], lo.year) if lo is not None else years[0]
    last = min(years[1], hi.year) if hi is not None else years[1]
    h = tracker_decision_histograms.c
    where = [h.metric == metric, h.period_kind == f.period, h.grain == own,
             h.year >= first, h.year <= last]  # fmt: skip
    out: dict[tuple[str | None, str], dict[int, int]] = {}
    found: set[int] = set()
    oldest: dt.datetime | None = None
    if mode == "type":  # the years published, from their `all` rows (a type may have none)
        for year, at in await conn.execute(
            sa.select(h.year, h.decided_at).where(*where, h.types == "all")
        ):
            found.add(int(year))
            oldest = aware(at) if oldest is None else min(oldest, aware(at))
        wanted = (h.types == f.attest_type if f.attest_type is not None
                  else h.types.not_in(SUMMED_OR_ALL))  # fmt: skip
    else:
        wanted = h.types == mode
    for year, at, types, cells in await conn.execute(
        sa.select(h.year, h.decided_at, h.types, h.cells).where(*where, wanted)
    ):
        if mode != "type":
            found.add(int(year))
            oldest = aware(at) if oldest is None else min(oldest, aware(at))
        for cell in orjson.loads(cells):
            if merged:
                (period, dim, flat), attest_type = cell, r.ALL_TYPES
            elif mode == "type":
                (period, dim, flat), attest_type = cell, str(types)
            else:
                period, dim, attest_type, flat = cell
            coord = (f.period, period, own, dim, attest_type)
            group = _wanted(by, f, coord, contact=False, own=own)
            if group is None:
                continue
            key = (period if series else None, group)
            target = out.get(key)
            if target is None:  # (a cell's buckets are distinct: taken as they are)
                out[key] = dict(zip(flat[0::2], flat[1::2], strict=True))
                continue
            for i in range(0, len(flat), 2):
                target[flat[i]] = target.get(flat[i], 0) + flat[i + 1]
    if oldest is None or found != set(range(first, last + 1)):
        return None
    return out, oldest


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
    memo: Memo | None = None,
) -> list[dict[str, Any]]:
    """count, median, p90, p99 (seconds) of one duration per group: shown where the group's
    counts are (primary and secondary suppression) and it has `min_cell_citizens`
    measurements."""
    _weekly_kept(f, _own(by, f))
    memo = memo if memo is not None else Memo()
    cube, hidden = await _decided(conn, f, by, rules, contact=False, memo=memo)
    published = None
    if memo.names.get((False, _levels(by))) is not None:
        published = await _published_histograms(conn, metric, f, by, series=series)
    if published is not None:
        hists, at = published
        memo.published(at)
    else:
        hists = await _histograms(conn, metric, f, by, series=series)
    table = _table(cube, hidden, by, f, rules, series=series, contact=False)
    rows = []
    for key in _sorted_keys(hists):
        hist = hists[key]
        # (the quantiles of a suppressed row are not computed: most rows of a drill-down)
        ok = key in table.shown and sum(hist.values()) >= rules.min_cell_citizens
        row = _group_fields(by, key) | {"metric": metric, "suppressed": not ok}
        if ok:
            summary = r.summarise(hist)
            row |= {k: summary[k] for k in ("count", "median", "p90", "p99")}
        else:
            row |= {"count": None, "median": None, "p90": None, "p99": None}
        rows.append(row)
    return rows


async def deadlines(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: By,
    *,
    series: bool,
    memo: Memo | None = None,
) -> list[dict[str, Any]]:
    """Requests, late-request rate, overdue count and rate, reminders per group."""
    cube, hidden = await _decided(conn, f, by, rules, contact=False, memo=memo)
    table = _table(cube, hidden, by, f, rules, series=series, contact=False)
    rows = []
    for key in _sorted_keys(table.counts):
        c = table.counts[key]
        ok = key in table.shown
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
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: By,
    *,
    series: bool,
    memo: Memo | None = None,
) -> list[dict[str, Any]]:
    """Contact coverage per group: settled episodes, those with contact in the window."""
    if by in ("receiver", "attest_type"):
        by = "national"
    cube, hidden = await _decided(conn, f, by, rules, contact=True, memo=memo)
    table = _table(cube, hidden, by, f, rules, series=series, contact=True)
    rows = []
    for key in _sorted_keys(table.counts):
        c = table.counts[key]
        ok = key in table.shown
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


async def report(
    conn: AsyncConnection, rules: r.TrackerRules, f: Filters, *, memo: Memo | None = None
) -> dict[str, Any]:
    """The ministry's overview: the main aggregates in one answer (what the dashboard shows).
    Filtered to a municipality, it has no figures by region (a region's counts others)."""
    headline = "request_to_attest"
    memo = memo if memo is not None else Memo()
    regional = f.municipality is None
    answer = {
        "filters": f.describe(),
        "min_cell_citizens": rules.min_cell_citizens,
        "contact_baseline": rules.contact_baseline,
        "unit": "seconds",
        "national": {
            "durations": [
                row
                for metric in r.METRICS
                for row in await durations(
                    conn, rules, metric.name, f, "national", series=False, memo=memo
                )
            ],
            "deadlines": await deadlines(conn, rules, f, "national", series=False, memo=memo),
            "contacts": await contacts(conn, rules, f, "national", series=False, memo=memo),
        },
        "series": {
            "durations": await durations(
                conn, rules, headline, f, "national", series=True, memo=memo
            ),
            "deadlines": await deadlines(conn, rules, f, "national", series=True, memo=memo),
            "contacts": await contacts(conn, rules, f, "national", series=True, memo=memo),
        },
        "by_region": {
            "durations": await durations(
                conn, rules, headline, f, "region", series=False, memo=memo
            )
            if regional
            else [],
            "deadlines": await deadlines(conn, rules, f, "region", series=False, memo=memo)
            if regional
            else [],
            "contacts": await contacts(conn, rules, f, "region", series=False, memo=memo)
            if regional
            else [],
        },
        "by_attest_type": {
            "durations": await durations(
                conn, rules, headline, f, "attest_type", series=False, memo=memo
            ),
            "deadlines": await deadlines(conn, rules, f, "attest_type", series=False, memo=memo),
        },
        "by_municipality": {
            "deadlines": await deadlines(conn, rules, f, "municipality", series=False, memo=memo),
            "contacts": await contacts(conn, rules, f, "municipality", series=False, memo=memo),
        },
    }
    return answer | memo.describe()


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
