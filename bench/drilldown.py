"""The reports over large cubes at national volume, deciding their cubes when asked against
reading the published decisions (tracker/decisions.py), on PostgreSQL.

    .venv/bin/python -m bench.drilldown --conversations 1000000 --database attest_bench_drill

1. Loads N synthetic conversations (the load of `bench/tracker_scale.py`: two years, 98
   municipalities, 1,960 general practices and 30 psychiatry units) and builds the rollups
   in bulk (`tracker_scale.build_rollups`), unless `--reuse` (a database kept by `--keep`);
   then migrates it to the head (the published decisions' tables).
2. Publishes the decisions (`decisions.publish`), timed, and reports each cube's cells and
   suppressed cells.
3. Times each report through the function its route calls, before (`Memo(use_published=
   False)`: the cube read whole and decided when asked, as before the published decisions)
   and after (the published decision read), interleaved — before, after, before, after …
   `--runs` pairs (`--before-runs` caps the slow side) — and checks that both answer the same.
   The receiver drill-down's parts after: its histograms' SQL and the counters' read.
4. With `--live`, the reports that read no published decision (the weekly overview, one
   attest type by municipality or receiver) or their own rollups
   (latency, coverage, request timing, open overdue, rehabilitation; each also from the rows
   where it keeps that reference), after only.

`--cases` registers a sickness case per citizen and job centre and builds the coverage
rollup from them (after analysing the tables). `--only` takes query names separated by `;`.

The SQL here is built from constants only, never from input (ruff S608 is off for bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.infra.db import coverage as cr
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import alembic_config, upgrade_async
from attest_gateway.infra.db.tables import (
    tracker_decision_cells,
    tracker_decisions,
    tracker_request_weeks,
)
from attest_gateway.tracker import coverage as cov
from attest_gateway.tracker import decisions as pub
from attest_gateway.tracker import latency as lat
from attest_gateway.tracker import overdue as ovd
from attest_gateway.tracker import rehabilitation as rehab
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r
from attest_gateway.tracker import timing
from bench.dashboard_rows import CASES_SQL
from bench.tracker_scale import (
    ADMIN_DSN,
    LOAD_SQL,
    build_request_weeks,
    build_rollups,
    fresh,
    url_for,
)

Query = Callable[[AsyncConnection, rep.Memo], Awaitable[Any]]
RULES = r.TrackerRules.build()
WHOLE = rep.Filters()
LAST_YEAR = rep.Filters("month", dt.date.today() - dt.timedelta(days=365), dt.date.today())


def _durations(by: rep.By, f: rep.Filters, *, series: bool) -> Query:
    async def q(conn: AsyncConnection, memo: rep.Memo) -> Any:
        return await rep.durations(conn, RULES, "request_to_attest", f, by, series=series,
                                   memo=memo)  # fmt: skip

    return q


def _deadlines(by: rep.By, f: rep.Filters, *, series: bool) -> Query:
    async def q(conn: AsyncConnection, memo: rep.Memo) -> Any:
        return await rep.deadlines(conn, RULES, f, by, series=series, memo=memo)

    return q


def _report(f: rep.Filters) -> Query:
    async def q(conn: AsyncConnection, memo: rep.Memo) -> Any:
        out = await rep.report(conn, RULES, f, memo=memo)
        return {k: v for k, v in out.items() if k != "decisions_as_of"}

    return q


def _overdue(by: Any, f: rep.Filters, how: str) -> Query:
    """The open overdue list: as the route reads it (a published decision when there is
    one), deciding its cube when asked, or from the rows (the reference)."""

    async def q(conn: AsyncConnection, memo: rep.Memo) -> Any:
        now = dt.datetime.now(dt.UTC)
        if how == ", from the rows":
            return await ovd.open_overdue_rows(conn, RULES, f, by, now=now)
        if how == ", decided when asked":
            memo = rep.Memo(use_published=False)
        return await ovd.open_overdue(conn, RULES, f, by, now=now, memo=memo)

    return q


def _rows_report(fn: Callable[..., Awaitable[Any]], by: str, f: rep.Filters, **kw: Any) -> Query:
    """A report of tracker/latency.py or tracker/coverage.py (they take `now`, no memo)."""

    async def q(conn: AsyncConnection, memo: rep.Memo) -> Any:
        return await fn(conn, RULES, f, by, now=dt.datetime.now(dt.UTC), **kw)

    return q


TODAY = dt.date.today()
LAST_26_WEEKS = rep.Filters("week", TODAY - dt.timedelta(weeks=26), TODAY)
LAST_3_MONTHS = rep.Filters("month", TODAY - dt.timedelta(days=91), TODAY)
# the two full years before this one: a run of years not ending at the last with cells
# (published since a run of years reads its years' decisions)
EARLIER_YEARS = rep.Filters("month", dt.date(TODAY.year - 2, 1, 1), dt.date(TODAY.year - 1, 12, 31))
ONE_TYPE = rep.Filters(attest_type="LÆ 265")

# the open overdue list by receiving unit, weekly or of one type: published per year since
OVERDUE_VARIANTS = (
    ("weekly, last 26 weeks", LAST_26_WEEKS),
    ("weekly, whole period", rep.Filters("week")),
    ("LÆ 265 only, last 3 months", dataclasses.replace(LAST_3_MONTHS, attest_type="LÆ 265")),
    ("LÆ 265 only, whole period", ONE_TYPE),
    (
        "LÆ 265 only, weekly, last 26 weeks",
        dataclasses.replace(LAST_26_WEEKS, attest_type="LÆ 265"),
    ),
)

QUERIES: dict[str, Query] = {
    "durations by receiver, whole period": _durations("receiver", WHOLE, series=False),
    "durations by receiver, monthly series": _durations("receiver", WHOLE, series=True),
    "deadlines by receiver, whole period": _deadlines("receiver", WHOLE, series=False),
    "durations by receiver, last 12 months": _durations("receiver", LAST_YEAR, series=False),
    "deadlines by municipality, monthly series": _deadlines("municipality", WHOLE, series=True),
    "durations by attest type, whole period": _durations("attest_type", WHOLE, series=False),
    "report, whole period": _report(WHOLE),
    "durations by receiver, a run of years not ending at the last": _durations(
        "receiver", EARLIER_YEARS, series=False
    ),
    **{f"overdue by receiver, {name}": _overdue("receiver", f, "") for name, f in OVERDUE_VARIANTS},
    # the receiving units' weeks, published since (weekly durations are kept nationally and
    # per region only: by receiver they are refused)
    "deadlines by receiver, weekly, last 26 weeks": _deadlines(
        "receiver", LAST_26_WEEKS, series=False
    ),
    "deadlines by receiver, weekly, whole period": _deadlines(
        "receiver", rep.Filters("week"), series=False
    ),
}
#: the reports that read no published decision (decided when asked, or their own rollups'
#: or rows' cubes): `--live` times them, after only; one named with ROWS is the row-based
#: reference of the one named without it, and says whether both answered the same
ROWS = ", from the rows"
LIVE: dict[str, Query] = {
    "report, weekly, last 26 weeks": _report(LAST_26_WEEKS),
    "durations by municipality, LÆ 265 only, whole period": _durations(
        "municipality", ONE_TYPE, series=False
    ),
    "durations by receiver, LÆ 265 only, whole period": _durations(
        "receiver", ONE_TYPE, series=False
    ),
    **{
        f"latency by {by}, {name}": _rows_report(lat.latency, by, f, series=False)
        for name, f in (("whole period", WHOLE), ("last 3 months", LAST_3_MONTHS))
        for by in ("national", "region", "attest_type", "receiver_kind")
    },
    **{
        f"coverage by {by}, {name}": _rows_report(cov.coverage, by, f, series=False)
        for name, f in (("whole period", WHOLE), ("last 12 months", LAST_YEAR))
        for by in ("national", "region", "municipality", "case_kind")
    },
    **{
        f"request timing by {by}, {name}{how}": _rows_report(
            lambda c, rules, f, by, now, series, fn=fn: fn(c, rules, f, by, series=series),
            by,
            f,
            series=False,
        )
        for name, f in (("last 3 months", LAST_3_MONTHS), ("whole period", WHOLE))
        for by in ("national", "municipality", "case_kind")
        for how, fn in (
            ("", timing.request_timing),
            (ROWS, timing.request_timing_rows),
        )
    },
    **{
        f"overdue by {by}, {name}{how}": _overdue(by, f, how)
        for name, f in (("last 3 months", LAST_3_MONTHS), ("whole period", WHOLE))
        for by in ("receiver", "municipality")
        for how in ("", ", decided when asked", ", from the rows")
    },
    **{  # by municipality every cube is decided when asked
        f"overdue by municipality, {name}": _overdue("municipality", f, "")
        for name, f in OVERDUE_VARIANTS
    },
    **{
        f"rehabilitation by {by}, {name}{how}": _rows_report(fn, by, f, series=False)
        for name, f in (("last 3 months", LAST_3_MONTHS), ("whole period", WHOLE))
        for by in ("national", "region", "municipality")
        for how, fn in (
            ("", rehab.rehabilitation),
            (ROWS, rehab.rehabilitation_rows),
        )
    },
}


async def _timed(
    engine: AsyncEngine, query: Query, *, published: bool, live: bool = False
) -> tuple[float, Any, rep.Memo]:
    async with engine.connect() as conn:
        memo = rep.Memo(use_published=published)
        t0 = time.perf_counter()
        answer = await query(conn, memo)
        seconds = time.perf_counter() - t0
    if published and not live:
        assert memo.decided_at is not None, "no published decision read"
    return seconds, answer, memo


async def register_cases(engine: AsyncEngine) -> dict[str, float]:
    """One sickness case per citizen and job centre (`dashboard_rows.CASES_SQL`), then the
    coverage rollup built from them as `attest-gateway coverage-rebuild` does; each step
    skipped when a kept database has it already. The tables are analysed first: without
    their statistics the rebuild's look-ups by case ref are planned as scans of every
    conversation."""
    times: dict[str, float] = {}
    async with engine.connect() as conn:
        cases = (await conn.exec_driver_sql("SELECT count(*) FROM tracker_cases")).scalar()
        built = (await conn.exec_driver_sql("SELECT count(*) FROM tracker_coverage")).scalar()
    if not cases:
        t0 = time.perf_counter()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(CASES_SQL)
        times["cases"] = round(time.perf_counter() - t0, 1)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("tracker_conversations", "tracker_cases", "tracker_contacts",
                      "tracker_treatments"):  # fmt: skip
            await conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
    if not built:
        t0 = time.perf_counter()
        async with engine.begin() as conn:
            await cr.rebuild(conn, cr.CoverageRules.of(RULES))
        times["coverage_rollup"] = round(time.perf_counter() - t0, 1)
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("tracker_coverage", "tracker_coverage_cases"):
                await conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
    print(f"  cases and coverage rollup: {times}", flush=True)
    return times


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
        "runs_s": [round(v, 3) for v in values],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--database", default="attest_bench_drill")
    parser.add_argument("--runs", type=int, default=3, help="before/after pairs per query")
    parser.add_argument("--before-runs", type=int, default=2, help="at most so many befores")
    parser.add_argument("--only", default="", help="query names separated by ; (default all)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--reuse", action="store_true", help="use a kept database as it is")
    parser.add_argument(
        "--cases",
        action="store_true",
        help="also register a sickness case per citizen and job centre and build the coverage "
        "rollup from them (what /ministry/v1/coverage reads)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="also time the reports that read no published decision (after only)",
    )
    parser.add_argument(
        "--no-publish", action="store_true", help="with --reuse: leave the decisions as they are"
    )
    parser.add_argument(
        "--bulk-0026",
        action="store_true",
        help="with --reuse on a database at 0025: migration 0026's rollup built in bulk SQL "
        "(tracker_scale.build_request_weeks) instead of its fill in Python, and stamped",
    )
    parser.add_argument(
        "--overdue-publish",
        action="store_true",
        help="time the open overdue list's year cubes published from nothing, each, and the "
        "round's check when nothing changed",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "conversations": args.conversations,
        "load_average_start": os.getloadavg(),
    }
    url = url_for(args.admin_dsn, args.database)
    if not args.reuse:
        url = await fresh(args.admin_dsn, args.database)
    if args.reuse and args.bulk_0026:
        results["bulk_0026_s"] = await bulk_0026(url)
    await upgrade_async(url)
    engine = make_engine(url)
    try:
        if not args.reuse:
            t0 = time.perf_counter()
            for lo in range(1, args.conversations + 1, 1_000_000):
                hi = min(args.conversations, lo + 999_999)
                async with engine.begin() as conn:
                    await conn.exec_driver_sql("SELECT setseed(0.5)")
                    await conn.execute(sa.text(LOAD_SQL), {"lo": lo, "hi": hi})
            results["load_s"] = round(time.perf_counter() - t0, 1)
            print(f"loaded in {results['load_s']} s", flush=True)
            results["rollup_s"] = await build_rollups(engine)
        if args.cases:
            results["cases_s"] = await register_cases(engine)

        if not args.no_publish:
            await _publish(engine, results)
        if args.overdue_publish:
            results["overdue_publish"] = await _publish_overdue(engine)
        only = [q.strip() for q in args.only.split(";") if q.strip()]
        timings: dict[str, Any] = {}
        results["timings"] = timings
        for name, query in QUERIES.items():
            if only and name not in only:
                continue
            timings[name] = await _before_after(engine, query, args.runs, args.before_runs)
            b, a, same = (
                timings[name]["before"],
                timings[name]["after"],
                timings[name]["same_answer"],
            )
            print(f"  {name}: before {b.get('median_s')} s {b.get('runs_s')}, after "
                  f"{a['median_s']:.3f} s {a['runs_s']}, same answer: {same}",
                  flush=True)  # fmt: skip
            _save(args.out, results)
        for name, query in LIVE.items() if args.live else ():
            if only and name not in only:
                continue
            timings[name] = await _live(engine, query, args.runs)
            t = timings[name]
            reference = timings.get(name.removesuffix(ROWS))  # timed just before it
            if name.endswith(ROWS) and reference is not None:
                t["same_answer"] = reference["answer_sha256"] == t["answer_sha256"]
            print(f"  {name}: {t['median_s']:.3f} s {t['runs_s']}, {t['rows']:,} rows, "
                  f"published decision read: {t['published']}, "
                  f"same answer: {t.get('same_answer', '-')}", flush=True)  # fmt: skip
            _save(args.out, results)
        if not only:
            timings |= await _receiver_parts(engine, args.runs)
    finally:
        await engine.dispose()
        if not args.keep:
            conn = await asyncpg.connect(args.admin_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            finally:
                await conn.close()
    results["load_average_end"] = os.getloadavg()
    results["finished"] = dt.datetime.now(dt.UTC).isoformat()
    _save(args.out, results)


async def bulk_0026(url: str) -> float:
    """Migration 0026 on a database at 0025, its fill made by the bulk SQL the benchmark
    builds the other rollups with (checked identical to the tracker's in
    `tracker_scale.equivalence_check`): its table created, filled, stamped."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            at = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
        if ("0025",) not in at:
            raise SystemExit(f"--bulk-0026 needs a database at 0025, not {at}")
        t0 = time.perf_counter()
        async with engine.begin() as conn:
            await conn.exec_driver_sql("SET LOCAL work_mem = '1GB'")
            await conn.run_sync(lambda sync: tracker_request_weeks.create(sync))
            await build_request_weeks(conn)
        seconds = time.perf_counter() - t0
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("tracker_request_weeks", "tracker_cells", "tracker_counts"):
                await conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
    finally:
        await engine.dispose()
    await asyncio.to_thread(command.stamp, alembic_config(url), "0026")
    print(f"migration 0026 in bulk: {seconds:.1f} s", flush=True)
    return round(seconds, 1)


