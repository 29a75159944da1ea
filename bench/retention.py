"""Retention at national volume (PostgreSQL): pruning and erasing a year of traffic while the
API serves a steady load (issue #28, point 6).

    .venv/bin/python -m bench.retention                         # 20,000 conversations
    .venv/bin/python -m bench.retention --conversations 300000  # a year, national

The SQL here is built from constants of this file only, never from input (ruff S608 is
turned off for bench/ in pyproject.toml).

What it does:

1. Starts the embedded broker and one gateway process (``attest-gateway serve``, as
   bench/gateway_ingest.py does: a fresh PostgreSQL database of its own on 127.0.0.1:5432,
   dropped at the end; the demo organisations). The gateway's own sweeper and tracker sweep
   are set to run once a day, so that only the measured pass prunes.
2. A steady open-loop load of 50 requests/s against the API, for the whole run: the job
   centre's submits (1 in 10), status reads (3), inbox reads (2) and request lists (2), and
   the psychiatry unit's mailbox reads (2). Latency is taken from each request's *scheduled*
   time (no coordinated omission), by phase; the spread is the p99 of each 30 s slice of
   the windows without the pass (before and after it) against the slices with it.
3. Per cycle (two by default, so that "with" and "without" alternate: without, with, without,
   with):
   - **Load** (not timed as a figure): a year of traffic, dated seven years back so that every
     class is past its default retention, in bulk (``INSERT … SELECT`` over
     ``generate_series``, 100,000 conversations a statement group): per conversation its
     conversation row with the sealed CPR number, nine stage rows, the request's sent copy,
     two mailbox rows (request, reply), two submissions and four seen ids (the clinic's
     acknowledgement and reply), the Idempotency-Key, two outbox rows (the MedCom messages),
     the tracker's timeline; per citizen (three conversations each) the registered case, and
     for those with a psychiatric course an episode and a registered contact; the cells'
     citizen lists (national and regional monthly cells); a share of the citizens' cases
     closed (``--closed``, default 0.3) with their erasure due; and two audit entries per
     conversation (the clinic's mailbox read, the job centre's inbox read) chained with the
     real hash chain, with a checkpoint signed by the gateway's key every 1,000 entries.
     Then ``ANALYZE`` and a ``CHECKPOINT``, so that the load's writes are flushed before
     anything is measured.
   - **Without**: the load alone for ``--window`` seconds.
   - **With**: one pass of retention, the real code (``prune_all``, what ``attest-gateway
     prune`` and the sweeper run) in a process of its own with the gateway's settings; the
     phase lasts as long as the pass. Meanwhile a sampler reads ``pg_locks`` and
     ``pg_stat_activity`` every 50 ms: the longest wait for a lock of any backend of the
     database (``now() - waitstart``) and the pass's longest open transaction.
   - **Without, after**: the load alone for ``--window`` seconds again.
   - Checks that nothing of the loaded year remains but what retention keeps (the closed
     cases' ids, aggregates).

Raw results: ``--out`` (default var/bench-retention/results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.config import custodial_keys_dir, load_settings
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.audit import INBOX_FETCH, MAILBOX_FETCH, AuditEvent
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.directory_view import SqlDirectory
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.tables import audit_head
from attest_gateway.infra.housekeeping.retention import (
    audit_prune_batch,
    cases_per_transaction,
    prune_all,
)
from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from attest_gateway.infra.kafka.topics import MEDCOM_MESSAGES, Topics
from attest_gateway.tracker.store import cell_id, ensure_cells
from bench.common import BenchContext, CpuCensus, console, machine, percentile
from bench.gateway_ingest import ATTEST_PATH, RunningGateway, gateway
from bench.roundtrip import Api, Requests

TZ = "Europe/Copenhagen"
YEARS_BACK = 7  # the loaded year ends this long ago: past every default retention (audit: 5)
CHUNK = 100_000  # conversations per load transaction
AUDIT_CHECKPOINT_EVERY = 1000
SAMPLE_S = 0.05
PRUNE_APP = "bench-prune"

REQ = MessageType.ATTEST_REQUEST.value
REPLY = MessageType.ATTEST_REPLY.value
ACK = MessageType.ACKNOWLEDGEMENT.value

# --- 3. the year of traffic, in bulk ------------------------------------------------------

# One row per conversation of the chunk; three conversations per citizen (p), who keeps one
# job centre, case kind and receiver; 40 % of citizens have a psychiatric course (LÆ 155 to
# psychiatry), the others LÆ 265 to a GP clinic.
GEN_SQL = """
CREATE TEMP TABLE gen ON COMMIT DROP AS
SELECT g, p, psy, t0,
  :tag || '-c' || g AS cid,
  :tag || '-q' || g AS req_mid, :tag || '-a' || g AS ack_mid, :tag || '-r' || g AS rep_mid,
  CASE WHEN p % 2 = 0 THEN 'jc-koebenhavn' ELSE 'jc-aarhus' END AS jc,
  CASE WHEN p % 2 = 0 THEN '101' ELSE '751' END AS muni,
  CASE WHEN p % 2 = 0 THEN '1084' ELSE '1082' END AS region,
  CASE WHEN psy THEN 'psyk-kbh' ELSE 'gp-noerrebro' END AS receiver,
  CASE WHEN psy THEN 'psychiatry' ELSE 'gp' END AS receiver_role,
  CASE WHEN psy THEN 'LÆ 155' ELSE 'LÆ 265' END AS attest,
  (ARRAY['sygedagpenge', 'jobafklaringsforloeb', 'ressourceforloeb'])[1 + p % 3] AS kind,
  'bk.' || :tag || '-' || md5(:tag || '/' || p) AS case_ref,
  (t0 AT TIME ZONE 'Europe/Copenhagen')::date - 30 AS first_day,
  (t0 AT TIME ZONE 'Europe/Copenhagen')::date + 14 AS deadline,
  g % 3 = 0 AS first_of_citizen
