"""National-scale benchmark of the ministry report (PostgreSQL).

The SQL here is built from constants of this file only, never from input (ruff S608 is
turned off for bench/ in pyproject.toml).

    .venv/bin/python bench/tracker_scale.py --conversations 10000000

What it does, in order (each step prints its time):

1. **Equivalence check** (small): plays the stage events of a few thousand synthetic
   conversations through the real tracker (`TrackerState`, the consumer's code, one
   transaction per event) into a scratch database, then rebuilds the rollups from that
   database's `tracker_conversations` and `tracker_episodes` with the bulk SQL of step 3, and
   checks that both give identical `tracker_counts` and `tracker_durations`. This is what
   entitles step 3 to stand in for millions of events.
2. **Load**: N conversations (and the contact episodes of those with a psychiatric course)
   straight into `tracker_conversations` / `tracker_episodes` with `generate_series`:
   98 municipalities, 1,960 GP clinics (20 per municipality), 30 psychiatry units, two
   years of requests, delays drawn log-normally.
3. **Rollups**: builds `tracker_counts` and `tracker_durations` from them in bulk (by cell
   in temporary tables, then each cell a row of `tracker_cells`, referred to by id): the
   state the incremental maintenance reaches after the same events.
4. **Report**: times `GET /ministry/v1/report`'s query function (`report.report`, all of
   its queries, over the whole period and filtered), and the largest drill-down
   (durations by receiver organisation), several runs each; the figure is the median.
5. **Incremental cost**: plays fresh conversations' events through `TrackerState` on the
   big database and reports events per second (the rollups are maintained as events
   arrive; this is what that costs per event at this size).

The membership table `tracker_cell_citizens` (which citizens a cell already counts) is
write-path state only: the report never reads it, so step 3 computes the `citizens`
counters directly with COUNT(DISTINCT) and leaves it empty.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.core.identifiers import municipalities
from attest_gateway.infra.db import overdue as overdue_rollup
from attest_gateway.infra.db import rehabilitation as rehab_rollup
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.tables import (
    tracker_counts,
    tracker_durations,
    tracker_latency,
    tracker_request_weeks,
)
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.consumer import TrackerState
from attest_gateway.tracker.store import COUNTERS, ensure_cells, with_cells

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TZ = "Europe/Copenhagen"
GP_TYPES = ("LÆ 265", "LÆ 285", "LÆ 135", "LÆ 145", "LÆ 225")
PSY_TYPES = ("LÆ 155", "LÆ 105", "LÆ 275")
ALL_TYPES = (*GP_TYPES, *PSY_TYPES, "LÆ 125")


def url_for(admin: str, database: str) -> str:
    base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def fresh(admin: str, name: str) -> str:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = url_for(admin, name)
    await upgrade_async(url)
    return url


# --- 2. bulk load -------------------------------------------------------------------------------

_MUNIS = sorted(municipalities().values(), key=lambda m: m.kommunekode)
MUNI_ARRAY = "ARRAY[" + ",".join(f"'{m.kommunekode}'" for m in _MUNIS) + "]"
REGION_ARRAY = "ARRAY[" + ",".join(f"'{m.region_code}'" for m in _MUNIS) + "]"


def _lognormal(median_days: float, sigma: float, u1: str, u2: str) -> str:
    """SQL for a log-normal delay (days) from two uniform columns (Box–Muller)."""
    normal = f"sqrt(-2 * ln(greatest({u1}, 1e-12))) * cos(2 * pi() * {u2})"
    return f"({median_days} * exp({sigma} * {normal}))"


LOAD_SQL = f"""
INSERT INTO tracker_conversations (
  conversation_id, attest_type, case_kind, municipality, region_code, jobcenter_org,
  receiver_org, receiver_role, case_ref, psychiatric_course, first_day_of_absence,
  request_deadline, due_date, submitted_at, published_at, in_mailbox_at, fetched_at,
  acknowledged_at, replied_at, reply_in_inbox_at, reply_fetched_at, reply_acknowledged_at,
  overdue_at, last_reminded_at, reminders, requested_late, outcome)
