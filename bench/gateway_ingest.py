"""The gateway's figure: HTTP ingest → sealed message in the receiver's mailbox.

Each run starts the real gateway as its own process (``attest-gateway serve``: API, outbox
relay, delivery and tracker consumers, sweeper) on the run's shared broker
(KAFKA_BOOTSTRAP_SERVERS, so it starts no broker of its own), with a fresh VAR_DIR, a fresh
database (SQLite file; PostgreSQL: a new database, dropped afterwards), a unique topic and
consumer-group prefix and a free port. It waits for ``/readyz``, reads the demo credentials
the gateway writes (var/demo-credentials.json) for Jobcenter København's API key, sends one
priming request and waits until it is in the mailbox (the consumers have joined their groups;
not timed),
and runs
the load generator (bench/loadgen.py, its own process) against
``POST /jobcenter/v1/attest-requests`` with valid, distinct requests to Psykiatrisk Center
København. Then it waits until every accepted request is in the receiver's mailbox and reads
``mailbox.delivered_at`` per conversation from the database.

Latency ingest → mailbox of a request = ``mailbox.delivered_at`` (the delivery consumer's
wall clock, UTC) − the loadgen's scheduled send time (wall clock, UTC, same machine).

Figures (SQLite; the same with ``ingest.pg.`` on PostgreSQL):

- ``ingest.max``: requests/s that reached the mailbox, closed loop (C workers): delivered
  requests / (last delivery − first send). Baseline ``http.minimal.max``.
- ``ingest.p50@R``, ``ingest.p99@R``: ms ingest → mailbox, open loop at R/s (100, 500; 1000
  and 2000 without --quick if the gateway keeps up); baselines ``http.minimal.p50@R``/``p99@R``.
- ``ingest.http_p99@R``: ms, the HTTP answer alone (answer − scheduled send).
- ``ingest.achieved@R``: requests/s reaching the mailbox, instead of latencies, at the first
  rate the gateway does not sustain (higher rates are then not tried). An open-loop run offers
  at most 1,500 requests (15 s at 100/s, 3 s at 500/s).
- ``rss.gateway``: MiB, peak RSS (VmHWM) of the gateway process after the closed-loop run;
  ``rss.loadgen``: the load generator's.

A rate is *sustained* when every accepted request reached the mailbox, at most 1% of the
answers were not 202, and the last delivery came at most max(1 s, 25% of the window) after
the last scheduled send (no backlog left to drain).

``BENCH_PROFILE_DIR=dir`` runs each gateway under cProfile (dir/gateway-<db>-<run>.prof);
``BENCH_INGEST_DBS=sqlite`` (default ``sqlite,postgres``) chooses the databases.

Timed: the load generator's window and the drain into the mailbox. Not timed: starting the
gateway (migrations, demo organisations and keys), reading the database afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.gateway.demo import DEMO_ORGS
from attest_gateway.gateway.store.db import aware, make_engine
from attest_gateway.gateway.store.tables import mailbox, outbox
from attest_gateway.schemas.events import MessageType
from bench.common import SEED, BenchContext, Figure, console, peak_rss_mib, percentile, repeat
from bench.loadgen import GatewayBody, LoadResult, free_port, run_loadgen, stop_process, wait_http

CONCURRENCY = 32
JOBCENTER = next(o for o in DEMO_ORGS if o.id == "jc-koebenhavn")
RECEIVER = next(o for o in DEMO_ORGS if o.id == "psyk-kbh")
ATTEST_PATH = "/jobcenter/v1/attest-requests"


# --- one gateway process ---------------------------------------------------------------------


@asynccontextmanager
async def fresh_database(ctx: BenchContext, kind: str, var_dir: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{(var_dir / 'gateway.db').as_posix()}"
        return
    name = f"attest_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ctx.postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = ctx.postgres_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(ctx.postgres_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


OPEN_LOOP_REQUESTS = 1500


@dataclass
class RunningGateway:
    proc: asyncio.subprocess.Process
    base_url: str
    database_url: str
    api_key: str
    var_dir: Path


@asynccontextmanager
async def gateway(ctx: BenchContext, kind: str, tag: str) -> AsyncIterator[RunningGateway]:
    uid = uuid.uuid4().hex[:8]
    var_dir = (ctx.workdir / "ingest" / f"{tag}-{uid}").resolve()
    var_dir.mkdir(parents=True)
    async with fresh_database(ctx, kind, var_dir) as database_url:
        port = free_port()
        env = os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": ctx.bootstrap,
            "VAR_DIR": str(var_dir),
            "DATABASE_URL": database_url,
            "KAFKA_TOPIC_PREFIX": f"bench-{uid}.",
            "KAFKA_GROUP_PREFIX": f"bench-{uid}",
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "LOG_FORMAT": "json",
        }
        exe = Path(sys.executable).parent / "attest-gateway"
        log = (var_dir / "gateway.log").open("wb")
        try:
            argv = [str(exe), "serve", "--port", str(port)]
            profile_dir = os.environ.get("BENCH_PROFILE_DIR")
            if profile_dir:  # cProfile the gateway (written when it exits after SIGTERM)
                out = f"{profile_dir}/gateway-{kind}-{tag}.prof"  # relative to the cwd
                argv = [sys.executable, "-m", "cProfile", "-o", out, *argv]
            proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
            try:
                base = f"http://127.0.0.1:{port}"
                await wait_http(f"{base}/readyz", proc)
                creds = json.loads(
                    await asyncio.to_thread((var_dir / "demo-credentials.json").read_text)
                )
                running = RunningGateway(
                    proc, base, database_url, creds[JOBCENTER.id]["api_key"], var_dir
                )
                await prime(running)
                yield running
            finally:
                await stop_process(proc)
        finally:
            log.close()


async def mailbox_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(mailbox)
                .where(mailbox.c.message_type == MessageType.ATTEST_REQUEST.value)
            )
        ).scalar_one()
    return int(count)


async def prime(gw: RunningGateway, within: float = 120.0) -> None:
    """/readyz answers before the consumers have joined their groups and got partitions (a
    few seconds on a fresh group): send one request and wait until it is in the mailbox, so
    the timed run measures the steady state, not the start-up."""
    import httpx

    body = GatewayBody(
        jobcenter_gln=JOBCENTER.gln or "",
        municipality=JOBCENTER.kommunekode or "",
        receiver_sor=RECEIVER.sor or "",
        seed=SEED + 1,
    )(0)
    async with httpx.AsyncClient(timeout=30.0) as client:
        answer = await client.post(
            gw.base_url + ATTEST_PATH,
            content=body,
            headers={"Authorization": f"Bearer {gw.api_key}", "Content-Type": "application/json"},
        )
    if answer.status_code != 202:
        raise RuntimeError(f"priming request answered {answer.status_code}: {answer.text[:200]}")
    engine = make_engine(gw.database_url)
    try:
        deadline = asyncio.get_running_loop().time() + within
        while await mailbox_count(engine) < 1:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the priming request reached no mailbox within {within} s")
            await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


@dataclass
class Delivery:
    """What reached the mailbox, matched with the load generator's records."""

    load: LoadResult
    delivered_at: dict[str, float]  # conversation id -> epoch seconds
    envelope_bytes: float
    waited_s: float
    missing: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def latencies_ms(self) -> list[float]:
        return [
            (self.delivered_at[r[5]] - r[1]) * 1000
            for r in self.load.accepted
            if r[5] in self.delivered_at
        ]

    def throughput(self) -> float:
        """Requests in the mailbox per second, from the first scheduled send to the last
        delivery."""
        if not self.delivered_at:
            return 0.0
        first: float = min(r[1] for r in self.load.records)
        span = max(self.delivered_at.values()) - first
        return len(self.delivered_at) / span if span > 0 else 0.0

    def drain_s(self) -> float:
        """Last delivery minus last scheduled send: the backlog left at the window's end."""
        if not self.delivered_at:
            return float("inf")
        last: float = max(r[1] for r in self.load.records)
        return max(self.delivered_at.values()) - last

    def sustained(self, window_s: float) -> bool:
        total = len(self.load.records)
        return (
            self.missing == 0
            and self.load.non_accepted() <= 0.01 * total
            and self.drain_s() <= max(1.0, 0.25 * window_s)
        )