FROM (
  SELECT g, g / 3 AS p, ((g / 3) * 7919) % 10 < 4 AS psy,
         CAST(:y0 AS timestamptz) + make_interval(secs => 365.0 * 86400 * g / :n) AS t0
  FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
) AS s
"""

# Stage offsets from the submission (the same in the audit entries' times below).
FETCHED = "interval '3 hours'"
ACKED = "interval '4 hours'"
REPLIED = "interval '9 days'"
READ = "interval '10 days'"

LOAD_SQL: tuple[tuple[str, str], ...] = (
    (
        "conversations",
        """
INSERT INTO conversations (id, jobcenter_org_id, receiver_org_id, request_message_id,
  attest_type, case_kind, caseworker_ref, municipality, region_code, case_ref,
  psychiatric_course, first_day_of_absence, reply_deadline, created_at, citizen_sealed)
SELECT cid, jc, receiver, req_mid, attest, kind, 'sag-' || p, muni, region, case_ref, psy,
       first_day, deadline, t0, repeat(md5(cid), 6)
FROM gen""",
    ),
    (
        "stages",
        f"""
INSERT INTO stages (conversation_id, stage, message_id, at)
SELECT cid, s.stage, s.mid, s.at FROM gen CROSS JOIN LATERAL (VALUES
  ('submitted', req_mid, t0), ('published', req_mid, t0 + interval '1 second'),
  ('in_mailbox', req_mid, t0 + interval '2 seconds'), ('fetched', req_mid, t0 + {FETCHED}),
  ('acknowledged', ack_mid, t0 + {ACKED}), ('replied', rep_mid, t0 + {REPLIED}),
  ('reply_in_inbox', rep_mid, t0 + {REPLIED} + interval '2 seconds'),
  ('reply_fetched', rep_mid, t0 + {READ}),
  ('reply_acknowledged', rep_mid, t0 + {READ} + interval '1 minute')) AS s(stage, mid, at)""",
    ),
    (
        "sent_messages",
        f"""
INSERT INTO sent_messages (message_id, conversation_id, sender_org_id, receiver_org_id,
  message_type, copy, sent_at, last_sent_at, resend_count, acknowledged_at)
SELECT req_mid, cid, jc, receiver, '{REQ}', convert_to(repeat(md5(req_mid), 64), 'UTF8'),
       t0, t0, 0, t0 + {ACKED}
FROM gen""",
    ),
    (
        "mailbox",
        f"""
INSERT INTO mailbox (message_id, receiver_org_id, sender_org_id, conversation_id,
  message_type, envelope, delivered_at, fetched_at, collected_at)
SELECT req_mid, receiver, jc, cid, '{REQ}', convert_to(repeat(md5(req_mid), 64), 'UTF8'),
       t0 + interval '2 seconds', t0 + {FETCHED}, t0 + {ACKED} FROM gen
UNION ALL
SELECT rep_mid, jc, receiver, cid, '{REPLY}', convert_to(repeat(md5(rep_mid), 192), 'UTF8'),
       t0 + {REPLIED} + interval '2 seconds', t0 + {READ}, t0 + {READ} + interval '1 minute'
FROM gen""",
    ),
    (
        "inbound_messages",
        f"""
INSERT INTO inbound_messages (message_id, bundle_id, sender_org_id, conversation_id,
  message_type, response, created_at)
SELECT ack_mid, ack_mid || 'b', receiver, cid, '{ACK}',
       '{{"message_id":"' || ack_mid || '","status":"accepted"}}', t0 + {ACKED} FROM gen
UNION ALL
SELECT rep_mid, rep_mid || 'b', receiver, cid, '{REPLY}',
       '{{"message_id":"' || rep_mid || '","status":"accepted"}}', t0 + {REPLIED} FROM gen""",
    ),
    (
        "seen_ids",
        f"""
INSERT INTO seen_ids (kind, id, message_id, sender_org_id, receiver_org_id, conversation_id,
  message_type, first_seen_at)
SELECT k.kind, k.id, k.mid, k.sender, k.receiver, cid, k.type, k.at
FROM gen CROSS JOIN LATERAL (VALUES
  ('message', req_mid, req_mid, jc, receiver, '{REQ}', t0 + interval '2 seconds'),
  ('bundle', req_mid || 'b', req_mid, jc, receiver, '{REQ}', t0 + interval '2 seconds'),
  ('message', rep_mid, rep_mid, receiver, jc, '{REPLY}', t0 + {REPLIED}),
  ('bundle', rep_mid || 'b', rep_mid, receiver, jc, '{REPLY}', t0 + {REPLIED})
) AS k(kind, id, mid, sender, receiver, type, at)""",
    ),
    (
        "idempotency_keys",
        """