SELECT
  'c' || g, attest, kind, muni, region, 'jc-' || muni,
  CASE WHEN psy_receiver THEN 'psy-' || region || '-' || (g % 6)
       ELSE 'gp-' || muni || '-' || ((g / 3) % 20) END,
  CASE WHEN psy_receiver THEN 'psychiatry' ELSE 'gp' END,
  md5('citizen' || (g / 3)), psych, first_day, due, due,
  submitted, submitted + interval '1 second', submitted + interval '2 seconds',
  fetched, fetched + ack_delay, replied,
  replied + interval '2 seconds', read, read + interval '1 minute',
  CASE WHEN overdue THEN (due + 1)::timestamp AT TIME ZONE '{TZ}' + interval '6 hours' END,
  CASE WHEN overdue THEN (due + 1)::timestamp AT TIME ZONE '{TZ}' + interval '6 hours' END,
  CASE WHEN overdue THEN 1 ELSE 0 END,
  kind = 'sygedagpenge' AND (submitted AT TIME ZONE '{TZ}')::date > first_day + 55,
  CASE WHEN replied IS NOT NULL AND (replied AT TIME ZONE '{TZ}')::date <= due THEN 'on_time'
       WHEN overdue THEN 'overdue' END
FROM (
  SELECT g, attest, kind, muni, region, psych, psy_receiver, submitted, first_day, fetched,
         ack_delay, replied, read, due,
         (replied IS NULL OR (replied AT TIME ZONE '{TZ}')::date > due)
           AND due < current_date AS overdue
  FROM (
    SELECT g, attest, kind, muni, region, psych, psy_receiver, submitted, first_day, fetched,
           ack_delay, due,
           CASE WHEN u_never < 0.06 THEN NULL
                ELSE submitted + make_interval(secs => 86400 * reply_days) END AS replied,
           CASE WHEN u_never < 0.06 THEN NULL
                ELSE submitted + make_interval(secs => 86400 * (reply_days + read_days)) END
             AS read
    FROM (
      SELECT g, attest, kind, muni, region, psych,
             attest IN ('LÆ 155', 'LÆ 105', 'LÆ 275') OR (attest = 'LÆ 125' AND u5 < 0.3)
               AS psy_receiver,
             submitted,
             (submitted AT TIME ZONE '{TZ}')::date - (7 * {_lognormal(6, 0.6, "u6", "u7")})::int
               AS first_day,
             submitted + make_interval(secs => 86400 * {_lognormal(0.3, 1.0, "u8", "u9")})
               AS fetched,
             make_interval(secs => 3600 * {_lognormal(4, 1.0, "u10", "u11")}) AS ack_delay,
             CASE WHEN attest IN ('LÆ 155', 'LÆ 105', 'LÆ 275')
                  THEN {_lognormal(35, 0.7, "u12", "u13")}
                  ELSE {_lognormal(9, 0.7, "u12", "u13")} END AS reply_days,
             {_lognormal(1, 0.8, "u14", "u15")} AS read_days,
             u_never,
             CASE attest WHEN 'LÆ 155' THEN ((submitted AT TIME ZONE '{TZ}')::date
                                              + interval '2 months')::date
                         WHEN 'LÆ 265' THEN (submitted AT TIME ZONE '{TZ}')::date + 30
                         WHEN 'LÆ 275' THEN (submitted AT TIME ZONE '{TZ}')::date + 30
                         WHEN 'LÆ 135' THEN (submitted AT TIME ZONE '{TZ}')::date + 30
                         WHEN 'LÆ 145' THEN (submitted AT TIME ZONE '{TZ}')::date + 30
                         ELSE (submitted AT TIME ZONE '{TZ}')::date + 14 END AS due
      FROM (
        SELECT g,
          (ARRAY['LÆ 265','LÆ 265','LÆ 265','LÆ 285','LÆ 285','LÆ 155','LÆ 155','LÆ 125',
                 'LÆ 105','LÆ 275','LÆ 135','LÆ 145','LÆ 225'])[1 + (g * 7919) % 13] AS attest,
          (ARRAY['sygedagpenge','sygedagpenge','sygedagpenge','sygedagpenge','sygedagpenge',
                 'sygedagpenge','sygedagpenge','jobafklaringsforloeb','jobafklaringsforloeb',
                 'ressourceforloeb'])[1 + (g * 104729) % 10] AS kind,
          ({MUNI_ARRAY})[1 + m] AS muni, ({REGION_ARRAY})[1 + m] AS region,
          ((g / 3) * 2654435761) % 100 < 25 AS psych,
          now() - make_interval(secs => random() * 730 * 86400) - interval '30 days'
            AS submitted,
          random() AS u5, random() AS u6, random() AS u7, random() AS u8, random() AS u9,
          random() AS u10, random() AS u11, random() AS u12, random() AS u13,
          random() AS u14, random() AS u15, random() AS u_never
        FROM (SELECT g, ((g / 3) * 40503) % 98 AS m
              FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g) AS s
      ) AS a
    ) AS b
  ) AS c
) AS d
"""

EPISODES_SQL = f"""
INSERT INTO tracker_episodes (case_ref, jobcenter_org, first_day_of_absence, case_kind,
  municipality, region_code, window_end, first_contact_at, contact_source, outcome, decided_at)
