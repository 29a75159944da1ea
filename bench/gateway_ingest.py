"""The gateway's figure: HTTP ingest → sealed message in the receiver's mailbox.

Each run starts the real gateway as its own process (``attest-gateway serve``: API, outbox
relay, delivery and tracker consumers, sweeper; or two, see below) on the run's shared broker
(KAFKA_BOOTSTRAP_SERVERS, so it starts no broker of its own), with a fresh VAR_DIR, a fresh
database (SQLite file; PostgreSQL: a new database, dropped afterwards), a unique topic and
consumer-group prefix and a free port. It waits for ``/readyz``, reads the demo credentials
the gateway writes (var/demo-credentials.json) for Jobcenter København's API key, sends one
priming request and waits until it is in the mailbox (the consumers have joined their groups;
not timed), and runs the load generator (bench/loadgen.py, its own process) against
``POST /jobcenter/v1/attest-requests`` with valid, distinct requests to Psykiatrisk Center
København. Then it waits until every accepted request is in the receiver's mailbox and reads
``mailbox.delivered_at`` per conversation from the database.

Latency ingest → mailbox of a request = ``mailbox.delivered_at`` (the delivery consumer's
wall clock, UTC) − the loadgen's scheduled send time (wall clock, UTC, same machine).

Figures (SQLite; the same with ``ingest.pg.`` on PostgreSQL, and with ``ingest.pg.split.``
for PostgreSQL served by two processes, ``serve --role api`` and ``serve --role worker``, so
the Python work can use two cores; the one-process figures are the reference):

- ``ingest.max``: requests/s that reached the mailbox, closed loop (C workers): delivered
  requests / (last delivery − first send). Baseline ``http.minimal.max``.
- ``ingest.p50@R``, ``ingest.p99@R``: ms ingest → mailbox, open loop at R/s (100, 500; 1000
  and 2000 without --quick if the gateway keeps up); baselines ``http.minimal.p50@R``/``p99@R``.
- ``ingest.http_p99@R``: ms, the HTTP answer alone (answer − scheduled send).
- ``ingest.achieved@R``: requests/s reaching the mailbox, instead of latencies, at the first
  rate the gateway does not sustain (higher rates are then not tried). An open-loop run offers
  at most 1,500 requests (15 s at 100/s, 3 s at 500/s).
- ``ingest.statements_per_request``: SQL statements per accepted request, closed loop
  (``attest_gateway_db_statements_total`` from the gateway's /metrics, summed over its
  processes, from a settled gateway before the load to a settled one after it: see settle()).
- ``rss.gateway``: MiB, peak RSS (VmHWM) of the gateway process after the closed-loop run;
  ``rss.loadgen``: the load generator's (SQLite only). Two processes: ``ingest.pg.split.rss.R``
  and ``ingest.pg.split.cpu_ms.R``, peak RSS and CPU ms per accepted request of role R's process.

A rate is *sustained* when every accepted request reached the mailbox, at most 1% of the
answers were not 202, and the last delivery came at most max(1 s, 25% of the window) after
the last scheduled send (no backlog left to drain).

``ingest.cpu_ms.machine`` (and per deployment): busy CPU ms of the whole machine per accepted
request in the closed-loop run, and its census (gateway processes, broker, PostgreSQL server,
load generator, the rest), printed per run: where the two cores go.

``BENCH_PROFILE_DIR=dir`` runs each gateway process under cProfile
(dir/gateway-<db>-<run>[-<role>].prof); ``BENCH_INGEST_DBS=sqlite`` (default
``sqlite,postgres,postgres-split``) chooses the deployments.

Timed: the load generator's window and the drain into the mailbox. Not timed: starting the
gateway (migrations, demo organisations and keys; with two processes the worker first, then
the API), reading the database and /metrics afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.contracts.stages import MessageType
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.infra.db.engine import aware, make_engine
from attest_gateway.infra.db.tables import mailbox, outbox
from attest_gateway.infra.kafka.topics import MEDCOM_MESSAGES, TRACKING
from bench.common import (
    SEED,
    BenchContext,
    CpuCensus,
    Figure,
    console,
    peak_rss_mib,
    percentile,
    repeat,
)
from bench.loadgen import GatewayBody, LoadResult, free_port, run_loadgen, stop_process, wait_http

CONCURRENCY = 32
JOBCENTER = next(o for o in DEMO_ORGS if o.id == "jc-koebenhavn")
RECEIVER = next(o for o in DEMO_ORGS if o.id == "psyk-kbh")
ATTEST_PATH = "/jobcenter/v1/attest-requests"


# --- one gateway process ---------------------------------------------------------------------


@asynccontextmanager
async def scratch_postgres(dsn: str) -> AsyncIterator[str]:
    """The URL of a fresh PostgreSQL database on `dsn`'s server, dropped after."""
    name = f"attest_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def fresh_database(ctx: BenchContext, kind: str, var_dir: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{(var_dir / 'gateway.db').as_posix()}"
        return
    async with scratch_postgres(ctx.postgres_dsn) as url:
        yield url


