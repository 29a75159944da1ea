"""Job-centre use cases: request an attest, read its status, read and acknowledge replies.

Each function takes the ports it works through (the store, the relay, the key ring, the
clock: ports/store.py), the authenticated organisation and plain values, does its work in one
unit of work, and returns a contract model. Routers only parse, authorise and call one of
these.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from zoneinfo import ZoneInfo

import orjson
import pydantic
import structlog

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.jobcenter import (
    AttestRequestAccepted,
    AttestRequestIn,
    AttestTypeList,
    AttestTypeOut,
    ConsentIn,
    ConversationStatus,
    Inbox,
    InboxItem,
    OrganisationSummary,
    RefusedRequest,
    ReplyDeadlineOut,
    TimelineEntry,
    UnreadableReply,
)
from attest_gateway.contracts.stages import STAGE_ORDER, MessageType, Stage, current_stage
from attest_gateway.core import audit
from attest_gateway.core.actors import Actor, actor_detail
from attest_gateway.core.attests import CONSENT_BASIS, AttestType, reply_kind_of_detail
from attest_gateway.core.bounds import a_year_after
from attest_gateway.core.clock import Clock
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
from attest_gateway.crypto.sealing import KeyRing, fingerprint, open_envelope
from attest_gateway.medcom.build import build_acknowledgement
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import OrgIdentifiers, read_message
from attest_gateway.medcom.translate import inbox_item, request_bundle
from attest_gateway.observability import metrics
from attest_gateway.ports.records import (
    AcceptedRequest,
    Conversation,
    IdempotencyRecord,
    MailItem,
    StageRecord,
)
from attest_gateway.ports.sealing import seal_for, seal_for_gateway, sent_copy
from attest_gateway.ports.store import (
    Conversations,
    Directory,
    IdempotencyKeys,
    KeyTaken,
    Relay,
    Store,
    UnitOfWork,
)
from attest_gateway.services.lifecycle import action_entries

log = structlog.get_logger(__name__)

DANISH_TIME = ZoneInfo("Europe/Copenhagen")


def _identifiers(org: Organisation) -> OrgIdentifiers:
    return OrgIdentifiers(name=org.name, sor=org.sor, gln=org.gln)


def status_url(conversation_id: str) -> str:
    return f"/jobcenter/v1/attest-requests/{conversation_id}"


async def _resolve_receiver(directory: Directory, body: AttestRequestIn) -> Organisation:
    if body.receiver.sor is not None:
        receiver = await directory.org_by_sor(body.receiver.sor)
    else:
        assert body.receiver.ydernummer is not None
        receiver = await directory.org_by_ydernummer(body.receiver.ydernummer)
    if receiver is None or not receiver.enabled or receiver.role not in HEALTH_ROLES:
        raise InvalidInput(
            ErrorCode.UNKNOWN_RECEIVER, "no healthcare organisation has that identifier"
        )
    return receiver


def check_consent(kind: AttestType, consent: ConsentIn | None, today: dt.date) -> None:
    """The request's consent against its attest type: the citizen's consent (given, on a day
    not after today), or a legal basis the type allows asking under without consent."""
    if consent is None:
        allowed = f" or name its legal basis ({', '.join(sorted(kind.legal_bases))})"
        raise InvalidInput(
            ErrorCode.CONSENT_REQUIRED,
            f"{kind.code} needs the citizen's consent ({CONSENT_BASIS}): give consent.given "
            f"and consent.date{allowed if kind.legal_bases else ''}",
        )
    if consent.legal_basis is not None and consent.legal_basis not in kind.legal_bases:
        raise InvalidInput(
            ErrorCode.CONSENT_REQUIRED,
            f"{kind.code} cannot be asked for under that legal basis: it needs the citizen's "
            f"consent ({CONSENT_BASIS})"
            + (f" or one of: {', '.join(sorted(kind.legal_bases))}" if kind.legal_bases else ""),
        )
    if consent.date is not None and consent.date > today:
        raise InvalidInput(
            ErrorCode.CONSENT_REQUIRED, "the citizen's consent cannot be dated after today"
        )


def attest_types(catalogue: Mapping[str, AttestType]) -> AttestTypeList:
    """The LÆ catalogue as `GET /jobcenter/v1/attest-types` answers it."""
    return AttestTypeList(
        items=[
            AttestTypeOut(
                code=k.code,
                title=k.title,
                request_form=k.request_form,
                reply_form=k.reply_form,
                request_form_source=k.request_form_source,
                issuers=sorted(k.issuers),
                reply_deadline=ReplyDeadlineOut(
                    amount=k.reply_deadline.amount, unit=k.reply_deadline.unit
                ),
                consent_required=k.consent_required,
                legal_bases=sorted(k.legal_bases),
            )
            for k in sorted(catalogue.values(), key=lambda k: k.code)
        ]
    )


async def _replay_idempotent(
    keys: IdempotencyKeys, org: Organisation, key: str, fp: str
) -> AttestRequestAccepted | None:
    row = await keys.get(org.id, key)
    if row is None:
        return None
    if row.fingerprint != fp:
        raise Replay(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was used with a different request",
        )
    return AttestRequestAccepted.model_validate_json(row.response)


async def submit_attest_request(
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    body: AttestRequestIn,
    *,
    idempotency_key: str | None,
    catalogue: Mapping[str, AttestType],
    gateway_org_id: str,
    pseudonym_key: bytes,
    source: str = audit.SOURCE_GATEWAY,
    actor: Actor | None = None,
) -> tuple[AttestRequestAccepted, bool]:
    """Accept a request: translate, seal for the receiver, store with its outbox rows and its
    audit entry (`request.submit` by the job centre from `source`, naming the person acting).

    Returns the answer and whether it was created now (False: an idempotent replay).
    """
    relay.admit()
    if body.jobcenter_gln != org.gln or body.municipality != org.kommunekode:
        raise NotPermitted(
            ErrorCode.JOBCENTER_MISMATCH, "the job centre in the request is not the caller"
        )
    kind = catalogue.get(body.attest_type)
    if kind is None:
        raise InvalidInput(
            ErrorCode.UNKNOWN_ATTEST_TYPE, "the attest type is not in the LÆ catalogue"
        )
    now = clock.now()
    today = now.date()
    # The consent is dated in Denmark, where the day may have begun before it has in UTC.
    check_consent(kind, body.consent, now.astimezone(DANISH_TIME).date())
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
        orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS), pseudonym_key
    )

    # Reads first (no transaction of their own needed: the rows written below depend only on
    # what the directory said); the writes go through the group commit, together with those
    # of the requests accepted at the same time.
    async with store.reading() as uow:
        if idempotency_key is not None:
            replay = await _replay_idempotent(uow.idempotency, org, idempotency_key, fp)
            if replay is not None:
                return replay, False
        receiver = await _resolve_receiver(uow.directory, body)
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
            uow.directory,
            keyring,
            signer_org_id=gateway_org_id,
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
            case_ref=pseudonyms.case_ref(body.citizen_cpr, pseudonym_key),
            psychiatric_course=body.psychiatric_course,
            first_day_of_absence=body.first_day_of_absence,
            reply_deadline=reply_deadline,
            created_at=now,
        )
        sealed = await seal_for_gateway(
            uow.directory,
            keyring,
            gateway_org_id,
            body.citizen_cpr,
            context=pseudonyms.conversation_context(conversation_id),
            now=now,
        )  # the CPR number only as ciphertext, to re-key the pseudonym from
        copy = await sent_copy(
            uow.directory, keyring, gateway_org_id, plaintext=plaintext, envelope=envelope, now=now
        )
    accepted = AttestRequestAccepted(
        conversation_id=conversation_id,
        message_id=message_id,
        status_url=status_url(conversation_id),
        reply_deadline=reply_deadline,
    )
    idempotency = (
        None
        if idempotency_key is None
        else IdempotencyRecord(
            org_id=org.id,
            key=idempotency_key,
            fingerprint=fp,
            conversation_id=conversation_id,
            response=accepted.model_dump_json(),
            created_at=now,
        )
    )
    # Written through the group commit, together with the requests accepted at the same time.
    try:
        submitted = audit.AuditEvent(
            actor=org.id,
            action=audit.REQUEST_SUBMIT,
            source=source,
            at=now,
            subject_org=receiver.id,
            message_id=message_id,
            conversation_id=conversation_id,
            detail=actor_detail(actor) or None,
        )
        await store.accept_request(
            AcceptedRequest(
                conv, sealed, idempotency, envelope=envelope, sent_copy=copy, audit=submitted
            )
        )
    except KeyTaken as exc:
        assert idempotency_key is not None
        # The same key in a request accepted at the same moment: answer as its replay.
        async with store.reading() as uow:
            replay = await _replay_idempotent(uow.idempotency, org, idempotency_key, fp)
        if replay is None:
            raise exc.cause from None
        return replay, False
    relay.wake()
    log.info(
        "jobcenter.request_accepted",
        conversation_id=conversation_id,
        attest_type=kind.code,
        receiver=receiver.id,
    )
    return accepted, True


async def _own_conversation(
    conversations: Conversations, org: Organisation, cid: str
) -> Conversation:
    conv = await conversations.get(cid)
    if conv is None or conv.jobcenter_org_id != org.id:
        raise Unknown(ErrorCode.NOT_FOUND, "no such conversation")
    return conv


async def conversation_status(
    store: Store,
    org: Organisation,
    cid: str,
    catalogue: Mapping[str, AttestType] | None = None,
) -> ConversationStatus:
    async with store.reading() as uow:
        conv = await _own_conversation(uow.conversations, org, cid)
        rows = await uow.stages.timeline(cid)
        rows += action_entries(rows, await uow.actions.of(cid))
        receiver = await uow.directory.org_by_id(conv.receiver_org_id)
    assert receiver is not None
    timeline = [
        TimelineEntry(stage=Stage(r.stage), at=r.at, message_id=r.message_id, detail=r.detail)
        for r in rows
    ]
    timeline.sort(key=lambda e: (e.at, STAGE_ORDER.index(e.stage)))
    reached: dict[Stage, dt.datetime] = {}
    for e in timeline:
        reached.setdefault(e.stage, e.at)  # the first time each stage was reached
    current = current_stage([(e.stage, e.at) for e in timeline])
    kind = (catalogue or {}).get(conv.attest_type)
    replied = next((e for e in timeline if e.stage is Stage.REPLIED), None)
    return ConversationStatus(
        conversation_id=conv.id,
        attest_type=conv.attest_type,
        request_form=kind.request_form if kind is not None else request_form_of(conv.attest_type),
        reply_form=conv.attest_type,
        case_kind=conv.case_kind,  # type: ignore[arg-type]
        caseworker_ref=conv.caseworker_ref,
        receiver=OrganisationSummary(
            name=receiver.name, sor=receiver.sor, gln=receiver.gln, ydernummer=receiver.ydernummer
        ),
        reply_deadline=conv.reply_deadline,
        stage=current,
        stages=reached,
        timeline=timeline,
        reply_kind=None if replied is None else reply_kind_of_detail(replied.detail),
    )


def request_form_of(attest_type: str) -> str:
    """The request form of an attest type outside the catalogue, by the forms' numbering."""
    number = attest_type.removeprefix("LÆ ")
    return f"LÆ {int(number) - 4}" if number.isdigit() else attest_type


