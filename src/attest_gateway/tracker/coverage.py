"""The ministry's figures that need one row per case or request, not a rollup: contact over
registered sickness cases, request→attest latency that counts the open requests (Kaplan–
Meier), when in the absence requests are made, and the open overdue requests per receiver.

Unlike report.py these read per-record tracker tables (`tracker_cases`, `tracker_treatments`,
`tracker_contacts`, `tracker_conversations`) for the period asked, so they cost in proportion
to the cases and requests of that period: they are separate endpoints, not part of the
dashboard's overview that refreshes every minute. They hold no CPR number (case refs only,
which no answer contains) and the same disclosure control applies: a group is shown only if it
counts at least `min_cell_citizens` distinct citizens (exact here: the rows are at hand).

Contact over cases (`docs/tracker.md`, "Contact over registered cases"): a case counts when
its kind is one of `contact_case_kinds` and the citizen has a psychiatric course (the job
centre marked it, or a psychiatry unit registered the citizen in treatment during the window).
It has direct contact when, between the first day of absence and the window's last day, a
contact of a counted kind was registered by either side between the case's job centre and
psychiatry, or (`attest`) a request of that job centre to psychiatry was answered with an
attest, or (`request`, off by default) such a request was sent at all. A case without contact
is decided when its window has closed; one closed before its window ends without contact is
left out (nobody needed to meet), one whose window is still open is pending.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.core.directory import Role
from attest_gateway.core.identifiers import municipalities
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    organisations,
    tracker_cases,
    tracker_contacts,
    tracker_conversations,
    tracker_treatments,
)
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.report import Filters, label
from attest_gateway.tracker.survival import kaplan_meier

CoverageBy = Literal["national", "region", "municipality", "case_kind"]
LatencyBy = Literal["national", "region", "attest_type", "receiver_kind"]
TimingBy = Literal["national", "region", "municipality", "case_kind"]
OverdueBy = Literal["receiver", "municipality"]

_CHUNK = 500  # case refs per IN list


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def _region_municipalities(region: str) -> list[str]:
    return [m.kommunekode for m in municipalities().values() if m.region_code == region]


def _group_label(by: str, key: str) -> str:
    if by in ("national", "region", "municipality"):
        return label(by, key)
    return key


# --- contact over cases -----------------------------------------------------------------------


@dataclass
class _Tally:
    cases: int = 0  # decided: with contact + without
    with_contact: int = 0
    pending: int = 0
    closed_early: int = 0
    citizens: set[str] = field(default_factory=set)
    sources: dict[str, int] = field(default_factory=lambda: defaultdict(int))


async def _by_refs(
    conn: AsyncConnection, table: sa.Table, refs: Sequence[str], *where: Any
) -> list[Any]:
    rows: list[Any] = []
    for chunk in _chunks(refs):
        rows.extend(await conn.execute(sa.select(table).where(table.c.case_ref.in_(chunk), *where)))
    return rows


async def coverage(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: CoverageBy,
    *,
    series: bool,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Share of registered cases with a psychiatric course and no direct contact in the window,
    per group (and period of the window's last day)."""
    today = rules.local_date(now)
    window_days = 7 * rules.contact_window_weeks
    c = tracker_cases.c
    conds: list[Any] = [c.case_kind.in_(sorted(rules.contact_case_kinds))]
    if f.date_from is not None:  # the window ends in the period asked
        conds.append(c.first_day_of_absence >= f.date_from - dt.timedelta(days=window_days))
    if f.date_to is not None:
        conds.append(c.first_day_of_absence <= f.date_to)
    if f.region is not None:
        conds.append(c.region_code == f.region)
    cases = list(await conn.execute(sa.select(tracker_cases).where(*conds)))
    refs = sorted({row.case_ref for row in cases})
    treatments: dict[str, list[Any]] = defaultdict(list)
    for t in await _by_refs(conn, tracker_treatments, refs):
        treatments[t.case_ref].append(t)
    contacts: dict[tuple[str, str], list[tuple[dt.date, str]]] = defaultdict(list)
    channels = sorted(rules.contact_counts - {"attest", "request"})
    for rec in await _by_refs(
        conn, tracker_contacts, refs, tracker_contacts.c.channel.in_(channels)
    ):
        source = "psychiatry" if rec.registrar_org == rec.psychiatry_org else "jobcenter"
        contacts[(rec.case_ref, rec.jobcenter_org)].append((rec.contact_date, source))
    counts_requests = {"attest", "request"} & rules.contact_counts
    if counts_requests:
        tc = tracker_conversations.c
        for rec in await _by_refs(
            conn, tracker_conversations, refs, tc.receiver_role == Role.PSYCHIATRY.value
        ):
            key = (rec.case_ref, rec.jobcenter_org)
            if "attest" in counts_requests and rec.replied_at is not None:
                contacts[key].append((rules.local_date(aware(rec.replied_at)), "attest"))
            if "request" in counts_requests and rec.submitted_at is not None:
                contacts[key].append((rules.local_date(aware(rec.submitted_at)), "request"))

    tallies: dict[tuple[str | None, str], _Tally] = defaultdict(_Tally)
    for case in cases:
        first_day = case.first_day_of_absence
        window_end = rules.contact_window_end(first_day)
        if f.date_from is not None and window_end < r.period_start(f.date_from, f.period):
            continue
        if f.date_to is not None and window_end > f.date_to:
            continue
        course = case.psychiatric_course or any(
            t.start_date <= window_end and (t.end_date is None or t.end_date >= first_day)
            for t in treatments.get(case.case_ref, ())
        )
        if not course:
            continue
        found = sorted(
            (day, source)
            for day, source in contacts.get((case.case_ref, case.jobcenter_org), ())
            if first_day <= day <= window_end
        )
        period = r.period_start(window_end, f.period).isoformat() if series else None
        tally = tallies[(period, _coverage_key(case, by))]
        if found:
            tally.cases += 1
            tally.with_contact += 1
            tally.sources[found[0][1]] += 1
            tally.citizens.add(case.case_ref)
        elif case.closed_on is not None and case.closed_on < window_end:
            tally.closed_early += 1
        elif window_end < today:
            tally.cases += 1
            tally.citizens.add(case.case_ref)
        else:
            tally.pending += 1
    rows = []
    for key in sorted(tallies, key=lambda k: (k[0] or "", k[1])):
        t = tallies[key]
        period, group = key
        ok = r.publishable(len(t.citizens), rules)
        row: dict[str, Any] = {"period_start": period} if series else {}
        row |= {
            "group": group,
            "label": _group_label(by, group),
            "suppressed": not ok,
            "baseline": rules.no_contact_baseline,
            "target": rules.no_contact_target,
        }
        fields: dict[str, Any] = {
            "cases": t.cases,
            "with_contact": t.with_contact,
            "without_contact": t.cases - t.with_contact,
            "share_without_contact": r.rate(t.cases - t.with_contact, t.cases),
            "contact_by_jobcenter": t.sources.get("jobcenter", 0),
            "contact_by_psychiatry": t.sources.get("psychiatry", 0),
            "contact_by_attest": t.sources.get("attest", 0),
            "contact_by_request": t.sources.get("request", 0),
            "pending": t.pending,
            "closed_early": t.closed_early,
        }
        row |= fields if ok else dict.fromkeys(fields)
        rows.append(row)
    return rows