SELECT case_ref, jobcenter_org, first_day_of_absence, min(case_kind), min(municipality),
       min(region_code), first_day_of_absence + 55,
       min(submitted_at) FILTER (WHERE receiver_role = 'psychiatry'),
       CASE WHEN bool_or(receiver_role = 'psychiatry') THEN 'message' END,
       CASE WHEN min((submitted_at AT TIME ZONE '{TZ}')::date)
                 FILTER (WHERE receiver_role = 'psychiatry') <= first_day_of_absence + 55
            THEN 'contact'
            WHEN first_day_of_absence + 55 < current_date THEN 'no_contact' END,
       now()
FROM tracker_conversations
WHERE psychiatric_course AND case_kind IN ('sygedagpenge', 'jobafklaringsforloeb')
GROUP BY case_ref, jobcenter_org, first_day_of_absence
ON CONFLICT DO NOTHING
"""

# --- 3. rollups in bulk ---------------------------------------------------------------------------

# Cells: (grain, dim expression, period kinds kept for histograms).
_GRAINS = (
    ("national", "'DK'", ("week", "month")),
    ("region", "region_code", ("week", "month")),
    ("municipality", "municipality", ("month",)),
    ("receiver", "receiver_org", ("month",)),
)


def _sets(keys: str, dim: str) -> str:
    """GROUPING SETS for a cell key with its own attest type and with all types (`*`)."""
    d = "" if dim.startswith("'") else f", {dim}"  # a constant (national) is no group key
    return f"GROUPING SETS (({keys}, attest_type{d}), ({keys}{d}))"


def counts_sql() -> list[str]:
    out = []
    for grain, dim, _ in _GRAINS:
        for kind in ("week", "month"):
            out.append(f"""
INSERT INTO bulk_counts (grain, period_kind, period_start, attest_type, dim, requests,
  citizens, late_requests, replied, decided, overdue, reminders)
SELECT '{grain}', '{kind}', p, coalesce(attest_type, '*'), {dim},
       count(*), count(DISTINCT case_ref), count(*) FILTER (WHERE requested_late),
       count(replied_at), count(outcome), count(*) FILTER (WHERE outcome = 'overdue'),
       sum(reminders)
FROM (SELECT *, date_trunc('{kind}', (submitted_at AT TIME ZONE '{TZ}')::date)::date AS p
      FROM tracker_conversations WHERE submitted_at IS NOT NULL) AS c
GROUP BY {_sets("p", dim)}
""")
    for grain, dim, _ in _GRAINS[:3]:
        for kind in ("week", "month"):
            out.append(f"""
INSERT INTO bulk_counts (grain, period_kind, period_start, attest_type, dim, citizens,
  contact_decided, contact_covered)
SELECT '{grain}', '{kind}', date_trunc('{kind}', window_end)::date, '-', {dim},
       count(DISTINCT case_ref), count(*), count(*) FILTER (WHERE outcome = 'contact')
FROM tracker_episodes WHERE outcome IS NOT NULL
GROUP BY 3{"" if dim.startswith("'") else ", 5"}
""")
    return out


# The receiver-kind cells (`rules.kind_cells`): requests and distinct citizens only.
_PLACES = (("national", "'DK'"), ("region", "region_code"), ("municipality", "municipality"))


def _keys(dim: str, *more: str) -> str:
    return "".join(f", {k}" for k in (*more, *([] if dim.startswith("'") else [dim])))


def kind_counts_sql() -> list[str]:
    return [
        f"""
INSERT INTO bulk_counts (grain, period_kind, period_start, attest_type, dim, requests, citizens)
SELECT 'rk:{grain}', '{kind}', p, coalesce(attest_type, '*'), {dim} || '/' || rk, count(*),
       count(DISTINCT case_ref)
FROM (SELECT *, date_trunc('{kind}', (submitted_at AT TIME ZONE '{TZ}')::date)::date AS p,
             coalesce(receiver_role, 'unknown') AS rk
      FROM tracker_conversations WHERE submitted_at IS NOT NULL) AS c