async def wait_for_mailbox(gw: RunningGateway, load: LoadResult, within: float) -> Delivery:
    """Poll the database until every accepted request is in the mailbox (or `within` s)."""
    wanted = {r[5] for r in load.accepted if r[5]}
    engine = make_engine(gw.database_url)
    loop = asyncio.get_running_loop()
    start = loop.time()
    query = sa.select(mailbox.c.conversation_id, mailbox.c.delivered_at).where(
        mailbox.c.message_type == MessageType.ATTEST_REQUEST.value
    )
    try:
        while True:
            count = await mailbox_count(engine) - 1  # the priming request
            waited = loop.time() - start
            if count >= len(wanted) or waited > within or gw.proc.returncode is not None:
                break
            await asyncio.sleep(0.25)
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            size = (
                await conn.execute(sa.select(sa.func.avg(sa.func.length(mailbox.c.envelope))))
            ).scalar_one()
            unpublished = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(outbox)
                    .where(outbox.c.published_at.is_(None))
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    delivered = {
        r.conversation_id: aware(r.delivered_at).timestamp()
        for r in rows
        if r.conversation_id in wanted
    }
    return Delivery(
        load,
        delivered,
        float(size or 0),
        waited,
        missing=len(wanted - delivered.keys()),
        extra={"unpublished_outbox_rows": int(unpublished)},
    )


