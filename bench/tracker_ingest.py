"""Tracker ingest: stage events on `gateway.tracking` → timelines, flags and rollups.

Per database kind (SQLite, PostgreSQL), once (not timed): a template database, migrated,
with the demo organisations (so the receivers' roles are known: psychiatry triggers the
contact rules). Per run (a warm-up and `ctx.runs` recorded ones):

1. a fresh copy of the template and fresh topics (a new prefix), created by the gateway
   (`bootstrap.build_gateway`: nothing running) with its partition count;
2. the tracker exactly as the gateway wires it (`bootstrap.make_tracker`: the
   `ConsumerLoop` with `TrackerHandler` and `TrackerState`, the settings' rules and the
   gateway's catalogue; the sweep is not started) joins its group (timed separately: notes),
   and its partitions are paused;
3. N stage events (the real `StageEvent` schema) are produced to the tracking topic as the
   relay publishes them (key: conversation id; the headers of `emit_stage_event`; case refs
   carry the store's pseudonym key id, as the gateway's do);
4. **Clock**: from resuming the partitions until the group's committed offsets cover all N
   events (polled every 50 ms; the loop commits only what its handler finished). The loop
   applies the events as the gateway does: where the handler takes batches
   (`TrackerHandler.handle_batch`), a partition's polled records in one transaction, else one
   transaction per event. After the clock, `tracker_conversations` must hold one row per
   conversation in the events (a dead-lettered event would also be committed). Before the
   clock the heap is frozen as `attest-gateway serve` freezes it (`bench.pipeline.drain`);
   during it, the CPU time of this process and of the PostgreSQL server is counted (notes:
   per 1,000 events).

``BENCH_TRACKER_DBS=postgres`` (default ``sqlite,postgres,postgres-2``) chooses the
variants; ``postgres-2`` runs two tracker consumers in the process (``TRACKER_CONSUMERS=2``).
The other settings (``TRACKER_MAX_POLL_RECORDS``, …) come from the environment as for a
gateway.

N is 24,000 (6,000 until 2026-11-24: the first quarter of a run, while the consumer's fetches
ramp up, ran at half the rate of the last, and weighed too much in a run of ~1.5 s).

The events (fixed seed): conversations submitted over four weeks from a fixed date, each
with its realistic sequence — submitted, published, in_mailbox, fetched, acknowledged, then
(92 %) replied, reply_in_inbox, reply_fetched, reply_acknowledged, or (8 %) overdue and one or
two reminders — all interleaved in time order; the first N events in that order are used.
Receivers: the demo psychiatry unit for psychiatric attest types, otherwise the demo GP
clinic or one of 100 other GP ids (not in the directory: their role is unknown to the
tracker, as for a clinic the directory does not list); 98 municipalities; citizens with a
few conversations each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import sqlalchemy as sa

from attest_gateway.bootstrap import build_gateway, make_tracker
from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.core.attests import DEFAULT_CATALOGUE
from attest_gateway.core.identifiers import municipalities
from attest_gateway.devtools.demo import ensure_demo_orgs
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.tables import tracker_conversations
from bench.common import SEED, BenchContext, Figure, progress, repeat
from bench.pipeline import (
    DbTemplate,
    Observed,
    bench_settings,
    disposing,
    drain,
    gateway_logging,
    join_and_pause,
    postgres_available,
)

START = dt.datetime(2026, 1, 5, 7, 30, tzinfo=dt.UTC)
PSY_TYPES = ("LÆ 155", "LÆ 105", "LÆ 275")
GP_TYPES = ("LÆ 265", "LÆ 285", "LÆ 135", "LÆ 145", "LÆ 225", "LÆ 125")
CASE_KINDS = ("sygedagpenge", "jobafklaringsforloeb", "ressourceforloeb")
PSYCHIATRY_ORG = "psyk-kbh"
GP_ORGS = ("gp-noerrebro", *(f"gp-bench-{k:03d}" for k in range(100)))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _after(at: dt.datetime, rng: random.Random, median_s: float, sigma: float) -> dt.datetime:
    return at + dt.timedelta(seconds=rng.lognormvariate(0, sigma) * median_s)


def _conversation(rng: random.Random, citizens: list[str]) -> Iterator[StageEvent]:
    """The stage events of one conversation, in the order they happen."""
    muni = rng.choice(sorted(municipalities().values(), key=lambda m: m.kommunekode))
    psy = rng.random() < 0.3
    attest_type = rng.choice(PSY_TYPES if psy else GP_TYPES)
    submitted = START + dt.timedelta(seconds=rng.uniform(0, 28 * 86400))
    kind = DEFAULT_CATALOGUE[attest_type]
    meta: dict[str, Any] = {
        "conversation_id": _uuid(rng),
        "attest_type": attest_type,
        "case_kind": rng.choices(CASE_KINDS, weights=(7, 2, 1))[0],
        "municipality": muni.kommunekode,
        "region_code": muni.region_code,
        "jobcenter_org": f"jc-{muni.kommunekode}",
        "receiver_org": PSYCHIATRY_ORG if psy else rng.choice(GP_ORGS),
        "case_ref": rng.choice(citizens),
        "psychiatric_course": psy or rng.random() < 0.1,
        "first_day_of_absence": submitted.date() - dt.timedelta(days=rng.randint(3, 90)),
        "reply_deadline": kind.reply_deadline.due(submitted.date()),
    }
    request_id, reply_id = _uuid(rng), _uuid(rng)

    def event(
        stage: Stage, at: dt.datetime, message_id: str, mtype: MessageType, detail: str | None
    ) -> StageEvent:
        return StageEvent(
            event_id=_uuid(rng),
            message_id=message_id,
            message_type=mtype,
            stage=stage,
            at=at,
            detail=detail,
            **meta,
        )

    req = MessageType.ATTEST_REQUEST
    t = submitted
    yield event(Stage.SUBMITTED, t, request_id, req, None)
    t = _after(t, rng, 0.2, 1.0)
    yield event(Stage.PUBLISHED, t, request_id, req, None)
    t = _after(t, rng, 0.5, 1.0)
    yield event(Stage.IN_MAILBOX, t, request_id, req, None)
    t = _after(t, rng, 3 * 3600, 1.2)
    yield event(Stage.FETCHED, t, request_id, req, None)
    ack = _after(t, rng, 600, 1.0)
    yield event(Stage.ACKNOWLEDGED, ack, _uuid(rng), MessageType.ACKNOWLEDGEMENT, "ok")
    if rng.random() < 0.92:
        reply = MessageType.ATTEST_REPLY
        t = _after(t, rng, (20 if psy else 6) * 86400, 0.7)
        yield event(Stage.REPLIED, t, reply_id, reply, None)
        t = _after(t, rng, 0.5, 1.0)
        yield event(Stage.REPLY_IN_INBOX, t, reply_id, reply, None)
        t = _after(t, rng, 5 * 3600, 1.2)
        yield event(Stage.REPLY_FETCHED, t, reply_id, reply, None)
        t = _after(t, rng, 120, 1.0)
        yield event(Stage.REPLY_ACKNOWLEDGED, t, reply_id, reply, "ok")
    else:
        due = meta["reply_deadline"]
        t = dt.datetime.combine(due + dt.timedelta(days=1), dt.time(6), dt.UTC)
        yield event(Stage.OVERDUE, t, request_id, req, f"due {due.isoformat()}")
        for seq in (1, 2)[: rng.randint(1, 2)]:
            t += dt.timedelta(days=7 if seq > 1 else 0, minutes=1)
            yield event(Stage.REMINDED, t, _uuid(rng), MessageType.ATTEST_REMINDER, str(seq))


def stage_events(n: int, seed: int) -> list[StageEvent]:
    """N stage events of interleaved conversations, in time order (fixed seed)."""
    rng = random.Random(seed)
    citizens = [f"{rng.getrandbits(128):032x}" for _ in range(max(1, n // 25))]
    events: list[StageEvent] = []
    while len(events) < n * 1.2:  # then the first n in time order
        events.extend(_conversation(rng, citizens))
    events.sort(key=lambda e: e.at)
    return events[:n]


def record_of(
    event: StageEvent, key_id: str | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers as the relay publishes a stage event (`emit_stage_event`).
    `key_id`: the store's pseudonym key id, which the gateway's case refs carry (a bare ref,
    as written before key ids, costs the tracker a copy of the event to add it)."""
    if key_id is not None:
        event = event.model_copy(update={"case_ref": f"{key_id}.{event.case_ref}"})
    headers = {
        "content-type": "application/json",
        "schema-version": "1",
        "message-type": "stage",
        "conversation-id": event.conversation_id,
    }
    pairs = orjson.loads(orjson.dumps(sorted(headers.items())))
    return (
        event.conversation_id.encode(),
        event.model_dump_json().encode(),
        [(k, v.encode()) for k, v in pairs],
    )