GROUP BY GROUPING SETS ((p, attest_type{_keys(dim, "rk")}), (p{_keys(dim, "rk")}))
"""
        for grain, dim in _PLACES
        for kind in ("week", "month")
    ]


# Request → attest for Kaplan–Meier (`tracker_latency`): per request cell and receiver-kind
# cell, answered requests per calendar days to the attest, open ones per day of the period.
LATENCY_SOURCE_SQL = f"""
CREATE TEMP TABLE latency_source AS
SELECT attest_type, region_code, municipality, coalesce(receiver_role, 'unknown') AS rk,
       (submitted_at AT TIME ZONE '{TZ}')::date AS sent,
       CASE WHEN replied_at IS NOT NULL
            THEN greatest(0, (replied_at AT TIME ZONE '{TZ}')::date
                             - (submitted_at AT TIME ZONE '{TZ}')::date) END AS days
FROM tracker_conversations WHERE submitted_at IS NOT NULL
"""


def latency_sql() -> list[str]:
    out = []
    for grain, dim in _PLACES:
        for kinds in (False, True):
            g = f"rk:{grain}" if kinds else grain
            d = f"{dim} || '/' || rk" if kinds else dim
            more = ("rk",) if kinds else ()
            for kind in ("week", "month"):
                for state, day, where, key in (
                    ("answered", "days", "days IS NOT NULL", "days"),
                    ("open", "sent - p", "days IS NULL", "sent"),
                ):
                    keys = _keys(dim, key, *more)
                    out.append(f"""
INSERT INTO bulk_latency (grain, period_kind, period_start, attest_type, dim, state, day, n)
SELECT '{g}', '{kind}', p, coalesce(attest_type, '*'), {d}, '{state}', {day}, count(*)
FROM (SELECT *, date_trunc('{kind}', sent)::date AS p FROM latency_source
      WHERE {where}) AS c
GROUP BY GROUPING SETS ((p, attest_type{keys}), (p{keys}))
""")
    return out


_CELL = "grain, period_kind, period_start, attest_type, dim"

# When in the absence requests are made (`tracker_request_weeks`): per request cell and
# case-kind cell (`rules.case_kind_cells`, whose requests and distinct citizens are counted
# here too), the requests per week of absence (`rules.absence_week`).
WEEKS_SOURCE_SQL = f"""
CREATE TEMP TABLE weeks_source AS
SELECT attest_type, region_code, municipality, case_kind, case_ref,
       (submitted_at AT TIME ZONE '{TZ}')::date AS sent,
       CASE WHEN (submitted_at AT TIME ZONE '{TZ}')::date < first_day_of_absence THEN 0
            ELSE least(((submitted_at AT TIME ZONE '{TZ}')::date - first_day_of_absence) / 7 + 1,
                       {r.LAST_WEEK}) END AS w
FROM tracker_conversations WHERE submitted_at IS NOT NULL
"""
WEEKS_TABLES_SQL = [
    """
CREATE TEMP TABLE bulk_kind_counts (grain text, period_kind text, period_start date,
  attest_type text, dim text, requests bigint, citizens bigint)
""",
    """
CREATE TEMP TABLE bulk_weeks (grain text, period_kind text, period_start date,
  attest_type text, dim text, week smallint, n bigint)
""",
]


def request_weeks_sql() -> list[str]:
    out = [*WEEKS_TABLES_SQL, WEEKS_SOURCE_SQL]
    for grain, dim in _PLACES:
        for kind in ("week", "month"):
            source = f"(SELECT *, date_trunc('{kind}', sent)::date AS p FROM weeks_source) AS c"
            out.append(f"""
INSERT INTO bulk_kind_counts (grain, period_kind, period_start, attest_type, dim, requests,
  citizens)
SELECT 'ck:{grain}', '{kind}', p, coalesce(attest_type, '*'), {dim} || '/' || case_kind,
       count(*), count(DISTINCT case_ref)
FROM {source}
GROUP BY GROUPING SETS ((p, attest_type{_keys(dim, "case_kind")}),
                        (p{_keys(dim, "case_kind")}))
""")
            for kinds in (False, True):
                g = f"ck:{grain}" if kinds else grain
                d = f"{dim} || '/' || case_kind" if kinds else dim
                keys = _keys(dim, "w", *(("case_kind",) if kinds else ()))
                out.append(f"""
INSERT INTO bulk_weeks (grain, period_kind, period_start, attest_type, dim, week, n)
SELECT '{g}', '{kind}', p, coalesce(attest_type, '*'), {d}, w, count(*)
FROM {source}
GROUP BY GROUPING SETS ((p, attest_type{keys}), (p{keys}))
""")
    return out


TO_CELL_SQL = [
    f"""
INSERT INTO tracker_counts (cell_id, requests, citizens)
SELECT c.id, b.requests, b.citizens FROM bulk_kind_counts b JOIN tracker_cells c
  USING ({_CELL})
""",
    f"""
