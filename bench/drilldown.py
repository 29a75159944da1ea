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

The SQL here is built from constants only, never from input (ruff S608 is off for bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.tables import tracker_decisions
from attest_gateway.tracker import decisions as pub
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r
from bench.tracker_scale import ADMIN_DSN, LOAD_SQL, build_rollups, fresh, url_for

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


QUERIES: dict[str, Query] = {
    "durations by receiver, whole period": _durations("receiver", WHOLE, series=False),
    "durations by receiver, monthly series": _durations("receiver", WHOLE, series=True),
    "deadlines by receiver, whole period": _deadlines("receiver", WHOLE, series=False),
    "durations by receiver, last 12 months": _durations("receiver", LAST_YEAR, series=False),
    "deadlines by municipality, monthly series": _deadlines("municipality", WHOLE, series=True),
    "durations by attest type, whole period": _durations("attest_type", WHOLE, series=False),
    "report, whole period": _report(WHOLE),
}


async def _timed(engine: AsyncEngine, query: Query, *, published: bool) -> tuple[float, Any]:
    async with engine.connect() as conn:
        memo = rep.Memo(use_published=published)
        t0 = time.perf_counter()
        answer = await query(conn, memo)
        seconds = time.perf_counter() - t0
    if published:
        assert memo.decided_at is not None, "no published decision read"
    return seconds, answer


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
    parser.add_argument("--only", default="", help="comma-separated query names (default all)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--reuse", action="store_true", help="use a kept database as it is")
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
            results["rollup_s"] = await build_rollups(engine)

        t0 = time.perf_counter()
        done = await pub.publish(engine, RULES, now=dt.datetime.now(dt.UTC))
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

        only = [q for q in args.only.split(",") if q]
        timings: dict[str, Any] = {}
        for name, query in QUERIES.items():
            if only and name not in only:
                continue
            before: list[float] = []
            after: list[float] = []
            same = True
            for i in range(args.runs):
                answer_before = None
                if i < args.before_runs:
                    seconds, answer_before = await _timed(engine, query, published=False)
                    before.append(seconds)
                seconds, answer_after = await _timed(engine, query, published=True)
                after.append(seconds)
                if answer_before is not None:
                    same = same and answer_before == answer_after
            timings[name] = {"before": _summary(before), "after": _summary(after),
                             "same_answer": same}  # fmt: skip
            b, a = timings[name]["before"], timings[name]["after"]
            print(f"  {name}: before {b['median_s']:.2f} s {b['runs_s']}, after "
                  f"{a['median_s']:.3f} s {a['runs_s']}, same answer: {same}",
                  flush=True)  # fmt: skip
        if not only or any("receiver" in q for q in only):
            parts: dict[str, Callable[[AsyncConnection], Awaitable[Any]]] = {
                "its histograms (SQL)": lambda c: rep._histograms(
                    c, "request_to_attest", WHOLE, "receiver", series=False
                ),
                "its counters, own cells (SQL)": lambda c: rep.cube_of(
                    c, WHOLE, ["receiver"], [r.ALL_TYPES]
                ),
                "its whole cube (SQL, before)": lambda c: rep._cube(
                    c, WHOLE, "receiver", contact=False
                ),
            }
            for name, part in parts.items():
                samples = []
                for _ in range(args.runs):
                    async with engine.connect() as conn:
                        t0 = time.perf_counter()
                        await part(conn)
                        samples.append(time.perf_counter() - t0)
                timings[f"durations by receiver: {name}"] = _summary(samples)
                print(f"    {name}: {[round(v, 3) for v in samples]}", flush=True)
        results["timings"] = timings
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
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "utf-8")


if __name__ == "__main__":
    asyncio.run(main())