INSERT INTO idempotency_keys (org_id, key, fingerprint, conversation_id, response, created_at)
SELECT jc, 'idem-' || cid, md5(cid), cid,
       '{"conversation_id":"' || cid || '","status":"submitted","links":{}}', t0
FROM gen""",
    ),
    (
        "outbox",
        """
INSERT INTO outbox (topic, key, value, headers, message_id, created_at, published_at, attempts,
  delivered_at)
SELECT :medcom, cid, convert_to(repeat(md5(m.mid), 64), 'UTF8'), '[]', m.mid, m.at,
       m.at + interval '1 second', 1, m.at + interval '2 seconds'
FROM gen CROSS JOIN LATERAL (VALUES (req_mid, t0), (rep_mid, t0 + interval '9 days'))
  AS m(mid, at)""",
    ),
    (
        "tracker_conversations",
        f"""
INSERT INTO tracker_conversations (conversation_id, attest_type, case_kind, municipality,
  region_code, jobcenter_org, receiver_org, receiver_role, case_ref, psychiatric_course,
  first_day_of_absence, request_deadline, due_date, submitted_at, published_at, in_mailbox_at,
  fetched_at, acknowledged_at, replied_at, reply_in_inbox_at, reply_fetched_at,
  reply_acknowledged_at, reminders, requested_late, outcome)
SELECT cid, attest, kind, muni, region, jc, receiver, receiver_role, case_ref, psy, first_day,
       deadline, deadline, t0, t0 + interval '1 second', t0 + interval '2 seconds',
       t0 + {FETCHED}, t0 + {ACKED}, t0 + {REPLIED}, t0 + {REPLIED} + interval '2 seconds',
       t0 + {READ}, t0 + {READ} + interval '1 minute', 0, false, 'on_time'
FROM gen""",
    ),
    (
        "tracker_cases",
        """
INSERT INTO tracker_cases (case_id, jobcenter_org, jobcenter_case_id, case_ref, municipality,
  region_code, case_kind, psychiatric_course, first_day_of_absence, closed_on, created_at,
  updated_at, citizen_sealed)
SELECT :tag || '-k' || p, jc, :tag || '-sag-' || p, case_ref, muni, region, kind, psy,
       first_day, first_day + 120, t0, t0, repeat(md5(case_ref), 6)
FROM gen WHERE first_of_citizen""",
    ),
    (
        "tracker_episodes",
        """
INSERT INTO tracker_episodes (case_ref, jobcenter_org, first_day_of_absence, case_kind,
  municipality, region_code, window_end, first_contact_at, contact_source, outcome, decided_at)
SELECT case_ref, jc, first_day, kind, muni, region, first_day + 55, t0, 'message', 'contact',
       t0 + interval '1 second'
FROM gen WHERE first_of_citizen AND psy AND kind <> 'ressourceforloeb'""",
    ),
    (
        "tracker_contacts",
        """
INSERT INTO tracker_contacts (contact_id, jobcenter_org, psychiatry_org, case_ref, case_kind,
  first_day_of_absence, contact_date, channel, response, created_at, citizen_sealed,
  registrar_org)
SELECT :tag || '-t' || p, jc, 'psyk-kbh', case_ref, kind, first_day, first_day + 20,
       'meeting', '{"contact_id":"' || :tag || '-t' || p || '"}', t0 + interval '5 days',
       repeat(md5(case_ref), 6), jc
FROM gen WHERE first_of_citizen AND psy""",
    ),
    (
        "tracker_cell_citizens",
        f"""
INSERT INTO tracker_cell_citizens (cell_id, case_ref)
SELECT DISTINCT c.id, gen.case_ref
FROM gen JOIN cellmap AS c
  ON c.period_start = date_trunc('month', (t0 AT TIME ZONE '{TZ}'))::date
 AND (c.grain = 'national' OR c.dim = gen.region)
ON CONFLICT DO NOTHING""",
    ),
    (
        "case_closures",
        """
INSERT INTO case_closures (id, jobcenter_org_id, case_kind, case_ref, conversations,
  closed_at, erase_after)
SELECT :tag || '-x' || p, jc, kind, case_ref, 3, t0 + interval '60 days',
       t0 + interval '90 days'
