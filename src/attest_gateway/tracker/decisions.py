"""Published disclosure decisions: the large cubes decided in the background, read by the
reports (docs/tracker.md, "Published decisions").

Deciding a cube (tracker/disclosure.py `decide_cube`) costs in proportion to its cells: the
receiver drill-down's cube (every receiving unit × every attest type × months, quarters and
years, about half a million cells at national volume) takes seconds, far beyond what a report
may. So the decisions of the cubes the reports read are made here, every
`tracker_decisions_seconds`, and stored (`tracker_decisions`, `tracker_decision_cells`);
a report that finds its cube's decision published reads the cells of its answer from it,
their counters and suppression as decided (report.py `_decided`).

A cube is decided again only when its cells changed: the digest of its stored cells' ids,
distinct citizens (the only input of the decision besides the region map and the threshold,
both in the cube's key) and counters (published with it) is compared with the one it was
decided over; a decision whose cube did not change stands, and is marked as of the round
(`decided_at`). The
decision is exactly the one a report would make at that moment (the same function over the
same cube, read by report.py `cube_of`); the report answers as it would have then and says
when that was (`decisions_as_of`): cells that appeared since are not in it until the next
decision.

The cubes published: the open overdue list's by receiving unit (tracker/overdue.py, with
its figures, one year of one period kind and attest type each), the receiver drill-down's
(the requests' figures) and the geography's (national, regions and municipalities; the
requests and the contact figures), of months (with their quarters and years) and of weeks,
one cube per year between the first and the last with cells: a
report's cube is always of whole years (`report.cube_range`), and a year is decided alike in
every cube that holds it (`disclosure.decide_cube`), so a run of years ("the whole period",
"from year Y on", any range of months or weeks) reads its years' decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.infra.db.tables import (
    tracker_cells,
    tracker_counts,
    tracker_decision_cells,
    tracker_decision_histograms,
    tracker_decisions,
    tracker_durations,
)
from attest_gateway.tracker import disclosure
from attest_gateway.tracker import overdue as ovd
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.consumer import CONTACT_ATTEST

log = structlog.get_logger(__name__)

#: what a round did with one cube (`publish_cube`)
Outcome = Literal["decided", "unchanged", "moved"]

#: the cubes published: their grains, whether of the contact figures, their stored period kind
CUBES: tuple[tuple[tuple[str, ...], bool, r.PeriodKind], ...] = (
    (("national", "receiver"), False, "month"),
    (("national", "region", "municipality"), False, "month"),
    (("national", "region", "municipality"), True, "month"),
    (("national", "region", "municipality"), False, "week"),
    (("national", "region", "municipality"), True, "week"),
    (("national", "receiver"), False, "week"),
)


async def digest(
    conn: AsyncConnection, f: rep.Filters, grains: Sequence[str], *, contact: bool
) -> str:
    """The digest of a cube's stored cells (ids), their distinct citizens (the decision's
    weights) and counters (the figures published with it)."""
    cells, counts = tracker_cells, tracker_counts
    where = rep._where(cells, f, grains, rep._types(contact=contact), rep.cube_range(f))
    columns = [counts.c.citizens, *(counts.c[name] for name in rep.COUNTERS)]
    stmt = (
        sa.select(cells.c.id, *columns)
        .select_from(cells.join(counts, counts.c.cell_id == cells.c.id))
        .where(*where)
    )
    rows = sorted(tuple(int(v or 0) for v in row) for row in await conn.execute(stmt))
    h = hashlib.blake2b(digest_size=32)
    for row in rows:
        h.update(b"".join(v.to_bytes(8, "big", signed=True) for v in row))
    return h.hexdigest()


async def publish_cube(
    engine: AsyncEngine,
    rules: r.TrackerRules,
    grains: tuple[str, ...],
    *,
    contact: bool,
    year: int,
    now: dt.datetime,
    kind: r.PeriodKind = "month",
    force: bool = False,
) -> Outcome:
    """Decides one year's cube again if its weights changed since its published decision
    (or `force`), and publishes the decision: "decided", "unchanged" (the decision stands),
    or "moved" (written to while read: the next round decides it)."""
    threshold = rules.min_cell_citizens
    name = rep.cube_name(grains, contact=contact, year=year, threshold=threshold, kind=kind)
    f = rep.year_filters(year, kind)
    d = tracker_decisions.c
    async with engine.connect() as conn:
        before = await digest(conn, f, grains, contact=contact)
        stored = (
            await conn.execute(sa.select(d.digest).where(d.cube == name))
        ).scalar_one_or_none()
        if stored == before and not force:
            return "unchanged"
        cube = await rep.cube_of(conn, f, grains, rep._types(contact=contact))
        after = await digest(conn, f, grains, contact=contact)
    if after != before:  # written to meanwhile: the cube read may be neither; next time
        return "moved"
    weights = {c: v["citizens_lb"] for c, v in cube.items()}
    hidden = await asyncio.to_thread(
        disclosure.decide_cube, weights, rep.region_of_municipalities(), threshold
    )
    parts = rep.snapshot_rows(cube, hidden)
    c = tracker_decision_cells.c
    async with engine.begin() as conn:
        await conn.execute(tracker_decision_cells.delete().where(c.cube == name))
        await conn.execute(tracker_decisions.delete().where(d.cube == name))
        await conn.execute(
            tracker_decisions.insert().values(
                cube=name,
                digest=before,
                decided_at=now,
                cells=len(cube),
                suppressed=len(hidden),
            )
        )
        if parts:
            await conn.execute(
                tracker_decision_cells.insert(),
                [
                    {
                        "cube": name,
                        "period_kind": kind,
                        "grain": grain,
                        "attest_type": attest_type,
                        "cells": orjson.dumps(cells).decode(),
                    }
                    for (kind, grain, attest_type), cells in sorted(parts.items())
                ],
            )
    return "decided"


async def publish_histograms(
    engine: AsyncEngine, grain: str, year: int, *, now: dt.datetime
) -> None:
    """Publishes the duration distributions of `grain`'s cells for one year, per metric, for
    the months, quarters and the year: every type's cells summed (`all`, as report.py
    `_histograms` sums them) and, where the reports read them so, every type's in one row
    (`each`) or a row per type (`type`: the row's `types` is the type)."""
    modes = rep.PUBLISHED_HISTOGRAMS[grain]
    each = "each" in modes or "type" in modes
    t, cells = tracker_durations, tracker_cells
    c = cells.c
    cols = [c.period_start, c.dim, t.c.metric, t.c.bucket, *([c.attest_type] if each else [])]
    stmt = (
        sa.select(*cols, sa.func.sum(t.c.n))
        .select_from(cells.join(t, t.c.cell_id == c.id))
        .where(
            c.grain == grain,
            c.period_kind == "month",
            c.period_start >= dt.date(year, 1, 1),
            c.period_start <= dt.date(year, 12, 31),
            c.attest_type != r.ALL_TYPES,
            c.attest_type != CONTACT_ATTEST,
        )
        .group_by(*cols)
    )
    # (metric, kind, types) → (period, place, type) → bucket → n
    out: dict[tuple[str, str, str], dict[tuple[str, str, str], dict[int, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    ups: dict[dt.date, list[tuple[str, str]]] = {}  # a month's periods: a dozen, millions of rows
    async with engine.connect() as conn:
        for row in await conn.execute(stmt):
            month, dim, metric, bucket = row[0], str(row[1]), str(row[2]), int(row[3])
            n = int(row[-1])
            periods = ups.get(month)
            if periods is None:
                periods = ups[month] = disclosure.months_up("month", month)
            for kind, start in periods:
                out[(metric, kind, "all")][(start, dim, r.ALL_TYPES)][bucket] += n
                if each:
                    out[(metric, kind, "each")][(start, dim, str(row[4]))][bucket] += n
    h = tracker_decision_histograms.c
    rows = []
    for metric in sorted(r.METRIC_NAMES):
        for kind in ("month", "quarter", "year"):
            for mode in modes:
                got = sorted(
                    out.get((metric, kind, "each" if mode == "type" else mode), {}).items()
                )
                payloads: dict[str, list[Any]] = defaultdict(list)
                for (period, dim, t_), hist in got:
                    flat = [x for b in sorted(hist) for x in (b, hist[b])]
                    if mode == "type":  # a row of its own per type: its cells without the type
                        payloads[t_].append([period, dim, flat])
                    else:
                        payloads[mode].append(
                            [period, dim, *([t_] if mode == "each" else []), flat]
                        )
                if mode != "type":
                    payloads.setdefault(mode, [])
                for types, payload in sorted(payloads.items()):
                    rows.append({"metric": metric, "period_kind": kind, "grain": grain,
                                 "types": types, "year": year, "decided_at": now,
                                 "cells": orjson.dumps(payload).decode()})  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(
            tracker_decision_histograms.delete().where(h.grain == grain, h.year == year)
        )
        await conn.execute(tracker_decision_histograms.insert(), rows)


async def publish(
    engine: AsyncEngine,
    rules: r.TrackerRules,
    *,
    now: dt.datetime,
    cubes: Sequence[tuple[tuple[str, ...], bool, r.PeriodKind]] = CUBES,
) -> list[str]:
    """Decides again and publishes every cube of `cubes` whose weights changed, and removes
    the decisions of cubes no longer published (years without cells, another threshold).
    The keys of the cubes published."""
    done: list[str] = []
    stand: list[str] = []  # decisions whose cubes are unchanged: they stand as of now
    decided: list[tuple[tuple[str, ...], bool, int]] = []
    keep: set[str] = set()
    threshold = rules.min_cell_citizens
    for grains, contact, kind in cubes:
        async with engine.connect() as conn:
            years = await rep.data_years(conn, grains, kind)
        if years is None:
            continue
        for year in range(years[0], years[1] + 1):
            name = rep.cube_name(grains, contact=contact, year=year, threshold=threshold, kind=kind)
            keep.add(name)
            outcome = await publish_cube(
                engine, rules, grains, contact=contact, year=year, now=now, kind=kind
            )
            if outcome == "unchanged":
                stand.append(name)
            elif outcome == "decided":
                done.append(name)
                if kind == "month":
                    decided.append((grains, contact, year))
    for grain in rep.PUBLISHED_HISTOGRAMS:
        async with engine.connect() as conn:
            years = await rep.data_years(conn, [grain])
            h = tracker_decision_histograms.c
            have = set((await conn.execute(sa.select(h.year).where(h.grain == grain))).scalars())
        changed = {year for grains, contact, year in decided if grain in grains and not contact}
        wanted = set(range(years[0], years[1] + 1)) if years is not None else set()
        for year in sorted(y for y in wanted if y in changed or y not in have):
            await publish_histograms(engine, grain, year, now=now)
        gone_years = sorted(have - wanted)
        if gone_years:
            async with engine.begin() as conn:
                await conn.execute(tracker_decision_histograms.delete().where(
                    h.grain == grain, h.year.in_(gone_years)))  # fmt: skip
    overdue = await ovd.publish(engine, rules, now=now)  # the open overdue list by unit
    done += overdue.decided
    stand += overdue.unchanged
    keep |= overdue.kept
    d, c = tracker_decisions.c, tracker_decision_cells.c
    async with engine.begin() as conn:
        names = set((await conn.execute(sa.select(d.cube))).scalars())
        gone = sorted(names - keep)
        if gone:
            await conn.execute(tracker_decision_cells.delete().where(c.cube.in_(gone)))
            await conn.execute(tracker_decisions.delete().where(d.cube.in_(gone)))
        for start in range(0, len(stand), 500):  # found to stand: as of now (`decisions_as_of`)
            await conn.execute(
                tracker_decisions.update()
                .where(d.cube.in_(stand[start : start + 500]), d.decided_at < now)
                .values(decided_at=now)
            )
    if done or gone:
        log.info("tracker.decisions_published", cubes=len(done), removed=len(gone))
    return done


#: the PostgreSQL advisory lock one publisher holds while it publishes (other replicas skip)
LOCK = 0x29_D15C


async def publish_alone(
    engine: AsyncEngine, rules: r.TrackerRules, *, now: dt.datetime
) -> list[str] | None:
    """`publish`, unless another process is publishing (PostgreSQL: an advisory lock; each
    replica's tracker runs a publisher, and one at a time is enough). None: skipped."""
    if engine.dialect.name != "postgresql":
        return await publish(engine, rules, now=now)
    async with engine.connect() as lock:
        took = (await lock.execute(sa.select(sa.func.pg_try_advisory_lock(LOCK)))).scalar_one()
        await lock.commit()
        if not took:
            return None
        try:
            return await publish(engine, rules, now=now)
        finally:
            await lock.execute(sa.select(sa.func.pg_advisory_unlock(LOCK)))
            await lock.commit()


async def clear(engine: AsyncEngine) -> None:
    """Removes every published decision: reports decide their cubes when asked again."""
    async with engine.begin() as conn:
        await conn.execute(tracker_decision_histograms.delete())
        await conn.execute(tracker_decision_cells.delete())
        await conn.execute(tracker_decisions.delete())


class Publisher:
    """Publishes the decisions every `interval` seconds (the first after one interval). With
    `interval` 0 it publishes none and removes those published before, which reports would
    otherwise read however old."""

    def __init__(
        self,
        engine: AsyncEngine,
        rules: r.TrackerRules,
        clock_now: Callable[[], dt.datetime],
        *,
        interval: float,
    ) -> None:
        self._engine, self._rules, self._now = engine, rules, clock_now
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        run = self._run() if self._interval > 0 else self._clear()
        self._task = asyncio.create_task(run, name="tracker-decisions")

    async def _clear(self) -> None:
        try:
            await clear(self._engine)
        except Exception:  # an outage: the next start clears them
            log.exception("tracker.decisions_clear_failed")

    async def stop(self) -> None:
        if self._task is not None:
            if self._interval <= 0:  # the clearing: short, let it end
                await self._task
                return
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await publish_alone(self._engine, self._rules, now=self._now())
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or an outage must not stop the publishing for good
                log.exception("tracker.decisions_failed")
