"""Contact over registered cases as a rollup: `tracker_coverage_cases` (each counted case's
decision) and `tracker_coverage` (the counted cases per cell and state, the open ones per
last day of their window, and the cells' distinct citizens).

Both are filled from the rows already there (`tracker_cases`, `tracker_treatments`,
`tracker_contacts`, `tracker_conversations`), decided as the gateway decides them
(infra/db/coverage.py), with the contact rules of the environment the migration runs in
(`TRACKER_CONTACT_WINDOW_WEEKS`, `TRACKER_CONTACT_CASE_KINDS`, `TRACKER_CONTACT_COUNTS`,
`TRACKER_TIMEZONE`; their defaults when unset). The functions are repeated here as they were
when this migration was written, since a migration must not change with the code. It reads
the cases in chunks of 5,000 citizens.

Revision ID: 0022
Revises: 0021; depends on 0011 (the tracker's branch)
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
from sqlalchemy.dialects import postgresql, sqlite

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = "0011"  # the tracker's branch: the tracker tables this reads

FILLFACTOR = 80
CHUNK = 5_000
IN_LIST = 500
DECISION = ("case_id", "window_end", "region_code", "municipality", "case_kind", "state")

Key = tuple[str, dt.date, str, str, str, str, int]
Decision = tuple[dt.date, str, str, str, str]  # window end, region, municipality, kind, state


def upgrade() -> None:
    op.create_table(
        "tracker_coverage_cases",
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("window_end", sa.Date, nullable=False),
        sa.Column("region_code", sa.String(4), nullable=False),
        sa.Column("municipality", sa.String(3), nullable=False),
        sa.Column("case_kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("case_id", name="pk_tracker_coverage_cases"),
    )
    op.create_table(
        "tracker_coverage",
        sa.Column("period_kind", sa.String(7), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("grain", sa.String(16), nullable=False),
        sa.Column("place", sa.String(4), nullable=False),
        sa.Column("case_kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "period_kind",
            "period_start",
            "grain",
            "place",
            "case_kind",
            "state",
            "day",
            name="pk_tracker_coverage",
        ),
        postgresql_with={"fillfactor": FILLFACTOR},
    )
    _backfill(op.get_bind())


def downgrade() -> None:
    op.drop_table("tracker_coverage")
    op.drop_table("tracker_coverage_cases")


def _rules() -> tuple[int, frozenset[str], frozenset[str], ZoneInfo]:
    def listed(name: str, default: tuple[str, ...]) -> frozenset[str]:
        text = os.environ.get(name)
        return frozenset(json.loads(text) if text else default)

    return (
        int(os.environ.get("TRACKER_CONTACT_WINDOW_WEEKS") or 8),
        listed("TRACKER_CONTACT_CASE_KINDS", ("sygedagpenge", "jobafklaringsforloeb")),
        listed(
            "TRACKER_CONTACT_COUNTS", ("meeting", "phone", "video", "written", "other", "attest")
        ),
        ZoneInfo(os.environ.get("TRACKER_TIMEZONE") or "Europe/Copenhagen"),
    )


def _tables() -> dict[str, sa.Table]:
    meta = sa.MetaData()

    def table(name: str, *columns: str, dates: tuple[str, ...] = ()) -> sa.Table:
        cols = [
            sa.Column(c, sa.DateTime(timezone=True))
            if c.endswith("_at")
            else sa.Column(c, sa.Date)
            if c in dates
            else sa.Column(c, sa.Boolean)
            if c == "psychiatric_course"
            else sa.Column(c, sa.String)
            for c in columns
        ]
        return sa.Table(name, meta, *cols)

    days = ("first_day_of_absence", "closed_on", "start_date", "end_date", "contact_date")
    return {
        "cases": table(
            "tracker_cases",
            "case_id",
            "jobcenter_org",
            "case_ref",
            "municipality",
            "region_code",
            "case_kind",
            "psychiatric_course",
            "first_day_of_absence",
            "closed_on",
            dates=days,
        ),
        "treatments": table("tracker_treatments", "case_ref", "start_date", "end_date", dates=days),
        "contacts": table(
            "tracker_contacts",
            "case_ref",
            "jobcenter_org",
            "psychiatry_org",
            "registrar_org",
            "contact_date",
            "channel",
            dates=days,
        ),
        "conversations": table(
            "tracker_conversations",
            "case_ref",
            "jobcenter_org",
            "receiver_role",
            "submitted_at",
            "replied_at",
        ),
        "decisions": sa.Table(
            "tracker_coverage_cases",
            meta,
            sa.Column("case_id", sa.String),
            sa.Column("window_end", sa.Date),
            sa.Column("region_code", sa.String),
            sa.Column("municipality", sa.String),
            sa.Column("case_kind", sa.String),
            sa.Column("state", sa.String),
        ),
        "coverage": sa.Table(
            "tracker_coverage",
            meta,
            sa.Column("period_kind", sa.String, primary_key=True),
            sa.Column("period_start", sa.Date, primary_key=True),
            sa.Column("grain", sa.String, primary_key=True),
            sa.Column("place", sa.String, primary_key=True),
            sa.Column("case_kind", sa.String, primary_key=True),
            sa.Column("state", sa.String, primary_key=True),
            sa.Column("day", sa.Integer, primary_key=True),
            sa.Column("n", sa.BigInteger),
        ),
    }


def _period_start(day: dt.date, kind: str) -> dt.date:
    if kind == "week":
        return day - dt.timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    if kind == "quarter":
        return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return dt.date(day.year, 1, 1)


def _keys(d: Decision) -> tuple[list[Key], set[Key]]:
    """A decision's state rows (weeks, months) and its citizen cells (every period kind)."""
    end, region, municipality, kind, state = d
    places = (("national", "DK"), ("region", region), ("municipality", municipality))
    states: list[Key] = []
    citizens: set[Key] = set()
    for period in ("week", "month", "quarter", "year"):
        start = _period_start(end, period)
        for grain, place in places:
            for value in ("*", kind):
                citizens.add((period, start, grain, place, value, "citizens", 0))
                if period in ("week", "month"):
                    day = (end - start).days if state == "open" else 0
                    states.append((period, start, grain, place, value, state, day))
    return states, citizens


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _backfill(bind: sa.Connection) -> None:
    t = _tables()
    weeks, kinds, counts, tz = _rules()
    dialect = bind.dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(t["coverage"])
    upsert = insert.on_conflict_do_update(
        index_elements=["period_kind", "period_start", "grain", "place", "case_kind", "state",
                        "day"],
        set_={"n": t["coverage"].c.n + insert.excluded.n},
    )  # fmt: skip
    names = ("period_kind", "period_start", "grain", "place", "case_kind", "state", "day")
    channels = sorted(counts - {"attest", "request"})
    cases_c = t["cases"].c
    last = ""
    while True:
        refs = [
            row.case_ref
            for row in bind.execute(
                sa.select(cases_c.case_ref)
                .where(cases_c.case_ref > last)
                .group_by(cases_c.case_ref)
                .order_by(cases_c.case_ref)
                .limit(CHUNK)
            )
        ]
        if not refs:
            return
        last = refs[-1]
        cases: list[Any] = []
        treatments: dict[str, list[Any]] = defaultdict(list)
        contacts: dict[tuple[str, str], list[tuple[dt.date, str]]] = defaultdict(list)
        for i in range(0, len(refs), IN_LIST):
            part = refs[i : i + IN_LIST]
            cases.extend(bind.execute(sa.select(t["cases"]).where(cases_c.case_ref.in_(part))))
            tt = t["treatments"]
            for row in bind.execute(sa.select(tt).where(tt.c.case_ref.in_(part))):
                treatments[row.case_ref].append(row)
            tk = t["contacts"]
            for row in bind.execute(
                sa.select(tk).where(tk.c.case_ref.in_(part), tk.c.channel.in_(channels))
            ):
                source = "psychiatry" if row.registrar_org == row.psychiatry_org else "jobcenter"
                contacts[(row.case_ref, row.jobcenter_org)].append((row.contact_date, source))
            tc = t["conversations"]
            if {"attest", "request"} & counts:
                for row in bind.execute(
                    sa.select(tc).where(tc.c.case_ref.in_(part), tc.c.receiver_role == "psychiatry")
                ):
                    key = (row.case_ref, row.jobcenter_org)
                    if "attest" in counts and row.replied_at is not None:
                        day = _aware(row.replied_at).astimezone(tz).date()
                        contacts[key].append((day, "attest"))
                    if "request" in counts and row.submitted_at is not None:
                        day = _aware(row.submitted_at).astimezone(tz).date()
                        contacts[key].append((day, "request"))
        decisions: list[dict[str, Any]] = []
        rollup: Counter[Key] = Counter()
        citizens: dict[str, set[Key]] = defaultdict(set)
        for case in cases:
            if case.case_kind not in kinds:
                continue
            first = case.first_day_of_absence
            try:
                end = first + dt.timedelta(days=7 * weeks - 1)
            except OverflowError:
                end = dt.date.max
            course = case.psychiatric_course or any(
                x.start_date <= end and (x.end_date is None or x.end_date >= first)
                for x in treatments.get(case.case_ref, ())
            )
            if not course:
                continue
            found = min(
                (
                    (day, source)
                    for day, source in contacts.get((case.case_ref, case.jobcenter_org), ())
                    if first <= day <= end
                ),
                default=None,
            )
            if found is not None:
                state = found[1]
            elif case.closed_on is not None and case.closed_on < end:
                state = "closed_early"
            else:
                state = "open"
            d = (end, case.region_code, case.municipality, case.case_kind, state)
            decisions.append(dict(zip(DECISION, (case.case_id, *d), strict=True)))
            states, cells = _keys(d)
            rollup.update(states)
            citizens[case.case_ref] |= cells
        for cells in citizens.values():
            rollup.update(cells)
        if decisions:
            bind.execute(t["decisions"].insert(), decisions)
        if rollup:
            bind.execute(
                upsert,
                [
                    dict(zip(names, key, strict=True)) | {"n": n}
                    for key, n in sorted(rollup.items())
                ],
            )