FROM gen WHERE first_of_citizen AND (p * 2654435761) % 1000 < :closed_permille""",
    ),
)

# What of a loaded year must be gone after the pass (table, condition on the tag).
LEFT_SQL: dict[str, str] = {
    "conversations": "SELECT count(*) FROM conversations WHERE id LIKE :like",
    "stages": "SELECT count(*) FROM stages WHERE conversation_id LIKE :like",
    "sent_messages": "SELECT count(*) FROM sent_messages WHERE conversation_id LIKE :like",
    "mailbox": "SELECT count(*) FROM mailbox WHERE conversation_id LIKE :like",
    "inbound_messages": "SELECT count(*) FROM inbound_messages WHERE conversation_id LIKE :like",
    "seen_ids": "SELECT count(*) FROM seen_ids WHERE conversation_id LIKE :like",
    "idempotency_keys": "SELECT count(*) FROM idempotency_keys WHERE conversation_id LIKE :like",
    "outbox": "SELECT count(*) FROM outbox WHERE key LIKE :like",
    "tracker_conversations": (
        "SELECT count(*) FROM tracker_conversations WHERE conversation_id LIKE :like"
    ),
    "tracker_cases": "SELECT count(*) FROM tracker_cases WHERE case_id LIKE :like",
    "tracker_episodes": "SELECT count(*) FROM tracker_episodes WHERE case_ref LIKE :ref",
    "tracker_contacts": "SELECT count(*) FROM tracker_contacts WHERE contact_id LIKE :like",
    "tracker_cell_citizens": (
        "SELECT count(*) FROM tracker_cell_citizens WHERE case_ref LIKE :ref"
    ),
    "case_closures not erased": (
        "SELECT count(*) FROM case_closures WHERE id LIKE :like AND erased_at IS NULL"
    ),
    "case_closures with a case ref": (
        "SELECT count(*) FROM case_closures WHERE id LIKE :like AND case_ref IS NOT NULL"
    ),
}


def _months(start: dt.datetime) -> list[dt.date]:
    """The first days of the months the year from `start` touches (local time)."""
    first = start.date().replace(day=1)
    out = []
    while first <= (start + dt.timedelta(days=366)).date():
        out.append(first)
        first = (first + dt.timedelta(days=32)).replace(day=1)
    return out


async def load_year(
    engine: AsyncEngine, gw: RunningGateway, tag: str, n: int, closed: float, y0: dt.datetime
) -> dict[str, Any]:
    """Load a year of `n` conversations tagged `tag`; its rows per table and seconds."""
    t_start = time.perf_counter()
    cells = [
        (grain, "month", month, "*", dim)
        for month in _months(y0)
        for grain, dim in (("national", "DK"), ("region", "1084"), ("region", "1082"))
    ]
    medcom = f"{gw.topic_prefix}{MEDCOM_MESSAGES}"
    rows: dict[str, int] = {}
    for lo in range(1, n + 1, CHUNK):
        hi = min(n, lo + CHUNK - 1)
        params = {
            "tag": tag, "n": n, "lo": lo, "hi": hi, "y0": y0, "medcom": medcom,
            "closed_permille": round(closed * 1000),
        }  # fmt: skip
        async with engine.begin() as conn:
            await conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
            await ensure_cells(conn, cells)
            await conn.exec_driver_sql(
                "CREATE TEMP TABLE cellmap (id bigint, grain text, dim text, period_start date)"
                " ON COMMIT DROP"
            )
            await conn.execute(
                sa.text("INSERT INTO cellmap VALUES (:id, :grain, :dim, :period_start)").bindparams(
                    sa.bindparam("period_start", type_=sa.Date)
                ),
                [
                    {"id": cell_id(c), "grain": c[0], "dim": c[4], "period_start": c[2]}
                    for c in cells
                ],
            )
            await conn.execute(sa.text(GEN_SQL), params)
            for table, sql in LOAD_SQL:
                result = await conn.execute(sa.text(sql), params)
                rows[table] = rows.get(table, 0) + max(0, result.rowcount)
        console.print(f"  loaded {hi:,} conversations ({time.perf_counter() - t_start:.0f} s)")
    rows["audit_log"], rows["audit_checkpoints"] = await load_audit(engine, gw, tag, n, y0)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("ANALYZE")
        # The load's own writes flushed now, so that neither the window without the pass
        # nor the pass meets them (a role without the right skips it, and says so).
        try:
            await conn.exec_driver_sql("CHECKPOINT")
        except sa.exc.DBAPIError as error:
            console.print(f"  no CHECKPOINT after loading: {error.orig}")
    return {"rows": rows, "load_s": round(time.perf_counter() - t_start, 1)}


async def load_audit(
    engine: AsyncEngine, gw: RunningGateway, tag: str, n: int, y0: dt.datetime
) -> tuple[int, int]:
    """Two audit entries per conversation, appended to the chain (the real hashes) with a
    checkpoint signed by the gateway's key every AUDIT_CHECKPOINT_EVERY entries. Holds the
    chain's head for the whole append, as any append does."""
    settings = load_settings(var_dir=gw.var_dir, database_url=gw.database_url)
    keyring = KeyRing.load_dir(custodial_keys_dir(settings))
    entries = 0
    checkpoints = 0
    step = 20_000  # conversations per transaction
    for lo in range(1, n + 1, step):
        events: list[AuditEvent] = []
        for g in range(lo, min(n, lo + step - 1) + 1):
            p = g // 3
            t0 = y0 + dt.timedelta(seconds=365.0 * 86400 * g / n)
            psy = (p * 7919) % 10 < 4
            receiver = "psyk-kbh" if psy else "gp-noerrebro"
            jc = "jc-koebenhavn" if p % 2 == 0 else "jc-aarhus"
            cid = f"{tag}-c{g}"
            ip = f"10.{p % 200}.{g % 250}.{1 + g % 200}"
            events.append(
                AuditEvent(
                    receiver,
                    MAILBOX_FETCH,
                    ip,
                    t0 + dt.timedelta(hours=3),
                    receiver,
                    f"{tag}-q{g}",
                    cid,
                    {"items": "1"},
                )
            )
            events.append(
                AuditEvent(
                    jc,
                    INBOX_FETCH,
                    ip,
                    t0 + dt.timedelta(days=10),
                    jc,
                    f"{tag}-r{g}",
                    cid,
                    {"items": "1"},
                )
            )
        async with engine.begin() as conn:
            now = dt.datetime.now(dt.UTC)
            usable = await SqlDirectory(conn).usable_signing_key_ids(settings.gateway_org_id, now)
            signer = keyring.signing_among(settings.gateway_org_id, usable)
            if signer is None:
                raise RuntimeError("the gateway has no usable signing key")
            head = (
                await conn.execute(
                    sa.select(audit_head).where(audit_head.c.id == audit.HEAD_ID)
                    .with_for_update()
                )
            ).one()  # fmt: skip
            chained = audit.chain(head.hash, head.seq + 1, events)
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            columns = ("seq", "at", "actor", "action", "source", "subject_org", "message_id",
                       "conversation_id", "detail", "prev_hash", "hash")  # fmt: skip
            await raw.copy_records_to_table(
                "audit_log",
                records=[tuple(audit._row(e)[c] for c in columns) for e in chained],
                columns=columns,
            )
            points = [
                audit.sign_checkpoint(signer, e.seq, e.hash, e.at)
                for e in chained
                if e.seq % AUDIT_CHECKPOINT_EVERY == 0
            ]
            await raw.copy_records_to_table(
                "audit_checkpoints",
                records=[(c.seq, c.hash, c.at, c.key_id, c.signature) for c in points],
                columns=("seq", "hash", "at", "key_id", "signature"),
            )
            await conn.execute(
                audit_head.update()
                .where(audit_head.c.id == audit.HEAD_ID)
                .values(seq=chained[-1].seq, hash=chained[-1].hash)
            )
        entries += len(chained)
        checkpoints += len(points)
    return entries, checkpoints


