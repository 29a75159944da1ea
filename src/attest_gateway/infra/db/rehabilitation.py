"""A ressourceforløb case's wait for the health information its rehabilitation team needs,
kept as a rollup (`tracker_rehab_cases`, `tracker_rehab`; docs/tracker.md, "Health
information for the rehabilitation team").

A case is a citizen's ressourceforløb with one job centre from one first day of absence
(case ref, job centre, first day of absence). Its requests are the job centre's requests in
it for one of the attest types of `TRACKER_REHAB_HEALTH_INFORMATION`, once made. What decides
the case is kept per case: its first request (when it was made, its id on a tie, and its
region and municipality, where the case counts) and, per group of that setting, the day its
first attest came. The case is complete when every group has one; its wait is then whole
calendar days (the tracker's time zone) from its first request's day to the last of those
days, and while a group has none the case is open: censored at today − its first request's
day when the report is read, so time passing needs no sweep.

The tracker calls :func:`refresh` with the citizens of the requests of such cases it saw
made or answered, at the end of its batch and in its transaction. `refresh` decides those
citizens' cases from their requests, merges each with what was kept (the earlier first
request, each group's earlier attest: a request only ever gains a made or an answered time,
so the merge is the decision from the rows, and it stays so once retention has pruned some of
them), and adds the differences to the rollup: a replay writes nothing.

Per cell (week and month of the first request's day; the country, its region, its
municipality) the rollup counts complete cases per wait, open ones per first-request day,
the open ones missing each group, and the cell's distinct citizens (for quarters and years
too: each cell's exact weight for disclosure control, computed per citizen as the coverage
rollup does).

Retention prunes a case's kept decision once none of its requests is left (`cases_of` before
the requests are deleted, `drop_gone` after, same transaction); the rollup's counts stay, as
the tracker's other aggregates do. The rollup is for the rules it was written with
(`TRACKER_REHAB_HEALTH_INFORMATION`, `TRACKER_TIMEZONE`): after changing one of them
:func:`rebuild` writes it again from the requests there are.

Concurrency: on PostgreSQL `refresh` takes a transaction-scoped advisory lock per citizen
(its own key space) before it reads, as the coverage rollup does.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db import coverage as cr
from attest_gateway.infra.db.engine import aware, dialect_insert, local_date
from attest_gateway.infra.db.tables import tracker_conversations, tracker_rehab, tracker_rehab_cases

CASE_KIND = "ressourceforloeb"
COMPLETE = "complete"
OPEN = "open"
CITIZENS = "citizens"
MISSING = "missing:"  # and the group's index
STATE_KINDS = ("week", "month")
CITIZEN_KINDS = ("week", "month", "quarter", "year")
LOCK_SPACE = b"rehabilitation"
_CHUNK = 500  # case refs per IN list

CaseKey = tuple[str, str, dt.date]  # case ref, job centre, first day of absence
Key = tuple[str, dt.date, str, str, str, int]  # tracker_rehab's primary key


class HealthInformationRules(Protocol):
    """The tracker's rules, as far as the rollup needs them."""

    @property
    def rehab_health_information(self) -> tuple[tuple[str, ...], ...]: ...
    @property
    def timezone(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RehabRules:
    """What decides a case: the groups of attest types it needs, and the time zone its days
    are counted in."""

    groups: tuple[tuple[str, ...], ...] = (("LÆ 265",), ("LÆ 155", "LÆ 105", "LÆ 115"))
    timezone: str = "Europe/Copenhagen"

    @classmethod
    def of(cls, rules: HealthInformationRules) -> RehabRules:
        return cls(tuple(tuple(g) for g in rules.rehab_health_information), rules.timezone)

    @property
    def types(self) -> list[str]:
        return sorted({t for group in self.groups for t in group})

    def local_date(self, at: dt.datetime) -> dt.date:
        return local_date(at, self.timezone)


@dataclass(frozen=True, slots=True)
class Kept:
    """What decides a case: its first request (when made, its id, its place) and per group
    the day of its first attest (None while none)."""

    first_at: dt.datetime
    first_id: str
    region_code: str
    municipality: str
    answered: tuple[dt.date | None, ...]

    def merged(self, other: Kept) -> Kept:
        """The earlier first request and each group's earlier attest (the other's groups
        alone when they are not the same groups: decided under other rules)."""
        first = min(self, other, key=lambda k: (k.first_at, k.first_id))
        if len(self.answered) != len(other.answered):
            return Kept(
                first.first_at, first.first_id, first.region_code, first.municipality,
                other.answered,
            )  # fmt: skip
        answered = tuple(
            a if b is None else b if a is None else min(a, b)
            for a, b in zip(self.answered, other.answered, strict=True)
        )
        return Kept(first.first_at, first.first_id, first.region_code, first.municipality, answered)


def decide(rules: RehabRules, requests: Iterable[Any]) -> Kept:
    """A case's decision from its requests (made; `submitted_at`, `replied_at`, …)."""
    found = list(requests)
    first = min(found, key=lambda x: (aware(x.submitted_at), x.conversation_id))
    answered: list[dt.date | None] = []
    for group in rules.groups:
        times = [aware(x.replied_at) for x in found if x.attest_type in group and x.replied_at]
        answered.append(rules.local_date(min(times)) if times else None)
    return Kept(
        aware(first.submitted_at),
        str(first.conversation_id),
        str(first.region_code),
        str(first.municipality),
        tuple(answered),
    )


@dataclass(frozen=True, slots=True)
class Counted:
    """A case as the rollup counts it: its first request's day and place, its wait in whole
    days when complete (None while open) and per group 1 when it has no attest yet."""

    day: dt.date
    region_code: str
    municipality: str
    days: int | None
    missing: tuple[int, ...]


def counted(rules: RehabRules, kept: Kept) -> Counted:
    day = rules.local_date(kept.first_at)
    missing = tuple(int(at is None) for at in kept.answered)
    days = None
    if not any(missing):
        days = max(0, (max(at for at in kept.answered if at is not None) - day).days)
    return Counted(day, kept.region_code, kept.municipality, days, missing)


def _places(c: Counted) -> tuple[tuple[str, str], ...]:
    return (("national", "DK"), ("region", c.region_code), ("municipality", c.municipality))


def state_keys(c: Counted) -> list[Key]:
    """The rollup rows a case counts in (weeks and months)."""
    keys: list[Key] = []
    for kind in STATE_KINDS:
        start = cr.period_start(c.day, kind)
        for grain, place in _places(c):
            if c.days is not None:
                keys.append((kind, start, grain, place, COMPLETE, c.days))
                continue
            keys.append((kind, start, grain, place, OPEN, (c.day - start).days))
            keys.extend(
                (kind, start, grain, place, f"{MISSING}{i}", 0)
                for i, missing in enumerate(c.missing)
                if missing
            )
    return keys


def citizen_keys(c: Counted) -> set[Key]:
    """The rollup cells whose citizens a case's citizen counts in (every period kind)."""
    return {
        (kind, cr.period_start(c.day, kind), grain, place, CITIZENS, 0)
        for kind in CITIZEN_KINDS
        for grain, place in _places(c)
    }


# --- reading and writing the kept decisions ------------------------------------------------


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def _answered_text(answered: tuple[dt.date | None, ...]) -> str:
    return ",".join(at.isoformat() if at is not None else "" for at in answered)


def _answered_of(text: str) -> tuple[dt.date | None, ...]:
    return tuple(dt.date.fromisoformat(part) if part else None for part in text.split(","))


async def _kept(conn: AsyncConnection, refs: Sequence[str]) -> dict[CaseKey, Kept]:
    k = tracker_rehab_cases.c
    out: dict[CaseKey, Kept] = {}
    for chunk in _chunks(refs):
        for row in await conn.execute(sa.select(tracker_rehab_cases).where(k.case_ref.in_(chunk))):
            out[(row.case_ref, row.jobcenter_org, row.first_day_of_absence)] = Kept(
                aware(row.first_at),
                row.first_id,
                row.region_code,
                row.municipality,
                _answered_of(row.answered),
            )
    return out


async def _from_rows(
    conn: AsyncConnection, rules: RehabRules, refs: Sequence[str]
) -> dict[CaseKey, Kept]:
    """The cases of the citizens `refs` decided from their requests."""
    tc = tracker_conversations.c
    requests: dict[CaseKey, list[Any]] = defaultdict(list)
    for chunk in _chunks(refs):
        for row in await conn.execute(
            sa.select(
                tc.conversation_id, tc.case_ref, tc.jobcenter_org, tc.first_day_of_absence,
                tc.attest_type, tc.submitted_at, tc.replied_at, tc.region_code, tc.municipality,
            ).where(
                tc.case_ref.in_(chunk),
                tc.case_kind == CASE_KIND,
                tc.attest_type.in_(rules.types),
                tc.submitted_at.is_not(None),
            )
        ):  # fmt: skip
            requests[(row.case_ref, row.jobcenter_org, row.first_day_of_absence)].append(row)
    return {key: decide(rules, found) for key, found in requests.items()}


async def _apply(
    conn: AsyncConnection,
    rules: RehabRules,
    kept: Mapping[CaseKey, Kept],
    decided: Mapping[CaseKey, Kept],
) -> None:
    """Write the decisions that changed and their rollup differences (`decided` holds every
    case of the citizens concerned, `kept` what was kept of them)."""
    changed = sorted(key for key, d in decided.items() if kept.get(key) != d)
    if not changed:
        return
    refs = {key[0] for key in changed}
    before: dict[str, list[Counted]] = defaultdict(list)
    after: dict[str, list[Counted]] = defaultdict(list)
    for key, d in kept.items():
        if key[0] in refs:
            before[key[0]].append(counted(rules, d))
    for key, d in decided.items():
        if key[0] in refs:
            after[key[0]].append(counted(rules, d))
    insert = dialect_insert(conn.dialect.name, tracker_rehab_cases)
    columns = ("first_at", "first_id", "region_code", "municipality", "answered")
    statement = insert.on_conflict_do_update(
        index_elements=["case_ref", "jobcenter_org", "first_day_of_absence"],
        set_={c: insert.excluded[c] for c in columns},
    )
    await conn.execute(
        statement,
        [
            {
                "case_ref": key[0],
                "jobcenter_org": key[1],
                "first_day_of_absence": key[2],
                "first_at": decided[key].first_at,
                "first_id": decided[key].first_id,
                "region_code": decided[key].region_code,
                "municipality": decided[key].municipality,
                "answered": _answered_text(decided[key].answered),
            }
            for key in changed
        ],
    )
    await cr.add(conn, cr.deltas(before, after, state_keys, citizen_keys), tracker_rehab)


async def refresh(conn: AsyncConnection, rules: RehabRules, refs: Collection[str]) -> None:
    """Decide the cases of the citizens `refs` again from their requests, in the caller's
    transaction, merged with what was kept, and add what changed to the rollup."""
    wanted = sorted(set(refs))
    if not wanted:
        return
    await cr.lock(conn, wanted, LOCK_SPACE)
    kept = await _kept(conn, wanted)
    found = await _from_rows(conn, rules, wanted)
    decided = dict(kept)
    for key, d in found.items():
        decided[key] = d if key not in kept else kept[key].merged(d)
    await _apply(conn, rules, kept, decided)


async def rebuild(conn: AsyncConnection, rules: RehabRules, *, chunk: int = 20_000) -> int:
    """Write the rollup again from the requests there are, for `rules`: both tables
    emptied, then every case decided, `chunk` citizens at a time. Returns the number of
    cases."""
    await conn.execute(tracker_rehab.delete())
    await conn.execute(tracker_rehab_cases.delete())
    tc = tracker_conversations.c
    last = ""
    seen = 0
    while True:
        refs = list(
            await conn.scalars(
                sa.select(tc.case_ref)
                .where(
                    tc.case_ref > last,
                    tc.case_kind == CASE_KIND,
                    tc.attest_type.in_(rules.types),
                    tc.submitted_at.is_not(None),
                )
                .group_by(tc.case_ref)
                .order_by(tc.case_ref)
                .limit(chunk)
            )
        )
        if not refs:
            return seen
        last = refs[-1]
        decided = await _from_rows(conn, rules, refs)
        await _apply(conn, rules, {}, decided)
        seen += len(decided)


# --- retention -----------------------------------------------------------------------------


async def cases_of(conn: AsyncConnection, conversation_ids: Sequence[str]) -> set[CaseKey]:
    """The ressourceforløb cases of the requests `conversation_ids` (about to be deleted)."""
    tc = tracker_conversations.c
    out: set[CaseKey] = set()
    for chunk in _chunks(conversation_ids):
        for row in await conn.execute(
            sa.select(tc.case_ref, tc.jobcenter_org, tc.first_day_of_absence).where(
                tc.conversation_id.in_(chunk), tc.case_kind == CASE_KIND
            )
        ):
            out.add((row.case_ref, row.jobcenter_org, row.first_day_of_absence))
    return out


async def drop_gone(conn: AsyncConnection, cases: Collection[CaseKey]) -> None:
    """Delete the kept decisions of those of `cases` with no request left (the rollup's
    counts stay)."""
    if not cases:
        return
    tc = tracker_conversations.c
    refs = sorted({key[0] for key in cases})
    left: set[CaseKey] = set()
    for chunk in _chunks(refs):
        for row in await conn.execute(
            sa.select(tc.case_ref, tc.jobcenter_org, tc.first_day_of_absence)
            .where(tc.case_ref.in_(chunk), tc.case_kind == CASE_KIND)
            .distinct()
        ):
            left.add((row.case_ref, row.jobcenter_org, row.first_day_of_absence))
    gone = sorted(set(cases) - left)
    k = tracker_rehab_cases.c
    key = sa.tuple_(k.case_ref, k.jobcenter_org, k.first_day_of_absence)
    for start in range(0, len(gone), _CHUNK):
        await conn.execute(
            tracker_rehab_cases.delete().where(key.in_(gone[start : start + _CHUNK]))
        )