OPEN_LOOP_REQUESTS = 1500
ONE_PROCESS: tuple[str, ...] = ("all",)
API_AND_WORKER: tuple[str, ...] = ("worker", "api")  # the worker first: it migrates


@dataclass(frozen=True)
class Shape:
    """A deployment the suite measures: a database and the gateway's processes (roles)."""

    kind: str  # "sqlite" | "postgres"
    roles: tuple[str, ...]
    prefix: str  # of the figures' names
    label: str  # in the figures' labels


SHAPES = {
    "sqlite": Shape("sqlite", ONE_PROCESS, "ingest.", "SQLite"),
    "postgres": Shape("postgres", ONE_PROCESS, "ingest.pg.", "PostgreSQL"),
    "postgres-split": Shape(
        "postgres", API_AND_WORKER, "ingest.pg.split.", "PostgreSQL, API + worker processes"
    ),
}


@dataclass
class GatewayProcess:
    role: str  # "all", "api" or "worker" (`attest-gateway serve --role`)
    proc: asyncio.subprocess.Process
    url: str  # its port: the API, or the worker's /readyz and /metrics


@dataclass
class RunningGateway:
    processes: list[GatewayProcess]
    base_url: str  # the API
    database_url: str
    api_key: str
    var_dir: Path
    topic_prefix: str
    metrics_token: str

    @property
    def proc(self) -> asyncio.subprocess.Process:
        """The process that serves the API."""
        return next(p.proc for p in self.processes if p.role != "worker")

    def exited(self) -> bool:
        return any(p.proc.returncode is not None for p in self.processes)


@asynccontextmanager
async def gateway(
    ctx: BenchContext,
    kind: str,
    tag: str,
    roles: tuple[str, ...] = ONE_PROCESS,
    settings: dict[str, str] | None = None,
) -> AsyncIterator[RunningGateway]:
    """The gateway as `roles` processes (`serve`, or `serve --role R` each) on one database,
    one topic and group prefix; started one after the other, each ready before the next.
    `settings`: more environment settings of the gateway's processes."""
    uid = uuid.uuid4().hex[:8]
    var_dir = (ctx.workdir / "ingest" / f"{tag}-{uid}").resolve()
    var_dir.mkdir(parents=True)
    token = uuid.uuid4().hex
    async with fresh_database(ctx, kind, var_dir) as database_url, AsyncExitStack() as stack:
        env = (
            os.environ
            | {
                "KAFKA_BOOTSTRAP_SERVERS": ctx.bootstrap,
                "VAR_DIR": str(var_dir),
                "DATABASE_URL": database_url,
                "KAFKA_TOPIC_PREFIX": f"bench-{uid}.",
                "KAFKA_GROUP_PREFIX": f"bench-{uid}",
                "API_HOST": "127.0.0.1",
                "LOG_FORMAT": "json",
                "METRICS_TOKEN": token,
                # The gateway's capacity is measured, with one job centre sending from 32
                # connections: no limit per client.
                "RATE_LIMIT_WRITES_PER_SECOND": "0",
                "RATE_LIMIT_READS_PER_SECOND": "0",
                "CONCURRENT_REQUESTS_PER_ORG": "0",
                "CONCURRENT_REQUESTS_PER_ORG_TOTAL": "0",
            }
            | (settings or {})
        )
        processes = [
            await stack.enter_async_context(_serve(env, var_dir, role, f"{kind}-{tag}"))
            for role in roles
        ]
        creds = json.loads(await asyncio.to_thread((var_dir / "demo-credentials.json").read_text))
        running = RunningGateway(
            processes,
            next(p.url for p in processes if p.role != "worker"),
            database_url,
            creds[JOBCENTER.id]["api_key"],
            var_dir,
            env["KAFKA_TOPIC_PREFIX"],
            token,
        )
        await prime(running)
        yield running


