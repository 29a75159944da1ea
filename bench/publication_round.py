"""One round of the decisions' publisher (`tracker/decisions.publish`) from nothing, timed:
every published decision and distribution removed, a round, then a round with nothing
changed; each cube's cells and suppressed cells recorded. Runs whichever `attest_gateway`
is importable, so a worktree of an older commit on PYTHONPATH gives the round before.

    python -m bench.publication_round --database attest_drill_10m --label after --out f.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.tables import (
    tracker_decision_cells,
    tracker_decision_histograms,
    tracker_decisions,
)
from attest_gateway.tracker import decisions as pub
from attest_gateway.tracker.rules import TrackerRules


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="attest_drill_10m")
    parser.add_argument("--host", default="127.0.0.1:5432")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    engine = make_engine(f"postgresql+asyncpg://postgres@{args.host}/{args.database}")
    rules = TrackerRules.build()
    try:
        async with engine.begin() as conn:
            for table in (tracker_decision_histograms, tracker_decision_cells, tracker_decisions):
                await conn.execute(table.delete())
        t0 = time.perf_counter()
        done = await pub.publish(engine, rules, now=dt.datetime.now(dt.UTC))
        first = time.perf_counter() - t0
        d = tracker_decisions.c
        async with engine.connect() as conn:
            cubes = [dict(row._mapping) for row in await conn.execute(
                sa.select(d.cube, d.cells, d.suppressed).order_by(d.cube))]  # fmt: skip
        t0 = time.perf_counter()
        again = await pub.publish(engine, rules, now=dt.datetime.now(dt.UTC))
        unchanged = time.perf_counter() - t0
    finally:
        await engine.dispose()
    result: dict[str, Any] = {
        "code": args.label,
        "first_round_s": round(first, 1),
        "decided": len(done),
        "unchanged_round_s": round(unchanged, 1),
        "unchanged_decided": len(again),
        "cubes": cubes,
    }
    print(f"{args.label}: from nothing {first:.1f} s ({len(done)} cubes); nothing changed "
          f"{unchanged:.1f} s ({len(again)} decided)")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", "utf-8")


if __name__ == "__main__":
    asyncio.run(main())