INSERT INTO tracker_request_weeks (cell_id, week, n)
SELECT c.id, b.week, b.n FROM bulk_weeks b JOIN tracker_cells c USING ({_CELL})
""",
    "DROP TABLE bulk_kind_counts",
    "DROP TABLE bulk_weeks",
    "DROP TABLE weeks_source",
]


async def build_request_weeks(conn: AsyncConnection) -> None:
    """`tracker_request_weeks` and the case-kind cells' counters from the conversations (in
    the caller's transaction; their rows must not be there yet)."""
    for sql in request_weeks_sql():
        await conn.exec_driver_sql(sql)
    typed = sa.text(
        f"SELECT {_CELL} FROM bulk_kind_counts UNION SELECT {_CELL} FROM bulk_weeks"
    ).columns(period_start=sa.Date)
    cells = [tuple(row) for row in await conn.execute(typed)]
    for start in range(0, len(cells), 50_000):
        await ensure_cells(conn, cells[start : start + 50_000])
    await conn.exec_driver_sql(TO_CELL_SQL[0])
    await without_constraints(conn, TO_CELL_SQL[1:], tables=("tracker_request_weeks",))


def _bucket(seconds: str) -> str:
    return (
        f"CASE WHEN {seconds} < 60 THEN 0 ELSE "
        f"least(255, 1 + floor(8 * ln(({seconds}) / 60.0) / ln(2.0)))::int END"
    )


def samples_sql() -> str:
    pairs = ",\n".join(f"('{m.name}', {m.start.value}_at, {m.end.value}_at)" for m in r.METRICS)
    secs = "greatest(0, extract(epoch FROM (m_end - m_start)))"
    return f"""
CREATE TEMP TABLE samples AS
SELECT m.metric, c.attest_type, c.region_code, c.municipality, c.receiver_org,
       date_trunc('week', c.d)::date AS week, date_trunc('month', c.d)::date AS month,
       {_bucket(secs)} AS bucket
FROM (SELECT *, (submitted_at AT TIME ZONE '{TZ}')::date AS d FROM tracker_conversations
      WHERE submitted_at IS NOT NULL) AS c
CROSS JOIN LATERAL (VALUES {pairs}) AS m(metric, m_start, m_end)
WHERE m.m_start IS NOT NULL AND m.m_end IS NOT NULL
"""


def durations_sql() -> list[str]:
    out = []
    for grain, dim, kinds in _GRAINS:
        for kind in kinds:
            out.append(f"""
INSERT INTO bulk_durations (metric, grain, period_kind, period_start, attest_type, dim,
  bucket, n)
SELECT metric, '{grain}', '{kind}', {kind}, attest_type, {dim}, bucket, count(*)
FROM samples
GROUP BY metric, {kind}, bucket, attest_type{"" if dim.startswith("'") else f", {dim}"}
""")
    return out


_COUNTERS = ", ".join(COUNTERS)

# The bulk rollups are built by cell (the five columns), as the report reads them, in
# temporary tables; then each cell becomes a row of `tracker_cells` and the rollups refer to it
# by id, as the tracker writes them (migration 0011).
BULK_TABLES_SQL = [
    f"""
CREATE TEMP TABLE bulk_counts (grain text, period_kind text, period_start date,
  attest_type text, dim text, {", ".join(f"{c} bigint NOT NULL DEFAULT 0" for c in COUNTERS)})
""",
    """
CREATE TEMP TABLE bulk_durations (metric text, grain text, period_kind text, period_start date,
  attest_type text, dim text, bucket smallint, n bigint)
""",
    """
CREATE TEMP TABLE bulk_latency (grain text, period_kind text, period_start date,
  attest_type text, dim text, state text, day int, n bigint)
""",
]
BULK_CELLS_SQL = (
    f"SELECT {_CELL} FROM bulk_counts UNION SELECT {_CELL} FROM bulk_durations "
    f"UNION SELECT {_CELL} FROM bulk_latency"
)
TO_CELLS_SQL = [
    f"""
INSERT INTO tracker_counts (cell_id, {_COUNTERS})
SELECT c.id, {", ".join(f"b.{k}" for k in COUNTERS)}
FROM bulk_counts b JOIN tracker_cells c USING ({_CELL})
""",
    f"""
INSERT INTO tracker_durations (cell_id, metric, bucket, n)
SELECT c.id, b.metric, b.bucket, b.n FROM bulk_durations b JOIN tracker_cells c USING ({_CELL})
""",
    f"""
INSERT INTO tracker_latency (cell_id, state, day, n)
SELECT c.id, b.state, b.day, b.n FROM bulk_latency b JOIN tracker_cells c USING ({_CELL})
""",
    "DROP TABLE bulk_counts",
    "DROP TABLE bulk_durations",
    "DROP TABLE bulk_latency",
    "DROP TABLE latency_source",
]