@asynccontextmanager
async def _serve(
    env: dict[str, str], var_dir: Path, role: str, name: str
) -> AsyncIterator[GatewayProcess]:
    """One `attest-gateway serve` process, ready (/readyz); SIGTERM when done."""
    port = free_port()
    exe = Path(sys.executable).parent / "attest-gateway"
    suffix = "" if role == "all" else f"-{role}"
    with (var_dir / f"gateway{suffix}.log").open("wb") as log:
        argv = [str(exe), "serve", "--port", str(port)]
        if role != "all":
            argv += ["--role", role]
        profile_dir = os.environ.get("BENCH_PROFILE_DIR")
        if profile_dir:  # cProfile the gateway (written when it exits after SIGTERM)
            out = f"{profile_dir}/gateway-{name}{suffix}.prof"  # relative to the cwd
            argv = [sys.executable, "-m", "cProfile", "-o", out, *argv]
        env = env | {"API_PORT": str(port)}
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_http(f"{base}/readyz", proc)
            yield GatewayProcess(role, proc, base)
        finally:
            await stop_process(proc)


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


async def unpublished_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(outbox)
                .where(outbox.c.published_at.is_(None))
            )
        ).scalar_one()
    return int(count)


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
            if count >= len(wanted) or waited > within or gw.exited():
                break
            await asyncio.sleep(0.25)
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            size = (
                await conn.execute(sa.select(sa.func.avg(sa.func.length(mailbox.c.envelope))))
            ).scalar_one()
        unpublished = await unpublished_count(engine)
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


# --- the gateway's own counters (/metrics of each process) ----------------------------------

STATEMENTS = "attest_gateway_db_statements_total"
PRODUCED = "attest_gateway_kafka_records_produced_total"
CONSUMED = "attest_gateway_kafka_records_consumed_total"