async def left_over(engine: AsyncEngine, tag: str) -> dict[str, int]:
    params = {"like": f"{tag}-%", "ref": f"bk.{tag}-%"}
    out: dict[str, int] = {}
    async with engine.connect() as conn:
        for name, sql in LEFT_SQL.items():
            out[name] = int((await conn.execute(sa.text(sql), params)).scalar_one())
    return out


# --- 2. the steady load --------------------------------------------------------------------

# One cycle of ten requests at the steady rate.
MIX = ("submit", "status", "inbox", "list", "status", "mailbox", "inbox", "status", "list",
       "mailbox")  # fmt: skip


@dataclass
class Sample:
    phase: str
    kind: str
    ms: float
    status: int
    at: float  # scheduled (perf_counter)


@dataclass
class Load:
    """Open loop at `rate` requests/s; each request's latency from its scheduled time."""

    gw: RunningGateway
    creds: dict[str, Any]
    rate: float
    phase: str = "setup"
    samples: list[Sample] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    active: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: paused

    def __post_init__(self) -> None:
        self.jobcenter = Api(self.gw.base_url, self.gw.api_key)
        self.clinic = Api(self.gw.base_url, self.creds["psyk-kbh"]["api_key"])
        self.requests = Requests()

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start, i = time.perf_counter(), 0
        while not self.stop.is_set():
            if (
                not self.active.is_set() or not self.rate
            ):  # paused (loading): the schedule starts again after
                await asyncio.gather(*tasks, return_exceptions=True)
                wanted = (self.active, self.stop) if self.rate else (self.stop,)
                waits = [asyncio.ensure_future(e.wait()) for e in wanted]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                start, i = time.perf_counter(), 0
                continue
            at = start + i / self.rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(MIX[i % len(MIX)], at, self.phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.jobcenter.aclose()
        await self.clinic.aclose()

    async def one(self, kind: str, at: float, phase: str) -> None:
        try:
            if kind == "submit":
                _, body = self.requests.next()
                answer = await self.jobcenter.call("POST", ATTEST_PATH, body)
                if answer.status == 202:
                    self.conversations.append(orjson.loads(answer.body)["conversation_id"])
            elif kind == "status" and self.conversations:
                cid = self.conversations[-1 - (int(at * 1000) % len(self.conversations))]
                answer = await self.jobcenter.call("GET", f"{ATTEST_PATH}/{cid}")
            elif kind == "list":
                answer = await self.jobcenter.call("GET", f"{ATTEST_PATH}?limit=20")
            elif kind == "mailbox":
                answer = await self.clinic.call("GET", "/medcom/v1/mailbox?limit=20")
            else:
                answer = await self.jobcenter.call("GET", "/jobcenter/v1/inbox?limit=20")
            status = answer.status
        except (OSError, asyncio.IncompleteReadError):
            status = -1
        self.samples.append(Sample(phase, kind, (time.perf_counter() - at) * 1000, status, at))


SLICE_S = 30.0  # the spread: p99 per slice of this many seconds of a phase


def slices(mine: list[Sample]) -> list[float]:
    """p99 of each whole `SLICE_S` of the phase, by scheduled time (a last part slice of
    less than half a slice is left out)."""
    if not mine:
        return []
    t0 = min(s.at for s in mine)
    by: dict[int, list[float]] = {}
    for s in mine:
        by.setdefault(int((s.at - t0) // SLICE_S), []).append(s.ms)
    span = max(s.at for s in mine) - t0
    return [
        round(percentile(by[n], 99), 1)
        for n in sorted(by)
        if n * SLICE_S + SLICE_S / 2 <= span or n == 0
    ]


def latency(samples: list[Sample], phase: str) -> dict[str, Any]:
    mine = [s for s in samples if s.phase == phase]
    ms = [s.ms for s in mine] or [float("nan")]
    statuses: dict[str, int] = {}
    for s in mine:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return {
        "requests": len(mine),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "p99_ms_by_slice": slices(mine),
        "statuses": statuses,
        "p99_ms_by_kind": {
            k: round(percentile([s.ms for s in mine if s.kind == k] or [float("nan")], 99), 1)
            for k in sorted(set(MIX))
        },
    }


# --- 3. the pass and what it holds ---------------------------------------------------------

LOCKS_SQL = f"""
SELECT
  (SELECT coalesce(max(extract(epoch FROM now() - l.waitstart)), 0)
     FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database()) AS lock_wait_s,
  (SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database()) AS waiting,
  (SELECT coalesce(max(extract(epoch FROM now() - l.waitstart)), 0)
     FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database()
      AND (a.application_name = '{PRUNE_APP}' OR EXISTS (
        SELECT 1 FROM pg_stat_activity AS b
         WHERE b.pid = ANY(pg_blocking_pids(a.pid)) AND b.application_name = '{PRUNE_APP}'
      ))) AS prune_lock_wait_s,
  (SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) FROM pg_stat_activity
    WHERE application_name = '{PRUNE_APP}' AND xact_start IS NOT NULL
      AND datname = current_database()) AS prune_xact_s,
  (SELECT left(a.query, 120) || ' <- ' || coalesce((SELECT string_agg(
            b.application_name || ': ' || left(b.query, 120), ' | ')
          FROM pg_stat_activity AS b WHERE b.pid = ANY(pg_blocking_pids(a.pid))), '')
     FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database()
    ORDER BY l.waitstart LIMIT 1) AS longest_waiter,
  (SELECT left(query, 160) FROM pg_stat_activity
    WHERE application_name = '{PRUNE_APP}' AND xact_start IS NOT NULL
      AND datname = current_database() ORDER BY xact_start LIMIT 1) AS prune_query,
  (SELECT state || coalesce(' (' || wait_event_type || ')', '') || ': ' || left(query, 90)
     FROM pg_stat_activity WHERE application_name = '{PRUNE_APP}'
      AND datname = current_database() AND state <> 'idle' LIMIT 1) AS prune_doing
"""


@dataclass
class LockSamples:
    samples: int = 0
    lock_wait_s: float = 0.0
    prune_lock_wait_s: float = 0.0  # waits in which the pass waits or makes another wait
    waiting_samples: int = 0
    prune_xact_s: float = 0.0
    longest_waiter: str = ""  # the waiting statement <- what blocks it, at the peak
    longest_prune_statement: str = ""
    # where the pass's time goes: samples by what its connection was doing (a sampling
    # profile of the pass as the server sees it; "idle in transaction": its own Python)
    doing: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "peak_lock_wait_ms": round(self.lock_wait_s * 1000, 1),
            "peak_lock_wait_with_the_pass_ms": round(self.prune_lock_wait_s * 1000, 1),
            "samples_with_a_waiter": self.waiting_samples,
            "longest_prune_transaction_ms": round(self.prune_xact_s * 1000, 1),
            "longest_waiter": self.longest_waiter,
            "longest_prune_statement": self.longest_prune_statement,
            "pass_samples_by_statement": dict(
                sorted(self.doing.items(), key=lambda kv: -kv[1])[:12]
            ),
        }


async def sample_locks(engine: AsyncEngine, stop: asyncio.Event, into: LockSamples) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        while not stop.is_set():
            row = (await conn.exec_driver_sql(LOCKS_SQL)).one()
            into.samples += 1
            if float(row.lock_wait_s) > into.lock_wait_s:
                into.lock_wait_s = float(row.lock_wait_s)
                into.longest_waiter = row.longest_waiter or ""
            into.prune_lock_wait_s = max(into.prune_lock_wait_s, float(row.prune_lock_wait_s))
            into.waiting_samples += int(row.waiting > 0)
            if row.prune_doing:
                into.doing[row.prune_doing] = into.doing.get(row.prune_doing, 0) + 1
            if float(row.prune_xact_s) > into.prune_xact_s:
                into.prune_xact_s = float(row.prune_xact_s)
                into.longest_prune_statement = row.prune_query or ""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_S)


# What the API's own backends are doing, sampled in every phase: the wait event of each
# active backend that is not the pass's nor this sampler's ("CPU" when it waits for none), so
# a phase's slower requests can be told apart: locks, the WAL's flush, the disk or the CPU.
API_WAITS_SQL = f"""
SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS what
  FROM pg_stat_activity
 WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
   AND application_name <> '{PRUNE_APP}'
"""
WAL_SQL = """
SELECT wal_bytes::bigint, wal_sync, wal_write, wal_fpi,
       checkpoints_timed + checkpoints_req AS checkpoints, buffers_checkpoint
  FROM pg_stat_wal, pg_stat_bgwriter
"""


async def sample_api_waits(
    engine: AsyncEngine, load: Load, stop: asyncio.Event, into: dict[str, dict[str, int]]
) -> None:
    """Count the API backends' wait events per phase (``into[phase][event]``)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        while not stop.is_set():
            phase = load.phase
            counts = into.setdefault(phase, {"samples": 0})
            counts["samples"] += 1
            for row in (await conn.exec_driver_sql(API_WAITS_SQL)).all():
                counts[row.what] = counts.get(row.what, 0) + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def wal_counters(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        row = (await conn.exec_driver_sql(WAL_SQL)).mappings().one()
    return {k: int(v) for k, v in row.items()}


def wal_delta(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    """WAL written and flushed per second between two readings of ``pg_stat_wal``."""
    return {f"{k}_per_s": round((after[k] - before[k]) / max(seconds, 1e-9), 1) for k in before}


def gateway_env(
    gw: RunningGateway, bootstrap: str, batch: int | None, pause: float | None
) -> dict[str, str]:
    env = os.environ | {
        "VAR_DIR": str(gw.var_dir),
        "DATABASE_URL": gw.database_url,
        "KAFKA_TOPIC_PREFIX": gw.topic_prefix,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LOG_FORMAT": "json",
    }
    if batch:
        env["PRUNE_BATCH_SIZE"] = str(batch)
    if pause is not None:
        env["RETENTION_PAUSE_SECONDS"] = str(pause)
    return env


async def prune_pass(env: dict[str, str]) -> dict[str, Any]:
    """One pass of retention in a process of its own (`--prune-worker`)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.retention", "--prune-worker",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the prune worker failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def prune_worker() -> None:
    """`attest-gateway prune`'s pass (`prune_all`) on an engine named PRUNE_APP; prints what it
    removed and its wall time as one JSON line."""
    settings = load_settings()
    keyring = KeyRing.load_dir(custodial_keys_dir(settings))
    engine = make_engine(
        settings.effective_database_url,
        connect_args={"server_settings": {"application_name": PRUNE_APP}},
    )
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        report = await prune_all(
            engine, settings, Topics.from_settings(settings), keyring, dt.datetime.now(dt.UTC)
        )
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        await engine.dispose()
    batch = settings.prune_batch_size
    per = {"cases_erased": cases_per_transaction(batch), "audit_log": audit_prune_batch(settings)}
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "batch_size": batch,
                "pause_s": settings.retention_pause_seconds,
                "duty": settings.retention_duty,
                "counts": report.counts,
                # a batch per `batch` rows of a class; closed cases and audit entries, so
                # many per transaction
                "transactions_at_least": sum(
                    -(-n // per.get(name, batch)) for name, n in report.counts.items()
                ),
            }
        )
    )


