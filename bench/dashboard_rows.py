"""What the dashboard's row-based figures cost (PostgreSQL): `/ministry/v1/coverage` and
`/ministry/v1/latency`, which read one row per case or request of the period asked (unlike
the report, which reads rollups).

The SQL here is built from constants only, never from input (ruff S608 is off for bench/).

    .venv/bin/python bench/dashboard_rows.py --conversations 1000000

1. Loads N synthetic conversations into `tracker_conversations` with the load of
   `bench/tracker_scale.py` (two years of requests, 98 municipalities), and one registered
   sickness case per citizen and job centre into `tracker_cases`.
2. Times the four queries the dashboard makes when its filters are shown (coverage national
   and by region, latency national and by attest type), over the whole period and over the
   last three months, through the functions the endpoints call; median of `--runs`.

The scratch database is dropped at the end unless `--keep`.
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
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db.engine import make_engine
from attest_gateway.tracker import coverage as cov
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r
from bench.tracker_scale import ADMIN_DSN, LOAD_SQL, fresh

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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--database", default="attest_bench_rows")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "conversations": args.conversations,
    }
    url = await fresh(args.admin_dsn, args.database)
    engine = make_engine(url)
    try:
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
            cases = (await conn.exec_driver_sql("SELECT count(*) FROM tracker_cases")).scalar()
        results["load_s"] = round(time.perf_counter() - t0, 1)
        results["cases"] = cases
        print(f"loaded {args.conversations:,} conversations, {cases:,} cases", flush=True)

        rules = r.TrackerRules.build()
        now = dt.datetime.now(dt.UTC)
        today = now.date()
        periods = {
            "whole period": rep.Filters(),
            "last 3 months": rep.Filters("month", today - dt.timedelta(days=91), today),
        }
        timings: dict[str, Any] = {}
        for period, f in periods.items():
            queries: dict[str, Callable[[AsyncConnection], Awaitable[object]]] = {
                "coverage": partial(
                    cov.coverage,
                    rules=rules,
                    f=f,
                    by="national",
                    series=False,
                    now=now,
                ),
                "coverage by region": partial(
                    cov.coverage, rules=rules, f=f, by="region", series=False, now=now
                ),
                "latency": partial(
                    cov.latency,
                    rules=rules,
                    f=f,
                    by="national",
                    series=False,
                    now=now,
                ),
                "latency by attest type": partial(
                    cov.latency, rules=rules, f=f, by="attest_type", series=False, now=now
                ),
            }
            for name, query in queries.items():
                samples = []
                for _ in range(args.runs):
                    async with engine.connect() as conn:
                        t1 = time.perf_counter()
                        await query(conn)
                        samples.append(time.perf_counter() - t1)
                key = f"{name}, {period}"
                timings[key] = {
                    "first_s": round(samples[0], 3),
                    "median_s": round(statistics.median(samples), 3),
                }
                print(f"  {key}: median {timings[key]['median_s']:.2f} s", flush=True)
        results["timings"] = timings
    finally:
        await engine.dispose()
        if not args.keep:
            conn = await asyncpg.connect(args.admin_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            finally:
                await conn.close()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