def _save(out: Path | None, results: dict[str, Any]) -> None:
    if out is not None:
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "utf-8")


async def _publish(engine: AsyncEngine, results: dict[str, Any]) -> None:
    """Publish the decisions, timed, and then again with nothing changed (the check)."""
    t0 = time.perf_counter()
    done = await pub.publish(engine, RULES, now=dt.datetime.now(dt.UTC))
    results["publish_s"] = round(time.perf_counter() - t0, 1)
    results["publish_s"] = round(time.perf_counter() - t0, 1)
    d = tracker_decisions.c
    async with engine.connect() as conn:
        cubes = [dict(row._mapping) for row in await conn.execute(
            sa.select(d.cube, d.cells, d.suppressed).order_by(d.cube))]  # fmt: skip
    results["published"] = {"decided": done, "cubes": cubes}
    print(f"published {len(done)} cubes in {results['publish_s']} s", flush=True)
    for cube in cubes:
        print(f"  {cube['cube']}: {cube['cells']:,} cells, {cube['suppressed']:,} suppressed")
    t0 = time.perf_counter()
    again = await pub.publish(engine, RULES, now=dt.datetime.now(dt.UTC))
    results["publish_unchanged_s"] = round(time.perf_counter() - t0, 1)
    print(f"  again, nothing changed: {len(again)} decided, {results['publish_unchanged_s']} s")


