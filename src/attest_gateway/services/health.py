"""Health-side use cases: fetch the mailbox, mark a message collected, submit a Bundle.

A psychiatry unit or GP system fetches sealed envelopes and opens them with its own key.
It submits acknowledgements and attest replies either as plain FHIR JSON over the API's
TLS, or sealed for the gateway. The gateway checks that the Bundle's sender is the caller
and that the message it answers was addressed to the caller, then seals it for the job
centre and hands it to Kafka through the outbox.
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any

import orjson
import pydantic
import sqlalchemy as sa
import structlog
from pydantic_core import PydanticCustomError
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core import trust
from attest_gateway.core.directory import Organisation
from attest_gateway.core.errors import (
    EnvelopeRejected,
    ErrorCode,
    InvalidInput,
    Malformed,
    NotPermitted,
    Replay,
    Unknown,
)
from attest_gateway.core.identifiers import check_cpr
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import decode_verify_key, open_envelope, verify
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import audit, directory
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import inbound_messages, mailbox, outbox, sent_messages
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import MessageInfo, read_message
from attest_gateway.medcom.rules import check_attachments
from attest_gateway.services.messaging import (
    Conversation,
    StageRecord,
    conversation_by_request,
    conversations_by_id,
    enqueue_envelope,
    load_conversation,
    mark_fetched,
    record_stage,
    record_stages,
    seal_for,
)

log = structlog.get_logger(__name__)


async def read_mailbox(
    gw: Gateway, org: Organisation, *, limit: int, source: str
) -> list[dict[str, Any]]:
    """The sealed envelopes waiting for this organisation, oldest first. Each one handed out
    is an audit entry (`mailbox.fetch`, from `source`), in the same transaction."""
    now = gw.clock.now()
    out: list[dict[str, Any]] = []
    reads: list[audit.AuditEvent] = []
    async with gw.engine.begin() as conn:
        rows = (
            await conn.execute(
                sa.select(mailbox)
                .where(mailbox.c.receiver_org_id == org.id, mailbox.c.collected_at.is_(None))
                .order_by(mailbox.c.delivered_at, mailbox.c.message_id)
                .limit(limit)
            )
        ).all()
        for row in rows:
            out.append(
                {
                    "message_id": row.message_id,
                    "conversation_id": row.conversation_id,
                    "message_type": row.message_type,
                    "delivered_at": aware(row.delivered_at).isoformat(),
                    "envelope": orjson.loads(row.envelope),
                }
            )
            reads.append(
                audit.AuditEvent(
                    actor=org.id,
                    action=audit.MAILBOX_FETCH,
                    source=source,
                    at=now,
                    subject_org=org.id,
                    message_id=row.message_id,
                    conversation_id=row.conversation_id,
                )
            )
        # The first fetch of a request is its conversation's `fetched` stage: for the whole
        # read in a few statements, not a few per message.
        first = await mark_fetched(conn, [r.message_id for r in rows if r.fetched_at is None], now)
        requests = [
            r
            for r in rows
            if r.message_id in first and r.message_type == MessageType.ATTEST_REQUEST.value
        ]
        convs = await conversations_by_id(conn, [r.conversation_id for r in requests])
        await record_stages(
            conn,
            gw.topics,
            [
                StageRecord(
                    convs[r.conversation_id],
                    Stage.FETCHED,
                    r.message_id,
                    MessageType.ATTEST_REQUEST,
                    now,
                )
                for r in requests
            ],
        )
        await audit.record_many(conn, gw.topics, reads)  # last: it holds the chain's lock
    log.info("medcom.mailbox_read", count=len(out))
    return out


async def mark_collected(gw: Gateway, org: Organisation, message_id: str) -> bool:
    """The receiver has stored the message; it leaves the waiting list. Idempotent."""
    async with gw.engine.begin() as conn:
        result = await conn.execute(
            mailbox.update()
            .where(
                mailbox.c.message_id == message_id,
                mailbox.c.receiver_org_id == org.id,
                mailbox.c.collected_at.is_(None),
            )
            .values(collected_at=gw.clock.now())
        )
        if result.rowcount == 1:
            return True
        exists = (
            await conn.execute(
                sa.select(mailbox.c.message_id).where(
                    mailbox.c.message_id == message_id, mailbox.c.receiver_org_id == org.id
                )
            )
        ).first()
    if exists is None:
        raise Unknown(ErrorCode.NOT_FOUND, "no such message in this mailbox")
    return False


async def unwrap_submission(gw: Gateway, org: Organisation, body: object) -> object:
    """A submission is a FHIR Bundle, or a sealed envelope for the gateway holding one."""
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return body
    if not (isinstance(body, dict) and "header" in body and "ciphertext" in body):
        raise Malformed(ErrorCode.UNSUPPORTED_BODY, "send a FHIR Bundle or a sealed envelope")
    try:
        envelope = SealedEnvelope.model_validate(body)
    except pydantic.ValidationError as exc:
        raise Malformed(ErrorCode.INVALID_ENVELOPE, "the sealed envelope is malformed") from exc
    h = envelope.header
    async with gw.engine.connect() as conn:  # the trust policy (core/trust.py)
        await trust.check_envelope(
            h,
            directory.TrustLookups(conn),
            gateway_org_id=gw.settings.gateway_org_id,
            now=gw.clock.now(),
            verify=lambda vkey: verify(envelope, decode_verify_key(vkey.public_key)),
            submission=trust.Submission(org.id, lambda kid: gw.keyring.hpke_key(kid) is not None),
        )
    key = gw.keyring.hpke_key(h.recipient_key_id)
    assert key is not None  # the policy checked that the key ring holds it
    opened = open_envelope(envelope, key)
    async with gw.engine.begin() as conn:  # an opening at the edge: audited before it is used
        await audit.record(
            conn,
            gw.topics,
            actor=gw.settings.gateway_org_id,
            action=audit.ENVELOPE_OPEN,
            source=audit.SOURCE_GATEWAY,
            at=gw.clock.now(),
            subject_org=org.id,
            message_id=h.message_id,
            conversation_id=h.conversation_id,
            detail={"key_id": key.key_id, "purpose": "submission"},
        )
    try:
        data = orjson.loads(opened)
    except orjson.JSONDecodeError as exc:
        raise Malformed(ErrorCode.INVALID_BUNDLE, "the envelope does not hold JSON") from exc
    _check_sealed_header(h, data)
    return data


_MESSAGE_TYPES = {
    "acknowledgement": MessageType.ACKNOWLEDGEMENT,
    "attest-reply": MessageType.ATTEST_REPLY,
}


def _check_sealed_header(h: EnvelopeHeader, data: object) -> None:
    """The signed header must describe the Bundle it holds: same ids, same message type."""
    try:
        info = read_message(parse_bundle(data))
    except BundleError as exc:
        raise InvalidInput(exc.code, exc.detail) from exc
    if (h.message_id, h.bundle_id) != (info.message_id, info.bundle_id) or (
        _MESSAGE_TYPES.get(info.message_type) not in (None, h.message_type)
    ):
        raise EnvelopeRejected(
            ErrorCode.HEADER_MISMATCH, "the envelope's header does not match its Bundle"
        )


def _check_sender(info: MessageInfo, org: Organisation) -> None:
    if not (
        (info.sender.sor and info.sender.sor == org.sor)
        or (info.sender.gln and info.sender.gln == org.gln)
    ):
        raise NotPermitted(
            ErrorCode.SENDER_MISMATCH, "the Bundle's sender organisation is not the caller"
        )


async def _answered_conversation(
    conn: AsyncConnection, org: Organisation, request_id: str | None
) -> Conversation:
    conv = await conversation_by_request(conn, request_id) if request_id else None
    if conv is None or conv.receiver_org_id != org.id:
        # Same answer whether the request does not exist or is someone else's.
        raise _unknown_request()
    return conv


def _unknown_request() -> Unknown:
    return Unknown(
        ErrorCode.UNKNOWN_REQUEST, "no attest request with that MessageHeader id was sent to you"
    )


async def submit_message(
    gw: Gateway, org: Organisation, data: object
) -> tuple[dict[str, Any], bool]:
    """Accept an acknowledgement or an attest reply. Returns (answer, created now).

    MedCom duplicate rule: the same MessageHeader.id again (same or new Bundle.id) gets the
    identical answer and is not delivered again; a known Bundle.id under a new
    MessageHeader.id is an error. A known MessageHeader.id from another sender, of another
    type or answering another conversation is not a resend but a replay: refused
    (`replayed-message-id`).
    """
    try:
        bundle = parse_bundle(data)
        info = read_message(bundle)
    except BundleError as exc:
        raise InvalidInput(exc.code, exc.detail) from exc
    _check_sender(info, org)
    gw.relay.admit()
    now = gw.clock.now()
    async with gw.engine.begin() as conn:
        seen = (
            await conn.execute(
                sa.select(inbound_messages).where(
                    sa.or_(
                        inbound_messages.c.message_id == info.message_id,
                        inbound_messages.c.bundle_id == info.bundle_id,
                    )
                )
            )
        ).all()
        target = await _target_conversation(conn, org, info) if seen else None
        if target is None and any(row.sender_org_id != org.id for row in seen):
            # Answering a request the caller did not receive: the answer for any such
            # request, not word that someone else used these ids.
            raise _unknown_request()
        for row in sorted(seen, key=lambda r: r.message_id != info.message_id):
            if row.message_id != info.message_id:
                raise Replay(
                    ErrorCode.MESSAGE_ID_CONFLICT,
                    "a known Bundle.id came with a new MessageHeader.id",
                )
            if (
                row.sender_org_id != org.id
                or row.message_type != _MESSAGE_TYPES.get(info.message_type)
                or (target is not None and target != row.conversation_id)
            ):
                # Not a resend of that message: a different one reusing its id.
                raise Replay(
                    ErrorCode.REPLAYED_MESSAGE_ID, "that message id belongs to another message"
                )
            return orjson.loads(row.response), False
        if await _carried_before(conn, info.message_id):
            # The delivery consumer would refuse it as a replay after the 202: say so now.
            raise Replay(
                ErrorCode.REPLAYED_MESSAGE_ID, "that message id belongs to another message"
            )
        if info.message_type == "acknowledgement":
            conv, message_type = await _accept_ack(gw, conn, org, info, bundle_json=data, now=now)
        elif info.message_type == "attest-reply":
            conv, message_type = await _accept_reply(
                gw, conn, org, info, bundle=bundle, bundle_json=data, now=now
            )
        else:
            raise InvalidInput(
                ErrorCode.UNSUPPORTED_MESSAGE,
                "only acknowledgements and attest replies can be sent",
            )
        answer = {
            "message_id": info.message_id,
            "bundle_id": info.bundle_id,
            "conversation_id": conv.id,
            "message_type": message_type.value,
            "status": "accepted",
            "accepted_at": now.isoformat(),
        }
        await conn.execute(
            inbound_messages.insert().values(
                message_id=info.message_id,
                bundle_id=info.bundle_id,
                sender_org_id=org.id,
                conversation_id=conv.id,
                message_type=message_type.value,
                response=orjson.dumps(answer).decode(),
                created_at=now,
            )
        )
    gw.relay.wake()
    log.info("medcom.message_accepted", message_type=message_type.value, conversation_id=conv.id)
    return answer, True


async def _carried_before(conn: AsyncConnection, message_id: str) -> bool:
    """Whether the gateway already carries a message under this id that did not come in
    through this API: one it sent (a request, reminder or acknowledgement), or one waiting
    in or collected from a mailbox. A message id names one message for good."""
    known = sa.union_all(
        *(
            sa.select(sa.literal(1)).where(column == message_id)
            for column in (sent_messages.c.message_id, mailbox.c.message_id, outbox.c.message_id)
        )
    )
    return (await conn.execute(sa.select(sa.exists(known)))).scalar_one()


async def _target_conversation(
    conn: AsyncConnection, org: Organisation, info: MessageInfo
) -> str | None:
    """The conversation a submission answers, if the caller may answer it."""
    if info.message_type == "acknowledgement":
        reminder = await _reminder_to(conn, org, info.response_to)
        if reminder is not None:
            return reminder.id
    request_id = info.response_to if info.message_type == "acknowledgement" else info.replied_to
    conv = await conversation_by_request(conn, request_id) if request_id else None
    return conv.id if conv is not None and conv.receiver_org_id == org.id else None


async def _forward(
    gw: Gateway,
    conn: AsyncConnection,
    org: Organisation,
    conv: Conversation,
    info: MessageInfo,
    message_type: MessageType,
    plaintext: bytes,
    now: dt.datetime,
) -> None:
    sealed = await seal_for(
        conn,
        gw.keyring,
        signer_org_id=gw.settings.gateway_org_id,
        sender_org_id=org.id,
        receiver_org_id=conv.jobcenter_org_id,
        message_type=message_type,
        message_id=info.message_id,
        bundle_id=info.bundle_id,
        conversation_id=conv.id,
        plaintext=plaintext,
        now=now,
    )
    await enqueue_envelope(conn, gw.topics, sealed, now)


async def _accept_ack(
    gw: Gateway,
    conn: AsyncConnection,
    org: Organisation,
    info: MessageInfo,
    *,
    bundle_json: object,
    now: dt.datetime,
) -> tuple[Conversation, MessageType]:
    reminder = await _reminder_to(conn, org, info.response_to)
    if reminder is not None:
        # Receivers acknowledge every message, reminders included. The job centre asked for the
        # attest, not for this reminder: the acknowledgement is kept, not forwarded or staged.
        await conn.execute(
            mailbox.update()
            .where(mailbox.c.message_id == info.response_to, mailbox.c.collected_at.is_(None))
            .values(collected_at=now)
        )
        return reminder, MessageType.ACKNOWLEDGEMENT
    conv = await _answered_conversation(conn, org, info.response_to)
    plaintext = orjson.dumps(bundle_json)
    await _forward(gw, conn, org, conv, info, MessageType.ACKNOWLEDGEMENT, plaintext, now)
    await conn.execute(
        mailbox.update()
        .where(mailbox.c.message_id == conv.request_message_id, mailbox.c.collected_at.is_(None))
        .values(collected_at=now)
    )
    await conn.execute(
        sent_messages.update()
        .where(
            sent_messages.c.message_id == conv.request_message_id,
            sent_messages.c.acknowledged_at.is_(None),
        )
        .values(acknowledged_at=now)
    )
    await record_stage(
        conn,
        gw.topics,
        conv,
        Stage.ACKNOWLEDGED,
        message_id=info.message_id,
        message_type=MessageType.ACKNOWLEDGEMENT,
        at=now,
        detail=info.response_code,
    )
    return conv, MessageType.ACKNOWLEDGEMENT


async def _reminder_to(
    conn: AsyncConnection, org: Organisation, message_id: str | None
) -> Conversation | None:
    """The conversation of reminder `message_id` if it was delivered to `org`."""
    if not message_id:
        return None
    row = (
        await conn.execute(
            sa.select(mailbox.c.conversation_id).where(
                mailbox.c.message_id == message_id,
                mailbox.c.receiver_org_id == org.id,
                mailbox.c.message_type == MessageType.ATTEST_REMINDER.value,
            )
        )
    ).first()
    return await load_conversation(conn, row.conversation_id) if row is not None else None


def _check_same_citizen(gw: Gateway, conv: Conversation, info: MessageInfo) -> None:
    """The reply's Patient must be the request's citizen: the case ref of its CPR number is
    the conversation's. The job centre's inbox carries no CPR number, so a caseworker could
    not notice an attest about someone else."""
    try:
        cpr = check_cpr(info.cpr or "")
    except PydanticCustomError:
        given = ""  # no CPR number at all, or not one: not the request's citizen
    else:
        given = pseudonyms.case_ref(cpr, gw.pseudonym_key)
    if not hmac.compare_digest(given.encode("ascii"), conv.case_ref.encode("ascii")):
        raise InvalidInput(
            ErrorCode.PATIENT_MISMATCH,
            "the reply's Patient is not the citizen the request is about",
        )


async def _accept_reply(
    gw: Gateway,
    conn: AsyncConnection,
    org: Organisation,
    info: MessageInfo,
    *,
    bundle: Bundle,
    bundle_json: object,
    now: dt.datetime,
) -> tuple[Conversation, MessageType]:
    conv = await _answered_conversation(conn, org, info.replied_to)
    jobcenter = await directory.org_by_id(conn, conv.jobcenter_org_id)
    assert jobcenter is not None
    if not (
        (info.receiver.gln and info.receiver.gln == jobcenter.gln)
        or (info.receiver.sor and info.receiver.sor == jobcenter.sor)
    ):
        raise InvalidInput(
            ErrorCode.RECEIVER_MISMATCH, "the reply is not addressed to the requesting job centre"
        )
    if info.conversation_id != conv.id:
        raise InvalidInput(
            ErrorCode.CONVERSATION_MISMATCH,
            "the reply's Communication.identifier is not the request's conversation",
        )
    _check_same_citizen(gw, conv, info)
    try:
        check_attachments(bundle)
    except BundleError as exc:
        raise InvalidInput(exc.code, exc.detail) from exc
    if not info.texts and not info.attachments:
        raise InvalidInput(ErrorCode.EMPTY_REPLY, "an attest reply needs text or a PDF attachment")
    await _forward(
        gw, conn, org, conv, info, MessageType.ATTEST_REPLY, orjson.dumps(bundle_json), now
    )
    await record_stage(
        conn,
        gw.topics,
        conv,
        Stage.REPLIED,
        message_id=info.message_id,
        message_type=MessageType.ATTEST_REPLY,
        at=now,
    )
    return conv, MessageType.ATTEST_REPLY
