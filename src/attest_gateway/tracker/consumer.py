"""The tracker consumer: `gateway.tracking` record → timeline, flags and rollups, in one
transaction.

Set-based: a batch of records is one transaction that creates the conversations it does not
know (one multi-row insert), reads the others locked (one select), does the same for the
contact episodes the batch touches (two more), applies the events in order to those rows in
memory, writes the changed rows back (one executemany each) and the rollups summed
(`tracker/store.py`): about ten statements for a batch instead of one or more per event.

Idempotent by construction: a stage is applied only where its time is not set yet, and every
rollup increment happens in the same transaction, only when that stage was set. A replayed or
duplicated event finds the time set and changes nothing. Events may arrive in any order: each
carries the whole conversation's metadata, and each duration is added by whichever of its two
ends arrives second.

Pipeline: parse (bad record → Malformed → dead letter) → check the case ref's key id
(made under another pseudonym key, i.e. before a re-key → dead letter `stale-pseudonym`, so a
replay of old events never mixes pseudonyms) → apply in one transaction (database error →
Unavailable → retried) → commit the offset (the ConsumerLoop).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Collection, Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import structlog
from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.contracts.contacts import (
    ContactEvent,
    NotATrackingEvent,
    TrackingEvent,
    parse_tracking_event,
)
from attest_gateway.contracts.stages import Stage, StageEvent
from attest_gateway.core.attests import AttestType
from attest_gateway.core.directory import Role
from attest_gateway.core.errors import ErrorCode, InvalidInput, Malformed, Unavailable
from attest_gateway.infra.db import coverage as coverage_rollup
from attest_gateway.infra.db import overdue as overdue_rollup
from attest_gateway.infra.db import rehabilitation as rehab_rollup
from attest_gateway.infra.db.engine import STORE_ERRORS, aware, dialect_insert, one_of_param
from attest_gateway.infra.db.pseudonyms import StoreKey
from attest_gateway.infra.db.tables import organisations, tracker_conversations, tracker_episodes
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.store import (
    Cell,
    KnownCells,
    add_citizen,
    add_counts,
    add_duration,
    add_latency,
    add_request_week,
    buffered_rollups,
)

log = structlog.get_logger(__name__)

CONTACT_ATTEST = "-"  # attest-type key of citizen-level (contact) cells


def _debug_logged() -> bool:
    return logging.getLogger(__name__).isEnabledFor(logging.DEBUG)


def stage_column(stage: Stage) -> str:
    return f"{stage.value}_at"


STAGE_COLUMNS: dict[Stage, str] = {s: stage_column(s) for s in r.TIMED_STAGES}


# the stage times that can decide a case's contact (a request to psychiatry sent, answered)
COVERAGE_STAGES = frozenset({"submitted_at", "replied_at"})

MUTABLE = (
    *(stage_column(s) for s in r.TIMED_STAGES),
    "request_deadline",
    "due_date",
    "requested_late",
    "outcome",
    "reminders",
    "last_reminded_at",
)


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    """The batch's three statements, built once per dialect (building and cache-keying a
    statement anew for every event cost more CPU than sending it)."""
    t = tracker_conversations
    select = (
        sa.select(t)
        .where(one_of_param(dialect, t.c.conversation_id, "b_ids"))
        .order_by(t.c.conversation_id)
    )
    return {
        # Unordered RETURNING: sent as one multi-row INSERT; the rows that were new.
        "insert": dialect_insert(dialect, t).on_conflict_do_nothing().returning(*t.c),
        # PostgreSQL: the rows stay locked until the batch is written back (SQLite: the
        # insert above already holds the database's one write lock).
        "select": select.with_for_update() if dialect == "postgresql" else select,
        "update": t.update()
        .where(t.c.conversation_id == sa.bindparam("b_cid"))
        .values({c: sa.bindparam(f"b_{c}", type_=t.c[c].type) for c in MUTABLE}),
    }


EpisodeKey = tuple[str, str, dt.date]  # case ref, job centre, first day of absence
EPISODE_MUTABLE = ("first_contact_at", "contact_source", "outcome", "decided_at")


@functools.cache
def _episode_statements(dialect: str) -> dict[str, Any]:
    ep = tracker_episodes
    key = sa.tuple_(ep.c.case_ref, ep.c.jobcenter_org, ep.c.first_day_of_absence)
    select = (
        sa.select(ep)
        .where(key.in_(sa.bindparam("b_keys", expanding=True)))
        .order_by(ep.c.case_ref, ep.c.jobcenter_org, ep.c.first_day_of_absence)
    )
    return {
        "insert": dialect_insert(dialect, ep).on_conflict_do_nothing(),
        # PostgreSQL: locked until written back (the sweep settles episodes too).
        "select": select.with_for_update() if dialect == "postgresql" else select,
        "update": ep.update()
        .where(
            ep.c.case_ref == sa.bindparam("b_case_ref"),
            ep.c.jobcenter_org == sa.bindparam("b_jobcenter_org"),
            ep.c.first_day_of_absence == sa.bindparam("b_first_day"),
        )
        .values({c: sa.bindparam(f"b_{c}", type_=ep.c[c].type) for c in EPISODE_MUTABLE}),
    }


class Episodes:
    """A batch's contact episodes, like its conversations: created where missing and read
    (locked) in two statements, changed in memory, written back in one executemany."""

    def __init__(self) -> None:
        self.rows: dict[EpisodeKey, SimpleNamespace] = {}
        self.dirty: set[EpisodeKey] = set()

    async def load(self, conn: AsyncConnection, new: dict[EpisodeKey, dict[str, Any]]) -> None:
        """Make sure these episodes exist (`new`: the row of each, should it be missing) and
        hold them in memory."""
        missing = sorted(k for k in new if k not in self.rows)
        if not missing:
            return
        statements = _episode_statements(conn.dialect.name)
        await conn.execute(statements["insert"], [new[k] for k in missing])
        for row in await conn.execute(statements["select"], {"b_keys": missing}):
            key = (row.case_ref, row.jobcenter_org, row.first_day_of_absence)
            self.rows[key] = SimpleNamespace(**row._mapping)

    def set(self, key: EpisodeKey, **values: Any) -> None:
        row = self.rows[key]
        for name, value in values.items():
            setattr(row, name, value)
        self.dirty.add(key)

    async def write(self, conn: AsyncConnection) -> None:
        if not self.dirty:
            return
        params = [
            {"b_case_ref": k[0], "b_jobcenter_org": k[1], "b_first_day": k[2]}
            | {f"b_{c}": getattr(self.rows[k], c) for c in EPISODE_MUTABLE}
            for k in sorted(self.dirty)
        ]
        await conn.execute(_episode_statements(conn.dialect.name)["update"], params)
        self.dirty.clear()


class Conversations:
    """A batch's conversations: created where missing and read in two statements, changed in
    memory event by event, written back in one (executemany) at the end of the batch.

    Only tracker consumers write `tracker_conversations`, and the rows are locked from the read
    to the write (PostgreSQL: `SELECT … FOR UPDATE` in id order; SQLite: the insert takes the
    write lock first), so the in-memory rows are the truth for the transaction."""

    def __init__(
        self,
        rows: dict[str, SimpleNamespace],
        created: set[str],
        timezone: str,
        rehab_types: Collection[str] = (),
    ) -> None:
        self.rows = rows
        self.created = created  # new in this batch; their first event sets up contact episodes
        self.dirty: set[str] = set()
        self.timezone = timezone
        # each changed row's open overdue request as it was before the batch changed it
        self.overdue_before: dict[str, overdue_rollup.Overdue | None] = {}
        self.episodes = Episodes()
        # citizens with a request to psychiatry sent or answered in the batch: their cases'
        # contact decisions may change (the coverage rollup)
        self.coverage_refs: set[str] = set()
        # citizens with a request of a ressourceforløb case for its rehabilitation team's
        # health information made or answered in the batch (the rehabilitation rollup)
        self.rehab_types = frozenset(rehab_types)
        self.rehab_refs: set[str] = set()

    def set(self, row: SimpleNamespace, **values: Any) -> None:
        cid = row.conversation_id
        if cid not in self.overdue_before:
            self.overdue_before[cid] = overdue_rollup.key_of(row, self.timezone)
        for name, value in values.items():
            setattr(row, name, value)
        self.dirty.add(row.conversation_id)
        if COVERAGE_STAGES & values.keys():
            if row.receiver_role == Role.PSYCHIATRY.value:
                self.coverage_refs.add(row.case_ref)
            if row.case_kind == rehab_rollup.CASE_KIND and row.attest_type in self.rehab_types:
                self.rehab_refs.add(row.case_ref)

    async def write(self, conn: AsyncConnection) -> None:
        """Write the changed rows back, and move the requests whose open overdue state
        changed in the open overdue rollup (`infra/db/overdue.py`)."""
        await self.episodes.write(conn)
        if not self.dirty:
            return
        gone, came = [], []
        for cid, before in self.overdue_before.items():
            after = overdue_rollup.key_of(self.rows[cid], self.timezone)
            if before != after:
                if before is not None:
                    gone.append(before)
                if after is not None:
                    came.append(after)
        self.overdue_before.clear()
        await overdue_rollup.move(conn, gone, came)
        params = [
            {"b_cid": cid} | {f"b_{c}": getattr(self.rows[cid], c) for c in MUTABLE}
            for cid in sorted(self.dirty)
        ]
        await conn.execute(_statements(conn.dialect.name)["update"], params)
        self.dirty.clear()


class TrackerState:
    """Applies tracking events to the store. Shared by the consumer and the benchmark."""

    def __init__(
        self, rules: r.TrackerRules, catalogue: dict[str, AttestType] | None = None
    ) -> None:
        self.rules = rules
        self.catalogue = catalogue or {}
        self._roles: dict[str, str | None] = {}
        self.cells = KnownCells()  # rollup cells known to exist in the store
        self.coverage_rules = coverage_rollup.CoverageRules.of(rules)
        self.rehab_rules = rehab_rollup.RehabRules.of(rules)

    # --- cells -------------------------------------------------------------------------------

    def request_cells(
        self, row: Any, *, day: dt.date, durations: bool = False, receiver: bool = True
    ) -> Sequence[Cell]:
        return r.cells_for(
            day=day,
            attest_type=row.attest_type,
            region=row.region_code,
            municipality=row.municipality,
            receiver=row.receiver_org if receiver else None,
            durations=durations,
        )

    def kind_cells(self, row: Any, *, day: dt.date) -> Sequence[Cell]:
        """The request's receiver-kind cells (requests, citizens and latency only)."""
        return r.kind_cells(
            day=day,
            attest_type=row.attest_type,
            region=row.region_code,
            municipality=row.municipality,
            receiver_kind=row.receiver_role or "unknown",
        )

    def case_kind_cells(self, row: Any, *, day: dt.date) -> Sequence[Cell]:
        """The request's case-kind cells (requests, citizens and weeks of absence only)."""
        return r.case_kind_cells(
            day=day,
            attest_type=row.attest_type,
            region=row.region_code,
            municipality=row.municipality,
            case_kind=row.case_kind,
        )

    async def count_latency(self, conn: AsyncConnection, row: Any, *, opened: bool) -> None:
        """The request in its cells' request → attest distribution: made (`opened`: open, or
        answered when its attest came first) or, when the attest comes after, moved from open
        to answered. Calendar days in Danish time, as the estimate reads them."""
        sent = self.rules.local_date(aware(row.submitted_at))
        cells = (
            *self.request_cells(row, day=sent, receiver=False),
            *self.kind_cells(row, day=sent),
        )
        if row.replied_at is None:
            await add_latency(conn, cells, sent_on=sent)
            return
        days = max(0, (self.rules.local_date(aware(row.replied_at)) - sent).days)
        if not opened:
            await add_latency(conn, cells, sent_on=sent, n=-1)
        await add_latency(conn, cells, sent_on=sent, answered_days=days)

    def contact_cells(self, region: str, municipality: str, window_end: dt.date) -> Sequence[Cell]:
        return r.cells_for(
            day=window_end,
            attest_type=CONTACT_ATTEST,
            region=region,
            municipality=municipality,
            receiver=None,
        )

    def cohort_day(self, row: Any, fallback: dt.datetime) -> dt.date:
        """Requests are counted in the period they were made."""
        at = row.submitted_at
        return self.rules.local_date(aware(at) if at is not None else fallback)

    async def refresh_cases(self, conn: AsyncConnection, batch: Conversations) -> None:
        """Decide again the cases of the citizens whose requests to psychiatry were sent or
        answered in the batch, when requests or attests count as contact, and the
        ressourceforløb cases whose requests for health information were. Last in the
        transaction: it waits for no other tracker row while it holds the citizens' locks
        (the coverage rollup's, then the rehabilitation rollup's, as every tracker does)."""
        refs, batch.coverage_refs = batch.coverage_refs, set()
        if refs and {"attest", "request"} & self.rules.contact_counts:
            await coverage_rollup.refresh(conn, self.coverage_rules, refs)
        rehab, batch.rehab_refs = batch.rehab_refs, set()
        if rehab:
            await rehab_rollup.refresh(conn, self.rehab_rules, rehab)

    # --- lookups -----------------------------------------------------------------------------

    async def receiver_role(self, conn: AsyncConnection, org_id: str) -> str | None:
        if org_id not in self._roles:
            role = (
                await conn.execute(
                    sa.select(organisations.c.role).where(organisations.c.id == org_id)
                )
            ).scalar_one_or_none()
            self._roles[org_id] = role
        return self._roles[org_id]

    # --- stage events ------------------------------------------------------------------------

    async def conversations(
        self,
        conn: AsyncConnection,
        events: Sequence[StageEvent],
        contacts: Sequence[ContactEvent] = (),
    ) -> Conversations:
        """The events' conversations, each created from its first event where it is new, and
        the contact episodes the batch may touch (of the new conversations and of `contacts`),
        created where missing."""
        first: dict[str, StageEvent] = {}
        for e in events:
            first.setdefault(e.conversation_id, e)
        rows: dict[str, SimpleNamespace] = {}
        statements = _statements(conn.dialect.name)
        if first:
            values = [await self._new_row(conn, first[cid]) for cid in sorted(first)]
            rows = {
                row.conversation_id: SimpleNamespace(**row._mapping)
                for row in await conn.execute(statements["insert"], values)
            }
        created = set(rows)
        existing = [cid for cid in sorted(first) if cid not in created]
        if existing:
            result = await conn.execute(statements["select"], {"b_ids": existing})
            rows |= {row.conversation_id: SimpleNamespace(**row._mapping) for row in result}
        batch = Conversations(rows, created, self.rules.timezone, self.rehab_rules.types)
        episodes: dict[EpisodeKey, dict[str, Any]] = {}
        for cid in created:
            row = rows[cid]
            if self.rules.in_contact_scope(row.case_kind, row.psychiatric_course):
                episodes.update(self._episode(row, row.first_day_of_absence, row.region_code))
        for c in contacts:
            if c.case_kind in self.rules.contact_case_kinds:
                episodes.update(self._episode(c, c.first_day_of_absence, c.region_code))
        await batch.episodes.load(conn, episodes)
        return batch

    def _episode(
        self, about: Any, first_day: dt.date, region: str
    ) -> dict[EpisodeKey, dict[str, Any]]:
        """An episode's key and its row, should it be new (`about`: a conversation row or a
        contact event, which name the citizen alike)."""
        key = (about.case_ref, about.jobcenter_org, first_day)
        return {
            key: {
                "case_ref": about.case_ref,
                "jobcenter_org": about.jobcenter_org,
                "first_day_of_absence": first_day,
                "case_kind": about.case_kind,
                "municipality": about.municipality,
                "region_code": region,
                "window_end": self.rules.contact_window_end(first_day),
            }
        }

    async def apply_stage(
        self, conn: AsyncConnection, e: StageEvent, batch: Conversations | None = None
    ) -> bool:
        """Apply one stage event. True if it changed anything.

        Without `batch` the event is a batch of its own (read, applied, written back).
        A stage is set only where it is not set yet, so a replayed or duplicated event changes
        nothing; each stage that moves a date, a flag or a rollup does so here, once."""
        if batch is None:
            batch = await self.conversations(conn, [e])
            changed = await self.apply_stage(conn, e, batch)
            await batch.write(conn)
            await self.refresh_cases(conn, batch)
            return changed
        row = batch.rows[e.conversation_id]
        created = e.conversation_id in batch.created
        if created:  # the conversation's first event: its citizen's contact episode
            batch.created.discard(e.conversation_id)
            await self._on_created(conn, batch.episodes, row, e)
        if e.stage is Stage.REMINDED:
            if e.detail == "manual":  # by hand: the sweep's count and rollups are its own
                return created
            return await self._apply_reminder(conn, batch, row, e) or created
        if e.stage is Stage.CANCELLED:
            if row.outcome is not None:
                return created
            batch.set(row, outcome="cancelled")  # no longer due: neither overdue nor reminded
            return True
        if e.stage is Stage.DEADLINE_EXTENDED:
            return self._extend(batch, row, e) or created
        if e.stage is Stage.REPLIED and e.detail in r.ANSWERS_WITHOUT_ATTEST:
            # The clinic answered without the attest (not in treatment, wrong form, cannot
            # answer): the request is over, but no attest was delivered. Neither a reply nor
            # a duration of one; settled `answered` (no longer due, never reminded) unless
            # settled already, and an overdue flag counted before stays counted.
            if row.outcome not in (None, "overdue"):
                return created
            batch.set(row, outcome="answered")
            return True
        if e.stage not in r.TIMED_STAGES:
            return created
        column = STAGE_COLUMNS[e.stage]
        if getattr(row, column) is not None:
            return created
        batch.set(row, **{column: e.at})
        if e.stage is Stage.SUBMITTED:
            await self._on_submitted(conn, batch, row, e)
        elif e.stage is Stage.IN_MAILBOX:
            self._refresh_due_date(batch, row)
        elif e.stage is Stage.REPLIED:
            await add_counts(
                conn, self.request_cells(row, day=self.cohort_day(row, e.at)), replied=1
            )
            if row.submitted_at is not None:  # else counted answered when it comes
                await self.count_latency(conn, row, opened=False)
            await self._decide_on_reply(conn, batch, row, e.at)
        elif e.stage is Stage.OVERDUE:
            await self._decide(conn, batch, row, "overdue", e.at)
        times = {s: _aware_or_none(getattr(row, STAGE_COLUMNS[s])) for s in r.ENDS_OF[e.stage]}
        completed = r.completed_metrics(e.stage, times)
        if completed:
            cells = self.request_cells(row, day=self.cohort_day(row, e.at), durations=True)
            for metric, seconds in completed:
                await add_duration(conn, metric.name, cells, r.bucket_of(seconds))
        return True

    async def _new_row(self, conn: AsyncConnection, e: StageEvent) -> dict[str, Any]:
        """The conversation's row as its first event describes it (every event carries the
        whole conversation's metadata)."""
        return {
            "conversation_id": e.conversation_id,
            "attest_type": e.attest_type,
            "case_kind": e.case_kind,
            "municipality": e.municipality,
            "region_code": e.region_code,
            "jobcenter_org": e.jobcenter_org,
            "receiver_org": e.receiver_org,
            "receiver_role": await self.receiver_role(conn, e.receiver_org),
            "case_ref": e.case_ref,
            "psychiatric_course": e.psychiatric_course,
            "first_day_of_absence": e.first_day_of_absence,
            "request_deadline": e.reply_deadline,
            "reminders": 0,
        }

    async def _on_created(
        self, conn: AsyncConnection, episodes: Episodes, row: Any, e: StageEvent
    ) -> None:
        if not self.rules.in_contact_scope(row.case_kind, row.psychiatric_course):
            return  # (in scope: `conversations` created its episode)
        if row.receiver_role == Role.PSYCHIATRY.value:
            # Any message between the job centre and psychiatry about the citizen is a
            # direct contact; the conversation's first event is its first message.
            key = (row.case_ref, row.jobcenter_org, row.first_day_of_absence)
            await self._contact(conn, episodes, key, at=e.at, source="message")

    async def _on_submitted(
        self, conn: AsyncConnection, batch: Conversations, row: Any, e: StageEvent
    ) -> None:
        """Count the request and settle its flags."""
        day = self.rules.local_date(e.at)
        late = self.rules.requested_late(row.case_kind, row.first_day_of_absence, day)
        batch.set(row, requested_late=late)
        due = self._due_date(row)
        if due is not None:
            batch.set(row, due_date=due)
        cells = self.request_cells(row, day=day)
        await add_counts(conn, cells, requests=1, late_requests=int(late))
        await add_citizen(conn, cells, row.case_ref)
        kinds = self.kind_cells(row, day=day)
        await add_counts(conn, kinds, requests=1)
        await add_citizen(conn, kinds, row.case_ref)
        case_kinds = self.case_kind_cells(row, day=day)
        await add_counts(conn, case_kinds, requests=1)
        await add_citizen(conn, case_kinds, row.case_ref)
        week = r.absence_week(row.first_day_of_absence, day)
        await add_request_week(
            conn, (*self.request_cells(row, day=day, receiver=False), *case_kinds), week
        )
        await self.count_latency(conn, row, opened=True)
        if row.replied_at is not None:  # the reply's event came first
            await self._decide_on_reply(conn, batch, row, aware(row.replied_at))

    def _due_date(self, row: Any) -> dt.date | None:
        """The reply deadline the row's dates give, or None while it cannot or need not move
        (not yet submitted, or already decided)."""
        if row.outcome is not None or row.submitted_at is None:
            return None
        requested = self.rules.local_date(aware(row.submitted_at))
        kind = self.catalogue.get(row.attest_type)
        return self.rules.due_date(
            row.attest_type,
            requested=requested,
            received=(
                self.rules.local_date(aware(row.in_mailbox_at)) if row.in_mailbox_at else None
            ),
            request_deadline=row.request_deadline,
            # what the gateway's catalogue gives by default (it counts in UTC dates)
            catalogue_deadline=(
                kind.reply_deadline.due(aware(row.submitted_at).astimezone(dt.UTC).date())
                if kind is not None
                else None
            ),
        )

    def _refresh_due_date(self, batch: Conversations, row: Any) -> None:
        """Move the due date if the row's dates now give another."""
        due = self._due_date(row)
        if due is not None and due != row.due_date:
            batch.set(row, due_date=due)

    def _extend(self, batch: Conversations, row: Any, e: StageEvent) -> bool:
        """The job centre moved the deadline later (detail: the new one): due from then on.
        Only ever later, so a replayed older extension changes nothing."""
        try:
            new = dt.date.fromisoformat(e.detail or "")
        except ValueError:
            return False
        if new <= row.request_deadline:
            return False
        due = self.rules.calendar.next_working_day(new) if self.rules.next_working_day else new
        batch.set(row, request_deadline=new, due_date=due)
        return True

    async def _decide_on_reply(
        self, conn: AsyncConnection, batch: Conversations, row: Any, at: dt.datetime
    ) -> None:
        if row.outcome is not None or row.due_date is None:
            return
        in_time = self.rules.local_date(at) <= row.due_date
        await self._decide(conn, batch, row, "on_time" if in_time else "overdue", at)

    async def _decide(
        self, conn: AsyncConnection, batch: Conversations, row: Any, outcome: str, at: dt.datetime
    ) -> None:
        """Settle a request once: answered in time, or overdue."""
        if row.outcome is not None:
            return
        batch.set(row, outcome=outcome)
        cells = self.request_cells(row, day=self.cohort_day(row, at))
        await add_counts(conn, cells, decided=1, overdue=int(outcome == "overdue"))

    async def _apply_reminder(
        self, conn: AsyncConnection, batch: Conversations, row: Any, e: StageEvent
    ) -> bool:
        """Count a reminder once per sequence number (the sweep's first, second, …)."""
        try:
            seq = int(e.detail or "1")
        except ValueError:
            seq = 1
        if row.reminders >= seq:
            return False
        batch.set(row, reminders=seq, last_reminded_at=e.at)
        await add_counts(conn, self.request_cells(row, day=self.cohort_day(row, e.at)), reminders=1)
        return True

    # --- contact -----------------------------------------------------------------------------

    async def _contact(
        self,
        conn: AsyncConnection,
        episodes: Episodes,
        key: EpisodeKey,
        *,
        at: dt.datetime,
        source: str,
    ) -> None:
        ep = episodes.rows[key]
        first = _aware_or_none(ep.first_contact_at)
        if first is None or first > at:
            episodes.set(key, first_contact_at=at, contact_source=source)
        if self.rules.local_date(at) > ep.window_end:
            return  # too late to count; the sweep settles the episode as without contact
        cells = self.contact_cells(ep.region_code, ep.municipality, ep.window_end)
        if ep.outcome is None:
            episodes.set(key, outcome="contact", decided_at=at)
            await add_counts(conn, cells, contact_decided=1, contact_covered=1)
            await add_citizen(conn, cells, ep.case_ref)
        elif ep.outcome == "no_contact":
            # A contact inside the window that is registered after the sweep settled the
            # episode as without contact corrects it: the episode was already decided (and its
            # citizen counted), so only coverage moves.
            episodes.set(key, outcome="contact", decided_at=at)
            await add_counts(conn, cells, contact_covered=1)

    async def apply_contact(
        self, conn: AsyncConnection, e: ContactEvent, batch: Conversations | None = None
    ) -> None:
        """Apply one registered contact (without `batch`: a batch of its own)."""
        if e.case_kind not in self.rules.contact_case_kinds:
            return
        if batch is None:
            batch = await self.conversations(conn, [], [e])
            await self.apply_contact(conn, e, batch)
            await batch.write(conn)
            return
        key = (e.case_ref, e.jobcenter_org, e.first_day_of_absence)
        await self._contact(conn, batch.episodes, key, at=e.at, source="registered")