async def tracker_runs(
    ctx: BenchContext, kind: str, events: list[StageEvent], **overrides: Any
) -> tuple[list[float], Observed]:
    """Warm-up and recorded runs on `kind` ("sqlite", "postgres"); `overrides`: settings
    that differ from the environment's (e.g. ``tracker_consumers``)."""
    n = len(events)
    conversations = len({e.conversation_id for e in events})
    template = DbTemplate(ctx, kind, "tracker")
    seen = Observed()
    try:
        url = await template.create()
        settings = bench_settings(template, url, f"bench.{uuid.uuid4().hex[:8]}.tpl.")
        async with disposing(make_engine(url)) as engine:
            await ensure_demo_orgs(engine, settings)

        async def once(i: int) -> float:
            url = await template.copy(i)
            try:
                prefix = f"bench.{uuid.uuid4().hex[:8]}.{kind}."
                settings = bench_settings(template, url, prefix, **overrides)
                async with build_gateway(settings, ctx.bootstrap) as gw:
                    key_id = gw.store_key.key_id
                    records = [record_of(e, key_id) for e in events]
                    tracker = make_tracker(gw, ctx.bootstrap)
                    count = len(tracker.consumers)
                    seen.wiring = (
                        "one consumer"
                        if count == 1
                        else f"{count} consumers in one group, one process (TRACKER_CONSUMERS)"
                    )
                    try:
                        paused, joined = await join_and_pause(*tracker.consumers)
                        seen.joins.append(joined)
                        with progress() as bar:
                            task = bar.add_task(f"producing {n:,} events", total=n)
                            futures = []
                            for key, value, headers in records:
                                futures.append(
                                    await gw.producer.send(
                                        gw.topics.tracking, value=value, key=key, headers=headers
                                    )
                                )
                            for done, future in enumerate(futures, 1):
                                await future
                                bar.update(task, completed=done)
                        drained = await drain(
                            paused, n, f"tracker ({kind})", broker_pid=ctx.broker_pid
                        )
                        seen.add(drained, n)
                    finally:
                        await asyncio.gather(*(loop.stop() for loop in tracker.consumers))
                    async with gw.engine.connect() as conn:
                        rows = (
                            await conn.execute(
                                sa.select(sa.func.count()).select_from(tracker_conversations)
                            )
                        ).scalar_one()
                    if rows != conversations:
                        raise RuntimeError(
                            f"tracker_conversations holds {rows} rows, expected {conversations}"
                        )
            finally:
                await template.drop(i)
            return n / drained.seconds

        runs = await repeat(ctx, f"tracker ({kind})", once)
    finally:
        await template.drop_all()
    return runs, seen