async def _publish_overdue(engine: AsyncEngine) -> dict[str, Any]:
    """The open overdue list's year cubes (`tracker/overdue.py`) published from nothing,
    one at a time and each timed, as a round does when all changed; then a round with
    nothing changed (its digests read and compared)."""
    d, c = tracker_decisions.c, tracker_decision_cells.c
    async with engine.begin() as conn:
        await conn.execute(tracker_decision_cells.delete().where(c.cube.like("overdue:%")))
        await conn.execute(tracker_decisions.delete().where(d.cube.like("overdue:%")))
    now = dt.datetime.now(dt.UTC)
    async with engine.connect() as conn:
        t0 = time.perf_counter()
        cubes = await ovd.cubes(conn)
        made_of = await ovd.digests(conn)
        digests_s = time.perf_counter() - t0
    out: dict[str, Any] = {"digests_s": round(digests_s, 2), "cubes": []}
    print(f"overdue: {len(cubes)} year cubes, their digests in {digests_s:.1f} s", flush=True)
    for cube in cubes:
        t0 = time.perf_counter()
        done = await ovd.publish_cube(engine, RULES, cube, made_of.get(cube, ovd.EMPTY), now=now)
        seconds = time.perf_counter() - t0
        name = ovd.cube_name(*cube, RULES.min_cell_citizens)
        async with engine.connect() as conn:
            cells, hidden = (
                await conn.execute(sa.select(d.cells, d.suppressed).where(d.cube == name))
            ).one()
        out["cubes"].append({"cube": name, "s": round(seconds, 2), "published": done,
                             "cells": cells, "suppressed": hidden})  # fmt: skip
        print(f"  {name}: {seconds:.2f} s, {cells:,} cells, {hidden:,} suppressed", flush=True)
    out["first_s"] = round(digests_s + sum(x["s"] for x in out["cubes"]), 1)
    t0 = time.perf_counter()
    again = (await ovd.publish(engine, RULES, now=dt.datetime.now(dt.UTC))).decided
    out["unchanged_s"] = round(time.perf_counter() - t0, 2)
    out["unchanged_decided"] = len(again)
    print(f"  all: {out['first_s']} s; again, nothing changed: {len(again)} decided, "
          f"{out['unchanged_s']} s", flush=True)  # fmt: skip
    return out