# --- the run -----------------------------------------------------------------------------------


def census_of(gw: RunningGateway, broker_pid: int | None) -> CpuCensus:
    pids = {"gateway": gw.proc.pid} | ({"broker": broker_pid} if broker_pid else {})
    return CpuCensus(pids, postgres=True)


def cores(
    census: CpuCensus, seconds: float, extra: dict[str, float] | None = None
) -> dict[str, float]:
    """Where the CPU went in a phase, in cores (CPU seconds per second): the gateway, the
    broker, the PostgreSQL server (the API's backends and the pass's), this process (the
    load), the pass's own process, and the rest."""
    by_part = census.stop(1, extra)
    return {
        k: round(v / 1000 / max(seconds, 1e-9), 3) if k != "busy_share" else round(v, 3)
        for k, v in by_part.items()
    }


async def window(
    load: Load, phase: str, seconds: float, census: CpuCensus, engine: AsyncEngine
) -> tuple[dict[str, float], dict[str, float]]:
    load.phase = phase
    census.start()
    wal0 = await wal_counters(engine)
    await asyncio.sleep(seconds)
    load.phase = "between"
    return cores(census, seconds), wal_delta(wal0, await wal_counters(engine), seconds)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m bench.retention", *sys.argv[1:]]),
        "load_average_start": os.getloadavg(),
        "conversations": args.conversations,
        "rate": args.rate,
        "batch": args.batch or "default",
        "pause": args.pause if args.pause is not None else "default",
        "cycles": [],
    }
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    try:
        ctx = BenchContext(bootstrap=broker.bootstrap, workdir=workdir)
        quiet = {"SWEEP_INTERVAL_SECONDS": "86400", "TRACKER_SWEEP_SECONDS": "86400"}
        async with gateway(ctx, "postgres", "retention", settings=quiet) as gw:
            creds = json.loads((gw.var_dir / "demo-credentials.json").read_text())
            engine = make_engine(gw.database_url)
            load = Load(gw, creds, args.rate)
            load_task = asyncio.create_task(load.run())
            stop_waits = asyncio.Event()
            api_waits: dict[str, dict[str, int]] = {}
            waits_task = asyncio.create_task(sample_api_waits(engine, load, stop_waits, api_waits))
            try:
                y0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=365 * YEARS_BACK)
                env = gateway_env(gw, broker.bootstrap, args.batch, args.pause)
                for cycle in range(args.cycles):
                    tag = f"y{cycle}"
                    console.rule(f"cycle {cycle + 1}/{args.cycles}")
                    load.active.clear()  # the load waits while a year is loaded
                    loaded = await load_year(engine, gw, tag, args.conversations, args.closed, y0)
                    console.print(f"  loaded: {loaded}")
                    load.phase = "warm-up"
                    load.active.set()
                    await asyncio.sleep(args.settle)
                    without = f"without-{cycle}"
                    census = census_of(gw, broker.pid)
                    cpu_without, wal_without = await window(
                        load, without, args.window, census, engine
                    )
                    console.print(f"  without: {latency(load.samples, without)}")
                    console.print(f"  cores: {cpu_without}")
                    with_ = f"with-{cycle}"
                    stop = asyncio.Event()
                    locks = LockSamples()
                    sampler = asyncio.create_task(sample_locks(engine, stop, locks))
                    load.phase = with_
                    census.start()
                    wal0 = await wal_counters(engine)
                    t0 = time.perf_counter()
                    try:
                        pruned = await prune_pass(env)
                    finally:
                        load.phase = "between"
                        stop.set()
                        await sampler
                    took = time.perf_counter() - t0
                    cpu_with = cores(census, took, {"pass": pruned["cpu_seconds"]})
                    wal_with = wal_delta(wal0, await wal_counters(engine), took)
                    console.print(f"  pass: {pruned}")
                    console.print(f"  locks: {locks.as_dict()}")
                    console.print(f"  with: {latency(load.samples, with_)}")
                    console.print(f"  cores: {cpu_with}")
                    after = f"after-{cycle}"
                    cpu_after, wal_after = await window(load, after, args.window, census, engine)
                    console.print(f"  without, after: {latency(load.samples, after)}")
                    console.print(f"  cores: {cpu_after}")
                    left = await left_over(engine, tag)
                    console.print(f"  left of the year: {left}")
                    waits = {p: api_waits.get(p, {}) for p in (without, with_, after)}
                    console.print(f"  WAL: {wal_without} / {wal_with} / {wal_after}")
                    console.print(f"  API backends' waits: {waits}")
                    results["cycles"].append(
                        {
                            "loaded": loaded,
                            "without": latency(load.samples, without),
                            "with": latency(load.samples, with_),
                            "without_after": latency(load.samples, after),
                            "pass": pruned,
                            "locks": locks.as_dict(),
                            "cores": {
                                "without": cpu_without,
                                "with": cpu_with,
                                "without_after": cpu_after,
                            },
                            "wal": {
                                "without": wal_without,
                                "with": wal_with,
                                "without_after": wal_after,
                            },
                            # samples of the API's active backends by wait event, per phase
                            "api_backend_waits": waits,
                            "left": left,
                            "load_average": os.getloadavg(),
                        }
                    )
                    await asyncio.sleep(args.settle)
            finally:
                load.stop.set()
                stop_waits.set()
                await load_task
                await waits_task
                await engine.dispose()
    finally:
        broker.stop()
    results["summary"] = summary(results["cycles"])
    return results


