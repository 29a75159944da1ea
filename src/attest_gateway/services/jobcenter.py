"""Job-centre use cases: request an attest, read its status, read and acknowledge replies.

Each function takes the running gateway, the authenticated organisation and plain values,
does its work in one database transaction, and returns a contract model. Routers only parse,
authorise and call one of these.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
import pydantic
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.jobcenter import (
    AttestRequestAccepted,
    AttestRequestIn,
    ConversationStatus,
    Inbox,
    InboxItem,
    OrganisationSummary,
    TimelineEntry,
    UnreadableReply,
)
from attest_gateway.contracts.stages import STAGE_ORDER, MessageType, Stage, current_stage
from attest_gateway.core.bounds import a_year_after
from attest_gateway.core.directory import HEALTH_ROLES, Organisation
from attest_gateway.core.errors import (
    ErrorCode,
    GatewayError,
    InvalidInput,
    NotPermitted,
    Replay,
    Unknown,
)
from attest_gateway.core.identifiers import municipalities
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import fingerprint, open_envelope
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import audit, directory
from attest_gateway.infra.db import pseudonyms as pseudonym_store
from attest_gateway.infra.db.engine import autocommit, aware
from attest_gateway.infra.db.group_commit import Write
from attest_gateway.infra.db.tables import conversations, idempotency_keys, mailbox
from attest_gateway.medcom.build import build_acknowledgement
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import OrgIdentifiers, read_message
from attest_gateway.medcom.translate import inbox_item, request_bundle
from attest_gateway.observability import metrics
from attest_gateway.services.messaging import (
    Conversation,
    StageRecord,
    conversations_by_id,
    first_stage_writes,
    load_conversation,
    mark_fetched,
    record_stage,
    record_stages,
    seal_for,
    sent_copy,
    stages_of,
)

log = structlog.get_logger(__name__)

_INSERT_CONVERSATION = conversations.insert()
_INSERT_IDEMPOTENCY_KEY = idempotency_keys.insert()


def _identifiers(org: Organisation) -> OrgIdentifiers:
    return OrgIdentifiers(name=org.name, sor=org.sor, gln=org.gln)


def status_url(conversation_id: str) -> str:
    return f"/jobcenter/v1/attest-requests/{conversation_id}"


async def _resolve_receiver(conn: AsyncConnection, body: AttestRequestIn) -> Organisation:
    if body.receiver.sor is not None:
        receiver = await directory.org_by_sor(conn, body.receiver.sor)
    else:
        assert body.receiver.ydernummer is not None
        receiver = await directory.org_by_ydernummer(conn, body.receiver.ydernummer)
    if receiver is None or not receiver.enabled or receiver.role not in HEALTH_ROLES:
        raise InvalidInput(
            ErrorCode.UNKNOWN_RECEIVER, "no healthcare organisation has that identifier"
        )
    return receiver


async def _replay_idempotent(
    conn: AsyncConnection, org: Organisation, key: str, fp: str
) -> AttestRequestAccepted | None:
    row = (
        await conn.execute(
            sa.select(idempotency_keys).where(
                idempotency_keys.c.org_id == org.id, idempotency_keys.c.key == key
            )
        )
    ).first()
    if row is None:
        return None
    if row.fingerprint != fp:
        raise Replay(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was used with a different request",
        )
    return AttestRequestAccepted.model_validate_json(row.response)


async def submit_attest_request(
    gw: Gateway, org: Organisation, body: AttestRequestIn, *, idempotency_key: str | None
) -> tuple[AttestRequestAccepted, bool]:
    """Accept a request: translate, seal for the receiver, store with its outbox rows.

    Returns the answer and whether it was created now (False: an idempotent replay).
    """
    gw.relay.admit()
    if body.jobcenter_gln != org.gln or body.municipality != org.kommunekode:
        raise NotPermitted(
            ErrorCode.JOBCENTER_MISMATCH, "the job centre in the request is not the caller"
        )
    kind = gw.catalogue.get(body.attest_type)
    if kind is None:
        raise InvalidInput(
            ErrorCode.UNKNOWN_ATTEST_TYPE, "the attest type is not in the LÆ catalogue"
        )
    now = gw.clock.now()
    today = now.date()
    if body.first_day_of_absence > a_year_after(today):
        raise InvalidInput(
            ErrorCode.INVALID_FIRST_DAY_OF_ABSENCE,
            "the first day of absence is more than a year ahead",
        )
    reply_deadline = body.reply_deadline or kind.reply_deadline.due(today)
    if reply_deadline <= today:
        raise InvalidInput(
            ErrorCode.INVALID_REPLY_DEADLINE, "the reply deadline must be in the future"
        )
    if reply_deadline > a_year_after(today):
        raise InvalidInput(
            ErrorCode.INVALID_REPLY_DEADLINE, "the reply deadline is more than a year ahead"
        )
    fp = fingerprint(
        orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS), gw.pseudonym_key
    )

    # Reads first (no transaction of their own needed: the rows written below depend only on
    # what the directory said); the writes go through the group commit, together with those
    # of the requests accepted at the same time.
    async with gw.engine.connect() as conn:
        await autocommit(conn)
        if idempotency_key is not None:
            replay = await _replay_idempotent(conn, org, idempotency_key, fp)
            if replay is not None:
                return replay, False
        receiver = await _resolve_receiver(conn, body)
        if receiver.role not in kind.issuers:
            raise InvalidInput(
                ErrorCode.RECEIVER_CANNOT_ISSUE,
                f"a {receiver.role.value} does not issue {kind.code}",
            )
        conversation_id, message_id, bundle_id = (str(uuid.uuid4()) for _ in range(3))
        bundle = request_bundle(
            body,
            kind=kind,
            reply_deadline=reply_deadline,
            sender=_identifiers(org),
            receiver=_identifiers(receiver),
            conversation_id=conversation_id,
            message_id=message_id,
            bundle_id=bundle_id,
            sent_at=now,
        )
        envelope = await seal_for(
            conn,
            gw.keyring,
            signer_org_id=gw.settings.gateway_org_id,
            sender_org_id=org.id,
            receiver_org_id=receiver.id,
            message_type=MessageType.ATTEST_REQUEST,
            message_id=message_id,
            bundle_id=bundle_id,
            conversation_id=conversation_id,
            plaintext=(plaintext := orjson.dumps(bundle)),
            now=now,
        )
        conv = Conversation(
            id=conversation_id,
            jobcenter_org_id=org.id,
            receiver_org_id=receiver.id,
            request_message_id=message_id,
            attest_type=kind.code,
            case_kind=body.case_kind.value,
            caseworker_ref=body.caseworker_ref,
            municipality=body.municipality,
            region_code=municipalities()[body.municipality].region_code,
            case_ref=pseudonyms.case_ref(body.citizen_cpr, gw.pseudonym_key),
            psychiatric_course=body.psychiatric_course,
            first_day_of_absence=body.first_day_of_absence,
            reply_deadline=reply_deadline,
            created_at=now,
        )
        sealed = await pseudonym_store.seal_for_gateway(
            conn,
            gw.keyring,
            gw.settings.gateway_org_id,
            body.citizen_cpr,
            context=pseudonyms.conversation_context(conversation_id),
            now=now,
        )  # the CPR number only as ciphertext, to re-key the pseudonym from
        copy = await sent_copy(conn, gw, plaintext=plaintext, envelope=envelope, now=now)
    accepted = AttestRequestAccepted(
        conversation_id=conversation_id,
        message_id=message_id,
        status_url=status_url(conversation_id),
        reply_deadline=reply_deadline,
    )
    # The rows go as parameters of statements built once, not per request, parents first
    # (docs/decisions/0004-set-based-batch-writes.md).
    writes: list[Write] = [
        (_INSERT_CONVERSATION, _as_dict(conv) | {"citizen_sealed": sealed}),
    ]
    if idempotency_key is not None:
        writes.append(
            (
                _INSERT_IDEMPOTENCY_KEY,
                {
                    "org_id": org.id,
                    "key": idempotency_key,
                    "fingerprint": fp,
                    "conversation_id": conversation_id,
                    "response": accepted.model_dump_json(),
                    "created_at": now,
                },
            )
        )
    writes.append(copy)
    writes += first_stage_writes(
        gw.topics,
        conv,
        Stage.SUBMITTED,
        message_id=message_id,
        message_type=MessageType.ATTEST_REQUEST,
        at=now,
        envelope=envelope,
    )
    try:
        await gw.writes.run(writes)
    except sa.exc.IntegrityError:
        if idempotency_key is None:
            raise
        # The same key in a request accepted at the same moment: answer as its replay.
        async with gw.engine.connect() as conn:
            replay = await _replay_idempotent(await autocommit(conn), org, idempotency_key, fp)
        if replay is None:
            raise
        return replay, False
    gw.relay.wake()
    log.info(
        "jobcenter.request_accepted",
        conversation_id=conversation_id,
        attest_type=kind.code,
        receiver=receiver.id,
    )
    return accepted, True


def _as_dict(conv: Conversation) -> dict[str, object]:
    return {f: getattr(conv, f) for f in conv.__dataclass_fields__}


async def _own_conversation(conn: AsyncConnection, org: Organisation, cid: str) -> Conversation:
    conv = await load_conversation(conn, cid)
    if conv is None or conv.jobcenter_org_id != org.id:
        raise Unknown(ErrorCode.NOT_FOUND, "no such conversation")
    return conv


async def conversation_status(gw: Gateway, org: Organisation, cid: str) -> ConversationStatus:
    async with gw.engine.connect() as conn:
        conv = await _own_conversation(conn, org, cid)
        rows = await stages_of(conn, cid)
        receiver = await directory.org_by_id(conn, conv.receiver_org_id)
    assert receiver is not None
    timeline = [
        TimelineEntry(
            stage=Stage(r.stage), at=aware(r.at), message_id=r.message_id, detail=r.detail
        )
        for r in rows
    ]
    timeline.sort(key=lambda e: (e.at, STAGE_ORDER.index(e.stage)))
    reached = {e.stage: e.at for e in timeline}
    current = current_stage([(e.stage, e.at) for e in timeline])
    return ConversationStatus(
        conversation_id=conv.id,
        attest_type=conv.attest_type,
        case_kind=conv.case_kind,  # type: ignore[arg-type]
        caseworker_ref=conv.caseworker_ref,
        receiver=OrganisationSummary(
            name=receiver.name, sor=receiver.sor, gln=receiver.gln, ydernummer=receiver.ydernummer
        ),
        reply_deadline=conv.reply_deadline,
        stage=current,
        stages=reached,
        timeline=timeline,
    )


async def read_inbox(gw: Gateway, org: Organisation, *, limit: int, source: str) -> Inbox:
    """The attest replies waiting for this job centre, opened with its custodial key. The
    opening and the handing out are audit entries, in the same transaction.

    A reply that cannot be opened or read does not fail the read: it is marked unreadable
    (with its error code, in the same transaction), named in `unreadable`, and offered after
    every readable one, so that it never holds the others back. Each read tries it again: once
    the cause is mended (the custodial key loaded, say) it is handed out like any other."""
    now = gw.clock.now()
    items: list[InboxItem] = []
    unreadable: list[UnreadableReply] = []
    reads: list[audit.AuditEvent] = []
    marks: dict[str, str | None] = {}  # message id → new unreadable reason (None: readable)
    fetched: list[Any] = []
    async with gw.engine.begin() as conn:
        rows = await _waiting_replies(conn, org, limit)
        convs = await conversations_by_id(conn, [r.conversation_id for r in rows])
        for row in rows:
            conv = convs[row.conversation_id]
            try:
                bundle, opened = _open_bundle(gw, org, row, source=source, at=now, reason="inbox")
                info = read_message(bundle)
            except (GatewayError, ValueError) as exc:
                code = _unreadable_code(exc)
                if row.unreadable_reason != code:
                    marks[row.message_id] = code
                unreadable.append(
                    UnreadableReply(
                        message_id=row.message_id,
                        conversation_id=conv.id,
                        caseworker_ref=conv.caseworker_ref,
                        received_at=aware(row.delivered_at),
                        code=code,
                    )
                )
                continue
            if row.unreadable_at is not None:
                marks[row.message_id] = None
            fetched.append(row)
            reads += [
                opened,
                audit.AuditEvent(
                    actor=org.id,
                    action=audit.INBOX_FETCH,
                    source=source,
                    at=now,
                    subject_org=org.id,
                    message_id=row.message_id,
                    conversation_id=conv.id,
                ),
            ]
            items.append(
                inbox_item(
                    info,
                    conversation_id=conv.id,
                    caseworker_ref=conv.caseworker_ref,
                    attest_type=conv.attest_type,
                    received_at=aware(row.delivered_at),
                )
            )
        for message_id, reason in marks.items():
            await conn.execute(
                mailbox.update()
                .where(mailbox.c.message_id == message_id)
                .values(unreadable_at=now if reason else None, unreadable_reason=reason)
            )
        # A reply's first fetch is its conversation's `reply_fetched` stage (whole read at once).
        first = await mark_fetched(
            conn, [r.message_id for r in fetched if r.fetched_at is None], now
        )
        await record_stages(
            conn,
            gw.topics,
            [
                StageRecord(
                    convs[r.conversation_id],
                    Stage.REPLY_FETCHED,
                    r.message_id,
                    MessageType.ATTEST_REPLY,
                    now,
                )
                for r in fetched
                if r.message_id in first
            ],
        )
        await audit.record_many(conn, gw.topics, reads)  # last: it holds the chain's lock
    for message_id, reason in marks.items():
        if reason is not None:
            metrics.unreadable_reply(reason)
            log.warning("jobcenter.reply_unreadable", message_id=message_id, code=reason)
    log.info("jobcenter.inbox_read", count=len(items), unreadable=len(unreadable))
    return Inbox(items=items, unreadable=unreadable)


async def _waiting_replies(conn: AsyncConnection, org: Organisation, limit: int) -> list[Any]:
    """Up to `limit` replies waiting for `org`, oldest first: the readable ones, then those
    marked unreadable."""
    waiting = sa.select(mailbox).where(
        mailbox.c.receiver_org_id == org.id,
        mailbox.c.message_type == MessageType.ATTEST_REPLY.value,
        mailbox.c.collected_at.is_(None),
    )
    order = (mailbox.c.delivered_at, mailbox.c.message_id)
    rows = list(
        await conn.execute(
            waiting.where(mailbox.c.unreadable_at.is_(None)).order_by(*order).limit(limit)
        )
    )
    if len(rows) < limit:
        rows += await conn.execute(
            waiting.where(mailbox.c.unreadable_at.is_not(None))
            .order_by(*order)
            .limit(limit - len(rows))
        )
    return rows


def _unreadable_code(exc: Exception) -> ErrorCode:
    """The stable code of why a stored reply cannot be opened or read."""
    if isinstance(exc, GatewayError):  # a BundleError too
        return exc.code
    if isinstance(exc, pydantic.ValidationError):
        return ErrorCode.INVALID_ENVELOPE
    return ErrorCode.INVALID_BUNDLE  # the opened plaintext is not JSON


def _open_bundle(
    gw: Gateway, org: Organisation, row: Any, *, source: str, at: dt.datetime, reason: str
) -> tuple[Bundle, audit.AuditEvent]:
    """Open a job centre's mail (a mailbox row) with its custodial key, held by the gateway.
    Returns the Bundle and the audit entry of the opening, for the caller's transaction."""
    envelope = SealedEnvelope.from_json(row.envelope)
    key = gw.keyring.hpke_key(envelope.header.recipient_key_id)
    if key is None:
        raise InvalidInput(ErrorCode.UNKNOWN_KEY, "the gateway does not hold this job centre's key")
    bundle = parse_bundle(orjson.loads(open_envelope(envelope, key)))
    opened = audit.AuditEvent(
        actor=gw.settings.gateway_org_id,
        action=audit.ENVELOPE_OPEN,
        source=source,
        at=at,
        subject_org=org.id,
        message_id=envelope.header.message_id,
        conversation_id=envelope.header.conversation_id,
        detail={"key_id": envelope.header.recipient_key_id, "for": reason},
    )
    return bundle, opened