@dataclass
class Counters:
    """One /metrics scrape of each of the gateway's processes."""

    samples: list[list[Sample]]

    def total(self, name: str, **labels: str) -> float:
        """Summed over the processes and over the label values not given."""
        return sum(
            s.value
            for process in self.samples
            for s in process
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def in_flight(self, topics: tuple[str, ...]) -> tuple[float, ...]:
        """Records produced to each topic and not (yet) consumed by the gateway."""
        return tuple(self.total(PRODUCED, topic=t) - self.total(CONSUMED, topic=t) for t in topics)


async def scrape(gw: RunningGateway) -> Counters:
    import httpx

    auth = {"Authorization": f"Bearer {gw.metrics_token}"}
    samples: list[list[Sample]] = []
    async with httpx.AsyncClient(timeout=30.0) as client:
        for p in gw.processes:
            answer = await client.get(f"{p.url}/metrics", headers=auth)
            answer.raise_for_status()
            families = text_string_to_metric_families(answer.text)
            samples.append([s for family in families for s in family.samples])
    return Counters(samples)


async def settle(gw: RunningGateway, within: float) -> tuple[Counters, bool]:
    """Wait until the gateway has nothing left to do for what it accepted: no unpublished
    outbox row, and every record produced to the topics its consumers read (delivery, tracker)
    consumed, twice in a row with nothing produced or consumed in between. The last scrape,
    and whether that happened within `within` s."""
    topics = (f"{gw.topic_prefix}{MEDCOM_MESSAGES}", f"{gw.topic_prefix}{TRACKING}")
    engine = make_engine(gw.database_url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        while True:
            first = await scrape(gw)
            if all(n <= 0 for n in first.in_flight(topics)) and not await unpublished_count(engine):
                again = await scrape(gw)
                if all(
                    again.total(name, topic=t) == first.total(name, topic=t)
                    for name in (PRODUCED, CONSUMED)
                    for t in topics
                ):
                    return again, True
            if loop.time() > deadline or gw.exited():
                return await scrape(gw), False
            await asyncio.sleep(0.25)
    finally:
        await engine.dispose()


# --- the suite -------------------------------------------------------------------------------


@dataclass
class Measured:
    deliveries: list[Delivery] = field(default_factory=list)
    rss: list[dict[str, float]] = field(default_factory=list)  # role -> MiB, per run

    def recorded(self, warmup: int) -> list[Delivery]:
        return self.deliveries[warmup:]

    def rss_of(self, role: str, warmup: int) -> list[float]:
        return [run[role] for run in self.rss[warmup:]]


SETTLE_S = 60.0  # at most, for the tracker to catch up before and after a closed-loop run


async def measure(
    ctx: BenchContext,
    shape: Shape,
    tag: str,
    into: Measured,
    load: Callable[[RunningGateway, Path], Awaitable[LoadResult]],
    window_s: float,
    *,
    statements: bool = False,
) -> Delivery:
    """One run on a fresh gateway. `statements`: also count the SQL statements the gateway
    sent from a settled state before the load to a settled one after it (see settle())."""
    async with gateway(ctx, shape.kind, tag, shape.roles) as gw:
        before = (await settle(gw, SETTLE_S))[0] if statements else None
        census = CpuCensus(
            {f"gateway {p.role}": p.proc.pid for p in gw.processes}
            | ({"broker": ctx.broker_pid} if ctx.broker_pid else {}),
            postgres=shape.kind == "postgres",
        )
        census.start()
        result = await load(gw, gw.var_dir / "load.json")
        delivery = await wait_for_mailbox(gw, result, within=120.0 + 4 * window_s)
        accepted = max(1, len(result.accepted))
        by_part = census.stop(accepted, {"loadgen": result.meta["cpu_seconds"]})
        into.rss.append({p.role: peak_rss_mib(p.proc.pid) for p in gw.processes})
        cpu_ms = {p.role: by_part[f"gateway {p.role}"] for p in gw.processes}
        delivery.extra["cpu_census_ms_per_request"] = by_part
        console.print("  CPU ms per accepted request: " + _census_line(by_part))
        delivery.extra["gateway_cpu_ms_per_request"] = sum(cpu_ms.values())
        delivery.extra["cpu_ms_per_request"] = cpu_ms
        if before is not None:
            after, caught_up = await settle(gw, SETTLE_S)
            delivery.extra["db_statements"] = after.total(STATEMENTS) - before.total(STATEMENTS)
            delivery.extra["statements_per_request"] = delivery.extra["db_statements"] / accepted
            delivery.extra["settled"] = caught_up
            console.print(
                f"  {delivery.extra['db_statements']:,.0f} SQL statements, "
                f"{delivery.extra['statements_per_request']:.1f} per accepted request"
                + ("" if caught_up else f" (not settled within {SETTLE_S:.0f} s)")
            )
    into.deliveries.append(delivery)
    if delivery.missing:
        console.print(
            f"  [red]{delivery.missing} accepted request(s) never reached the mailbox "
            f"(waited {delivery.waited_s:.0f} s)[/red]"
        )
    return delivery


def _census_line(by_part: dict[str, float]) -> str:
    parts = ", ".join(
        f"{name} {ms:.2f}" for name, ms in by_part.items() if name not in ("machine", "busy_share")
    )
    return f"{parts}; machine {by_part['machine']:.2f} ({by_part['busy_share']:.0%} busy)"


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
        "cpu_ms_per_request_by_process": [
            {role: round(ms, 2) for role, ms in d.extra.get("cpu_ms_per_request", {}).items()}
            for d in deliveries
        ],
        "cpu_census_ms_per_request": [
            {k: round(v, 3) for k, v in d.extra.get("cpu_census_ms_per_request", {}).items()}
            for d in deliveries
        ],
        "unpublished_outbox_rows": [d.extra.get("unpublished_outbox_rows") for d in deliveries],
    } | {
        key: [d.extra.get(key) for d in deliveries]
        for key in ("db_statements", "settled")
        if any(key in d.extra for d in deliveries)
    }


STATEMENTS_NOTE = (
    "SQL statements the gateway sent (attest_gateway_db_statements_total{}, from its /metrics) "
    "per accepted request, closed loop: from a settled state before the load to one after it "
    "(every accepted request in the mailbox, no unpublished outbox row, every record of "
    "medcom.messages and gateway.tracking consumed, so the tracker has caught up); includes "
    "the relays' idle polls, the sweepers and the /metrics store-gauge refresh (3 statements, "
    "at most every 10 s)"
)


CENSUS_NOTE = (
    "busy CPU of the whole machine (/proc/stat, both cores) from the load's start until every "
    "accepted request was in the mailbox, divided by the accepted requests; its parts: the "
    "gateway's processes, the shared broker, the PostgreSQL server's processes, the load "
    "generator (its own count, load only) and this benchmark process; other = the rest (the "
    "load generator's start, the kernel's own work, anything else running)"
)


def extra_args(gw: RunningGateway) -> list[str]:
    return [
        "--body", "gateway", "--jobcenter-gln", JOBCENTER.gln or "",
        "--municipality", JOBCENTER.kommunekode or "", "--receiver-sor", RECEIVER.sor or "",
        "--api-key", gw.api_key,
    ]  # fmt: skip


async def closed_loop_figures(ctx: BenchContext, shape: Shape) -> list[Figure]:
    """The maximum into the mailbox (closed loop), the statements per request, and per
    process the peak RSS and (several processes) the CPU per request."""
    prefix, db = shape.prefix, shape.label
    window = 3.0 if ctx.quick else 15.0
    peak = Measured()

    async def closed(i: int) -> float:
        async def load(gw: RunningGateway, out: Path) -> LoadResult:
            return await run_loadgen(
                out, url=gw.base_url + ATTEST_PATH, mode="closed", duration=window,
                concurrency=CONCURRENCY, extra=extra_args(gw),
            )  # fmt: skip

        delivery = await measure(ctx, shape, f"max-{i}", peak, load, window, statements=True)
        return delivery.throughput()

    values = await repeat(ctx, f"{prefix}max", closed)
    recorded = peak.recorded(ctx.warmup)
    figures = [
        Figure(
            name=f"{prefix}max",
            label=f"gateway ingest → mailbox, max ({db})",
            unit="requests/s",
            runs=values,
            baseline="http.minimal.max",
            notes="; ".join(_notes(recorded)),
            extra=_extra(recorded) | {"concurrency": CONCURRENCY, "window_s": window},
        )
    ]
    unsettled = sum(not d.extra["settled"] for d in recorded)
    summed = " summed over the processes" if len(shape.roles) > 1 else ""
    figures.append(
        Figure(
            name=f"{prefix}statements_per_request",
            label=f"SQL statements per accepted request ({db})",
            unit="statements/request",
            runs=[d.extra["statements_per_request"] for d in recorded],
            higher_is_better=False,
            notes=STATEMENTS_NOTE.format(summed)
            + (
                f"; in {unsettled} run(s) the gateway had not settled within {SETTLE_S:.0f} s "
                "after the last request reached the mailbox (counted until then)"
                if unsettled
                else ""
            ),
            extra={"db_statements": [d.extra["db_statements"] for d in recorded]},
        )
    )
    census = [d.extra["cpu_census_ms_per_request"] for d in recorded]
    parts = [k for k in census[0] if k not in ("machine", "busy_share")] if census else []
    figures.append(
        Figure(
            name=f"{prefix}cpu_ms.machine",
            label=f"machine CPU per accepted request (closed loop, {db})",
            unit="CPU ms/request",
            runs=[c["machine"] for c in census],
            higher_is_better=False,
            notes=CENSUS_NOTE
            + "; by part (median ms): "
            + ", ".join(f"{k} {statistics.median(c[k] for c in census):.2f}" for k in parts)
            + "; machine busy "
            + ", ".join(f"{c['busy_share']:.0%}" for c in census),
            extra={"census": census},
        )
    )
    if shape.roles == ONE_PROCESS:
        if shape.kind == "sqlite":
            figures += [
                Figure(
                    name="rss.gateway",
                    label="gateway peak RSS (closed loop)",
                    unit="MiB",
                    runs=peak.rss_of("all", ctx.warmup),
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
        return figures
    for role in shape.roles:
        figures += [
            Figure(
                name=f"{prefix}rss.{role}",
                label=f"gateway {role} process peak RSS (closed loop, {db})",
                unit="MiB",
                runs=peak.rss_of(role, ctx.warmup),
                higher_is_better=False,
            ),
            Figure(
                name=f"{prefix}cpu_ms.{role}",
                label=f"gateway {role} process CPU per accepted request (closed loop, {db})",
                unit="CPU ms/request",
                runs=[d.extra["cpu_ms_per_request"][role] for d in recorded],
                higher_is_better=False,
                notes="user + system CPU of the process from the load's start until every "
                "accepted request was in the mailbox, divided by the accepted requests",
            ),
        ]
    return figures


async def open_loop_figures(
    ctx: BenchContext, shape: Shape, rates: tuple[int, ...]
) -> list[Figure]:
    """Latencies into the mailbox at fixed offered rates, at most OPEN_LOOP_REQUESTS per run:
    a rate the gateway does not sustain leaves a backlog that drains at its own pace, which
    would otherwise take minutes; that rate gets an `achieved` figure and ends the series."""
    prefix, db = shape.prefix, shape.label
    figures: list[Figure] = []
    for rate in rates:
        window = 3.0 if ctx.quick else min(15.0, OPEN_LOOP_REQUESTS / rate)
        m = Measured()

        async def open_loop(
            i: int, rate: int = rate, m: Measured = m, window: float = window
        ) -> float:
            async def load(gw: RunningGateway, out: Path, window: float = window) -> LoadResult:
                return await run_loadgen(
                    out, url=gw.base_url + ATTEST_PATH, mode="open", duration=window,
                    rate=rate, extra=extra_args(gw),
                )  # fmt: skip

            d = await measure(ctx, shape, f"open{rate}-{i}", m, load, window)
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


async def run_shape(ctx: BenchContext, shape: Shape) -> list[Figure]:
    many = not ctx.quick and shape.kind == "sqlite" and shape.roles == ONE_PROCESS
    rates: tuple[int, ...] = (100, 500, 1000, 2000) if many else (100, 500)
    return await closed_loop_figures(ctx, shape) + await open_loop_figures(ctx, shape, rates)


async def run(ctx: BenchContext) -> list[Figure]:
    figures: list[Figure] = []
    for key in os.environ.get("BENCH_INGEST_DBS", ",".join(SHAPES)).split(","):
        shape = SHAPES[key]
        try:
            figures += await run_shape(ctx, shape)
        except (OSError, asyncpg.PostgresError) as exc:
            if shape.kind != "postgres":
                raise
            console.print(f"  [yellow]{shape.label} skipped: {type(exc).__name__}: {exc}[/yellow]")
    return figures