# --only tracker's variants (BENCH_TRACKER_DBS): database kind, settings, label suffix, figure
VARIANTS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "sqlite": ("sqlite", {}, "", "tracker.sqlite"),
    "postgres": ("postgres", {}, "", "tracker.postgres"),
    "postgres-2": (
        "postgres",
        {"tracker_consumers": 2},
        ", TRACKER_CONSUMERS=2",
        "tracker.postgres.consumers2",
    ),
}
DATABASES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


async def run(ctx: BenchContext) -> list[Figure]:
    gateway_logging(ctx)
    n = ctx.size(24_000, 200)
    events = stage_events(n, SEED)
    conversations = len({e.conversation_id for e in events})
    chosen = os.environ.get("BENCH_TRACKER_DBS", ",".join(VARIANTS)).split(",")
    has_postgres = await postgres_available(ctx.postgres_dsn)
    figures: list[Figure] = []
    for variant in chosen:
        kind, overrides, suffix, name = VARIANTS[variant]
        db = DATABASES[kind]
        if kind == "postgres" and not has_postgres:
            continue
        runs, seen = await tracker_runs(ctx, kind, events, **overrides)
        figures.append(
            Figure(
                name=name,
                label=f"Tracker: stage events applied ({db}{suffix})",
                unit="events/s",
                runs=runs,
                baseline="transport.passthrough",
                notes=(
                    f"{n:,} pre-produced stage events of {conversations:,} conversations "
                    f"through the real tracker ConsumerLoop + TrackerHandler (as wired by "
                    f"make_tracker: {seen.wiring}) into a fresh {db} database; "
                    f"clock: resume of the joined, paused consumers until offsets for all N "
                    f"are committed; {seen.note(kind)}"
                ),
                extra={"events": n, "conversations": conversations, "database": kind}
                | overrides
                | seen.extra(),
            )
        )
    return figures