def main(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(args, workdir))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    console.print(json.dumps(results["summary"], indent=2))
    console.print(f"results in {out}")


def summary(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):,.1f} ({min(values):,.1f}–{max(values):,.1f})"

    def of(key: Callable[[dict[str, Any]], float]) -> str:
        return spread([key(c) for c in cycles]) if cycles else ""

    return {
        "pass_s": of(lambda c: c["pass"]["seconds"]),
        "transactions_at_least": of(lambda c: c["pass"]["transactions_at_least"]),
        "peak_lock_wait_ms": of(lambda c: c["locks"]["peak_lock_wait_ms"]),
        "peak_lock_wait_with_the_pass_ms": of(
            lambda c: c["locks"]["peak_lock_wait_with_the_pass_ms"]
        ),
        "longest_prune_transaction_ms": of(lambda c: c["locks"]["longest_prune_transaction_ms"]),
        "p99_without_ms": of(lambda c: c["without"]["p99_ms"]),
        "p99_with_ms": of(lambda c: c["with"]["p99_ms"]),
        "p50_without_ms": of(lambda c: c["without"]["p50_ms"]),
        "p50_with_ms": of(lambda c: c["with"]["p50_ms"]),
        # the spread: p99 per slice of the windows without the pass (before and after it)
        # against the slices with it
        "p99_slices_without_ms": spread(
            [
                v
                for c in cycles
                for phase in ("without", "without_after")
                for v in c[phase]["p99_ms_by_slice"]
            ]
        )
        if cycles
        else "",
        "p99_slices_with_ms": spread([v for c in cycles for v in c["with"]["p99_ms_by_slice"]])
        if cycles
        else "",
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=20_000, help="a year's conversations")
    p.add_argument("--closed", type=float, default=0.3, help="share of citizens' cases closed")
    p.add_argument("--rate", type=float, default=50.0, help="API requests/s, steady (0: none)")
    p.add_argument("--window", type=float, default=30.0, help="s of load without retention")
    p.add_argument("--cycles", type=int, default=2, help="load, without, with: how often")
    p.add_argument("--settle", type=float, default=5.0, help="s of quiet after loading")
    p.add_argument("--batch", type=int, default=0, help="PRUNE_BATCH_SIZE (0: the default)")
    p.add_argument(
        "--pause",
        type=float,
        default=None,
        help="RETENTION_PAUSE_SECONDS of the pass (default: the setting's default)",
    )
    p.add_argument("--workdir", default="var/bench-retention")
    p.add_argument("--out", default="var/bench-retention/results.json")
    p.add_argument("--prune-worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.prune_worker:
        asyncio.run(prune_worker())
    else:
        main(arguments)
