"""The gateway's delivery pipeline alone: `medcom.messages` record → checked envelope → mailbox.

Per database kind (SQLite, PostgreSQL), once (not timed):

1. a template database: migrations, the demo organisations (`ensure_demo_orgs`) and N
   accepted attest requests, made by the real use case (`submit_attest_request`: the
   request Bundle sealed for the receiver, the conversation, its outbox rows) in a gateway
   built without relay and consumers running (`bootstrap.build_gateway`).

Per run (a warm-up and `ctx.runs` recorded ones):

2. a fresh copy of the template (SQLite: the backup API; PostgreSQL: `CREATE DATABASE …
   TEMPLATE …`) and fresh topics (a new prefix; the outbox rows are renamed to it); the
   gateway (again without relay and consumers) creates them with its partition count.
3. the real delivery consumer, wired as the gateway wires it (`bootstrap.make_delivery`:
   batches per poll, partitions at once, as the settings say) starts in its own group
   and joins (Tansu's group join takes seconds: timed separately, reported in notes); its
   partitions are then paused.
4. the real relay (`OutboxRelay.publish_pending`) publishes the outbox: the N envelopes,
   exactly as the gateway publishes them (and the stage events, to a topic nobody reads).
5. **Clock**: from resuming the partitions until the group's committed offsets cover all N
   records (polled every 50 ms; the loop commits only records its handler finished: parse,
   directory checks, Ed25519 verify, idempotent mailbox insert, outbox update, stage row +
   stage event; a poll's new envelopes in one transaction, or one transaction each with
   DELIVERY_POLL_IN_ONE_TRANSACTION=false). After the clock the mailbox must hold exactly N rows
   (a dead-lettered record would also be committed: this check catches it).

The gateway's structured logs (one JSON line per record, as in production) go to
`<workdir>/gateway.log`, not to the terminal.

Also home of the database helpers `bench/tracker_ingest.py` uses (`DbTemplate`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.bootstrap import build_gateway, freeze_startup_heap, make_delivery
from attest_gateway.config import Settings, load_settings
from attest_gateway.devtools.demo import ensure_demo_orgs
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.tables import mailbox, outbox
from attest_gateway.infra.kafka.consumer import ConsumerLoop
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.observability.logging import configure_logging
from attest_gateway.services.jobcenter import submit_attest_request
from bench.baselines_crypto import JOBCENTER_ID, request_body
from bench.common import (
    SEED,
    BenchContext,
    Figure,
    console,
    cpu_seconds,
    machine_cpu_seconds,
    progress,
    repeat,
    server_cpu_seconds,
)

JOIN_TIMEOUT_S = 60.0
STALL_TIMEOUT_S = 120.0
POLL_S = 0.05


# --- shared helpers (also used by bench/tracker_ingest.py) ---------------------------------


_logging_configured = False


def gateway_logging(ctx: BenchContext) -> Path:
    """The gateway's production logging (JSON lines, INFO), written to a file in the workdir."""
    global _logging_configured
    path = ctx.workdir / "gateway.log"
    if not _logging_configured:
        configure_logging("INFO", "json")
        stream = path.open("a", encoding="utf-8")  # open for the process's lifetime
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(stream)
        _logging_configured = True
    return path


