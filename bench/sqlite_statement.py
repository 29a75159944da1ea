"""What one SQLite statement costs the event loop through aiosqlite: SQLAlchemy's adapter
(four calls in the connection's thread per statement) against the project's one-call cursor
(infra/db/sqlite_driver.py), interleaved round by round. Not part of `make bench`.

    .venv/bin/python -m bench.sqlite_statement [--rounds 5] [--statements 2000]

Per round and side: a primary-key SELECT and a one-row UPDATE (in one transaction), each
`--statements` times on one connection of a file database in WAL mode; wall time and the
process's CPU time per statement.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from attest_gateway.infra.db.engine import make_engine


async def one_side(engine: AsyncEngine, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with engine.connect() as conn:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            (await conn.execute(sa.text("SELECT v FROM t WHERE id = :i"), {"i": 1})).all()
        out["select_wall_us"] = 1e6 * (time.perf_counter() - wall) / n
        out["select_cpu_us"] = 1e6 * (time.process_time() - cpu) / n
    async with engine.begin() as conn:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            await conn.execute(sa.text("UPDATE t SET v = :v WHERE id = 1"), {"v": str(i)})
        out["update_wall_us"] = 1e6 * (time.perf_counter() - wall) / n
        out["update_cpu_us"] = 1e6 * (time.process_time() - cpu) / n
    return out


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'statement.db'}"
        one_call = make_engine(url, pool_size=1)
        # SQLAlchemy's own adapter: the engine made without the project's DBAPI module
        adapter = create_async_engine(url, pool_size=1, max_overflow=0)
        async with one_call.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            await conn.execute(sa.text("INSERT INTO t VALUES (1, 'x')"))
        sides = {"SQLAlchemy's aiosqlite adapter": adapter, "one call per statement": one_call}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for round_no in range(args.rounds):
            for name, engine in sides.items():
                results[name].append(await one_side(engine, args.statements))
            print(f"round {round_no + 1}/{args.rounds} done")
        for engine in sides.values():
            await engine.dispose()
    for name, runs in results.items():
        cells = ", ".join(
            f"{key} {statistics.median(r[key] for r in runs):.0f} "
            f"({min(r[key] for r in runs):.0f}–{max(r[key] for r in runs):.0f})"
            for key in runs[0]
        )
        print(f"{name}: {cells}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--statements", type=int, default=2000)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