# The rollups' keys and references to their cells, dropped while the bulk inserts run and
# added again after: checked row by row, the references alone cost one lookup of a cell per
# inserted row (tens of millions at national volume); added again, each is one sort or join.
ROLLUP_TABLES = ("tracker_counts", "tracker_durations", "tracker_latency")
OVERDUE_TABLES = ("tracker_overdue_cells", "tracker_overdue", "tracker_overdue_citizens")
REHAB_TABLES = ("tracker_rehab_cases", "tracker_rehab")
CONSTRAINTS_SQL = """
SELECT conrelid::regclass::text AS tbl, conname, contype, pg_get_constraintdef(oid) AS definition
  FROM pg_constraint
 WHERE conrelid::regclass::text = ANY(:tables) AND contype IN ('p', 'f')
"""


async def without_constraints(
    conn: AsyncConnection, sqls: list[str], tables: tuple[str, ...] = ROLLUP_TABLES
) -> None:
    """Run `sqls` with the tables' primary keys and foreign keys dropped (the rollup
    tables'), then add them again (primary keys first), as they were."""
    rows = (await conn.execute(sa.text(CONSTRAINTS_SQL), {"tables": list(tables)})).all()
    for row in sorted(rows, key=lambda r: r.contype != "f"):  # references first
        await conn.exec_driver_sql(f'ALTER TABLE {row.tbl} DROP CONSTRAINT "{row.conname}"')
    for sql in sqls:
        await conn.exec_driver_sql(sql)
    for row in sorted(rows, key=lambda r: r.contype != "p"):  # keys first
        await conn.exec_driver_sql(
            f'ALTER TABLE {row.tbl} ADD CONSTRAINT "{row.conname}" {row.definition}'
        )


async def build_rollups(engine: AsyncEngine) -> dict[str, float]:
    times = {}
    async with engine.begin() as conn:
        await conn.exec_driver_sql("SET LOCAL work_mem = '1GB'")
        await conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '1GB'")
        await conn.execute(tracker_counts.delete())
        await conn.execute(tracker_durations.delete())
        await conn.execute(tracker_latency.delete())
        await conn.execute(tracker_request_weeks.delete())
        for name, sqls in (
            ("counts", BULK_TABLES_SQL + counts_sql() + kind_counts_sql()),
            ("samples", [samples_sql()]),
            ("durations", durations_sql()),
            ("latency", [LATENCY_SOURCE_SQL, *latency_sql()]),
            ("cells", TO_CELLS_SQL),
        ):
            t0 = time.perf_counter()
            if name == "cells":  # ids as the tracker computes them, 50,000 cells a statement
                typed = sa.text(BULK_CELLS_SQL).columns(period_start=sa.Date)
                cells = [tuple(r) for r in await conn.execute(typed)]
                for start in range(0, len(cells), 50_000):
                    await ensure_cells(conn, cells[start : start + 50_000])
                await without_constraints(conn, sqls)
            else:
                for sql in sqls:
                    await conn.exec_driver_sql(sql)
            times[name] = round(time.perf_counter() - t0, 1)
            print(f"  rollup {name}: {times[name]:.1f} s", flush=True)
        await conn.exec_driver_sql("DROP TABLE samples")
        t0 = time.perf_counter()
        await build_request_weeks(conn)
        times["request_weeks"] = round(time.perf_counter() - t0, 1)
        print(f"  rollup request_weeks: {times['request_weeks']:.1f} s", flush=True)
        # the rebuilds below look requests up by case ref: without the load's statistics
        # (autovacuum has not analysed it yet) their plans scan (overdue: 2,070 s at 10M)
        await conn.exec_driver_sql("ANALYZE tracker_conversations")
        t0 = time.perf_counter()
        await overdue_rollup.rebuild(conn, TZ)  # the tracker's own code: few rows
        times["overdue"] = round(time.perf_counter() - t0, 1)
        print(f"  rollup overdue: {times['overdue']:.1f} s", flush=True)
        t0 = time.perf_counter()
        await rehab_rollup.rebuild(conn, rehab_rollup.RehabRules(timezone=TZ))
        times["rehabilitation"] = round(time.perf_counter() - t0, 1)
        print(f"  rollup rehabilitation: {times['rehabilitation']:.1f} s", flush=True)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in (
            *ROLLUP_TABLES, "tracker_cells", "tracker_request_weeks", *OVERDUE_TABLES,
            *REHAB_TABLES,
        ):  # fmt: skip
            await conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
    return times