async def read_inbox(
    store: Store,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    *,
    limit: int,
    source: str,
    gateway_org_id: str,
    actor: Actor | None = None,
) -> Inbox:
    """The attest replies waiting for this job centre, opened with its custodial key. The
    openings and the handing out of a read are two audit entries listing the replies'
    message ids (`envelope.open`, `inbox.fetch`), in the same transaction.

    A reply that cannot be opened or read does not fail the read: it is marked unreadable
    (with its error code, in the same transaction), named in `unreadable`, and offered after
    every readable one, so that it never holds the others back. Each read tries it again: once
    the cause is mended (the custodial key loaded, say) it is handed out like any other."""
    items: list[InboxItem] = []
    unreadable: list[UnreadableReply] = []
    openings: list[audit.AuditEvent] = []
    marks: dict[str, str | None] = {}  # message id → new unreadable reason (None: readable)
    fetched: list[MailItem] = []
    async with store.transaction() as uow:
        rows = await uow.mailbox.waiting_replies(org.id, limit)
        # Taken after the replies were read (as the mailbox read does, services/health.py):
        # their `reply_fetched` is never stamped before their delivery committed.
        now = clock.now()
        convs = await uow.conversations.by_ids([r.conversation_id for r in rows])
        for row in rows:
            conv = convs[row.conversation_id]
            try:
                bundle, opened = _open_bundle(
                    keyring, gateway_org_id, org, row, source=source, at=now, reason="inbox"
                )
                info = read_message(bundle)
                item = inbox_item(
                    info,
                    conversation_id=conv.id,
                    caseworker_ref=conv.caseworker_ref,
                    attest_type=conv.attest_type,
                    received_at=row.delivered_at,
                )
            except (GatewayError, ValueError) as exc:
                code = _unreadable_code(exc)
                if row.unreadable_reason != code:
                    marks[row.message_id] = code
                unreadable.append(
                    UnreadableReply(
                        message_id=row.message_id,
                        conversation_id=conv.id,
                        caseworker_ref=conv.caseworker_ref,
                        received_at=row.delivered_at,
                        code=code,
                    )
                )
                continue
            if row.unreadable_at is not None:
                marks[row.message_id] = None
            fetched.append(row)
            openings.append(opened)
            items.append(item)
        refused, refusals = await _read_refusals(
            uow, keyring, gateway_org_id, org, limit=limit, source=source, at=now
        )
        openings += [o for _, o in refusals]
        unreadable += [u for u in refused if isinstance(u, UnreadableReply)]
        for message_id, reason in marks.items():
            await uow.mailbox.mark_unreadable(message_id, now, reason)
        # A reply's first fetch is its conversation's `reply_fetched` stage (whole read at once).
        first = await uow.mailbox.mark_fetched(
            [r.message_id for r in fetched if r.fetched_at is None], now
        )
        await uow.stages.record_many(
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
        # One entry for the openings and one for the handing out, each listing the replies.
        await uow.mailbox.mark_fetched(
            [r.message_id for r, _ in refusals if r.fetched_at is None], now
        )
        handed_out = [
            (r.message_id, r.conversation_id) for r in (*fetched, *(r for r, _ in refusals))
        ]
        reads = [
            *audit.read_entries(
                actor=gateway_org_id,
                action=audit.ENVELOPE_OPEN,
                source=source,
                at=now,
                subject_org=org.id,
                items=handed_out,
                detail={
                    "key_ids": " ".join(sorted({(o.detail or {})["key_id"] for o in openings})),
                    "for": "inbox",
                },
            ),
            *audit.read_entries(
                actor=org.id,
                action=audit.INBOX_FETCH,
                source=source,
                at=now,
                subject_org=org.id,
                items=handed_out,
                detail=actor_detail(actor),
            ),
        ]
        await uow.audit.record_many(reads)
    for message_id, reason in marks.items():
        if reason is not None:
            metrics.unreadable_reply(reason)
            log.warning("jobcenter.reply_unreadable", message_id=message_id, code=reason)
    log.info(
        "jobcenter.inbox_read",
        count=len(items),
        refused=len(refusals),
        unreadable=len(unreadable),
    )
    return Inbox(
        items=items,
        refused=[r for r in refused if isinstance(r, RefusedRequest)],
        unreadable=unreadable,
    )


async def _read_refusals(
    uow: UnitOfWork,
    keyring: KeyRing,
    gateway_org_id: str,
    org: Organisation,
    *,
    limit: int,
    source: str,
    at: dt.datetime,
) -> tuple[list[RefusedRequest | UnreadableReply], list[tuple[MailItem, audit.AuditEvent]]]:
    """The refusals waiting for the job centre (fatal-error acknowledgements of its
    requests), opened and read: the inbox's entries, and the rows handed out with the audit
    entry of each opening. One that cannot be opened is named as unreadable."""
    rows = await uow.mailbox.waiting_refusals(org.id, limit)
    convs = await uow.conversations.by_ids([r.conversation_id for r in rows])
    out: list[RefusedRequest | UnreadableReply] = []
    opened_rows: list[tuple[MailItem, audit.AuditEvent]] = []
    for row in rows:
        conv = convs[row.conversation_id]
        try:
            bundle, opened = _open_bundle(
                keyring, gateway_org_id, org, row, source=source, at=at, reason="inbox"
            )
            info = read_message(bundle)
        except (GatewayError, ValueError) as exc:
            out.append(
                UnreadableReply(
                    message_id=row.message_id,
                    conversation_id=conv.id,
                    caseworker_ref=conv.caseworker_ref,
                    received_at=row.delivered_at,
                    code=_unreadable_code(exc),
                )
            )
            continue
        opened_rows.append((row, opened))
        reason = "\n".join(d for d in info.diagnostics if d)
        out.append(
            RefusedRequest(
                message_id=row.message_id,
                conversation_id=conv.id,
                caseworker_ref=conv.caseworker_ref,
                attest_type=conv.attest_type,
                sender=OrganisationSummary(
                    name=info.sender.name or "", sor=info.sender.sor, gln=info.sender.gln
                ),
                received_at=row.delivered_at,
                code=info.issues[0] if info.issues else "fatal-error",
                reason=reason or None,
            )
        )
    return out, opened_rows


def _unreadable_code(exc: Exception) -> ErrorCode:
    """The stable code of why a stored reply cannot be opened or read."""
    if isinstance(exc, GatewayError):  # a BundleError too
        return exc.code
    if isinstance(exc, pydantic.ValidationError):
        return ErrorCode.INVALID_ENVELOPE
    return ErrorCode.INVALID_BUNDLE  # the opened plaintext is not JSON


def _open_bundle(
    keyring: KeyRing,
    gateway_org_id: str,
    org: Organisation,
    row: MailItem,
    *,
    source: str,
    at: dt.datetime,
    reason: str,
) -> tuple[Bundle, audit.AuditEvent]:
    """Open a job centre's mail (a mailbox entry) with its custodial key, held by the gateway.
    Returns the Bundle and the audit entry of the opening, for the caller's transaction."""
    envelope = SealedEnvelope.from_json(row.envelope)
    key = keyring.hpke_key(envelope.header.recipient_key_id)
    if key is None:
        raise InvalidInput(ErrorCode.UNKNOWN_KEY, "the gateway does not hold this job centre's key")
    bundle = parse_bundle(orjson.loads(open_envelope(envelope, key)))
    opened = audit.AuditEvent(
        actor=gateway_org_id,
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
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    message_id: str,
    *,
    source: str,
    gateway_org_id: str,
) -> bool:
    """Mark a reply as received and send the MedCom acknowledgement (ok) to its sender
    (the gateway opens the reply to answer it: an audit entry).

    Idempotent: acknowledging twice changes nothing the second time (returns False).
    """
    relay.admit()
    now = clock.now()
    async with store.transaction() as uow:
        row = await uow.mailbox.get(message_id)
        if await _is_refusal(uow, org, row):
            # A refusal is an acknowledgement, which is never acknowledged: only collected.
            assert row is not None
            return await uow.mailbox.collect(message_id, now, receiver_org_id=org.id)
        if (
            row is None
            or row.receiver_org_id != org.id
            or row.message_type != MessageType.ATTEST_REPLY.value
        ):
            raise Unknown(ErrorCode.NOT_FOUND, "no such message in this inbox")
        if row.collected_at is not None:
            return False
        conv = await uow.conversations.get(row.conversation_id)
        assert conv is not None
        reply, opened = _open_bundle(
            keyring, gateway_org_id, org, row, source=source, at=now, reason="ack"
        )
        ack_id, ack_bundle_id = str(uuid.uuid4()), str(uuid.uuid4())
        ack = build_acknowledgement(
            acked=reply, message_id=ack_id, bundle_id=ack_bundle_id, sent_at=now, code="ok"
        )
        sealed = await seal_for(
            uow.directory,
            keyring,
            signer_org_id=gateway_org_id,
            sender_org_id=org.id,
            receiver_org_id=row.sender_org_id,
            message_type=MessageType.ACKNOWLEDGEMENT,
            message_id=ack_id,
            bundle_id=ack_bundle_id,
            conversation_id=conv.id,
            plaintext=orjson.dumps(ack),
            now=now,
        )
        await uow.mailbox.collect(message_id, now)
        await uow.stages.record(
            conv,
            Stage.REPLY_ACKNOWLEDGED,
            message_id=message_id,
            message_type=MessageType.ATTEST_REPLY,
            at=now,
            detail="ok",
            envelope=sealed,
        )
        await uow.audit.record_many([opened])
    relay.wake()
    return True


async def _is_refusal(uow: UnitOfWork, org: Organisation, row: MailItem | None) -> bool:
    """Whether a mailbox entry is a refusal in this job centre's inbox (the message of its
    conversation's `refused` stage)."""
    if (
        row is None
        or row.receiver_org_id != org.id
        or row.message_type != MessageType.ACKNOWLEDGEMENT.value
    ):
        return False
    timeline = await uow.stages.timeline(row.conversation_id)
    return any(e.stage == Stage.REFUSED.value and e.message_id == row.message_id for e in timeline)
