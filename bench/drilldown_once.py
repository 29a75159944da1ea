"""One timed report through the function its route calls, by whichever code is on the path:
for comparing two versions of the gateway run by turns over one database (the command in
bench/RESULTS.md, "The receiver drill-down"). Prints one JSON line: the query, seconds,
and a digest of the answer (to tell whether two versions answer the same).

    PYTHONPATH=src .venv/bin/python bench/drilldown_once.py --database attest_drill_1m \\
        "durations by receiver, whole period"

Only what every version since 2026-12-07 has is used (report.py's `durations`, `deadlines`,
`report` with its `Memo`; latency.py's and coverage.py's reports; rehabilitation from
tracker/rehabilitation.py where there is one, else from coverage.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import importlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db.engine import make_engine
from attest_gateway.tracker import coverage as cov
from attest_gateway.tracker import latency as lat
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r

RULES = r.TrackerRules.build()
WHOLE = rep.Filters()
TODAY = dt.date.today()
LAST_26_WEEKS = rep.Filters("week", TODAY - dt.timedelta(weeks=26), TODAY)
LAST_3_MONTHS = rep.Filters("month", TODAY - dt.timedelta(days=91), TODAY)

Query = Callable[[AsyncConnection], Awaitable[Any]]


def _rehabilitation(by: Any, f: rep.Filters) -> Query:
    try:  # from its rollup
        report = importlib.import_module("attest_gateway.tracker.rehabilitation").rehabilitation
    except ModuleNotFoundError:  # before it: coverage.py, from the rows
        report = getattr(cov, "rehabilitation")  # noqa: B009 - absent from this version

    def query(c: AsyncConnection) -> Awaitable[Any]:
        return report(c, RULES, f, by, series=False, now=dt.datetime.now(dt.UTC))  # type: ignore[no-any-return]

    return query


QUERIES: dict[str, Query] = {
    "durations by receiver, whole period": lambda c: rep.durations(
        c, RULES, "request_to_attest", WHOLE, "receiver", series=False
    ),
    "durations by receiver, monthly series": lambda c: rep.durations(
        c, RULES, "request_to_attest", WHOLE, "receiver", series=True
    ),
    "deadlines by receiver, whole period": lambda c: rep.deadlines(
        c, RULES, WHOLE, "receiver", series=False
    ),
    "deadlines by municipality, monthly series": lambda c: rep.deadlines(
        c, RULES, WHOLE, "municipality", series=True
    ),
    "report, whole period": lambda c: rep.report(c, RULES, WHOLE),
    "report, weekly, last 26 weeks": lambda c: rep.report(c, RULES, LAST_26_WEEKS),
    "report, weekly, last 26 weeks, decided when asked": lambda c: rep.report(
        c, RULES, LAST_26_WEEKS, memo=rep.Memo(use_published=False)
    ),
    "latency by national, last 26 weeks": lambda c: lat.latency(
        c, RULES, LAST_26_WEEKS, "national", series=False, now=dt.datetime.now(dt.UTC)
    ),
    "latency by region, last 26 weeks, weekly series": lambda c: lat.latency(
        c, RULES, LAST_26_WEEKS, "region", series=True, now=dt.datetime.now(dt.UTC)
    ),
    "coverage by region, last 26 weeks": lambda c: cov.coverage(
        c, RULES, LAST_26_WEEKS, "region", series=False, now=dt.datetime.now(dt.UTC)
    ),
    "coverage by municipality, whole period": lambda c: cov.coverage(
        c, RULES, WHOLE, "municipality", series=False, now=dt.datetime.now(dt.UTC)
    ),
    **{
        f"rehabilitation by {by}, {name}": _rehabilitation(by, f)
        for name, f in (("whole period", WHOLE), ("last 3 months", LAST_3_MONTHS))
        for by in ("national", "municipality")
    },
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("query", choices=sorted(QUERIES))
    parser.add_argument("--database", default="attest_drill_1m")
    parser.add_argument("--host", default="postgres@127.0.0.1:5432")
    args = parser.parse_args()
    engine = make_engine(f"postgresql+asyncpg://{args.host}/{args.database}")
    try:
        async with engine.connect() as conn:
            t0 = time.perf_counter()
            answer = await QUERIES[args.query](conn)
            seconds = time.perf_counter() - t0
    finally:
        await engine.dispose()
    if isinstance(answer, dict):
        answer = {k: v for k, v in answer.items() if k != "decisions_as_of"}
    text = json.dumps(answer, sort_keys=True, default=str).encode()
    print(json.dumps({"query": args.query, "seconds": round(seconds, 3),
                      "answer": hashlib.sha256(text).hexdigest()[:16]}))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