def _pg_url(admin_dsn: str, database: str) -> str:
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def _pg_admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def postgres_available(admin_dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        console.print(f"  [yellow]PostgreSQL not reachable ({type(exc).__name__}): skipped")
        return False
    await conn.close()
    return True


class DbTemplate:
    """A prepared database that each run gets a fresh copy of; everything is dropped at the end.

    SQLite: files under the workdir, copied with the backup API. PostgreSQL: databases on
    the server of `ctx.postgres_dsn`, copied with `CREATE DATABASE … TEMPLATE …`.
    """

    def __init__(self, ctx: BenchContext, kind: str, tag: str) -> None:
        self.ctx = ctx
        self.kind = kind
        self._name = f"attest_bench_{tag}_{kind}_{uuid.uuid4().hex[:8]}"
        self._dir = ctx.workdir / f"{tag}-{kind}"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._copies: list[str] = []

    @property
    def var_dir(self) -> Path:
        return self._dir / "var"

    def _sqlite_path(self, suffix: str) -> Path:
        return self._dir / f"{self._name}_{suffix}.db"

    def _url(self, suffix: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite+aiosqlite:///{self._sqlite_path(suffix).as_posix()}"
        return _pg_url(self.ctx.postgres_dsn, f"{self._name}_{suffix}")

    async def create(self) -> str:
        """The (empty, migrated) template database's URL."""
        if self.kind == "postgres":
            await _pg_admin(self.ctx.postgres_dsn, f'CREATE DATABASE "{self._name}_tpl"')
        url = self._url("tpl")
        await upgrade_async(url)
        return url

    async def copy(self, run: int) -> str:
        """A fresh copy of the template (whose engines must all be disposed of)."""
        suffix = f"run{run}"
        if self.kind == "sqlite":
            await asyncio.to_thread(
                _sqlite_copy, self._sqlite_path("tpl"), self._sqlite_path(suffix)
            )
        else:
            await _pg_admin(
                self.ctx.postgres_dsn,
                f'CREATE DATABASE "{self._name}_{suffix}" TEMPLATE "{self._name}_tpl"',
            )
        self._copies.append(suffix)
        return self._url(suffix)

    async def drop(self, run: int) -> None:
        suffix = f"run{run}"
        if self.kind == "sqlite":
            for path in self._dir.glob(f"{self._name}_{suffix}.db*"):
                path.unlink()
        else:
            await _pg_admin(
                self.ctx.postgres_dsn,
                f'DROP DATABASE IF EXISTS "{self._name}_{suffix}" WITH (FORCE)',
            )

    async def drop_all(self) -> None:
        if self.kind == "sqlite":
            shutil.rmtree(self._dir, ignore_errors=True)
            return
        for suffix in [*self._copies, "tpl"]:
            await _pg_admin(
                self.ctx.postgres_dsn,
                f'DROP DATABASE IF EXISTS "{self._name}_{suffix}" WITH (FORCE)',
            )


def _sqlite_copy(source: Path, target: Path) -> None:
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


@asynccontextmanager
async def disposing(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    try:
        yield engine
    finally:
        await engine.dispose()


def bench_settings(template: DbTemplate, url: str, prefix: str, **overrides: Any) -> Settings:
    return load_settings(
        var_dir=template.var_dir,
        database_url=url,
        kafka_topic_prefix=prefix,
        kafka_group_prefix=f"{prefix}attest-gateway",
        **overrides,
    )


def consumer_of(loop: ConsumerLoop) -> AIOKafkaConsumer:
    return loop._consumer  # the bench pauses and inspects the loop's own consumer


async def join_and_pause(
    *loops: ConsumerLoop,
) -> tuple[list[tuple[AIOKafkaConsumer, list[TopicPartition]]], float]:
    """Start the loops (members of one group), wait until the group's join gave every loop
    partitions of its own and all of the topic's partitions are held, pause them.
    Returns each loop's consumer with its partitions, and how long the join took (seconds)."""
    consumers = [consumer_of(loop) for loop in loops]
    t0 = time.perf_counter()
    for loop in loops:
        await loop.start()
    while True:
        assignments = [consumer.assignment() for consumer in consumers]
        held = set().union(*assignments)
        wanted = consumers[0].partitions_for_topic(loops[0].topic) or set()
        settled = (
            all(assignments)
            and sum(len(a) for a in assignments) == len(held)  # no partition held twice
            and len(held) == len(wanted)
        )
        if settled:
            break
        if time.perf_counter() - t0 > JOIN_TIMEOUT_S:
            raise RuntimeError(
                f"the {loops[0].topic} consumers did not join in {JOIN_TIMEOUT_S} s "
                f"({[len(a) for a in assignments]} of {len(wanted)} partitions)"
            )
        await asyncio.sleep(0.02)
    joined = time.perf_counter() - t0
    paused = []
    for consumer, assigned in zip(consumers, assignments, strict=True):
        partitions = sorted(assigned)
        consumer.pause(*partitions)
        for tp in partitions:  # the starting offsets are looked up even while paused
            await consumer.position(tp)
        paused.append((consumer, partitions))
    return paused, joined


async def committed_total(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> int:
    total = 0
    for tp in partitions:
        total += await consumer.committed(tp) or 0
    return total


@dataclass(frozen=True)
class Drained:
    seconds: float  # resume → all `target` offsets committed
    first_quarter: float  # records/s until a quarter of them were committed
    last_quarter: float  # records/s over the last quarter
    process_cpu: float = 0.0  # CPU seconds of this process (the consumer) during the clock
    postgres_cpu: float = 0.0  # CPU seconds of the local PostgreSQL server's processes
    broker_cpu: float = 0.0  # CPU seconds of the broker's process (0: not known)
    machine_busy: float = 0.0  # busy share of all the machine's cores (0–1)


async def drain(
    paused: list[tuple[AIOKafkaConsumer, list[TopicPartition]]],
    target: int,
    description: str,
    *,
    broker_pid: int | None = None,
) -> Drained:
    """The timed part: resume the paused partitions (`join_and_pause`); wait until the
    group's committed offsets cover all `target` records (the loops commit only what their
    handlers finished). The committed offsets are polled every `POLL_S` (a few small requests
    to the broker).

    Before the clock the heap is frozen as `attest-gateway serve` freezes it once started
    (`bootstrap.freeze_startup_heap`): the gateway's startup objects, and here also the
    benchmark's own prepared records, which a serving gateway does not hold, are out of the
    garbage collector's walks; unfrozen after the clock."""
    freeze_startup_heap()

    def broker() -> float:
        return cpu_seconds(broker_pid) if broker_pid is not None else 0.0

    own, server, machine, brokers = (
        cpu_seconds(os.getpid()),
        server_cpu_seconds(),
        machine_cpu_seconds(),
        broker(),
    )
    try:
        drained = await _drain(paused, target, description)
    finally:
        gc.unfreeze()
    busy, all_ = (b - a for a, b in zip(machine, machine_cpu_seconds(), strict=True))
    return replace(
        drained,
        process_cpu=cpu_seconds(os.getpid()) - own,
        postgres_cpu=server_cpu_seconds() - server,
        broker_cpu=broker() - brokers,
        machine_busy=busy / all_ if all_ else 0.0,
    )


async def _drain(
    paused: list[tuple[AIOKafkaConsumer, list[TopicPartition]]], target: int, description: str
) -> Drained:
    consumer = paused[0][0]  # any member reads the group's committed offsets
    partitions = sorted(tp for _, held in paused for tp in held)
    quarter_at: float | None = None
    three_quarters_at: float | None = None
    with progress() as bar:
        task = bar.add_task(description, total=target)
        t0 = time.perf_counter()
        for member, held in paused:
            member.resume(*held)
        progressed_at, last = t0, 0
        while True:
            done = await committed_total(consumer, partitions)
            now = time.perf_counter()
            if quarter_at is None and done >= target / 4:
                quarter_at = now
            if three_quarters_at is None and done >= target * 3 / 4:
                three_quarters_at = now
            if done >= target:
                break
            if done > last:
                progressed_at, last = now, done
                bar.update(task, completed=done)
            elif now - progressed_at > STALL_TIMEOUT_S:
                raise RuntimeError(
                    f"{description}: {done}/{target} records committed, no progress in "
                    f"{STALL_TIMEOUT_S:.0f} s (dead-lettered? see the gateway log)"
                )
            await asyncio.sleep(POLL_S)
    seconds = now - t0
    # Both are set by now (done >= target), the fallbacks only satisfy the type checker.
    quarter_at = quarter_at or now
    three_quarters_at = three_quarters_at or now
    return Drained(
        seconds,
        (target / 4) / max(quarter_at - t0, POLL_S),
        (target / 4) / max(now - three_quarters_at, POLL_S),
    )


# --- the delivery pipeline -------------------------------------------------------------------


def _cprs(n: int, seed: int) -> list[str]:
    """Syntactically valid CPR numbers (a date, then four digits), seeded."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(40, 99)
        out.append(f"{day:02d}{month:02d}{year:02d}{rng.randint(0, 9999):04d}")
    return out


async def prepare_requests(template: DbTemplate, bootstrap: str, n: int) -> tuple[str, Topics]:
    """The template: migrated, demo organisations, N accepted requests (outbox unpublished)."""
    url = await template.create()
    settings = bench_settings(template, url, f"bench.{uuid.uuid4().hex[:8]}.tpl.")
    async with disposing(make_engine(url)) as engine:
        await ensure_demo_orgs(engine, settings)
    async with build_gateway(settings, bootstrap) as gw:
        async with gw.engine.connect() as conn:
            org = await directory.org_by_id(conn, JOBCENTER_ID)
        assert org is not None
        with progress() as bar:
            task = bar.add_task(f"preparing {n:,} requests ({template.kind})", total=n)
            for i, cpr in enumerate(_cprs(n, SEED)):
                await submit_attest_request(
                    gw.store,
                    gw.relay,
                    gw.keyring,
                    gw.clock,
                    org,
                    request_body(cpr),
                    idempotency_key=None,
                    catalogue=gw.catalogue,
                    gateway_org_id=gw.settings.gateway_org_id,
                    pseudonym_key=gw.pseudonym_key,
                )
                bar.update(task, completed=i + 1)
    return url, Topics.from_settings(settings)


async def rename_topics(url: str, old: Topics, new: Topics) -> None:
    async with disposing(make_engine(url)) as engine, engine.begin() as conn:
        for before, after in (
            (old.medcom_messages, new.medcom_messages),
            (old.tracking, new.tracking),
        ):
            await conn.execute(outbox.update().where(outbox.c.topic == before).values(topic=after))


@dataclass
class Observed:
    """What each run (warm-up included) saw besides its figure."""

    joins: list[float] = field(default_factory=list)  # group join, seconds
    first_quarter: list[float] = field(default_factory=list)  # records/s
    last_quarter: list[float] = field(default_factory=list)  # records/s
    wiring: str = ""  # how the consumer was set up (from the settings)
    # CPU milliseconds per 1,000 records during the clock: this process, PostgreSQL's
    process_cpu_ms: list[float] = field(default_factory=list)
    postgres_cpu_ms: list[float] = field(default_factory=list)
    broker_cpu_ms: list[float] = field(default_factory=list)
    machine_busy: list[float] = field(default_factory=list)  # percent

    def add(self, drained: Drained, records: int) -> None:
        self.first_quarter.append(drained.first_quarter)
        self.last_quarter.append(drained.last_quarter)
        self.process_cpu_ms.append(drained.process_cpu * 1e6 / records)
        self.postgres_cpu_ms.append(drained.postgres_cpu * 1e6 / records)
        self.broker_cpu_ms.append(drained.broker_cpu * 1e6 / records)
        self.machine_busy.append(drained.machine_busy * 100)

    def note(self, database: str) -> str:
        cpu = "CPU per 1,000 records during the clock: "
        cpu += f"this process {_span(self.process_cpu_ms)} ms"
        if database == "postgres":
            cpu += f", the PostgreSQL server {_span(self.postgres_cpu_ms)} ms"
        if any(self.broker_cpu_ms):
            cpu += f", the broker {_span(self.broker_cpu_ms)} ms"
        cpu += f"; the machine {_span(self.machine_busy)} % busy"
        return (
            f"group join not timed (took {min(self.joins):.1f}–{max(self.joins):.1f} s); "
            f"rate over the first quarter of the records {_span(self.first_quarter)}/s, "
            f"over the last quarter {_span(self.last_quarter)}/s; {cpu} (warm-up included)"
        )

    def extra(self) -> dict[str, Any]:
        return {
            "join_seconds": self.joins,
            "first_quarter_per_s": self.first_quarter,
            "last_quarter_per_s": self.last_quarter,
            "process_cpu_ms_per_1000": self.process_cpu_ms,
            "postgres_cpu_ms_per_1000": self.postgres_cpu_ms,
            "broker_cpu_ms_per_1000": self.broker_cpu_ms,
            "machine_busy_percent": self.machine_busy,
        }


def delivery_wiring(settings: Settings) -> str:
    batches = (
        "a poll's new envelopes in one transaction"
        if settings.delivery_poll_in_one_transaction
        else "one transaction per record"
    )
    at_once = "at once" if settings.delivery_partitions_at_once else "one after the other"
    return f"{batches}, partitions {at_once}"


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.0f}" if round(lo) == round(hi) else f"{lo:,.0f}–{hi:,.0f}"


async def delivery_runs(ctx: BenchContext, kind: str, n: int) -> tuple[list[float], Observed]:
    """The recorded delivery rates (records/s) and what all runs observed besides."""
    template = DbTemplate(ctx, kind, "pipeline")
    seen = Observed()
    try:
        _url, template_topics = await prepare_requests(template, ctx.bootstrap, n)

        async def once(i: int) -> float:
            url = await template.copy(i)
            try:
                prefix = f"bench.{uuid.uuid4().hex[:8]}.{kind}."
                settings = bench_settings(template, url, prefix)
                topics = Topics.from_settings(settings)
                await rename_topics(url, template_topics, topics)
                async with build_gateway(settings, ctx.bootstrap) as gw:
                    loop = make_delivery(gw, ctx.bootstrap)
                    seen.wiring = delivery_wiring(settings)
                    try:
                        paused, joined = await join_and_pause(loop)
                        seen.joins.append(joined)
                        while await gw.relay.publish_pending():
                            pass
                        drained = await drain(
                            paused, n, f"delivery ({kind})", broker_pid=ctx.broker_pid
                        )
                        seen.add(drained, n)
                    finally:
                        await loop.stop()
                    async with gw.engine.connect() as conn:
                        stored = (
                            await conn.execute(sa.select(sa.func.count()).select_from(mailbox))
                        ).scalar_one()
                    if stored != n:
                        raise RuntimeError(f"mailbox holds {stored} rows, expected {n}")
            finally:
                await template.drop(i)
            return n / drained.seconds

        runs = await repeat(ctx, f"pipeline.delivery ({kind})", once)
    finally:
        await template.drop_all()
    return runs, seen


async def run(ctx: BenchContext) -> list[Figure]:
    gateway_logging(ctx)
    n = ctx.size(2_000, 100)
    figures: list[Figure] = []
    kinds = ["sqlite"]
    if await postgres_available(ctx.postgres_dsn):
        kinds.append("postgres")
    for kind in kinds:
        runs, seen = await delivery_runs(ctx, kind, n)
        name = "pipeline.delivery" if kind == "sqlite" else "pipeline.delivery.postgres"
        db = "SQLite" if kind == "sqlite" else "PostgreSQL"
        figures.append(
            Figure(
                name=name,
                label=f"Pipeline: delivery consumer ({db})",
                unit="records/s",
                runs=runs,
                baseline="transport.passthrough",
                notes=(
                    f"{n:,} pre-published sealed request envelopes through the real delivery "
                    f"ConsumerLoop + DeliveryHandler ({seen.wiring}) into a fresh {db} "
                    f"database; clock: resume "
                    f"of the joined, paused consumer until offsets for all N are committed "
                    f"(polled every {POLL_S * 1000:.0f} ms); {seen.note(kind)}; the outbox holds "
                    f"about 3N rows (envelopes, stage events) when the clock starts"
                ),
                extra={"records": n, "database": kind} | seen.extra(),
            )
        )
    return figures
