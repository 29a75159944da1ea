"""A ressourceforløb case's wait for its health information as a rollup:
`tracker_rehab_cases` (what decides each case: its first request and each group's first
attest day) and `tracker_rehab` (per cell of the first request's week and month and place:
complete cases per wait in days, open ones per first-request day, the open ones missing each
group, and the distinct citizens for weeks, months, quarters and years), which
`/ministry/v1/rehabilitation` reads.

Filled from the requests already tracked (`tracker_conversations`), decided as the gateway
decides them (infra/db/rehabilitation.py) with the rules of the environment the migration
runs in (`TRACKER_REHAB_HEALTH_INFORMATION`, `TRACKER_TIMEZONE`; their defaults when unset).
The functions are repeated here as they were when this migration was written, since a
migration must not change with the code. The citizens are read 5,000 at a time, each with
all of their requests.

Revision ID: 0028
Revises: 0027
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter, defaultdict
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

CHUNK = 5_000  # citizens per read
FILLFACTOR = 80  # as the other rollups (0010)
CASE_KIND = "ressourceforloeb"
GROUPS_DEFAULT = (("LÆ 265",), ("LÆ 155", "LÆ 105", "LÆ 115"))

Key = tuple[str, dt.date, str, str, str, int]


def upgrade() -> None:
    op.create_table(
        "tracker_rehab_cases",
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.Column("jobcenter_org", sa.String(64), nullable=False),
        sa.Column("first_day_of_absence", sa.Date, nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_id", sa.String(64), nullable=False),
        sa.Column("region_code", sa.String(4), nullable=False),
        sa.Column("municipality", sa.String(3), nullable=False),
        sa.Column("answered", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint(
            "case_ref", "jobcenter_org", "first_day_of_absence", name="pk_tracker_rehab_cases"
        ),
    )
    op.create_table(
        "tracker_rehab",
        sa.Column("period_kind", sa.String(7), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("grain", sa.String(16), nullable=False),
        sa.Column("place", sa.String(4), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "period_kind", "period_start", "grain", "place", "state", "day",
            name="pk_tracker_rehab",
        ),
        postgresql_with={"fillfactor": FILLFACTOR},
    )  # fmt: skip
    _fill(op.get_bind())


def downgrade() -> None:
    op.drop_table("tracker_rehab")
    op.drop_table("tracker_rehab_cases")


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _period_start(day: dt.date, kind: str) -> dt.date:
    if kind == "week":
        return day - dt.timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    if kind == "quarter":
        return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return dt.date(day.year, 1, 1)


def _fill(bind: sa.Connection) -> None:
    text = os.environ.get("TRACKER_REHAB_HEALTH_INFORMATION")
    groups = tuple(tuple(g) for g in json.loads(text)) if text else GROUPS_DEFAULT
    types = sorted({t for g in groups for t in g})
    tz = ZoneInfo(os.environ.get("TRACKER_TIMEZONE") or "Europe/Copenhagen")
    meta = sa.MetaData()
    conv = sa.Table(
        "tracker_conversations",
        meta,
        *(
            sa.Column(name, sa.String)
            for name in (
                "conversation_id", "case_ref", "jobcenter_org", "case_kind", "attest_type",
                "region_code", "municipality",
            )
        ),
        sa.Column("first_day_of_absence", sa.Date),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        sa.Column("replied_at", sa.DateTime(timezone=True)),
    )  # fmt: skip
    cases_t = sa.Table(
        "tracker_rehab_cases",
        meta,
        *(
            sa.Column(name, sa.String)
            for name in ("case_ref", "jobcenter_org", "first_id", "region_code", "municipality",
                         "answered")
        ),
        sa.Column("first_day_of_absence", sa.Date),
        sa.Column("first_at", sa.DateTime(timezone=True)),
    )  # fmt: skip
    rollup_t = sa.Table(
        "tracker_rehab",
        meta,
        *(sa.Column(name, sa.String) for name in ("period_kind", "grain", "place", "state")),
        sa.Column("period_start", sa.Date),
        sa.Column("day", sa.Integer),
        sa.Column("n", sa.BigInteger),
    )
    c = conv.c
    counted = (
        c.case_kind == CASE_KIND,
        c.attest_type.in_(types),
        c.submitted_at.is_not(None),
    )
    totals: Counter[Key] = Counter()
    last = ""
    while True:
        refs = list(
            bind.scalars(
                sa.select(c.case_ref)
                .where(c.case_ref > last, *counted)
                .group_by(c.case_ref)
                .order_by(c.case_ref)
                .limit(CHUNK)
            )
        )
        if not refs:
            break
        requests: dict[tuple[str, str, dt.date], list[Any]] = defaultdict(list)
        rows = bind.execute(
            sa.select(conv).where(c.case_ref > last, c.case_ref <= refs[-1], *counted)
        )
        for row in rows:
            requests[(row.case_ref, row.jobcenter_org, row.first_day_of_absence)].append(row)
        last = refs[-1]
        decisions = []
        citizens: dict[str, set[Key]] = defaultdict(set)
        for (ref, jobcenter, first_day), found in sorted(requests.items()):
            first = min(found, key=lambda x: (_aware(x.submitted_at), x.conversation_id))
            answered: list[dt.date | None] = []
            for group in groups:
                times = [_aware(x.replied_at) for x in found if x.attest_type in group
                         and x.replied_at]  # fmt: skip
                answered.append(min(times).astimezone(tz).date() if times else None)
            first_at = _aware(first.submitted_at)
            decisions.append(
                {
                    "case_ref": ref, "jobcenter_org": jobcenter, "first_day_of_absence": first_day,
                    "first_at": first_at, "first_id": first.conversation_id,
                    "region_code": first.region_code, "municipality": first.municipality,
                    "answered": ",".join(a.isoformat() if a else "" for a in answered),
                }
            )  # fmt: skip
            day = first_at.astimezone(tz).date()
            places = (
                ("national", "DK"),
                ("region", first.region_code),
                ("municipality", first.municipality),
            )
            complete = all(a is not None for a in answered)
            for kind in ("week", "month"):
                start = _period_start(day, kind)
                for grain, place in places:
                    if complete:
                        wait = max(0, (max(a for a in answered if a) - day).days)
                        totals[(kind, start, grain, place, "complete", wait)] += 1
                        continue
                    totals[(kind, start, grain, place, "open", (day - start).days)] += 1
                    for i, a in enumerate(answered):
                        if a is None:
                            totals[(kind, start, grain, place, f"missing:{i}", 0)] += 1
            for kind in ("week", "month", "quarter", "year"):
                for grain, place in places:
                    citizens[ref].add((kind, _period_start(day, kind), grain, place, "citizens", 0))
        for keys in citizens.values():
            totals.update(keys)
        if decisions:
            bind.execute(cases_t.insert(), decisions)
    names = ("period_kind", "period_start", "grain", "place", "state", "day")
    if totals:
        bind.execute(
            rollup_t.insert(),
            [dict(zip(names, key, strict=True)) | {"n": n} for key, n in sorted(totals.items())],
        )
