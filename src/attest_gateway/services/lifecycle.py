"""The request lifecycle, as the job centre drives it after sending a request: list its
requests (filters, cursor pagination), cancel one (the receiver gets a cancellation message
and the tracker stops the clock and the reminders), extend its deadline, and remind the
receiver by hand (at most once a day).

Each action is naturally idempotent (`request_actions`: cancel once, one extension per new
deadline, one reminder a day) and a stage of the conversation: `cancelled`,
`deadline_extended`, `reminded` (detail `manual`), recorded with its stage event in the
same transaction, so the tracker and the webhooks hear of it like of any other stage.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import uuid
from typing import Final, Literal

import orjson
import structlog

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.jobcenter import (
    AttestRequestList,
    AttestRequestSummary,
    DeadlineExtensionIn,
    RequestActionOut,
)
from attest_gateway.contracts.stages import MessageType, Stage, current_stage
from attest_gateway.core import audit
from attest_gateway.core.attests import reply_kind_of_detail
from attest_gateway.core.bounds import a_year_after
from attest_gateway.core.clock import Clock
from attest_gateway.core.directory import Organisation
from attest_gateway.core.errors import ErrorCode, GatewayError, InvalidInput, Replay, Unknown
from attest_gateway.crypto.sealing import KeyRing, open_envelope
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import OrgIdentifiers
from attest_gateway.medcom.reminders import build_cancellation, build_reminder
from attest_gateway.ports.records import Conversation, RequestAction, StageEntry
from attest_gateway.ports.sealing import seal_for
from attest_gateway.ports.store import Relay, Store, UnitOfWork

log = structlog.get_logger(__name__)

PAGE: Final = 200  # conversations read per look-up while filtering a page
MAX_SCAN: Final = 2000  # at most this many looked at per call; the cursor goes on from there
MANUAL: Final = "manual"  # the detail of a `reminded` stage sent by hand

Action = Literal["cancel", "extend", "remind"]
ACTION_STAGE: Final[dict[str, Stage]] = {
    "cancel": Stage.CANCELLED,
    "extend": Stage.DEADLINE_EXTENDED,
    "remind": Stage.REMINDED,
}


def status_url(conversation_id: str) -> str:
    return f"/jobcenter/v1/attest-requests/{conversation_id}"


def _ids(org: Organisation) -> OrgIdentifiers:
    return OrgIdentifiers(name=org.name, sor=org.sor, gln=org.gln)


# --- the list ------------------------------------------------------------------------------


def encode_cursor(at: dt.datetime, conversation_id: str) -> str:
    raw = orjson.dumps([at.isoformat(), conversation_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, cid = orjson.loads(raw)
        when = dt.datetime.fromisoformat(at)
        if not isinstance(cid, str) or when.tzinfo is None:
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidInput(
            ErrorCode.INVALID_CURSOR, "the cursor is not one this list handed out"
        ) from None
    return when, cid


def is_overdue(conv: Conversation, reached: set[Stage], today: dt.date) -> bool:
    """The reply deadline passed without an attest (and the request was neither refused nor
    cancelled)."""
    return today > conv.reply_deadline and not reached & {
        Stage.REPLIED,
        Stage.REFUSED,
        Stage.CANCELLED,
    }


async def list_requests(
    store: Store,
    clock: Clock,
    org: Organisation,
    *,
    status: Stage | None,
    overdue: bool | None,
    attest_type: str | None,
    cursor: str | None,
    limit: int,
) -> AttestRequestList:
    """The job centre's requests, newest first, filtered by status (the current stage),
    overdue and attest type; `next_cursor` goes on where this page ended."""
    before = decode_cursor(cursor) if cursor is not None else None
    today = clock.now().date()
    items: list[AttestRequestSummary] = []
    scanned, exhausted = 0, False
    async with store.reading() as uow:
        while len(items) < limit and scanned < MAX_SCAN:
            batch = await uow.conversations.of_jobcenter(
                org.id, attest_type=attest_type, before=before, limit=PAGE
            )
            timelines = await uow.stages.timelines([c.id for c in batch])
            for conv in batch:
                scanned += 1
                before = (conv.created_at, conv.id)
                entries = timelines.get(conv.id, [])
                stage = current_stage([(Stage(e.stage), e.at) for e in entries])
                late = is_overdue(conv, {Stage(e.stage) for e in entries}, today)
                if (status is None or stage is status) and (overdue is None or late is overdue):
                    replied = next((e for e in entries if e.stage == Stage.REPLIED.value), None)
                    items.append(_summary(conv, stage, late, replied))
                    if len(items) == limit:
                        break
            else:
                if len(batch) < PAGE:
                    exhausted = True
                    break
    more = not exhausted and before is not None
    return AttestRequestList(
        items=items, next_cursor=encode_cursor(*before) if more and before else None
    )


def _summary(
    conv: Conversation, stage: Stage, overdue: bool, replied: StageEntry | None
) -> AttestRequestSummary:
    return AttestRequestSummary(
        conversation_id=conv.id,
        attest_type=conv.attest_type,
        case_kind=conv.case_kind,  # type: ignore[arg-type]
        caseworker_ref=conv.caseworker_ref,
        created_at=conv.created_at,
        reply_deadline=conv.reply_deadline,
        stage=stage,
        overdue=overdue,
        status_url=status_url(conv.id),
        reply_kind=None if replied is None else reply_kind_of_detail(replied.detail),
    )


# --- the timeline --------------------------------------------------------------------------


def action_entries(stages: list[StageEntry], actions: list[RequestAction]) -> list[StageEntry]:
    """The actions not already in the stages table (a second extension, a later reminder by
    hand), as timeline entries."""
    recorded = {(e.stage, e.message_id) for e in stages}
    found: list[StageEntry] = []
    for a in actions:
        stage = ACTION_STAGE[a.action].value
        if (stage, a.id) not in recorded:
            detail = MANUAL if a.action == "remind" else a.detail
            found.append(StageEntry(stage, a.id, a.at, detail))
    return found


# --- the actions ---------------------------------------------------------------------------


async def _own(uow: UnitOfWork, org: Organisation, cid: str) -> tuple[Conversation, set[Stage]]:
    conv = await uow.conversations.get(cid)
    if conv is None or conv.jobcenter_org_id != org.id:
        raise Unknown(ErrorCode.NOT_FOUND, "no such conversation")
    reached = {Stage(e.stage) for e in await uow.stages.timeline(cid)}
    return conv, reached


def _still_open(reached: set[Stage]) -> None:
    if Stage.CANCELLED in reached:
        raise Replay(ErrorCode.REQUEST_CANCELLED, "the request was cancelled")
    if Stage.REPLIED in reached or Stage.REFUSED in reached:
        raise Replay(
            ErrorCode.REQUEST_ANSWERED, "the receiver already answered (the attest, or a refusal)"
        )


def _out(conv: Conversation, a: RequestAction) -> RequestActionOut:
    return RequestActionOut(
        conversation_id=conv.id,
        action=a.action,
        at=a.at,
        message_id=a.id if a.action != "extend" else None,
        reply_deadline=conv.reply_deadline,
        status_url=status_url(conv.id),
    )


async def _request_copy(
    uow: UnitOfWork,
    keyring: KeyRing,
    conv: Conversation,
    *,
    gateway_org_id: str,
    source: str,
    at: dt.datetime,
    purpose: str,
) -> tuple[Bundle | None, list[audit.AuditEvent]]:
    """The request as the gateway sent it, from its own sealed copy (an audited opening, in
    memory only): the message copies its Patient and caseworker. None when the copy is gone
    or unreadable: the message then names the Patient by reference only."""
    raw = await uow.sent.copy_of(conv.request_message_id)
    if raw is None:
        return None, []
    try:
        copy = SealedEnvelope.from_json(raw)
        key = keyring.hpke_key(copy.header.recipient_key_id)
        if key is None:
            return None, []
        bundle = parse_bundle(orjson.loads(open_envelope(copy, key)))
    except (GatewayError, BundleError, ValueError):
        log.warning("lifecycle.request_copy_unreadable", conversation_id=conv.id)
        return None, []
    opened = audit.AuditEvent(
        actor=gateway_org_id,
        action=audit.ENVELOPE_OPEN,
        source=source,
        at=at,
        subject_org=copy.header.sender,
        message_id=copy.header.message_id,
        conversation_id=conv.id,
        detail={"key_id": key.key_id, "purpose": purpose},
    )
    return bundle, [opened]


async def _parties(uow: UnitOfWork, conv: Conversation) -> tuple[Organisation, Organisation]:
    sender = await uow.directory.org_by_id(conv.jobcenter_org_id)
    receiver = await uow.directory.org_by_id(conv.receiver_org_id)
    if sender is None or receiver is None:
        raise Unknown(ErrorCode.NOT_FOUND, "no such conversation")
    return sender, receiver


async def cancel_request(
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    cid: str,
    *,
    source: str,
    gateway_org_id: str,
) -> tuple[RequestActionOut, bool]:
    """Cancel a request not yet answered: a cancellation message to the receiver, stage
    `cancelled`. Cancelling again answers the first cancellation (False: nothing new)."""
    relay.admit()
    now = clock.now()
    async with store.transaction() as uow:
        await uow.conversations.lock(cid)  # against a reply arriving at the same time
        conv, reached = await _own(uow, org, cid)
        done = await uow.actions.get(cid, "cancel", "")
        if done is not None:
            return _out(conv, done), False
        _still_open(reached)
        sender, receiver = await _parties(uow, conv)
        request, opened = await _request_copy(
            uow, keyring, conv, gateway_org_id=gateway_org_id, source=source, at=now,
            purpose="cancellation",
        )  # fmt: skip
        message_id, bundle_id = str(uuid.uuid4()), str(uuid.uuid4())
        bundle = build_cancellation(
            request_message_id=conv.request_message_id,
            conversation_id=cid,
            message_id=message_id,
            bundle_id=bundle_id,
            sent_at=now,
            sender=_ids(sender),
            receiver=_ids(receiver),
            attest_type=conv.attest_type,
            request=request,
        )
        envelope = await seal_for(
            uow.directory,
            keyring,
            signer_org_id=gateway_org_id,
            sender_org_id=conv.jobcenter_org_id,
            receiver_org_id=conv.receiver_org_id,
            message_type=MessageType.ATTEST_CANCELLATION,
            message_id=message_id,
            bundle_id=bundle_id,
            conversation_id=cid,
            plaintext=orjson.dumps(bundle),
            now=now,
        )
        action = RequestAction(cid, "cancel", "", message_id, now)
        if not await uow.actions.add(action):  # cancelled meanwhile by a concurrent call
            done = await uow.actions.get(cid, "cancel", "")
            assert done is not None
            return _out(conv, done), False
        await uow.stages.record(
            conv,
            Stage.CANCELLED,
            message_id=message_id,
            message_type=MessageType.ATTEST_CANCELLATION,
            at=now,
            envelope=envelope,
        )
        await uow.audit.record_many(opened)
    relay.wake()
    log.info("lifecycle.cancelled", conversation_id=cid, receiver=conv.receiver_org_id)
    return _out(conv, action), True


async def extend_deadline(
    store: Store,
    relay: Relay,
    clock: Clock,
    org: Organisation,
    cid: str,
    body: DeadlineExtensionIn,
) -> tuple[RequestActionOut, bool]:
    """Move the reply deadline later (stage `deadline_extended`, detail the new deadline); the
    tracker counts overdue and reminds from the new one. The same extension again answers
    the first (False)."""
    relay.admit()
    now = clock.now()
    today = now.date()
    new = body.reply_deadline
    async with store.transaction() as uow:
        conv, reached = await _own(uow, org, cid)
        done = await uow.actions.get(cid, "extend", new.isoformat())
        if done is not None:
            return _out(conv, done), False
        _still_open(reached)
        if new <= conv.reply_deadline or new <= today:
            raise InvalidInput(
                ErrorCode.INVALID_REPLY_DEADLINE,
                "the new reply deadline must be later than the current one and than today",
            )
        if new > a_year_after(today):
            raise InvalidInput(
                ErrorCode.INVALID_REPLY_DEADLINE, "the reply deadline is more than a year ahead"
            )
        action = RequestAction(
            cid,
            "extend",
            new.isoformat(),
            str(uuid.uuid4()),
            now,
            detail=new.isoformat(),
        )
        if not await uow.actions.add(action):  # the same extension by a concurrent call
            done = await uow.actions.get(cid, "extend", new.isoformat())
            assert done is not None
            return _out(conv, done), False
        await uow.conversations.set_deadline(cid, new)
        conv = dataclasses.replace(conv, reply_deadline=new)
        first = await uow.stages.record(
            conv,
            Stage.DEADLINE_EXTENDED,
            message_id=action.id,
            message_type=MessageType.ATTEST_REQUEST,
            at=now,
            detail=new.isoformat(),
        )
        if not first:  # extended before: the event again, with the new deadline
            await uow.stages.emit(
                conv,
                Stage.DEADLINE_EXTENDED,
                message_id=action.id,
                message_type=MessageType.ATTEST_REQUEST,
                at=now,
                detail=new.isoformat(),
            )
    relay.wake()
    log.info("lifecycle.extended", conversation_id=cid)
    return _out(conv, action), True


async def remind_by_hand(
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    cid: str,
    *,
    idempotency_key: str | None,
    source: str,
    gateway_org_id: str,
) -> tuple[RequestActionOut, bool]:
    """Send the receiver a reminder now (stage `reminded`, detail `manual`), at most one a day
    per request: a second the same day is 409 `reminder-limit`, unless it carries the first's
    Idempotency-Key (then it answers the first, False)."""
    relay.admit()
    now = clock.now()
    day = now.date().isoformat()
    async with store.transaction() as uow:
        conv, reached = await _own(uow, org, cid)
        done = await uow.actions.get(cid, "remind", day)
        if done is not None:
            if idempotency_key is not None and done.idempotency_key == idempotency_key:
                return _out(conv, done), False
            raise Replay(
                ErrorCode.REMINDER_LIMIT,
                "this request was reminded by hand today already: one reminder a day",
            )
        _still_open(reached)
        sent = [a for a in await uow.actions.of(cid) if a.action == "remind"]
        sender, receiver = await _parties(uow, conv)
        request, opened = await _request_copy(
            uow, keyring, conv, gateway_org_id=gateway_org_id, source=source, at=now,
            purpose="reminder",
        )  # fmt: skip
        message_id, bundle_id = str(uuid.uuid4()), str(uuid.uuid4())
        bundle = build_reminder(
            request_message_id=conv.request_message_id,
            conversation_id=cid,
            message_id=message_id,
            bundle_id=bundle_id,
            sent_at=now,
            sender=_ids(sender),
            receiver=_ids(receiver),
            attest_type=conv.attest_type,
            due=conv.reply_deadline,
            seq=len(sent) + 1,
            request=request,
        )
        envelope = await seal_for(
            uow.directory,
            keyring,
            signer_org_id=gateway_org_id,
            sender_org_id=conv.jobcenter_org_id,
            receiver_org_id=conv.receiver_org_id,
            message_type=MessageType.ATTEST_REMINDER,
            message_id=message_id,
            bundle_id=bundle_id,
            conversation_id=cid,
            plaintext=orjson.dumps(bundle),
            now=now,
        )
        action = RequestAction(
            cid, "remind", day, message_id, now, detail=MANUAL, idempotency_key=idempotency_key
        )
        if not await uow.actions.add(action):
            raise Replay(
                ErrorCode.REMINDER_LIMIT,
                "this request was reminded by hand today already: one reminder a day",
            )
        first = await uow.stages.record(
            conv,
            Stage.REMINDED,
            message_id=message_id,
            message_type=MessageType.ATTEST_REMINDER,
            at=now,
            detail=MANUAL,
            envelope=envelope,
        )
        if not first:  # reminded before (by the tracker, or by hand): the event again
            await uow.stages.emit(
                conv,
                Stage.REMINDED,
                message_id=message_id,
                message_type=MessageType.ATTEST_REMINDER,
                at=now,
                detail=MANUAL,
            )
        await uow.audit.record_many(opened)
    relay.wake()
    log.info("lifecycle.reminded", conversation_id=cid, receiver=conv.receiver_org_id)
    return _out(conv, action), True