def _coverage_key(case: Any, by: CoverageBy) -> str:
    if by == "region":
        return str(case.region_code)
    if by == "municipality":
        return str(case.municipality)
    if by == "case_kind":
        return str(case.case_kind)
    return "DK"


# --- latency with the open requests (Kaplan–Meier) ------------------------------------------


def _request_conds(f: Filters) -> list[Any]:
    tc = tracker_conversations.c
    conds: list[Any] = [tc.submitted_at.is_not(None)]
    if f.attest_type is not None:
        conds.append(tc.attest_type == f.attest_type)
    if f.region is not None:
        conds.append(tc.region_code == f.region)
    # a day's margin either side: the period is the request's day in Danish time
    if f.date_from is not None:
        start = r.period_start(f.date_from, f.period) - dt.timedelta(days=1)
        conds.append(tc.submitted_at >= dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC))
    if f.date_to is not None:
        end = f.date_to + dt.timedelta(days=2)
        conds.append(tc.submitted_at < dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC))
    return conds


def _in_period(rules: r.TrackerRules, f: Filters, day: dt.date) -> bool:
    if f.date_from is not None and day < r.period_start(f.date_from, f.period):
        return False
    return f.date_to is None or day <= f.date_to


async def latency(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: LatencyBy,
    *,
    series: bool,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Request → attest per group, estimated with the open requests as censored at their age
    (Kaplan–Meier), beside the share still open and the median of the answered ones only."""
    tc = tracker_conversations.c
    stmt = sa.select(
        tc.submitted_at,
        tc.replied_at,
        tc.attest_type,
        tc.receiver_role,
        tc.region_code,
        tc.case_ref,
    ).where(*_request_conds(f))
    groups: dict[tuple[str | None, str], list[tuple[float, bool]]] = defaultdict(list)
    citizens: dict[tuple[str | None, str], set[str]] = defaultdict(set)
    for rec in await conn.execute(stmt):
        submitted = aware(rec.submitted_at)
        day = rules.local_date(submitted)
        if not _in_period(rules, f, day):
            continue
        replied = aware(rec.replied_at) if rec.replied_at is not None else None
        end = replied if replied is not None else now
        seconds = max(0.0, (end - submitted).total_seconds())
        if by == "attest_type":
            group = str(rec.attest_type)
        elif by == "receiver_kind":
            group = str(rec.receiver_role or "unknown")
        elif by == "region":
            group = str(rec.region_code)
        else:
            group = "DK"
        key = (r.period_start(day, f.period).isoformat() if series else None, group)
        groups[key].append((seconds, replied is not None))
        citizens[key].add(rec.case_ref)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0] or "", k[1])):
        period, group = key
        obs = groups[key]
        ok = r.publishable(len(citizens[key]), rules) and len(obs) >= rules.min_cell_citizens
        row: dict[str, Any] = {"period_start": period} if series else {}
        row |= {"group": group, "label": _group_label(by, group), "suppressed": not ok}
        curve = kaplan_meier(obs)
        answered = sorted(t for t, happened in obs if happened)
        fields: dict[str, Any] = {
            "requests": curve.n,
            "answered": curve.events,
            "open": curve.censored,
            "share_open": r.rate(curve.censored, curve.n),
            "median": curve.quantile(0.5),
            "p90": curve.quantile(0.9),
            "answered_only_median": _median(answered),
        }
        row |= fields if ok else dict.fromkeys(fields)
        rows.append(row)
    return rows


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# --- when in the absence requests are made ----------------------------------------------------

LAST_WEEK = 27  # weeks of absence shown one by one; 27 stands for week 27 or later


def absence_week(first_day: dt.date, requested: dt.date) -> int:
    """The week of absence a request was made in (the first day of absence is day 1 of week
    1); 0 before the absence, `LAST_WEEK` for week 27 or later."""
    days = (requested - first_day).days
    if days < 0:
        return 0
    return min(days // 7 + 1, LAST_WEEK)


async def request_timing(
    conn: AsyncConnection,
    rules: r.TrackerRules,
    f: Filters,
    by: TimingBy,
    *,
    series: bool,
) -> list[dict[str, Any]]:
    """Requests per week of absence they were made in, per group: the distribution against
    the first follow-up (end of week `late_request_weeks`, 8 for sygedagpenge)."""
    tc = tracker_conversations.c
    stmt = sa.select(
        tc.submitted_at,
        tc.first_day_of_absence,
        tc.case_kind,
        tc.region_code,
        tc.municipality,
        tc.case_ref,
    ).where(*_request_conds(f))
    weeks: dict[tuple[str | None, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    citizens: dict[tuple[str | None, str], set[str]] = defaultdict(set)
    for rec in await conn.execute(stmt):
        day = rules.local_date(aware(rec.submitted_at))
        if not _in_period(rules, f, day):
            continue
        group = {
            "region": rec.region_code,
            "municipality": rec.municipality,
            "case_kind": rec.case_kind,
        }.get(by, "DK")
        key = (r.period_start(day, f.period).isoformat() if series else None, str(group))
        weeks[key][absence_week(rec.first_day_of_absence, day)] += 1
        citizens[key].add(rec.case_ref)
    rows = []
    for key in sorted(weeks, key=lambda k: (k[0] or "", k[1])):
        period, group = key
        total = sum(weeks[key].values())
        ok = r.publishable(len(citizens[key]), rules)
        for week in range(LAST_WEEK + 1):
            row: dict[str, Any] = {"period_start": period} if series else {}
            row |= {
                "group": group,
                "label": _group_label(by, group),
                "suppressed": not ok,
                "week": week,
            }
            n = weeks[key].get(week, 0)
            fields = {"requests": n, "share": r.rate(n, total)}
            row |= fields if ok else dict.fromkeys(fields)
            rows.append(row)
    return rows


# --- open overdue requests, by who is late ----------------------------------------------------


async def open_overdue(
    conn: AsyncConnection, rules: r.TrackerRules, f: Filters, by: OverdueBy, *, now: dt.datetime
) -> list[dict[str, Any]]:
    """Requests past their deadline without an attest now, per receiving unit (its directory
    name) or per municipality, with the oldest one's days past its deadline."""
    tc = tracker_conversations.c
    conds = [*_request_conds(f), tc.outcome == "overdue", tc.replied_at.is_(None)]
    stmt = (
        sa.select(
            tc.receiver_org,
            organisations.c.name,
            organisations.c.role,
            tc.municipality,
            tc.due_date,
            tc.submitted_at,
            tc.case_ref,
        )
        .select_from(
            tracker_conversations.outerjoin(
                organisations, organisations.c.id == tracker_conversations.c.receiver_org
            )
        )
        .where(*conds)
    )
    today = rules.local_date(now)
    groups: dict[str, dict[str, Any]] = {}
    for rec in await conn.execute(stmt):
        if not _in_period(rules, f, rules.local_date(aware(rec.submitted_at))):
            continue
        if by == "receiver":
            key, name, kind = str(rec.receiver_org), rec.name or "?", rec.role
        else:
            key, name, kind = str(rec.municipality), label("municipality", rec.municipality), None
        g = groups.setdefault(key, {"name": name, "kind": kind, "n": 0, "refs": set(), "late": 0})
        g["n"] += 1
        g["refs"].add(rec.case_ref)
        if rec.due_date is not None:
            g["late"] = max(g["late"], (today - rec.due_date).days)
    rows = []
    for key, g in sorted(groups.items(), key=lambda kv: (-kv[1]["n"], kv[1]["name"])):
        ok = r.publishable(len(g["refs"]), rules)
        row: dict[str, Any] = (
            {"group": key, "label": g["name"]}
            if by == "municipality"
            else {"label": g["name"], "receiver_kind": g["kind"]}
        )
        row["suppressed"] = not ok
        fields = {"open_overdue": g["n"], "most_days_overdue": g["late"]}
        row |= fields if ok else dict.fromkeys(fields)
        rows.append(row)
    return rows