# --- the suite -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    deliveries: list[Delivery] = field(default_factory=list)
    rss_gateway: list[float] = field(default_factory=list)

    def recorded(self, warmup: int) -> list[Delivery]:
        return self.deliveries[warmup:]


async def measure(
    ctx: BenchContext,
    kind: str,
    tag: str,
    into: Measured,
    load: Callable[[RunningGateway, Path], Awaitable[LoadResult]],
    window_s: float,
) -> Delivery:
    async with gateway(ctx, kind, tag) as gw:
        cpu0 = cpu_seconds(gw.proc.pid)
        result = await load(gw, gw.var_dir / "load.json")
        delivery = await wait_for_mailbox(gw, result, within=120.0 + 4 * window_s)
        into.rss_gateway.append(peak_rss_mib(gw.proc.pid))
        cpu = cpu_seconds(gw.proc.pid) - cpu0
        delivery.extra["gateway_cpu_ms_per_request"] = cpu * 1000 / max(1, len(result.accepted))
    into.deliveries.append(delivery)
    if delivery.missing:
        console.print(
            f"  [red]{delivery.missing} accepted request(s) never reached the mailbox "
            f"(waited {delivery.waited_s:.0f} s)[/red]"
        )
    return delivery


def _notes(deliveries: list[Delivery]) -> list[str]:
    notes: list[str] = []
    bad = sum(d.load.non_accepted() for d in deliveries)
    if bad:
        statuses: dict[str, int] = {}
        for d in deliveries:
            for k, v in d.load.statuses().items():
                statuses[k] = statuses.get(k, 0) + v
        notes.append(f"non-202 answers: {bad} of {sum(statuses.values())} ({statuses})")
    missing = sum(d.missing for d in deliveries)
    if missing:
        notes.append(f"{missing} accepted request(s) never reached the mailbox")
    return notes


def _extra(deliveries: list[Delivery]) -> dict[str, Any]:
    return {
        "achieved_per_s": [round(d.throughput(), 1) for d in deliveries],
        "http_accepted_per_s": [round(d.load.throughput(), 1) for d in deliveries],
        "drain_s": [round(d.drain_s(), 2) for d in deliveries],
        "requests": [len(d.load.records) for d in deliveries],
        "statuses": [d.load.statuses() for d in deliveries],
        "missing": [d.missing for d in deliveries],
        "envelope_bytes": [round(d.envelope_bytes) for d in deliveries],
        "loadgen_send_lag_p99_ms": [round(d.load.send_lag_p99_ms(), 2) for d in deliveries],
        "loadgen_cpu_s": [round(d.load.meta["cpu_seconds"], 2) for d in deliveries],
        "gateway_cpu_ms_per_request": [
            round(d.extra.get("gateway_cpu_ms_per_request", 0.0), 2) for d in deliveries
        ],
        "unpublished_outbox_rows": [d.extra.get("unpublished_outbox_rows") for d in deliveries],
    }


