"""What deciding a case again costs a case registration (PostgreSQL): the insert of a
registered case alone against the insert and the coverage refresh (`infra.db.coverage`), each
in a transaction of its own, interleaved in blocks (before, after, before, after …), on a
scratch database dropped at the end.

    .venv/bin/python bench/coverage_writes.py --cases 400 --blocks 8

Each case is a new citizen with a psychiatric course (so the refresh writes its decision and
its rollup rows); the store starts empty, so this is the cost on a small table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time
import uuid

import asyncpg  # type: ignore[import-untyped]

from attest_gateway.infra.db import coverage as cr
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.uow import SqlCases
from attest_gateway.ports.records import CaseRecord
from bench.tracker_scale import ADMIN_DSN, fresh

NOW = dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)


def _case(n: int) -> CaseRecord:
    return CaseRecord(
        case_id=str(uuid.uuid4()), jobcenter_org="jc-101", jobcenter_case_id=f"sag-{n}",
        case_ref=f"a1b2c3.{n:032x}", municipality="101", region_code="1084",
        case_kind="sygedagpenge", psychiatric_course=True,
        first_day_of_absence=NOW.date() - dt.timedelta(days=n % 300), closed_on=None,
        created_at=NOW, updated_at=NOW, citizen_sealed=None,
    )  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=400, help="cases per block")
    parser.add_argument("--blocks", type=int, default=8, help="blocks of each kind")
    parser.add_argument("--database", default="attest_bench_cov_writes")
    args = parser.parse_args()
    url = await fresh(ADMIN_DSN, args.database)
    engine = make_engine(url)
    rules = cr.CoverageRules()
    per_case: dict[str, list[float]] = {"insert only": [], "insert and refresh": []}
    n = 0
    try:
        for _ in range(args.blocks):
            for name in per_case:
                t0 = time.perf_counter()
                for _ in range(args.cases):
                    n += 1
                    case = _case(n)
                    async with engine.begin() as conn:
                        await SqlCases(conn).add(case)
                        if name == "insert and refresh":
                            await cr.refresh(conn, rules, [case.case_ref])
                per_case[name].append((time.perf_counter() - t0) / args.cases * 1000)
        for name, values in per_case.items():
            blocks = [round(v, 2) for v in values]
            print(f"{name}: median {statistics.median(values):.2f} ms a case "
                  f"({min(values):.2f}–{max(values):.2f}; blocks {blocks})")  # fmt: skip
    finally:
        await engine.dispose()
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