def _aware_or_none(value: dt.datetime | None) -> dt.datetime | None:
    return aware(value) if value is not None else None


class TrackerHandler:
    """The ConsumerLoop handler for `gateway.tracking`."""

    def __init__(
        self, engine: AsyncEngine, state: TrackerState, *, store_key: StoreKey | None = None
    ) -> None:
        self._engine = engine
        self._state = state
        self._store_key = store_key  # None: case refs are not checked (tests, benchmarks)

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            event = parse_tracking_event(record.value)
        except NotATrackingEvent as exc:
            raise Malformed(ErrorCode.INVALID_TRACKING_EVENT, str(exc)) from exc
        admitted = self._admit(event)
        if admitted is None:
            raise InvalidInput(
                ErrorCode.STALE_PSEUDONYM,
                "the event's case ref was made under another pseudonym key than the store's",
            )
        await self._apply([admitted])

    def _admit(self, event: TrackingEvent) -> TrackingEvent | None:
        """The event with its case ref as the store keeps it, or None if the ref was made
        under another pseudonym key (a bare ref of before key ids gets the key id)."""
        if self._store_key is None:
            return event
        ref = self._store_key.admit(event.case_ref)
        if ref is None:
            return None
        return event if ref == event.case_ref else event.model_copy(update={"case_ref": ref})

    async def handle_batch(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Apply the readable records' events in one transaction, in order, with the rollups
        summed and written once (see `tracker/store.py`). Returns the unreadable records and
        those with a stale case ref, which the consumer loop handles (dead-letters) one by
        one."""
        events: list[TrackingEvent] = []
        unreadable: list[ConsumerRecord[bytes, bytes]] = []
        for record in records:
            try:
                admitted = self._admit(parse_tracking_event(record.value))
            except NotATrackingEvent:
                admitted = None
            if admitted is None:  # unreadable or stale: dead-lettered one by one
                unreadable.append(record)
            else:
                events.append(admitted)
        if events:
            await self._apply(events)
        return unreadable

    async def _apply(self, events: Sequence[TrackingEvent]) -> None:
        cells = self._state.cells
        try:
            async with self._engine.begin() as conn:
                with buffered_rollups(cells) as rollups:
                    stages = [e for e in events if isinstance(e, StageEvent)]
                    contacts = [e for e in events if isinstance(e, ContactEvent)]
                    batch = await self._state.conversations(conn, stages, contacts)
                    changed = [await self._apply_one(conn, event, batch) for event in events]
                    await batch.write(conn)
                    await rollups.flush(conn)
                    await self._state.refresh_cases(conn, batch)
        except STORE_ERRORS as exc:
            cells.forget()
            raise Unavailable(ErrorCode.DATABASE_UNAVAILABLE, type(exc).__name__) from exc
        cells.remember(rollups.written)  # committed: those cells exist
        if not _debug_logged():  # one line per event, at DEBUG only
            return
        for event, applied in zip(events, changed, strict=True):
            if isinstance(event, StageEvent):
                log.debug(
                    "tracker.applied" if applied else "tracker.duplicate",
                    conversation_id=event.conversation_id,
                    stage=event.stage.value,
                )
            else:
                log.debug("tracker.contact", contact_id=event.contact_id)

    async def _apply_one(
        self, conn: AsyncConnection, event: TrackingEvent, batch: Conversations
    ) -> bool:
        if isinstance(event, ContactEvent):
            await self._state.apply_contact(conn, event, batch)
            return True
        return await self._state.apply_stage(conn, event, batch)