# --- 1. and 5. events through the real tracker ---------------------------------------------


def synthetic_events(n: int, rng: random.Random, *, start: dt.datetime) -> list[StageEvent]:
    """Stage events of n conversations (all stages, some never answered), in arrival order."""
    munis = list(municipalities().values())
    events: list[StageEvent] = []
    for i in range(n):
        m = rng.choice(munis)
        attest = rng.choice(ALL_TYPES)
        psy = attest in PSY_TYPES
        receiver = f"psy-{m.region_code}-{i % 6}" if psy else f"gp-{i % 2000}"
        submitted = start + dt.timedelta(seconds=rng.uniform(0, 300 * 86400))
        first_day = submitted.date() - dt.timedelta(days=int(rng.uniform(5, 120)))
        meta: dict[str, Any] = {
            "conversation_id": str(uuid.uuid4()),
            "attest_type": attest,
            "case_kind": rng.choice(["sygedagpenge", "jobafklaringsforloeb", "ressourceforloeb"]),
            "municipality": m.kommunekode,
            "region_code": m.region_code,
            "jobcenter_org": f"jc-{m.kommunekode}",
            "receiver_org": receiver,
            "case_ref": f"ref-{rng.randrange(n)}",
            "psychiatric_course": rng.random() < 0.3,
            "first_day_of_absence": first_day,
            "reply_deadline": submitted.date() + dt.timedelta(days=30),
        }
        t = submitted
        stages = [Stage.SUBMITTED, Stage.PUBLISHED, Stage.IN_MAILBOX, Stage.FETCHED,
                  Stage.ACKNOWLEDGED]  # fmt: skip
        if rng.random() > 0.08:
            stages += [Stage.REPLIED, Stage.REPLY_IN_INBOX, Stage.REPLY_FETCHED]
        for stage in stages:
            t += dt.timedelta(seconds=rng.lognormvariate(9, 2))
            events.append(
                StageEvent(
                    event_id=str(uuid.uuid4()),
                    message_id=str(uuid.uuid4()),
                    message_type=MessageType.ATTEST_REQUEST,
                    stage=stage,
                    at=t,
                    **meta,
                )
            )
    return events


async def play(engine: AsyncEngine, state: TrackerState, events: list[StageEvent]) -> float:
    """Apply events one transaction each, as the consumer does. Returns events per second."""
    t0 = time.perf_counter()
    for event in events:
        async with engine.begin() as conn:
            await state.apply_stage(conn, event)
    return len(events) / (time.perf_counter() - t0)


async def _table(conn: AsyncConnection, table: sa.Table) -> list[tuple[Any, ...]]:
    """The rows by their cells' columns, as the reports read them."""
    return [tuple(row) for row in await conn.execute(with_cells(table))]


async def equivalence_check(admin: str, n: int) -> dict[str, Any]:
    url = await fresh(admin, "attest_bench_check")
    engine = make_engine(url)
    try:
        state = TrackerState(r.TrackerRules.build(next_working_day=False))
        events = synthetic_events(n, random.Random(5), start=dt.datetime(2025, 1, 6, tzinfo=dt.UTC))
        rate = await play(engine, state, events)
        async with engine.connect() as conn:
            live_counts = await _table(conn, tracker_counts)
            live_durations = await _table(conn, tracker_durations)
            live_latency = [row for row in await _table(conn, tracker_latency) if row[-1] != 0]
            live_weeks = await _table(conn, tracker_request_weeks)
        await build_rollups(engine)
        async with engine.connect() as conn:
            bulk_counts = await _table(conn, tracker_counts)
            bulk_durations = await _table(conn, tracker_durations)
            bulk_latency = await _table(conn, tracker_latency)
            bulk_weeks = await _table(conn, tracker_request_weeks)
    finally:
        await engine.dispose()
    same = (
        live_counts == bulk_counts
        and live_durations == bulk_durations
        and live_latency == bulk_latency
        and live_weeks == bulk_weeks
    )
    if not same:
        diff = (
            set(live_counts) ^ set(bulk_counts)
            or set(live_durations) ^ set(bulk_durations)
            or set(live_latency) ^ set(bulk_latency)
            or set(live_weeks) ^ set(bulk_weeks)
        )
        raise SystemExit(f"bulk rollups differ from the incremental ones: {sorted(diff)[:5]}")
    return {
        "conversations": n,
        "events": len(events),
        "events_per_second": round(rate, 1),
        "count_cells": len(live_counts),
        "duration_cells": len(live_durations),
        "latency_rows": len(live_latency),
        "request_week_rows": len(live_weeks),
        "identical": same,
    }


