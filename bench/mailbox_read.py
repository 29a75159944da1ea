"""What one large mailbox read costs the event loop: ``python -m bench.mailbox_read``.

An in-process gateway (the API app and its lifespan, as the integration tests run it: relay,
consumers, audit chainer; embedded broker; SQLite, or with ``--database postgres`` a scratch
PostgreSQL database on ``BENCH_POSTGRES_DSN``'s server, dropped after) and ``--waiting``
attest requests delivered to `psyk-kbh`'s mailbox, each fetched once already. Then the read of
them all (``limit=500``, as `GET /medcom/v1/mailbox` makes it) is timed ``--reads`` times for
each variant, the variants interleaved read by read:

- ``batch N``: `services.health.read_mailbox_json` with ``READ_BATCH = N`` (the rows read and
  written into the answer N at a time, an await between batches);
- ``whole``: the read as it was before: whole mailbox rows as `MailItem` values in one
  statement, the answer written at once from a dict per item (the same statements
  otherwise: the fetched marks, one audit entry).

Per variant, medians over the reads: the CPU time of the event loop's thread during the read
(``time.thread_time``; what other tasks ran meanwhile is in it, alike for every variant), the
longest single step of the event loop during the read (the longest another request arriving
then could wait before its own next step), and the read's wall time. Not a test: the figures
go to bench/RESULTS.md.

    python -m bench.mailbox_read
    python -m bench.mailbox_read --database postgres --reads 60 --batches 25 50 100 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from attest_gateway.bootstrap import database
from attest_gateway.config import load_settings
from attest_gateway.core import audit
from attest_gateway.core.clock import Clock
from attest_gateway.core.directory import Organisation
from attest_gateway.devtools.demo import DEMO_ORGS, ensure_demo_orgs
from attest_gateway.entrypoints.http.app import create_app
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from attest_gateway.ports.store import Store
from attest_gateway.services import health
from bench.abuse import ABUSER, JOBCENTER
from bench.gateway_ingest import scratch_postgres
from bench.loadgen import GatewayBody

SOURCE = "192.0.2.1"


class LoopSteps:
    """The steps (callbacks) of the running asyncio event loop while `on`: the longest, and
    the time of those that ran `task` (the read's own steps)."""

    def __init__(self) -> None:
        self.on = False
        self.task: asyncio.Task[Any] | None = None
        self.longest = 0.0
        self.own = 0.0
        run = asyncio.events.Handle._run
        steps = self

        def timed(handle: asyncio.events.Handle) -> None:
            if not steps.on:
                run(handle)
                return
            started = time.perf_counter()
            run(handle)
            took = time.perf_counter() - started
            steps.longest = max(steps.longest, took)
            if getattr(getattr(handle, "_callback", None), "__self__", None) is steps.task:
                steps.own += took

        asyncio.events.Handle._run = timed  # type: ignore[method-assign, assignment]


async def read_whole(store: Store, clock: Clock, org: Organisation, *, limit: int) -> bytes:
    """The read as `GET /medcom/v1/mailbox` made it before batches: whole rows, then the
    answer of a dict per item (the envelopes as stored)."""
    now = clock.now()
    async with store.transaction() as uow:
        rows = await uow.mailbox.waiting(org.id, limit)
        items = [
            {
                "message_id": r.message_id,
                "conversation_id": r.conversation_id,
                "message_type": r.message_type,
                "delivered_at": r.delivered_at.isoformat(),
                "envelope": orjson.Fragment(r.envelope),
            }
            for r in rows
        ]
        await uow.mailbox.mark_fetched([r.message_id for r in rows if r.fetched_at is None], now)
        await uow.audit.record_many(
            audit.read_entries(
                actor=org.id,
                action=audit.MAILBOX_FETCH,
                source=SOURCE,
                at=now,
                subject_org=org.id,
                items=[(r.message_id, r.conversation_id) for r in rows],
            )
        )
    return orjson.dumps({"items": items})


def read_in_batches(
    store: Store, clock: Clock, org: Organisation, batch: int
) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        health.READ_BATCH = batch
        answer = await health.read_mailbox_json(store, clock, org, limit=500, source=SOURCE)
        return answer.body

    return read


@contextlib.asynccontextmanager
async def in_process_gateway(
    kind: str, tmp: Path, bootstrap: str
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, dict[str, Any]]]:
    """The gateway's app with its lifespan running in this loop: its container, a client
    through the ASGI transport, the demo credentials."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite+aiosqlite:///{(tmp / 'gateway.db').as_posix()}"
        else:
            dsn = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
            url = await stack.enter_async_context(scratch_postgres(dsn))
        prefix = f"m{uuid.uuid4().hex[:8]}."
        settings = load_settings(
            var_dir=tmp / "var",
            database_url=url,
            kafka_bootstrap_servers=bootstrap,
            kafka_topic_prefix=prefix,
            kafka_group_prefix=f"{prefix}attest-gateway",
            log_level="WARNING",
            rate_limit_items_per_read=0,
        )
        await upgrade_async(url)
        async with database(settings) as engine:
            creds_path = (await ensure_demo_orgs(engine, settings)).path
        creds = json.loads(creds_path.read_text("utf-8"))
        app = create_app(settings, bootstrap)
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=60)
        )
        yield app.state.gateway, client, creds


async def fill(client: httpx.AsyncClient, creds: dict[str, Any], waiting: int) -> None:
    jc = next(o for o in DEMO_ORGS if o.id == JOBCENTER)
    psy = next(o for o in DEMO_ORGS if o.id == ABUSER)
    body = GatewayBody(
        jobcenter_gln=jc.gln or "", municipality=jc.kommunekode or "", receiver_sor=psy.sor or ""
    )
    sender = {"Authorization": f"Bearer {creds[JOBCENTER]['api_key']}"}
    for i in range(waiting):
        response = await client.post(
            "/jobcenter/v1/attest-requests",
            content=body(i),
            headers={**sender, "Content-Type": "application/json", "Idempotency-Key": f"m{i}"},
        )
        response.raise_for_status()
    reader = {"Authorization": f"Bearer {creds[ABUSER]['api_key']}"}
    for _ in range(600):  # delivered, and each fetched once (its stage recorded)
        response = await client.get("/medcom/v1/mailbox?limit=500", headers=reader)
        if len(response.json()["items"]) >= waiting:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the attest requests did not reach the mailbox")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    steps = LoopSteps()
    with tempfile.TemporaryDirectory(prefix="mailbox-read-") as tmp_dir:
        tmp = Path(tmp_dir)
        broker = EmbeddedBroker(log_path=tmp / "broker.log").start()
        try:
            async with in_process_gateway(args.database, tmp, broker.bootstrap) as (
                gw,
                client,
                creds,
            ):
                await fill(client, creds, args.waiting)
                async with gw.store.reading() as uow:
                    org = await uow.directory.org_by_id(ABUSER)
                assert org is not None
                variants: dict[str, Callable[[], Awaitable[bytes]]] = {
                    "whole": lambda: read_whole(gw.store, gw.clock, org, limit=500)
                }
                for batch in args.batches:
                    variants[f"batch {batch}"] = read_in_batches(gw.store, gw.clock, org, batch)
                figures: dict[str, dict[str, list[float]]] = {
                    name: {"cpu_ms": [], "own_steps_ms": [], "longest_step_ms": [], "wall_ms": []}
                    for name in variants
                }
                answers = {name: await read() for name, read in variants.items()}  # warm
                sizes = {len(a) for a in answers.values()}
                for _ in range(args.reads):
                    for name, read in variants.items():
                        await asyncio.sleep(args.pause)  # the read's chaining and relaying done
                        steps.longest = steps.own = 0.0
                        steps.task = asyncio.current_task()
                        steps.on = True
                        wall, cpu = time.perf_counter(), time.thread_time()
                        await read()
                        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                        steps.on = False
                        figures[name]["cpu_ms"].append(cpu * 1000)
                        figures[name]["wall_ms"].append(wall * 1000)
                        figures[name]["own_steps_ms"].append(steps.own * 1000)
                        figures[name]["longest_step_ms"].append(steps.longest * 1000)
        finally:
            broker.stop()
    print(
        f"{args.database}: {args.waiting} envelopes a read, answers of {sorted(sizes)} bytes, "
        f"{args.reads} reads each, load {os.getloadavg()[0]:.2f}"
    )
    for name, f in figures.items():
        longest = f["longest_step_ms"]
        print(
            f"  {name:>10}: event loop CPU {statistics.median(f['cpu_ms']):6.2f} ms "
            f"(the read's own steps {statistics.median(f['own_steps_ms']):6.2f} ms), "
            f"longest step {statistics.median(longest):6.2f} ms (max {max(longest):6.2f}), "
            f"wall {statistics.median(f['wall_ms']):6.2f} ms"
        )
    return {"database": args.database, "waiting": args.waiting, "figures": figures}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--waiting", type=int, default=200, help="envelopes in the mailbox")
    p.add_argument("--reads", type=int, default=40, help="reads of each variant")
    p.add_argument("--batches", type=int, nargs="+", default=[25, 50, 100, 500])
    p.add_argument("--pause", type=float, default=0.3, help="seconds between two reads")
    p.add_argument("--out", default="", help="JSON results file")
    return p.parse_args(argv)


if __name__ == "__main__":
    parsed = parse()
    result = asyncio.run(main(parsed))
    if parsed.out:
        Path(parsed.out).write_text(json.dumps(result, indent=2))
