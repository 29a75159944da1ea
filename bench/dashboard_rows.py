"""What the dashboard's figures that once read single rows cost (PostgreSQL):
`/ministry/v1/latency` (Kaplan–Meier, counting open requests) read from one row per request
(`latency_rows`, as main did) against read from its rollup (`latency`), and the receiver
drill-down `/ministry/v1/durations?by=receiver`. With `--coverage`, contact over registered
cases (`/ministry/v1/coverage`) too: read from one row per case (`coverage_rows`) against read
from its rollup (`coverage`), by `--coverage-by`.

The SQL here is built from constants only, never from input (ruff S608 is off for bench/).

    .venv/bin/python bench/dashboard_rows.py --conversations 1000000

1. Loads N synthetic conversations into `tracker_conversations` with the load of
   `bench/tracker_scale.py` (two years of requests, 98 municipalities), and one registered
   sickness case per citizen and job centre into `tracker_cases`.
2. Builds the rollups in bulk (`tracker_scale.build_rollups`: counters, histograms and the
   latency rollup with its receiver-kind cells, the state the tracker reaches after the same
   events; its step 1 checks that equivalence on a few thousand conversations); with
   `--coverage` the coverage rollup from the cases (`infra.db.coverage.rebuild`, what
   migration 0022 does; its time is reported as `coverage_rollup_s`).
3. Times each query before (rows) and after (rollup) interleaved — before, after, before,
   after … `--runs` pairs — over the whole period and over the last three months, and checks
   that both answer the same.

The scratch database is dropped at the end unless `--keep` (and `--reuse` takes a kept one).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.infra.db import coverage as cr
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.tracker import coverage as cov
from attest_gateway.tracker import latency as lat
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r
from bench.tracker_scale import ADMIN_DSN, LOAD_SQL, build_rollups, fresh, url_for

CASES_SQL = """
INSERT INTO tracker_cases (case_id, jobcenter_org, jobcenter_case_id, case_ref, municipality,
  region_code, case_kind, psychiatric_course, first_day_of_absence, closed_on, created_at,
  updated_at)
SELECT md5(case_ref || jobcenter_org), jobcenter_org, case_ref, case_ref, min(municipality),
       min(region_code), min(case_kind), bool_or(psychiatric_course),
       min(first_day_of_absence), NULL, now(), now()
