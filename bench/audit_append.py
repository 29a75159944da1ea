"""Audited transactions under concurrency on PostgreSQL: what one audit append costs a read.

``python -m bench.audit_append [--tasks 16] [--per-task 100]`` makes a scratch PostgreSQL
database (``BENCH_POSTGRES_DSN``, default the test server's; dropped after), migrates it,
and runs ``--tasks`` concurrent tasks, each committing ``--per-task`` transactions that
append one audit event with ``audit.record_many`` (as a mailbox read does, with its other
writes left out) on a pool of one connection per task. Where the gateway on ``PYTHONPATH``
has the audit chainer (``infra/db/audit_chainer.py``), it runs in the same process, as in
``serve --role all``, and the run ends when everything is chained. It prints one JSON line:
transactions a second, the transaction's p50/p99 in ms, and the verified chain's length.

For a before/after comparison run it with ``PYTHONPATH`` pointing at each side's ``src``
(the script imports only what both sides have), alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import json
import os
import statistics
import time
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from attest_gateway.core.audit import AuditEvent
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.kafka.topics import Topics

DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CHAINER = "attest_gateway.infra.db.audit_chainer"
TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")


async def _measure(url: str, tasks: int, per_task: int) -> dict[str, object]:
    await upgrade_async(url)
    engine = make_engine(url, pool_size=tasks + 2)
    chainer: Any = None
    if hasattr(audit, "chain_all"):  # the side with the chainer (not importable on the other)
        chainer = importlib.import_module(CHAINER).AuditChainer(engine, TOPICS)
        chainer.start()
    latencies: list[float] = []

    async def reader(i: int) -> None:
        for n in range(per_task):
            event = AuditEvent(
                actor=f"org-{i}", action="mailbox.fetch", source="192.0.2.10",
                at=dt.datetime.now(dt.UTC), message_id=str(uuid.uuid4()),
                detail={"n": str(n)},
            )  # fmt: skip
            started = time.perf_counter()
            async with engine.begin() as conn:
                await audit.record_many(conn, TOPICS, [event])
            latencies.append((time.perf_counter() - started) * 1000)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(reader(i) for i in range(tasks)))
        elapsed = time.perf_counter() - started
        chained_after = 0.0
        if chainer is not None:
            await chainer.stop()  # its last pass chains what is left
            chained_after = time.perf_counter() - started - elapsed
        async with engine.connect() as conn:
            verdict = await audit.verify(conn)
    finally:
        if chainer is not None:
            await chainer.stop()
        await engine.dispose()
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "chainer": chainer is not None,
        "transactions": len(latencies),
        "tx_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(cuts[49], 2),
        "p99_ms": round(cuts[98], 2),
        "chained_s_after_last_commit": round(chained_after, 3),
        "verified_entries": verdict.entries,
        "intact": verdict.ok,
    }


async def main(args: argparse.Namespace) -> None:
    name = f"bench_audit_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        result = await _measure(f"{base}/{name}", args.tasks, args.per_task)
    finally:
        admin = await asyncpg.connect(DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    print(json.dumps({"tasks": args.tasks, "per_task": args.per_task, **result}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--per-task", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