async def _before_after(
    engine: AsyncEngine, query: Query, runs: int, before_runs: int
) -> dict[str, Any]:
    """Decided when asked against the published decision, interleaved; answers compared."""
    before: list[float] = []
    after: list[float] = []
    same = True
    for i in range(runs):
        answer_before = None
        if i < before_runs:
            seconds, answer_before, _ = await _timed(engine, query, published=False)
            before.append(seconds)
        seconds, answer_after, _ = await _timed(engine, query, published=True)
        after.append(seconds)
        if answer_before is not None:
            same = same and answer_before == answer_after
    return {
        "before": _summary(before) if before else {},
        "after": _summary(after),
        "same_answer": same if before else None,
    }


async def _live(engine: AsyncEngine, query: Query, runs: int) -> dict[str, Any]:
    """A report that reads no published decision (or may not): timed as the route calls it."""
    samples: list[float] = []
    rows = 0
    published = False
    for _ in range(runs):
        seconds, answer, memo = await _timed(engine, query, published=True, live=True)
        samples.append(seconds)
        rows = len(answer) if isinstance(answer, list) else 1
        published = memo.decided_at is not None
    text = json.dumps(answer, sort_keys=True, default=str).encode()
    return _summary(samples) | {
        "rows": rows,
        "published": published,
        "answer_sha256": hashlib.sha256(text).hexdigest()[:16],
    }


async def _receiver_parts(engine: AsyncEngine, runs: int) -> dict[str, Any]:
    """The receiver drill-down's reads alone: its histograms, its own cells' counters, and
    the whole cube of counters that deciding when asked reads."""
    parts: dict[str, Callable[[AsyncConnection], Awaitable[Any]]] = {
        "its histograms (SQL)": lambda c: rep._histograms(
            c, "request_to_attest", WHOLE, "receiver", series=False
        ),
        "its counters, own cells (SQL)": lambda c: rep.cube_of(
            c, WHOLE, ["receiver"], [r.ALL_TYPES]
        ),
        "its whole cube (SQL, before)": lambda c: rep._cube(c, WHOLE, "receiver", contact=False),
    }
    out: dict[str, Any] = {}
    for name, part in parts.items():
        samples = []
        for _ in range(runs):
            async with engine.connect() as conn:
                t0 = time.perf_counter()
                await part(conn)
                samples.append(time.perf_counter() - t0)
        out[f"durations by receiver: {name}"] = _summary(samples)
        print(f"    {name}: {[round(v, 3) for v in samples]}", flush=True)
    return out


if __name__ == "__main__":
    asyncio.run(main())