FROM tracker_conversations
GROUP BY case_ref, jobcenter_org
"""


Query = Callable[[AsyncConnection], Awaitable[Any]]


async def _timed(engine: AsyncEngine, query: Query) -> tuple[float, Any]:
    async with engine.connect() as conn:
        t0 = time.perf_counter()
        answer = await query(conn)
        return time.perf_counter() - t0, answer


async def interleaved(
    engine: AsyncEngine, before: Query, after: Query, runs: int
) -> dict[str, Any]:
    """`runs` pairs, before then after, each on a fresh connection; medians and spreads."""
    samples: dict[str, list[float]] = {"before": [], "after": []}
    answers: dict[str, Any] = {}
    for _ in range(runs):
        for name, query in (("before", before), ("after", after)):
            seconds, answers[name] = await _timed(engine, query)
            samples[name].append(seconds)
    out: dict[str, Any] = {"same_answer": answers["before"] == answers["after"]}
    for name, values in samples.items():
        out[name] = {
            "median_s": round(statistics.median(values), 3),
            "min_s": round(min(values), 3),
            "max_s": round(max(values), 3),
            "runs_s": [round(v, 3) for v in values],
        }
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--database", default="attest_bench_rows")
    parser.add_argument("--runs", type=int, default=3, help="before/after pairs per query")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--reuse", action="store_true", help="use a kept database as it is")
    parser.add_argument(
        "--coverage", action="store_true", help="time coverage (rows against rollup) too"
    )
    parser.add_argument(
        "--coverage-only",
        action="store_true",
        help="coverage alone: no bulk build of the other rollups, no latency timings",
    )
    parser.add_argument(
        "--coverage-by",
        nargs="*",
        default=["national", "municipality", "case_kind"],
        help="the coverage groupings timed",
    )
    parser.add_argument("--receiver", action="store_true", help="time durations?by=receiver")
    parser.add_argument(
        "--whole-rows",
        nargs="*",
        default=["latency by national", "latency by attest_type", "latency by receiver_kind"],
        help="the whole-period queries also timed from rows (the others: the rollup alone)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "conversations": args.conversations,
    }
    url = url_for(args.admin_dsn, args.database)
    if not args.reuse:
        url = await fresh(args.admin_dsn, args.database)
    engine = make_engine(url)
    try:
        if not args.reuse:
            t0 = time.perf_counter()
            step = 1_000_000
            for lo in range(1, args.conversations + 1, step):
                hi = min(args.conversations, lo + step - 1)
                async with engine.begin() as conn:
                    await conn.exec_driver_sql("SELECT setseed(0.5)")
                    await conn.execute(sa.text(LOAD_SQL), {"lo": lo, "hi": hi})
            async with engine.begin() as conn:
                await conn.exec_driver_sql(CASES_SQL)
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE")
            results["load_s"] = round(time.perf_counter() - t0, 1)
            print(f"loaded in {results['load_s']} s", flush=True)
            if not args.coverage_only:
                results["rollup_s"] = await build_rollups(engine)
        args.coverage = args.coverage or args.coverage_only
        if args.coverage and not args.reuse:
            t0 = time.perf_counter()
            async with engine.begin() as conn:
                await cr.rebuild(conn, cr.CoverageRules.of(r.TrackerRules.build()))
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE tracker_coverage")
            results["coverage_rollup_s"] = round(time.perf_counter() - t0, 1)
            print(f"coverage rollup built in {results['coverage_rollup_s']} s", flush=True)
        async with engine.connect() as conn:
            cases = (await conn.exec_driver_sql("SELECT count(*) FROM tracker_cases")).scalar()
            coverage_rows_n = (
                await conn.exec_driver_sql("SELECT count(*) FROM tracker_coverage")
            ).scalar()
            results["coverage_rollup_rows"] = coverage_rows_n
            latency_rows_n = (
                await conn.exec_driver_sql("SELECT count(*) FROM tracker_latency")
            ).scalar()
        results["cases"] = cases
        results["latency_rollup_rows"] = latency_rows_n
        print(f"{args.conversations:,} conversations, {cases:,} cases, "
              f"{latency_rows_n:,} latency rollup rows", flush=True)  # fmt: skip

        rules = r.TrackerRules.build()
        now = dt.datetime.now(dt.UTC)
        today = now.date()
        periods = {
            "whole period": rep.Filters(),
            "last 3 months": rep.Filters("month", today - dt.timedelta(days=91), today),
        }
        if args.coverage:  # coverage only: the load's windows mostly end before the last 3 months
            periods["last 12 months"] = rep.Filters("month", today - dt.timedelta(days=365), today)
        timings: dict[str, Any] = {}
        for period, f in periods.items():
            pairs: dict[str, tuple[Query, Query]] = {}
            latency_by = ("national", "attest_type", "receiver_kind")
            for by in () if args.coverage_only or period == "last 12 months" else latency_by:
                kw: dict[str, Any] = {"rules": rules, "f": f, "by": by, "series": False,
                                      "now": now}  # fmt: skip
                pairs[f"latency by {by}"] = (
                    partial(lat.latency_rows, **kw),
                    partial(lat.latency, **kw),
                )
            for name, (before, after) in pairs.items():
                key = f"{name}, {period}"
                if period == "whole period" and name not in args.whole_rows:
                    # the rows of two years take minutes a read: the rollup alone
                    samples = [(await _timed(engine, after))[0] for _ in range(args.runs)]
                    timings[key] = {"after": {
                        "median_s": round(statistics.median(samples), 3),
                        "min_s": round(min(samples), 3), "max_s": round(max(samples), 3),
                        "runs_s": [round(v, 3) for v in samples],
                    }}  # fmt: skip
                    print(f"  {key}: rollup {[round(v, 3) for v in samples]}", flush=True)
                    continue
                timings[key] = await interleaved(engine, before, after, args.runs)
                t = timings[key]
                print(f"  {key}: rows {t['before']['median_s']:.2f} s "
                      f"({t['before']['min_s']:.2f}–{t['before']['max_s']:.2f}), rollup "
                      f"{t['after']['median_s']:.3f} s ({t['after']['min_s']:.3f}–"
                      f"{t['after']['max_s']:.3f}), same answer: {t['same_answer']}",
                      flush=True)  # fmt: skip
            for by in args.coverage_by if args.coverage else ():
                kw = {"rules": rules, "f": f, "by": by, "series": False, "now": now}
                key = f"coverage by {by}, {period}"
                timings[key] = await interleaved(
                    engine, partial(cov.coverage_rows, **kw), partial(cov.coverage, **kw), args.runs
                )
                t = timings[key]
                print(f"  {key}: rows {t['before']['median_s']:.2f} s "
                      f"({t['before']['min_s']:.2f}–{t['before']['max_s']:.2f}), rollup "
                      f"{t['after']['median_s']:.3f} s ({t['after']['min_s']:.3f}–"
                      f"{t['after']['max_s']:.3f}), same answer: {t['same_answer']}",
                      flush=True)  # fmt: skip
        if args.receiver:
            f = rep.Filters()
            parts: dict[str, Query] = {
                "durations by receiver, whole period": partial(
                    rep.durations,
                    rules=rules,
                    metric="request_to_attest",
                    f=f,
                    by="receiver",
                    series=False,
                ),
                # its two reads alone: the histograms, the counters' cube (no disclosure)
                "  its histograms (SQL)": partial(
                    rep._histograms, metric="request_to_attest", f=f, by="receiver", series=False
                ),
                "  its cube of counters (SQL)": partial(
                    rep._cube, f=f, by="receiver", contact=False
                ),
            }
            for name, query in parts.items():
                samples = [(await _timed(engine, query))[0] for _ in range(args.runs)]
                timings[name.strip()] = {
                    "median_s": round(statistics.median(samples), 3),
                    "runs_s": [round(v, 3) for v in samples],
                }
                print(f"  {name}: {[round(v, 2) for v in samples]}", flush=True)
        results["timings"] = timings
    finally:
        await engine.dispose()
        if not args.keep:
            conn = await asyncpg.connect(args.admin_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            finally:
                await conn.close()
    results["finished"] = dt.datetime.now(dt.UTC).isoformat()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "utf-8")


if __name__ == "__main__":
    asyncio.run(main())
