"""Contact over registered cases, kept as a rollup (`tracker_coverage_cases`,
`tracker_coverage`; docs/tracker.md, "Contact over registered cases").

A case's decision depends on its own row (`tracker_cases`), its citizen's treatments
(`tracker_treatments`), the contacts registered between its job centre and psychiatry
(`tracker_contacts`) and, with `attest` or `request` counted, its job centre's requests to
psychiatry (`tracker_conversations`). Whoever changes one of those calls :func:`refresh` with
the citizens' case refs in the same transaction: the case and treatment registrations and the
contact registrations (services, through the unit of work), and the tracker's poll when a
request to psychiatry is sent or answered with an attest. `refresh` decides every case of
those citizens again from the rows, compares with the decisions kept, and adds the
differences to the rollup: a replay, or a call that changes nothing, writes nothing.

Time passing needs no sweep: a case without contact yet is kept `open` per the last day of
its window, decided without contact or pending when the report is read.

The decision is the one the row-based reference (`tracker.coverage.coverage_rows`) makes; the
tests hold the rollup's answer to it. The rollup is for the rules it was written with
(`TRACKER_CONTACT_WINDOW_WEEKS`, `TRACKER_CONTACT_CASE_KINDS`, `TRACKER_CONTACT_COUNTS`,
`TRACKER_TIMEZONE`): after changing one of them, :func:`rebuild` writes it again.

Concurrency: on PostgreSQL `refresh` takes a transaction-scoped advisory lock per citizen
(in key order) before it reads, so two transactions deciding one citizen's cases run one after
the other and the second reads what the first committed; its rollup upserts go in key order.
On SQLite the transaction already holds the one write lock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.infra.db.engine import dialect_insert, local_date
from attest_gateway.infra.db.tables import (
    tracker_cases,
    tracker_contacts,
    tracker_conversations,
    tracker_coverage,
    tracker_coverage_cases,
    tracker_treatments,
)

PSYCHIATRY = "psychiatry"  # the receiver role whose requests count (core.directory.Role)
ALL = "*"  # the case-kind coordinate of a cell over every kind
CITIZENS = "citizens"
OPEN = "open"
CLOSED_EARLY = "closed_early"
SOURCES = ("attest", "jobcenter", "psychiatry", "request")
STATE_KINDS = ("week", "month")  # the period kinds decisions are kept for
CITIZEN_KINDS = ("week", "month", "quarter", "year")  # and distinct citizens for
_CHUNK = 500  # case refs per IN list


class ContactRules(Protocol):
    """The tracker's contact rules, as far as the rollup needs them."""

    @property
    def contact_window_weeks(self) -> int: ...
    @property
    def contact_case_kinds(self) -> frozenset[str]: ...
    @property
    def contact_counts(self) -> frozenset[str]: ...
    @property
    def timezone(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CoverageRules:
    """What decides a case (the tracker's contact rules, `TRACKER_CONTACT_*`)."""

    window_weeks: int = 8
    case_kinds: frozenset[str] = frozenset({"sygedagpenge", "jobafklaringsforloeb"})
    counts: frozenset[str] = frozenset({"meeting", "phone", "video", "written", "other", "attest"})
    timezone: str = "Europe/Copenhagen"

    @classmethod
    def of(cls, rules: ContactRules) -> CoverageRules:
        """The rollup's rules from the tracker's (`tracker.rules.TrackerRules`)."""
        return cls(
            window_weeks=rules.contact_window_weeks,
            case_kinds=frozenset(rules.contact_case_kinds),
            counts=frozenset(rules.contact_counts),
            timezone=rules.timezone,
        )

    def window_end(self, first_day: dt.date) -> dt.date:
        """The window's last day, held at the calendar's last day instead of overflowing."""
        try:
            return first_day + dt.timedelta(days=7 * self.window_weeks - 1)
        except OverflowError:
            return dt.date.max

    def local_date(self, at: dt.datetime) -> dt.date:
        return local_date(at, self.timezone)


@dataclass(frozen=True, slots=True)
class Decision:
    """A counted case: the last day of its window, its place and kind, and its state (the
    source of its first contact, `closed_early` or `open`)."""

    window_end: dt.date
    region_code: str
    municipality: str
    case_kind: str
    state: str


@dataclass(slots=True)
class Evidence:
    """What decides the cases of some citizens, by case ref: treatments as (start, end);
    contacts and requests by (case ref, job centre) as (day, source)."""

    treatments: dict[str, list[tuple[dt.date, dt.date | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    contacts: dict[tuple[str, str], list[tuple[dt.date, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def decide(case: Any, evidence: Evidence, rules: CoverageRules) -> Decision | None:
    """The case's decision, None when it does not count (not a contact case kind, or no
    psychiatric course: not marked, and no treatment overlapping the window)."""
    if case.case_kind not in rules.case_kinds:
        return None
    first_day = case.first_day_of_absence
    end = rules.window_end(first_day)
    course = case.psychiatric_course or any(
        start <= end and (stop is None or stop >= first_day)
        for start, stop in evidence.treatments.get(case.case_ref, ())
    )
    if not course:
        return None
    found = min(
        (
            (day, source)
            for day, source in evidence.contacts.get((case.case_ref, case.jobcenter_org), ())
            if first_day <= day <= end
        ),
        default=None,
    )
    if found is not None:
        state = found[1]
    elif case.closed_on is not None and case.closed_on < end:
        state = CLOSED_EARLY
    else:
        state = OPEN
    return Decision(end, str(case.region_code), str(case.municipality), str(case.case_kind), state)


def period_start(day: dt.date, kind: str) -> dt.date:
    if kind == "week":
        return day - dt.timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    if kind == "quarter":
        return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return dt.date(day.year, 1, 1)


Key = tuple[Any, ...]  # a rollup row's primary key (tracker_coverage's: 7 columns)
D = TypeVar("D")


def _places(d: Decision) -> tuple[tuple[str, str], ...]:
    return (("national", "DK"), ("region", d.region_code), ("municipality", d.municipality))


def state_keys(d: Decision) -> list[Key]:
    """The rollup rows a decision counts in (weeks and months)."""
    keys: list[Key] = []
    for kind in STATE_KINDS:
        start = period_start(d.window_end, kind)
        day = (d.window_end - start).days if d.state == OPEN else 0
        for grain, place in _places(d):
            for case_kind in (ALL, d.case_kind):
                keys.append((kind, start, grain, place, case_kind, d.state, day))
    return keys


def citizen_keys(d: Decision) -> set[Key]:
    """The rollup cells whose citizens a decision's citizen counts in (every period kind)."""
    keys: set[Key] = set()
    for kind in CITIZEN_KINDS:
        start = period_start(d.window_end, kind)
        for grain, place in _places(d):
            for case_kind in (ALL, d.case_kind):
                keys.add((kind, start, grain, place, case_kind, CITIZENS, 0))
    return keys


def deltas(
    before: Mapping[str, Iterable[D]],
    after: Mapping[str, Iterable[D]],
    states: Callable[[D], Iterable[Key]],
    citizens: Callable[[D], set[Key]],
) -> Counter[Key]:
    """The rollup's changes when the decisions of some citizens (by case ref) go from
    `before` to `after` (each citizen's decisions complete): every decision's `states` keys
    counted, and the `citizens` keys of each citizen's decisions once."""
    out: Counter[Key] = Counter()
    for ref in before.keys() | after.keys():
        old, new = list(before.get(ref, ())), list(after.get(ref, ()))
        for d in old:
            for key in states(d):
                out[key] -= 1
        for d in new:
            for key in states(d):
                out[key] += 1
        was = set().union(*(citizens(d) for d in old))
        now = set().union(*(citizens(d) for d in new))
        for key in now - was:
            out[key] += 1
        for key in was - now:
            out[key] -= 1
    return Counter({k: n for k, n in out.items() if n != 0})


# --- reading the rows a decision needs --------------------------------------------------------


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


async def evidence(conn: AsyncConnection, rules: CoverageRules, refs: Sequence[str]) -> Evidence:
    """The treatments, counted contacts and counted requests of the citizens `refs`."""
    out = Evidence()
    channels = sorted(rules.counts - {"attest", "request"})
    tk, tt, tc = tracker_contacts.c, tracker_treatments.c, tracker_conversations.c
    requests = {"attest", "request"} & rules.counts
    for chunk in _chunks(refs):
        for t in await conn.execute(
            sa.select(tt.case_ref, tt.start_date, tt.end_date).where(tt.case_ref.in_(chunk))
        ):
            out.treatments[t.case_ref].append((t.start_date, t.end_date))
        if channels:
            for c in await conn.execute(
                sa.select(
                    tk.case_ref, tk.jobcenter_org, tk.psychiatry_org, tk.registrar_org,
                    tk.contact_date,
                ).where(tk.case_ref.in_(chunk), tk.channel.in_(channels))
            ):  # fmt: skip
                source = "psychiatry" if c.registrar_org == c.psychiatry_org else "jobcenter"
                out.contacts[(c.case_ref, c.jobcenter_org)].append((c.contact_date, source))
        if requests:
            for q in await conn.execute(
                sa.select(tc.case_ref, tc.jobcenter_org, tc.submitted_at, tc.replied_at).where(
                    tc.case_ref.in_(chunk), tc.receiver_role == PSYCHIATRY
                )
            ):
                key = (q.case_ref, q.jobcenter_org)
                if "attest" in requests and q.replied_at is not None:
                    out.contacts[key].append((rules.local_date(q.replied_at), "attest"))
                if "request" in requests and q.submitted_at is not None:
                    out.contacts[key].append((rules.local_date(q.submitted_at), "request"))
    return out


def _lock_key(ref: str, space: bytes = b"coverage") -> int:
    digest = hashlib.sha256(space + b"\x1f" + ref.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# One statement for all the citizens' locks, taken in the order of the array (sorted keys):
# two transactions locking some of the same citizens wait for each other, never in a cycle.
_LOCK = sa.text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS k")


async def lock(conn: AsyncConnection, refs: Sequence[str], space: bytes = b"coverage") -> None:
    """On PostgreSQL, the transaction's advisory locks on the citizens `refs` (one key space
    per rollup: a citizen's contact decisions and rehabilitation cases lock apart)."""
    if conn.dialect.name != "postgresql" or not refs:
        return
    await conn.execute(_LOCK, {"keys": sorted({_lock_key(ref, space) for ref in refs})})


# --- writing ----------------------------------------------------------------------------------


async def add(
    conn: AsyncConnection, changes: Counter[Key], table: sa.Table = tracker_coverage
) -> None:
    """Add `changes` to the rollup `table` (its primary key, then `n`), in key order
    (upserts)."""
    if not changes:
        return
    insert = dialect_insert(conn.dialect.name, table)
    names = tuple(c.name for c in table.primary_key.columns)
    statement = insert.on_conflict_do_update(
        index_elements=list(names), set_={"n": table.c.n + insert.excluded.n}
    )
    await conn.execute(
        statement,
        [dict(zip(names, key, strict=True)) | {"n": n} for key, n in sorted(changes.items())],
    )


async def refresh(conn: AsyncConnection, rules: CoverageRules, refs: Collection[str]) -> None:
    """Decide every case of the citizens `refs` again, in the caller's transaction, and add
    what changed to the rollup."""
    wanted = sorted(set(refs))
    if not wanted:
        return
    await lock(conn, wanted)
    kc, dc = tracker_cases.c, tracker_coverage_cases.c
    cases: list[Any] = []
    kept: dict[str, Decision] = {}
    for chunk in _chunks(wanted):
        cases.extend(await conn.execute(sa.select(tracker_cases).where(kc.case_ref.in_(chunk))))
    if not cases:
        return
    for chunk in _chunks(sorted(c.case_id for c in cases)):
        for row in await conn.execute(
            sa.select(tracker_coverage_cases).where(dc.case_id.in_(chunk))
        ):
            kept[row.case_id] = Decision(
                row.window_end, row.region_code, row.municipality, row.case_kind, row.state
            )
    found = await evidence(conn, rules, sorted({c.case_ref for c in cases}))
    await _apply(conn, cases, kept, {c.case_id: decide(c, found, rules) for c in cases})


async def _apply(
    conn: AsyncConnection,
    cases: Sequence[Any],
    kept: dict[str, Decision],
    decided: dict[str, Decision | None],
) -> None:
    """Write the decisions that changed and their rollup differences."""
    changed = [c for c in cases if kept.get(c.case_id) != decided[c.case_id]]
    if not changed:
        return
    before: dict[str, list[Decision]] = defaultdict(list)
    after: dict[str, list[Decision]] = defaultdict(list)
    for c in cases:
        if (old := kept.get(c.case_id)) is not None:
            before[c.case_ref].append(old)
        if (new := decided[c.case_id]) is not None:
            after[c.case_ref].append(new)
    ids = sorted(c.case_id for c in changed)
    dc = tracker_coverage_cases.c
    for chunk in _chunks(ids):
        await conn.execute(tracker_coverage_cases.delete().where(dc.case_id.in_(chunk)))
    rows = [
        {
            "case_id": case_id,
            "window_end": d.window_end,
            "region_code": d.region_code,
            "municipality": d.municipality,
            "case_kind": d.case_kind,
            "state": d.state,
        }
        for case_id in ids
        if (d := decided[case_id]) is not None
    ]
    if rows:
        await conn.execute(tracker_coverage_cases.insert(), rows)
    await add(conn, deltas(before, after, state_keys, citizen_keys))


async def rebuild(conn: AsyncConnection, rules: CoverageRules, *, chunk: int = 20_000) -> int:
    """Write the rollup again from the rows, for `rules` (after a change of the contact
    rules): both tables emptied, then every case decided, `chunk` citizens at a time. Returns
    the number of cases read."""
    await conn.execute(tracker_coverage.delete())
    await conn.execute(tracker_coverage_cases.delete())
    kc = tracker_cases.c
    last = ""
    seen = 0
    while True:
        refs = [
            row.case_ref
            for row in await conn.execute(
                sa.select(kc.case_ref)
                .where(kc.case_ref > last)
                .group_by(kc.case_ref)
                .order_by(kc.case_ref)
                .limit(chunk)
            )
        ]
        if not refs:
            return seen
        last = refs[-1]
        cases: list[Any] = []
        for part in _chunks(refs):
            cases.extend(await conn.execute(sa.select(tracker_cases).where(kc.case_ref.in_(part))))
        found = await evidence(conn, rules, refs)
        await _apply(conn, cases, {}, {c.case_id: decide(c, found, rules) for c in cases})
        seen += len(cases)