async def acknowledge_reply(
    gw: Gateway, org: Organisation, message_id: str, *, source: str
) -> bool:
    """Mark a reply as received and send the MedCom acknowledgement (ok) to its sender
    (the gateway opens the reply to answer it: an audit entry).

    Idempotent: acknowledging twice changes nothing the second time (returns False).
    """
    gw.relay.admit()
    now = gw.clock.now()
    async with gw.engine.begin() as conn:
        row = (
            await conn.execute(
                sa.select(mailbox).where(
                    mailbox.c.message_id == message_id,
                    mailbox.c.receiver_org_id == org.id,
                    mailbox.c.message_type == MessageType.ATTEST_REPLY.value,
                )
            )
        ).first()
        if row is None:
            raise Unknown(ErrorCode.NOT_FOUND, "no such message in this inbox")
        if row.collected_at is not None:
            return False
        conv = await load_conversation(conn, row.conversation_id)
        assert conv is not None
        reply, opened = _open_bundle(gw, org, row, source=source, at=now, reason="ack")
        ack_id, ack_bundle_id = str(uuid.uuid4()), str(uuid.uuid4())
        ack = build_acknowledgement(
            acked=reply, message_id=ack_id, bundle_id=ack_bundle_id, sent_at=now, code="ok"
        )
        sealed = await seal_for(
            conn,
            gw.keyring,
            signer_org_id=gw.settings.gateway_org_id,
            sender_org_id=org.id,
            receiver_org_id=row.sender_org_id,
            message_type=MessageType.ACKNOWLEDGEMENT,
            message_id=ack_id,
            bundle_id=ack_bundle_id,
            conversation_id=conv.id,
            plaintext=orjson.dumps(ack),
            now=now,
        )
        await conn.execute(
            mailbox.update().where(mailbox.c.message_id == message_id).values(collected_at=now)
        )
        await record_stage(
            conn,
            gw.topics,
            conv,
            Stage.REPLY_ACKNOWLEDGED,
            message_id=message_id,
            message_type=MessageType.ATTEST_REPLY,
            at=now,
            detail="ok",
            envelope=sealed,
        )
        await audit.record_many(conn, gw.topics, [opened])  # last: it holds the chain's lock
    gw.relay.wake()
    return True