async def run_kind(ctx: BenchContext, kind: str) -> list[Figure]:
    prefix = "ingest." if kind == "sqlite" else "ingest.pg."
    db = "SQLite" if kind == "sqlite" else "PostgreSQL"
    extra_args = [
        "--body", "gateway", "--jobcenter-gln", JOBCENTER.gln or "",
        "--municipality", JOBCENTER.kommunekode or "", "--receiver-sor", RECEIVER.sor or "",
    ]  # fmt: skip
    figures: list[Figure] = []

    # closed loop: the maximum into the mailbox, and the peak RSS under it
    window = 3.0 if ctx.quick else 15.0
    peak = Measured()

    async def closed(i: int) -> float:
        async def load(gw: RunningGateway, out: Path) -> LoadResult:
            return await run_loadgen(
                out, url=gw.base_url + ATTEST_PATH, mode="closed", duration=window,
                concurrency=CONCURRENCY, extra=[*extra_args, "--api-key", gw.api_key],
            )  # fmt: skip

        return (await measure(ctx, kind, f"max-{i}", peak, load, window)).throughput()

    values = await repeat(ctx, f"{prefix}max", closed)
    recorded = peak.recorded(ctx.warmup)
    figures.append(
        Figure(
            name=f"{prefix}max",
            label=f"gateway ingest → mailbox, max ({db})",
            unit="requests/s",
            runs=values,
            baseline="http.minimal.max",
            notes="; ".join(_notes(recorded)),
            extra=_extra(recorded) | {"concurrency": CONCURRENCY, "window_s": window},
        )
    )
    if kind == "sqlite":
        figures += [
            Figure(
                name="rss.gateway",
                label="gateway peak RSS (closed loop)",
                unit="MiB",
                runs=peak.rss_gateway[ctx.warmup :],
                higher_is_better=False,
            ),
            Figure(
                name="rss.loadgen",
                label="load generator peak RSS (closed loop)",
                unit="MiB",
                runs=[d.load.meta["peak_rss_mib"] for d in recorded],
                higher_is_better=False,
            ),
        ]

    # open loop at fixed rates, at most OPEN_LOOP_REQUESTS per run: a rate the gateway does not
    # sustain leaves a backlog that drains at its own pace, which would otherwise take minutes
    rates: tuple[int, ...] = (100, 500) if ctx.quick or kind != "sqlite" else (100, 500, 1000, 2000)
    for rate in rates:
        window = 3.0 if ctx.quick else min(15.0, OPEN_LOOP_REQUESTS / rate)
        m = Measured()

        async def open_loop(
            i: int, rate: int = rate, m: Measured = m, window: float = window
        ) -> float:
            async def load(gw: RunningGateway, out: Path, window: float = window) -> LoadResult:
                return await run_loadgen(
                    out, url=gw.base_url + ATTEST_PATH, mode="open", duration=window,
                    rate=rate, extra=[*extra_args, "--api-key", gw.api_key],
                )  # fmt: skip

            d = await measure(ctx, kind, f"open{rate}-{i}", m, load, window)
            return percentile(d.latencies_ms() or [float("nan")], 50)

        p50s = await repeat(ctx, f"{prefix}p50@{rate}", open_loop)
        recorded = m.recorded(ctx.warmup)
        sustained = [d.sustained(window) for d in recorded]
        notes = _notes(recorded)
        extra = _extra(recorded) | {"rate": rate, "window_s": window, "sustained": sustained}
        achieved = [d.throughput() for d in recorded]
        if not all(sustained):
            notes.append(
                f"offered {rate}/s, not sustained in {sustained.count(False)} of "
                f"{len(sustained)} run(s): achieved {', '.join(f'{a:,.0f}' for a in achieved)}/s "
                f"into the mailbox, backlog drained {max(d.drain_s() for d in recorded):.1f} s "
                "after the window"
            )
        if not all(sustained):
            figures.append(
                Figure(
                    name=f"{prefix}achieved@{rate}",
                    label=f"gateway ingest → mailbox, achieved at offered {rate}/s ({db})",
                    unit="requests/s",
                    runs=achieved,
                    notes="; ".join(notes),
                    extra=extra,
                )
            )
            break  # higher rates will not be sustained either; latencies here would only
            # measure the backlog
        note = "; ".join(notes)

        def lat(q: float, http: bool, recorded: list[Delivery] = recorded) -> list[float]:
            return [
                percentile(
                    (d.load.http_latencies_ms() if http else d.latencies_ms()) or [float("nan")],
                    q,
                )
                for d in recorded
            ]

        figures += [
            Figure(
                name=f"{prefix}p50@{rate}",
                label=f"gateway ingest → mailbox p50 at {rate}/s ({db})",
                unit="ms",
                runs=p50s,
                baseline=f"http.minimal.p50@{rate}",
                higher_is_better=False,
                notes=note,
                extra=extra,
            ),
            Figure(
                name=f"{prefix}p99@{rate}",
                label=f"gateway ingest → mailbox p99 at {rate}/s ({db})",
                unit="ms",
                runs=lat(99, http=False),
                baseline=f"http.minimal.p99@{rate}",
                higher_is_better=False,
                notes=note,
                extra=extra,
            ),
            Figure(
                name=f"{prefix}http_p99@{rate}",
                label=f"gateway HTTP answer p99 at {rate}/s ({db})",
                unit="ms",
                runs=lat(99, http=True),
                baseline=f"http.minimal.p99@{rate}",
                higher_is_better=False,
                notes=note,
                extra=extra,
            ),
        ]
    return figures


async def run(ctx: BenchContext) -> list[Figure]:
    figures: list[Figure] = []
    for kind in os.environ.get("BENCH_INGEST_DBS", "sqlite,postgres").split(","):
        try:
            figures += await run_kind(ctx, kind)
        except (OSError, asyncpg.PostgresError) as exc:
            if kind != "postgres":
                raise
            console.print(f"  [yellow]PostgreSQL skipped: {type(exc).__name__}: {exc}[/yellow]")
    return figures
