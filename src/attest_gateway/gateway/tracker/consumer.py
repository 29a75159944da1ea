"""The tracker consumer: `gateway.tracking` record → timeline, flags and rollups, in one
transaction.

Idempotent by construction: a stage is applied only by the conditional update that sets its
time for the first time (`… SET fetched_at = :at WHERE fetched_at IS NULL`), and every rollup
increment happens in the same transaction, only when that update changed a row. A replayed or
duplicated event finds the time set and changes nothing. Events may arrive in any order: each
carries the whole conversation's metadata, and each duration is added by whichever of its two
ends arrives second.

Pipeline: parse (bad record → PermanentError → dead letter) → check the case ref's key id
(made under another pseudonym key, i.e. before a re-key → dead letter `stale-pseudonym`, so a
replay of old events never mixes pseudonyms) → apply in one transaction (database error →
TransientError → retried) → commit the offset (the ConsumerLoop).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.gateway.bus import PermanentError, TransientError
from attest_gateway.gateway.directory import Role
from attest_gateway.gateway.pseudonyms import StoreKey
from attest_gateway.gateway.store.db import aware, insert_ignore
from attest_gateway.gateway.store.tables import (
    organisations,
    tracker_conversations,
    tracker_episodes,
)
from attest_gateway.gateway.tracker import rules as r
from attest_gateway.gateway.tracker.events import (
    ContactEvent,
    NotATrackingEvent,
    TrackingEvent,
    parse_tracking_event,
)
from attest_gateway.gateway.tracker.store import (
    Cell,
    add_citizen,
    add_counts,
    add_duration,
    buffered_rollups,
)
from attest_gateway.schemas.attests import AttestKind
from attest_gateway.schemas.events import Stage, StageEvent

log = structlog.get_logger(__name__)

CONTACT_ATTEST = "-"  # attest-type key of citizen-level (contact) cells


def stage_column(stage: Stage) -> str:
    return f"{stage.value}_at"


class TrackerState:
    """Applies tracking events to the store. Shared by the consumer and the benchmark."""

    def __init__(
        self, rules: r.TrackerRules, catalogue: dict[str, AttestKind] | None = None
    ) -> None:
        self.rules = rules
        self.catalogue = catalogue or {}
        self._roles: dict[str, str | None] = {}

    # --- cells -------------------------------------------------------------------------------

    def request_cells(self, row: Any, *, day: dt.date, durations: bool = False) -> list[Cell]:
        return r.cells_for(
            day=day,
            attest_type=row.attest_type,
            region=row.region_code,
            municipality=row.municipality,
            receiver=row.receiver_org,
            durations=durations,
        )

    def contact_cells(self, region: str, municipality: str, window_end: dt.date) -> list[Cell]:
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

    async def _row(self, conn: AsyncConnection, conversation_id: str) -> Any:
        return (
            await conn.execute(
                sa.select(tracker_conversations).where(
                    tracker_conversations.c.conversation_id == conversation_id
                )
            )
        ).one()

    # --- stage events ------------------------------------------------------------------------

    async def apply_stage(self, conn: AsyncConnection, e: StageEvent) -> bool:
        """Apply one stage event. True if it changed anything.

        A conversation's first event (normally `submitted`) creates its row; later events go
        straight to the conditional update, which hands back the row (RETURNING), so a stage
        costs one statement unless it moves a date or a flag."""
        if e.stage is Stage.REMINDED or e.stage not in r.TIMED_STAGES:
            created = await self._ensure_conversation(conn, e)
            if e.stage is Stage.REMINDED:
                return await self._apply_reminder(conn, e) or created
            return created
        created = False
        if e.stage is Stage.SUBMITTED:
            created = await self._ensure_conversation(conn, e)
        row = await self._set_stage_time(conn, e)
        if row is None and e.stage is not Stage.SUBMITTED:
            created = await self._ensure_conversation(conn, e)
            row = await self._set_stage_time(conn, e) if created else None
        if row is None:
            return created
        if e.stage is Stage.SUBMITTED:
            row = await self._on_submitted(conn, row, e)
        elif e.stage is Stage.IN_MAILBOX:
            row = await self._refresh_due_date(conn, row)
        elif e.stage is Stage.REPLIED:
            await add_counts(
                conn, self.request_cells(row, day=self.cohort_day(row, e.at)), replied=1
            )
            await self._decide_on_reply(conn, row, e.at)
        elif e.stage is Stage.OVERDUE:
            await self._decide(conn, row, "overdue", e.at)
        times = {s: _aware_or_none(getattr(row, stage_column(s))) for s in r.TIMED_STAGES}
        cells = self.request_cells(row, day=self.cohort_day(row, e.at), durations=True)
        for metric, seconds in r.completed_metrics(e.stage, times):
            await add_duration(conn, metric.name, cells, r.bucket_of(seconds))
        return True

    async def _set_stage_time(self, conn: AsyncConnection, e: StageEvent) -> Any:
        """Set the stage's time if it is not set yet; the updated row, or None."""
        t = tracker_conversations
        col = t.c[stage_column(e.stage)]
        result = await conn.execute(
            t.update()
            .where(t.c.conversation_id == e.conversation_id, col.is_(None))
            .values({col.key: e.at})
            .returning(*t.c)
        )
        return result.first()

    async def _ensure_conversation(self, conn: AsyncConnection, e: StageEvent) -> bool:
        role = await self.receiver_role(conn, e.receiver_org)
        created = await insert_ignore(
            conn,
            tracker_conversations,
            {
                "conversation_id": e.conversation_id,
                "attest_type": e.attest_type,
                "case_kind": e.case_kind,
                "municipality": e.municipality,
                "region_code": e.region_code,
                "jobcenter_org": e.jobcenter_org,
                "receiver_org": e.receiver_org,
                "receiver_role": role,
                "case_ref": e.case_ref,
                "psychiatric_course": e.psychiatric_course,
                "first_day_of_absence": e.first_day_of_absence,
                "request_deadline": e.reply_deadline,
                "reminders": 0,
            },
        )
        if created and self.rules.in_contact_scope(e.case_kind, e.psychiatric_course):
            await self._ensure_episode(
                conn,
                case_ref=e.case_ref,
                jobcenter_org=e.jobcenter_org,
                first_day=e.first_day_of_absence,
                case_kind=e.case_kind,
                municipality=e.municipality,
                region=e.region_code,
            )
            if role == Role.PSYCHIATRY.value:
                # Any message between the job centre and psychiatry about the citizen is a
                # direct contact; the conversation's first event is its first message.
                await self._contact(
                    conn,
                    case_ref=e.case_ref,
                    jobcenter_org=e.jobcenter_org,
                    first_day=e.first_day_of_absence,
                    at=e.at,
                    source="message",
                )
        return created

    async def _on_submitted(self, conn: AsyncConnection, row: Any, e: StageEvent) -> Any:
        """Count the request and settle its flags; the row as it now is."""
        day = self.rules.local_date(e.at)
        late = self.rules.requested_late(row.case_kind, row.first_day_of_absence, day)
        values: dict[str, Any] = {"requested_late": late}
        due = self._due_date(row)
        if due is not None:
            values["due_date"] = due
        t = tracker_conversations
        row = (
            await conn.execute(
                t.update()
                .where(t.c.conversation_id == row.conversation_id)
                .values(values)
                .returning(*t.c)
            )
        ).one()
        cells = self.request_cells(row, day=day)
        await add_counts(conn, cells, requests=1, late_requests=int(late))
        await add_citizen(conn, cells, row.case_ref)
        if row.replied_at is not None:  # the reply's event came first
            await self._decide_on_reply(conn, row, aware(row.replied_at))
        return row

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

    async def _refresh_due_date(self, conn: AsyncConnection, row: Any) -> Any:
        """Move the due date if the row's dates now give another; the row as it now is."""
        due = self._due_date(row)
        if due is None or due == row.due_date:
            return row
        t = tracker_conversations
        return (
            await conn.execute(
                t.update()
                .where(t.c.conversation_id == row.conversation_id)
                .values(due_date=due)
                .returning(*t.c)
            )
        ).one()

    async def _decide_on_reply(self, conn: AsyncConnection, row: Any, at: dt.datetime) -> None:
        if row.outcome is not None or row.due_date is None:
            return
        in_time = self.rules.local_date(at) <= row.due_date
        await self._decide(conn, row, "on_time" if in_time else "overdue", at)

    async def _decide(self, conn: AsyncConnection, row: Any, outcome: str, at: dt.datetime) -> None:
        """Settle a request once: answered in time, or overdue."""
        t = tracker_conversations
        result = await conn.execute(
            t.update()
            .where(t.c.conversation_id == row.conversation_id, t.c.outcome.is_(None))
            .values(outcome=outcome)
        )
        if result.rowcount == 1:
            cells = self.request_cells(row, day=self.cohort_day(row, at))
            await add_counts(conn, cells, decided=1, overdue=int(outcome == "overdue"))

    async def _apply_reminder(self, conn: AsyncConnection, e: StageEvent) -> bool:
        try:
            seq = int(e.detail or "1")
        except ValueError:
            seq = 1
        t = tracker_conversations
        result = await conn.execute(
            t.update()
            .where(t.c.conversation_id == e.conversation_id, t.c.reminders < seq)
            .values(reminders=seq, last_reminded_at=e.at)
        )
        if result.rowcount != 1:
            return False
        row = await self._row(conn, e.conversation_id)
        await add_counts(conn, self.request_cells(row, day=self.cohort_day(row, e.at)), reminders=1)
        return True

    # --- contact -----------------------------------------------------------------------------

    async def _ensure_episode(
        self,
        conn: AsyncConnection,
        *,
        case_ref: str,
        jobcenter_org: str,
        first_day: dt.date,
        case_kind: str,
        municipality: str,
        region: str,
    ) -> None:
        await insert_ignore(
            conn,
            tracker_episodes,
            {
                "case_ref": case_ref,
                "jobcenter_org": jobcenter_org,
                "first_day_of_absence": first_day,
                "case_kind": case_kind,
                "municipality": municipality,
                "region_code": region,
                "window_end": self.rules.contact_window_end(first_day),
            },
        )

    async def _contact(
        self,
        conn: AsyncConnection,
        *,
        case_ref: str,
        jobcenter_org: str,
        first_day: dt.date,
        at: dt.datetime,
        source: str,
    ) -> None:
        ep = tracker_episodes
        key = (
            (ep.c.case_ref == case_ref)
            & (ep.c.jobcenter_org == jobcenter_org)
            & (ep.c.first_day_of_absence == first_day)
        )
        row = (
            await conn.execute(
                ep.update()
                .where(key, sa.or_(ep.c.first_contact_at.is_(None), ep.c.first_contact_at > at))
                .values(first_contact_at=at, contact_source=source)
                .returning(*ep.c)
            )
        ).first()
        if row is None:  # an earlier contact is already recorded
            row = (await conn.execute(sa.select(ep).where(key))).one()
        if self.rules.local_date(at) > row.window_end:
            return  # too late to count; the sweep settles the episode as without contact
        cells = self.contact_cells(row.region_code, row.municipality, row.window_end)
        result = await conn.execute(
            ep.update().where(key, ep.c.outcome.is_(None)).values(outcome="contact", decided_at=at)
        )
        if result.rowcount == 1:
            await add_counts(conn, cells, contact_decided=1, contact_covered=1)
            await add_citizen(conn, cells, case_ref)
            return
        # A contact inside the window that is registered after the sweep settled the episode as
        # without contact corrects it: the episode was already decided (and its citizen counted),
        # so only coverage moves.
        corrected = await conn.execute(
            ep.update()
            .where(key, ep.c.outcome == "no_contact")
            .values(outcome="contact", decided_at=at)
        )
        if corrected.rowcount == 1:
            await add_counts(conn, cells, contact_covered=1)

    async def apply_contact(self, conn: AsyncConnection, e: ContactEvent) -> None:
        if e.case_kind not in self.rules.contact_case_kinds:
            return
        await self._ensure_episode(
            conn,
            case_ref=e.case_ref,
            jobcenter_org=e.jobcenter_org,
            first_day=e.first_day_of_absence,
            case_kind=e.case_kind,
            municipality=e.municipality,
            region=e.region_code,
        )
        await self._contact(
            conn,
            case_ref=e.case_ref,
            jobcenter_org=e.jobcenter_org,
            first_day=e.first_day_of_absence,
            at=e.at,
            source="registered",
        )


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
            raise PermanentError("invalid-tracking-event", str(exc)) from exc
        admitted = self._admit(event)
        if admitted is None:
            raise PermanentError(
                "stale-pseudonym",
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
        try:
            async with self._engine.begin() as conn:
                with buffered_rollups() as rollups:
                    changed = [await self._apply_one(conn, event) for event in events]
                    await rollups.flush(conn)
        except sa.exc.DBAPIError as exc:
            raise TransientError("database-unavailable", type(exc).__name__) from exc
        for event, applied in zip(events, changed, strict=True):
            if isinstance(event, StageEvent):
                log.debug(
                    "tracker.applied" if applied else "tracker.duplicate",
                    conversation_id=event.conversation_id,
                    stage=event.stage.value,
                )
            else:
                log.debug("tracker.contact", contact_id=event.contact_id)

    async def _apply_one(self, conn: AsyncConnection, event: TrackingEvent) -> bool:
        if isinstance(event, ContactEvent):
            await self._state.apply_contact(conn, event)
            return True
        return await self._state.apply_stage(conn, event)