# --- 4. timing the report -------------------------------------------------------------------


async def time_queries(engine: AsyncEngine, runs: int) -> dict[str, Any]:
    rules = r.TrackerRules.build()
    today = dt.date.today()
    cases: dict[str, Any] = {
        "report, whole period, all types": lambda c: rep.report(c, rules, rep.Filters()),
        "report, last 12 months, LÆ 155": lambda c: rep.report(
            c, rules, rep.Filters("month", today - dt.timedelta(days=365), today, "LÆ 155")
        ),
        "report, weekly, last 26 weeks": lambda c: rep.report(
            c, rules, rep.Filters("week", today - dt.timedelta(weeks=26), today)
        ),
        "durations by receiver (1,990 organisations), whole period": lambda c: rep.durations(
            c, rules, "request_to_attest", rep.Filters(), "receiver", series=False
        ),
        "deadlines by municipality, monthly series": lambda c: rep.deadlines(
            c, rules, rep.Filters(), "municipality", series=True
        ),
    }
    out = {}
    for name, query in cases.items():
        samples = []
        for _ in range(runs):
            async with engine.connect() as conn:
                t0 = time.perf_counter()
                await query(conn)
                samples.append(time.perf_counter() - t0)
        out[name] = {
            "first_s": round(samples[0], 4),
            "median_s": round(statistics.median(samples), 4),
            "max_s": round(max(samples), 4),
        }
        print(f"  {name}: median {out[name]['median_s']:.3f} s (first {samples[0]:.3f} s)")
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000_000)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--database", default="attest_bench")
    parser.add_argument("--check", type=int, default=3000, help="conversations in step 1")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--incremental", type=int, default=3000, help="conversations in step 5")
    parser.add_argument("--keep", action="store_true", help="reuse a loaded database")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat()}

    print("1. equivalence of bulk and incremental rollups", flush=True)
    t0 = time.perf_counter()
    results["equivalence"] = await equivalence_check(args.admin_dsn, args.check)
    print(f"  {results['equivalence']} ({time.perf_counter() - t0:.0f} s)", flush=True)

    url = url_for(args.admin_dsn, args.database)
    if not args.keep:
        url = await fresh(args.admin_dsn, args.database)
    engine = make_engine(url)
    try:
        if not args.keep:
            print(f"2. load {args.conversations:,} conversations", flush=True)
            t0 = time.perf_counter()
            step = 1_000_000
            for lo in range(1, args.conversations + 1, step):
                hi = min(args.conversations, lo + step - 1)
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(
                        "SELECT setseed(%s)" % (lo / (args.conversations + 1))
                    )
                    await conn.execute(sa.text(LOAD_SQL), {"lo": lo, "hi": hi})
                print(f"  {hi:,} ({time.perf_counter() - t0:.0f} s)", flush=True)
            async with engine.begin() as conn:
                await conn.exec_driver_sql("SET LOCAL work_mem = '1GB'")
                await conn.exec_driver_sql(EPISODES_SQL)
            results["load_s"] = round(time.perf_counter() - t0, 1)
            print("3. rollups", flush=True)
            results["rollup_s"] = await build_rollups(engine)
        async with engine.connect() as conn:
            sizes = {}
            for table in ("tracker_conversations", "tracker_episodes", "tracker_cells",
                          "tracker_counts", "tracker_durations"):  # fmt: skip
                sizes[table] = (
                    await conn.exec_driver_sql(f"SELECT count(*) FROM {table}")
                ).scalar_one()
            results["rows"] = sizes
            results["database_size"] = (
                await conn.exec_driver_sql(
                    "SELECT pg_size_pretty(pg_database_size(current_database()))"
                )
            ).scalar_one()
        print(f"  rows: {results['rows']}, database {results['database_size']}", flush=True)
        print("4. report queries", flush=True)
        results["queries"] = await time_queries(engine, args.runs)
        print("5. incremental maintenance on the loaded database", flush=True)
        state = TrackerState(r.TrackerRules.build())
        events = synthetic_events(
            args.incremental, random.Random(9), start=dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
        )
        rate = await play(engine, state, events)
        results["incremental"] = {"events": len(events), "events_per_second": round(rate, 1)}
        print(f"  {len(events):,} events at {rate:,.0f} events/s", flush=True)
    finally:
        await engine.dispose()
    results["finished"] = dt.datetime.now(dt.UTC).isoformat()
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "utf-8")
    print(f"results in {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
