"""The tracker's sweep: what happens because time passes, not because a message arrived.

Every `tracker_sweep_seconds`:

1. **Overdue.** A request whose deadline has passed without an attest gets the stage
   `overdue` (stages table + stage event, one transaction). The consumer settles it when
   the event comes back on `gateway.tracking`, like any other stage.
2. **Reminders.** An overdue request without an attest gets a reminder, a MedCom-like
   message to its receiver, sealed and put in the outbox exactly as a request is, at most
   `tracker_reminder_max` times, `tracker_reminder_interval_days` apart. `tracker_reminders`
   (primary key conversation + sequence number) makes it at most once per number even with
   several gateway replicas sweeping. The first is recorded as stage `reminded`; every one
   emits a `reminded` stage event with its number as detail. A request its receiver refused
   (stage `refused`, a fatal-error acknowledgement) is neither overdue nor reminded.
3. **Contact windows.** A contact episode whose window has closed without contact is settled
   as `no_contact` (flagged), and counted.

All three are idempotent and safe to run concurrently: each claims its work with a conditional
write in the same transaction as its effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.errors import GatewayError
from attest_gateway.crypto.sealing import open_envelope
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import audit, directory
from attest_gateway.infra.db.engine import STORE_ERRORS, aware, insert_ignore
from attest_gateway.infra.db.messaging import (
    emit_stage_event,
    enqueue_envelope,
    load_conversation,
    record_stage,
    seal_for,
)
from attest_gateway.infra.db.tables import (
    sent_messages,
    stages,
    tracker_conversations,
    tracker_episodes,
    tracker_reminders,
)
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import OrgIdentifiers
from attest_gateway.medcom.reminders import build_reminder
from attest_gateway.tracker.consumer import TrackerState
from attest_gateway.tracker.store import add_citizen, add_counts

log = structlog.get_logger(__name__)

BATCH = 200


class TrackerSweep:
    def __init__(self, gw: Gateway, state: TrackerState, *, interval: float) -> None:
        self._gw = gw
        self._state = state
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tracker-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except STORE_ERRORS + (OSError,) as exc:  # noqa: RUF005 - mypy refuses a starred except
                log.warning("tracker.sweep_failed", error=type(exc).__name__)
            except Exception:  # a bug must not stop the sweeping for good
                log.exception("tracker.sweep_crashed")
            await asyncio.sleep(self._interval)

    async def run_once(self, now: dt.datetime | None = None) -> dict[str, int]:
        """One sweep. Returns what it did (for logs and tests)."""
        now = now or self._gw.clock.now()
        done = {
            "overdue": await self.flag_overdue(now),
            "reminders": await self.send_reminders(now),
            "no_contact": await self.settle_contact_windows(now),
        }
        if done["overdue"] or done["reminders"]:
            self._gw.relay.wake()
        if any(done.values()):
            log.info("tracker.swept", **done)
        return done

    # --- 1. overdue ----------------------------------------------------------------------------

    async def flag_overdue(self, now: dt.datetime) -> int:
        today = self._state.rules.local_date(now)
        t = tracker_conversations
        async with self._gw.engine.connect() as conn:
            found = (
                await conn.execute(
                    sa.select(t.c.conversation_id)
                    .where(
                        t.c.outcome.is_(None),
                        t.c.replied_at.is_(None),
                        t.c.overdue_at.is_(None),
                        t.c.due_date < today,
                        ~_refused(t.c.conversation_id),
                    )
                    .order_by(t.c.due_date)
                    .limit(BATCH)
                )
            ).scalars()
            ids = list(found)
        flagged = 0
        for cid in ids:
            async with self._gw.engine.begin() as conn:
                conv = await load_conversation(conn, cid)
                if conv is None or await _stopped(conn, cid, conv.reply_deadline, today):
                    continue
                if await _has_stage(conn, cid, Stage.REFUSED):  # refused since the select
                    continue
                row = (
                    await conn.execute(sa.select(t.c.due_date).where(t.c.conversation_id == cid))
                ).one()
                flagged += await record_stage(
                    conn,
                    self._gw.topics,
                    conv,
                    Stage.OVERDUE,
                    message_id=conv.request_message_id,
                    message_type=MessageType.ATTEST_REQUEST,
                    at=now,
                    detail=f"due {row.due_date.isoformat()}",
                )
        return flagged

    # --- 2. reminders --------------------------------------------------------------------------

    async def send_reminders(self, now: dt.datetime) -> int:
        rules = self._state.rules
        today = rules.local_date(now)
        t = tracker_conversations
        async with self._gw.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.c.conversation_id, t.c.due_date)
                    .where(
                        # flagged, or just flagged by this sweep (its event is still on the way)
                        sa.or_(t.c.overdue_at.is_not(None), t.c.due_date < today),
                        t.c.replied_at.is_(None),
                        # cancelled, or answered without the attest: no longer due
                        sa.or_(
                            t.c.outcome.is_(None), t.c.outcome.not_in(("cancelled", "answered"))
                        ),
                        t.c.reminders < rules.reminder_max,
                        ~_refused(t.c.conversation_id),
                    )
                    .limit(BATCH)
                )
            ).all()
        sent = 0
        for row in rows:
            try:
                sent += await self._remind(row.conversation_id, row.due_date, now)
            except GatewayError as exc:  # e.g. the receiver has no usable key: try next time
                log.warning(
                    "tracker.reminder_failed", conversation_id=row.conversation_id, code=exc.code
                )
        return sent

    async def _remind(self, cid: str, due: dt.date, now: dt.datetime) -> int:
        rules = self._state.rules
        gw = self._gw
        async with gw.engine.begin() as conn:
            conv = await load_conversation(conn, cid)
            if conv is None or await _stopped(
                conn, cid, conv.reply_deadline, rules.local_date(now)
            ):
                return 0
            if await _has_stage(conn, cid, Stage.REFUSED):  # the receiver refused it
                return 0
            overdue_at = await _stage_time(conn, cid, Stage.OVERDUE)
            if overdue_at is None:
                return 0
            previous = (
                await conn.execute(
                    sa.select(tracker_reminders)
                    .where(tracker_reminders.c.conversation_id == cid)
                    .order_by(tracker_reminders.c.seq.desc())
                )
            ).first()
            sent = previous.seq if previous is not None else 0
            last = aware(previous.sent_at) if previous is not None else None
            if not rules.reminder_due(
                sent=sent, overdue_at=overdue_at, last_reminded_at=last, now=now
            ):
                return 0
            seq = sent + 1
            message_id, bundle_id = str(uuid.uuid4()), str(uuid.uuid4())
            if not await insert_ignore(
                conn,
                tracker_reminders,
                {"conversation_id": cid, "seq": seq, "message_id": message_id, "sent_at": now},
            ):
                return 0  # another sweeper sent this one
            sender = await directory.org_by_id(conn, conv.jobcenter_org_id)
            receiver = await directory.org_by_id(conn, conv.receiver_org_id)
            if sender is None or receiver is None:
                raise RuntimeError("a conversation names an organisation not in the directory")
            request = await _request_copy(gw, conn, conv.request_message_id, now)
            bundle = build_reminder(
                request_message_id=conv.request_message_id,
                conversation_id=cid,
                message_id=message_id,
                bundle_id=bundle_id,
                sent_at=now,
                sender=_ids(sender),
                receiver=_ids(receiver),
                attest_type=conv.attest_type,
                due=due,
                seq=seq,
                request=request,
            )
            envelope = await seal_for(
                conn,
                gw.keyring,
                signer_org_id=gw.settings.gateway_org_id,
                sender_org_id=conv.jobcenter_org_id,
                receiver_org_id=conv.receiver_org_id,
                message_type=MessageType.ATTEST_REMINDER,
                message_id=message_id,
                bundle_id=bundle_id,
                conversation_id=cid,
                plaintext=orjson.dumps(bundle),
                now=now,
            )
            await enqueue_envelope(conn, gw.topics, envelope, now)
            first = await record_stage(
                conn,
                gw.topics,
                conv,
                Stage.REMINDED,
                message_id=message_id,
                message_type=MessageType.ATTEST_REMINDER,
                at=now,
                detail=str(seq),
            )
            if not first:
                await emit_stage_event(
                    conn,
                    gw.topics,
                    conv,
                    Stage.REMINDED,
                    message_id=message_id,
                    message_type=MessageType.ATTEST_REMINDER,
                    at=now,
                    detail=str(seq),
                )
        log.info("tracker.reminded", conversation_id=cid, seq=seq, receiver=conv.receiver_org_id)
        return 1

    # --- 3. contact windows --------------------------------------------------------------------

    async def settle_contact_windows(self, now: dt.datetime) -> int:
        today = self._state.rules.local_date(now)
        ep = tracker_episodes
        settled = 0
        async with self._gw.engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(ep)
                    .where(ep.c.outcome.is_(None), ep.c.window_end < today)
                    .order_by(ep.c.window_end)
                    .limit(BATCH * 5)
                )
            ).all()
            for row in rows:
                result = await conn.execute(
                    ep.update()
                    .where(
                        ep.c.case_ref == row.case_ref,
                        ep.c.jobcenter_org == row.jobcenter_org,
                        ep.c.first_day_of_absence == row.first_day_of_absence,
                        ep.c.outcome.is_(None),
                    )
                    .values(outcome="no_contact", decided_at=now)
                )
                if result.rowcount != 1:
                    continue
                cells = self._state.contact_cells(row.region_code, row.municipality, row.window_end)
                await add_counts(conn, cells, contact_decided=1)
                await add_citizen(conn, cells, row.case_ref)
                settled += 1
        return settled


def _ids(org: Any) -> OrgIdentifiers:
    return OrgIdentifiers(name=org.name, sor=org.sor, gln=org.gln)


async def _stopped(conn: AsyncConnection, cid: str, deadline: dt.date, today: dt.date) -> bool:
    """Whether the clock stopped for this request: answered, cancelled, or its deadline
    extended to a day not yet passed (read from the stages and the conversation, so it holds
    before the tracker consumer has seen the stage)."""
    if await _has_stage(conn, cid, Stage.REPLIED) or await _has_stage(conn, cid, Stage.CANCELLED):
        return True
    return await _has_stage(conn, cid, Stage.DEADLINE_EXTENDED) and deadline >= today


def _refused(conversation_id: sa.ColumnElement[str]) -> sa.Exists:
    """The conversation was refused by its receiver: it is neither overdue nor reminded."""
    return sa.exists().where(
        stages.c.conversation_id == conversation_id, stages.c.stage == Stage.REFUSED.value
    )


async def _has_stage(conn: AsyncConnection, cid: str, stage: Stage) -> bool:
    return await _stage_time(conn, cid, stage) is not None


async def _stage_time(conn: AsyncConnection, cid: str, stage: Stage) -> dt.datetime | None:
    at = (
        await conn.execute(
            sa.select(stages.c.at).where(
                stages.c.conversation_id == cid, stages.c.stage == stage.value
            )
        )
    ).scalar_one_or_none()
    return aware(at) if at is not None else None


async def _request_copy(
    gw: Gateway, conn: AsyncConnection, request_message_id: str, now: dt.datetime
) -> Bundle | None:
    """The request as the gateway sent it, from its sealed copy (`sent_messages`), opened
    with the gateway's own key in memory only (an audited opening): the reminder copies the
    request's Patient and caseworker from it, so that no tracker table ever holds them. None
    when the copy is gone (retention) or cannot be opened or read: the reminder then goes
    out without them."""
    row = (
        await conn.execute(
            sa.select(sent_messages.c.copy).where(sent_messages.c.message_id == request_message_id)
        )
    ).first()
    if row is None:
        return None
    try:
        copy = SealedEnvelope.from_json(row.copy)
        key = gw.keyring.hpke_key(copy.header.recipient_key_id)
        if key is None:
            log.warning("tracker.request_copy_unreadable", message_id=request_message_id)
            return None
        bundle = parse_bundle(orjson.loads(open_envelope(copy, key)))
    except (GatewayError, BundleError, ValueError):
        log.warning("tracker.request_copy_unreadable", message_id=request_message_id)
        return None
    await audit.record(  # the gateway opened its own copy: an opening, audited
        conn,
        gw.topics,
        actor=gw.settings.gateway_org_id,
        action=audit.ENVELOPE_OPEN,
        source=audit.SOURCE_GATEWAY,
        at=now,
        subject_org=copy.header.sender,
        message_id=copy.header.message_id,
        conversation_id=copy.header.conversation_id,
        detail={"key_id": key.key_id, "purpose": "reminder"},
    )
    return bundle
