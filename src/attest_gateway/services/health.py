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
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic
import structlog
from pydantic_core import PydanticCustomError

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core import audit, trust
from attest_gateway.core.actors import Actor, actor_detail
from attest_gateway.core.attests import ReplyKind
from attest_gateway.core.clock import Clock
from attest_gateway.core.directory import Organisation
from attest_gateway.core.errors import (
    EnvelopeRejected,
    ErrorCode,
    GatewayError,
    InvalidInput,
    Malformed,
    NotPermitted,
    Replay,
    Unknown,
)
from attest_gateway.core.identifiers import check_cpr
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import KeyRing, decode_verify_key, open_envelope, verify
from attest_gateway.medcom import fhir_xml
from attest_gateway.medcom.build import PDF_ONLY_TEXT, build_acknowledgement
from attest_gateway.medcom.codes import AUTHORISATION_ID_SYSTEM, REPLY_KIND_SYSTEM, ResponseCode
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.model import Bundle, OtherResource
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import MessageInfo, read_message
from attest_gateway.medcom.rules import check_attachments
from attest_gateway.ports.records import (
    Conversation,
    InboundRecord,
    MailItem,
    StageRecord,
    WaitingMail,
)
from attest_gateway.ports.sealing import seal_for
from attest_gateway.ports.store import Relay, Store, UnitOfWork

log = structlog.get_logger(__name__)

REFUSED_CODE = "fatal-error"  # the MedCom acknowledgement code that refuses a request

# The refusals of a readable message from the caller that are answered in MedCom too: a
# negative acknowledgement in the caller's mailbox, with the response code and the issue
# code (MedCom's acknowledgement error codes, or the HL7 ones its ValueSet allows). Not
# answered: what cannot be read or is not the caller's (authentication, the envelope's
# trust, an unparseable Bundle, a sender that is not the caller) and acknowledgements,
# which MedCom never acknowledges.
NEGATIVE_ACKS: dict[ErrorCode, tuple[ResponseCode, str]] = {
    ErrorCode.UNKNOWN_REQUEST: ("fatal-error", "MSG_NO_EXIST"),
    ErrorCode.MESSAGE_ID_CONFLICT: ("fatal-error", "MSG_DUPLICATE_ID"),
    ErrorCode.REPLAYED_MESSAGE_ID: ("fatal-error", "MSG_DUPLICATE_ID"),
    ErrorCode.UNSUPPORTED_MESSAGE: ("fatal-error", "MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE"),
    ErrorCode.RECEIVER_MISMATCH: ("fatal-error", "MSG_Receiver_Identifier_UNKNOWN"),
    ErrorCode.CONVERSATION_MISMATCH: ("fatal-error", "MSG_RESOURCE_ID_MISMATCH"),
    ErrorCode.PATIENT_MISMATCH: ("fatal-error", "MSG_RESOURCE_ID_MISMATCH"),
    ErrorCode.EMPTY_REPLY: ("fatal-error", "MSG_RESOURCE_REQUIRED"),
    ErrorCode.WRONG_REPLY_FORM: ("fatal-error", "MSG_NO_MATCH"),
    ErrorCode.INVALID_REPLY_KIND: ("fatal-error", "MSG_VALUESET_VALUE_UNKNOWN"),
    ErrorCode.UNSUPPORTED_ATTACHMENT_TYPE: ("fatal-error", "MSG_RESOURCE_NOT_ALLOWED"),
    ErrorCode.ATTACHMENT_WITHOUT_DATA: ("fatal-error", "MSG_RESOURCE_REQUIRED"),
    ErrorCode.ATTACHMENT_CONTENT_MISMATCH: ("fatal-error", "MSG_Datatype_Wrong"),
    ErrorCode.OUTBOX_FULL: ("transient-error", "MSG_Mailbox_Out_Of_Operation"),
}
_NACK_IDS = uuid.UUID("6f1d3c1e-2b8a-4f0e-9c55-5d7e0a4b9e21")  # namespace of the nacks' ids


#: A mailbox read's rows are read, and turned into its answer, this many at a time: between
#: two batches the event loop serves other requests. (A read of 200 sealed envelopes, about
#: 2 MB, was otherwise one stretch of the event loop that every other organisation's request
#: arriving meanwhile waited behind.) Each batch is a statement of its own, so a smaller batch
#: shortens the longest stretch and costs more in all: bench/mailbox_read.py measures both.
READ_BATCH = 100


def _mailbox_item(row: WaitingMail, envelope: Any) -> dict[str, Any]:
    return {
        "message_id": row.message_id,
        "conversation_id": row.conversation_id,
        "message_type": row.message_type,
        "delivered_at": row.delivered_at.isoformat(),
        "envelope": envelope,
    }


async def _read_waiting(
    store: Store,
    clock: Clock,
    org: Organisation,
    *,
    limit: int,
    source: str,
    actor: Actor | None,
    take: Callable[[Sequence[WaitingMail]], None],
) -> int:
    """A mailbox read: the waiting mail, oldest first, handed to `take` a batch at a time
    as it is read (`READ_BATCH`); the first fetch of each request recorded (its `fetched`
    stage) and the read audited as one entry listing the message ids, in the same
    transaction. Returns how many it handed out."""
    handed: list[tuple[str, str]] = []
    unfetched: list[WaitingMail] = []
    async with store.transaction() as uow:
        async for batch in uow.mailbox.waiting_batches(org.id, limit, READ_BATCH):
            take(batch)
            handed += [(r.message_id, r.conversation_id) for r in batch]
            unfetched += [r for r in batch if r.unfetched]
        # The read's time is taken after the mail was read, not before the transaction: a
        # read that waited for a connection would otherwise stamp its fetch before the
        # delivery of mail committed meanwhile (a timeline out of order).
        now = clock.now()
        # The first fetch of a request is its conversation's `fetched` stage: for the whole
        # read in a few statements, not a few per message.
        first = await uow.mailbox.mark_fetched([r.message_id for r in unfetched], now)
        requests = [
            r
            for r in unfetched
            if r.message_id in first and r.message_type == MessageType.ATTEST_REQUEST.value
        ]
        convs = await uow.conversations.by_ids([r.conversation_id for r in requests])
        await uow.stages.record_many(
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
        read = audit.read_entries(
            actor=org.id,
            action=audit.MAILBOX_FETCH,
            source=source,
            at=now,
            subject_org=org.id,
            items=handed,
            detail=actor_detail(actor),
        )
        await uow.audit.record_many(read)
    log.info("medcom.mailbox_read", count=len(handed))
    return len(handed)


async def read_mailbox(
    store: Store,
    clock: Clock,
    org: Organisation,
    *,
    limit: int,
    source: str,
    envelope: Callable[[bytes], Any] = orjson.loads,
    actor: Actor | None = None,
) -> list[dict[str, Any]]:
    """The sealed envelopes waiting for this organisation, oldest first, each as `envelope`
    makes it of its stored JSON (parsed by default). A read that hands out any is one audit
    entry (`mailbox.fetch`, from `source`, naming the person acting) listing their message
    ids, in the same transaction. (`read_mailbox_json`: the same read as the API's JSON.)"""
    out: list[dict[str, Any]] = []

    def take(batch: Sequence[WaitingMail]) -> None:
        out.extend(_mailbox_item(r, envelope(r.envelope)) for r in batch)

    await _read_waiting(store, clock, org, limit=limit, source=source, actor=actor, take=take)
    return out


@dataclass(frozen=True, slots=True)
class MailboxJson:
    """A mailbox read as `GET /medcom/v1/mailbox` answers it: `body` the JSON of
    `contracts.mailbox.Mailbox` (`{"items": [...]}`), `count` its items."""

    count: int
    body: bytes


async def read_mailbox_json(
    store: Store,
    clock: Clock,
    org: Organisation,
    *,
    limit: int,
    source: str,
    actor: Actor | None = None,
) -> MailboxJson:
    """`read_mailbox`, its answer written as JSON a batch at a time while it is read: each
    envelope goes in as stored (its bytes, not parsed and written again), so the bytes are
    those of `orjson.dumps({"items": read_mailbox(...)})`, without the read's Python objects
    at once or one long stretch of the event loop."""
    parts: list[bytes] = []

    def take(batch: Sequence[WaitingMail]) -> None:
        # A list's JSON without its brackets: the batch's items, comma-separated.
        parts.append(
            orjson.dumps([_mailbox_item(r, orjson.Fragment(r.envelope)) for r in batch])[1:-1]
        )

    count = await _read_waiting(
        store, clock, org, limit=limit, source=source, actor=actor, take=take
    )
    return MailboxJson(count, b'{"items":[' + b",".join(parts) + b"]}")


async def mark_collected(store: Store, clock: Clock, org: Organisation, message_id: str) -> bool:
    """The receiver has stored the message; it leaves the waiting list. Idempotent."""
    async with store.transaction() as uow:
        if await uow.mailbox.collect(message_id, clock.now(), receiver_org_id=org.id):
            return True
        item = await uow.mailbox.address(message_id)
    if item is None or item.receiver_org_id != org.id:
        raise Unknown(ErrorCode.NOT_FOUND, "no such message in this mailbox")
    return False


async def unwrap_submission(
    store: Store,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    body: object,
    *,
    gateway_org_id: str,
) -> object:
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
    async with store.reading() as uow:  # the trust policy (core/trust.py)
        await trust.check_envelope(
            h,
            uow.directory,
            gateway_org_id=gateway_org_id,
            now=clock.now(),
            verify=lambda vkey: verify(envelope, decode_verify_key(vkey.public_key)),
            submission=trust.Submission(org.id, lambda kid: keyring.hpke_key(kid) is not None),
        )
    key = keyring.hpke_key(h.recipient_key_id)
    assert key is not None  # the policy checked that the key ring holds it
    opened = open_envelope(envelope, key)
    async with store.transaction() as uow:  # an opening at the edge: audited before it is used
        opening = audit.AuditEvent(
            actor=gateway_org_id,
            action=audit.ENVELOPE_OPEN,
            source=audit.SOURCE_GATEWAY,
            at=clock.now(),
            subject_org=org.id,
            message_id=h.message_id,
            conversation_id=h.conversation_id,
            detail={"key_id": key.key_id, "purpose": "submission"},
        )
        await uow.audit.record_many([opening])
    data = bundle_of_plaintext(opened)
    _check_sealed_header(h, data)
    return data


def bundle_of_plaintext(plaintext: bytes) -> object:
    """The decoded FHIR JSON of an opened envelope: FHIR JSON, or FHIR XML for a sender whose
    systems speak XML (the first character tells)."""
    if plaintext.lstrip()[:1] == b"<":
        return fhir_xml.xml_to_json(plaintext)
    try:
        return orjson.loads(plaintext)
    except orjson.JSONDecodeError as exc:
        raise Malformed(
            ErrorCode.INVALID_BUNDLE, "the envelope holds neither FHIR JSON nor FHIR XML"
        ) from exc


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


def author_authorisations(bundle: Bundle) -> set[str]:
    """The autorisations-IDs the Bundle's Practitioners carry (MedCom: a qualification
    identifier of the Danish Patient Safety Authority's system): its authors' who are health
    professionals. A job centre's caseworker has none."""
    found: set[str] = set()
    for resource in bundle.resources(OtherResource):
        if resource.resourceType != "Practitioner":
            continue
        qualifications = (resource.model_extra or {}).get("qualification")
        for qualification in qualifications if isinstance(qualifications, list) else []:
            if not isinstance(qualification, dict):
                continue
            identifiers = qualification.get("identifier")
            for ident in identifiers if isinstance(identifiers, list) else []:
                if (
                    isinstance(ident, dict)
                    and ident.get("system") == AUTHORISATION_ID_SYSTEM
                    and isinstance(ident.get("value"), str)
                ):
                    found.add(ident["value"])
    return found


def _check_sender(info: MessageInfo, org: Organisation) -> None:
    if not (
        (info.sender.sor and info.sender.sor == org.sor)
        or (info.sender.gln and info.sender.gln == org.gln)
    ):
        raise NotPermitted(
            ErrorCode.SENDER_MISMATCH, "the Bundle's sender organisation is not the caller"
        )


async def _answered_conversation(
    uow: UnitOfWork, org: Organisation, request_id: str | None
) -> Conversation:
    conv = await uow.conversations.by_request(request_id) if request_id else None
    if conv is None or conv.receiver_org_id != org.id:
        # Same answer whether the request does not exist or is someone else's.
        raise _unknown_request()
    return conv


async def _revised_conversation(
    uow: UnitOfWork, org: Organisation, message_id: str | None
) -> Conversation | None:
    """The conversation of the message a reply revises, if the caller may answer it. MedCom
    lets a reply revise any earlier message of the conversation, so the message may be the
    request, another message delivered to the caller (a reminder, say), or an earlier reply
    of the caller's own (a reply to a reply)."""
    if not message_id:
        return None
    conv = await uow.conversations.by_request(message_id)
    if conv is None:
        item = await uow.mailbox.address(message_id)
        if item is not None and item.receiver_org_id == org.id:
            conv = await uow.conversations.get(item.conversation_id)
    if conv is None:
        for row in await uow.inbound.seen(message_id, message_id):
            if (
                row.message_id == message_id
                and row.sender_org_id == org.id
                and row.message_type == MessageType.ATTEST_REPLY.value
            ):
                conv = await uow.conversations.get(row.conversation_id)
                break
    return conv if conv is not None and conv.receiver_org_id == org.id else None


def _unknown_request() -> Unknown:
    return Unknown(
        ErrorCode.UNKNOWN_REQUEST, "no attest request with that MessageHeader id was sent to you"
    )


async def submit_message(
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    data: object,
    *,
    gateway_org_id: str,
    pseudonym_key: bytes,
    source: str = audit.SOURCE_GATEWAY,
    actor: Actor | None = None,
) -> tuple[dict[str, Any], bool]:
    """Accept an acknowledgement or an attest reply. Returns (answer, created now).

    Accepted, it is an audit entry (`message.submit` by the caller from `source`, naming the
    person acting and the autorisations-IDs of the Bundle's authors). The person's
    autorisations-ID, when given, must be one of the Bundle's authors' (`actor-mismatch`):
    the gateway vouches for neither, but it does not record a reply as written by one
    clinician and sent by another who claims to be its author.

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
    authors = author_authorisations(bundle)
    claimed = actor.authorisation_id if actor is not None else None
    if claimed is not None and authors and claimed not in authors:
        raise InvalidInput(
            ErrorCode.ACTOR_MISMATCH,
            "Attest-Actor-Authorisation is not the autorisations-ID of the Bundle's author",
        )
    submitted = {**actor_detail(actor)}
    if authors:
        submitted["author_authorisations"] = " ".join(sorted(authors))
    try:
        return await _accept(
            store, relay, keyring, clock, org, data, bundle, info,
            gateway_org_id=gateway_org_id, pseudonym_key=pseudonym_key,
            audited=(source, submitted),
        )  # fmt: skip
    except GatewayError as exc:
        if exc.code in NEGATIVE_ACKS and info.message_type != "acknowledgement":
            await _negative_ack(store, keyring, clock, org, bundle, info, exc, gateway_org_id)
        raise


async def _negative_ack(
    store: Store,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    bundle: Bundle,
    info: MessageInfo,
    refusal: GatewayError,
    gateway_org_id: str,
) -> None:
    """The MedCom answer to a refused message: an acknowledgement (`fatal-error`, or
    `transient-error` when a resend may succeed) with an OperationOutcome, sealed for the
    caller and put straight into its mailbox, in a transaction of its own (the refusal changes
    nothing else). Its ids derive from the refused message and the reason, so the same
    message refused again for the same reason adds nothing. If it cannot be made (no
    usable key, a Bundle without the Organizations to swap) the HTTP answer still says it."""
    code = refusal.code
    response_code, issue = NEGATIVE_ACKS[code]
    now = clock.now()
    ack_id = str(uuid.uuid5(_NACK_IDS, f"{info.message_id}|{code.value}"))
    bundle_id = str(uuid.uuid5(_NACK_IDS, f"{info.message_id}|{code.value}|bundle"))
    try:
        nack = build_acknowledgement(
            acked=bundle,
            message_id=ack_id,
            bundle_id=bundle_id,
            sent_at=now,
            code=response_code,
            error_code=issue,
            error_text=f"{code.value}: {refusal.detail}",
        )
        async with store.transaction() as uow:
            sealed = await seal_for(
                uow.directory,
                keyring,
                signer_org_id=gateway_org_id,
                sender_org_id=gateway_org_id,
                receiver_org_id=org.id,
                message_type=MessageType.ACKNOWLEDGEMENT,
                message_id=ack_id,
                bundle_id=bundle_id,
                conversation_id=(info.conversation_id or info.message_id)[:64],
                plaintext=orjson.dumps(nack),
                now=now,
            )
            await uow.mailbox.add(MailItem.of(sealed, now))
    except (GatewayError, ValueError, RuntimeError) as exc:
        log.warning("medcom.negative_ack_failed", refused=code.value, error=type(exc).__name__)
        return
    log.info("medcom.negative_ack", refused=code.value, response_code=response_code)


async def _accept(
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    data: object,
    bundle: Bundle,
    info: MessageInfo,
    *,
    gateway_org_id: str,
    pseudonym_key: bytes,
    audited: tuple[str, dict[str, str]],
) -> tuple[dict[str, Any], bool]:
    relay.admit()
    now = clock.now()
    async with store.transaction() as uow:
        seen = await uow.inbound.seen(info.message_id, info.bundle_id)
        target = await _target_conversation(uow, org, info) if seen else None
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
        if await uow.inbound.carried_before(info.message_id, info.bundle_id):
            # The delivery consumer would refuse it as a replay after the 202: say so now.
            raise Replay(
                ErrorCode.REPLAYED_MESSAGE_ID, "that message id belongs to another message"
            )
        if info.message_type == "acknowledgement":
            conv, message_type = await _accept_ack(
                uow, keyring, gateway_org_id, org, info, bundle_json=data, now=now
            )
        elif info.message_type == "attest-reply":
            conv, message_type = await _accept_reply(
                uow, keyring, gateway_org_id, pseudonym_key, org, info,
                bundle=bundle, bundle_json=data, now=now,
            )  # fmt: skip
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
        await uow.inbound.add(
            InboundRecord(
                message_id=info.message_id,
                bundle_id=info.bundle_id,
                sender_org_id=org.id,
                conversation_id=conv.id,
                message_type=message_type.value,
                response=orjson.dumps(answer).decode(),
                created_at=now,
            )
        )
        source, detail = audited
        await uow.audit.record_many(
            [
                audit.AuditEvent(
                    actor=org.id,
                    action=audit.MESSAGE_SUBMIT,
                    source=source,
                    at=now,
                    subject_org=conv.jobcenter_org_id,
                    message_id=info.message_id,
                    conversation_id=conv.id,
                    detail={**detail, "message_type": message_type.value},
                )
            ]
        )
    relay.wake()
    log.info("medcom.message_accepted", message_type=message_type.value, conversation_id=conv.id)
    return answer, True


async def _target_conversation(uow: UnitOfWork, org: Organisation, info: MessageInfo) -> str | None:
    """The conversation a submission answers, if the caller may answer it."""
    if info.message_type == "acknowledgement":
        reminder = await _reminder_to(uow, org, info.response_to)
        if reminder is not None:
            return reminder.id
    if info.message_type == "acknowledgement":
        request_id = info.response_to
        conv = await uow.conversations.by_request(request_id) if request_id else None
        return conv.id if conv is not None and conv.receiver_org_id == org.id else None
    revised = await _revised_conversation(uow, org, info.replied_to)
    return revised.id if revised is not None else None


async def _forward(
    uow: UnitOfWork,
    keyring: KeyRing,
    gateway_org_id: str,
    org: Organisation,
    conv: Conversation,
    info: MessageInfo,
    message_type: MessageType,
    plaintext: bytes,
    now: dt.datetime,
) -> None:
    sealed = await seal_for(
        uow.directory,
        keyring,
        signer_org_id=gateway_org_id,
        sender_org_id=org.id,
        receiver_org_id=conv.jobcenter_org_id,
        message_type=message_type,
        message_id=info.message_id,
        bundle_id=info.bundle_id,
        conversation_id=conv.id,
        plaintext=plaintext,
        now=now,
    )
    await uow.outbox.add_envelope(sealed, now)


async def _accept_ack(
    uow: UnitOfWork,
    keyring: KeyRing,
    gateway_org_id: str,
    org: Organisation,
    info: MessageInfo,
    *,
    bundle_json: object,
    now: dt.datetime,
) -> tuple[Conversation, MessageType]:
    reminder = await _reminder_to(uow, org, info.response_to)
    if reminder is not None:
        # Receivers acknowledge every message, reminders included. The job centre asked for the
        # attest, not for this reminder: the acknowledgement is kept, not forwarded or staged.
        assert info.response_to is not None
        await uow.mailbox.collect(info.response_to, now)
        return reminder, MessageType.ACKNOWLEDGEMENT
    conv = await _answered_conversation(uow, org, info.response_to)
    plaintext = orjson.dumps(bundle_json)
    await _forward(
        uow, keyring, gateway_org_id, org, conv, info, MessageType.ACKNOWLEDGEMENT, plaintext, now
    )
    await uow.mailbox.collect(conv.request_message_id, now)
    await uow.sent.acknowledge(conv.request_message_id, now)
    await uow.stages.record(
        conv,
        Stage.ACKNOWLEDGED,
        message_id=info.message_id,
        message_type=MessageType.ACKNOWLEDGEMENT,
        at=now,
        detail=info.response_code,
    )
    if info.response_code == REFUSED_CODE:
        # The receiver refuses the request: the conversation ends here (no reminder, no
        # resend), and the acknowledgement forwarded above is the refusal in the job centre's
        # inbox. The stage's detail is the MedCom issue code, never the free text.
        await uow.stages.record(
            conv,
            Stage.REFUSED,
            message_id=info.message_id,
            message_type=MessageType.ACKNOWLEDGEMENT,
            at=now,
            detail=(info.issues[0] if info.issues else REFUSED_CODE)[:200],
        )
    return conv, MessageType.ACKNOWLEDGEMENT


async def _reminder_to(
    uow: UnitOfWork, org: Organisation, message_id: str | None
) -> Conversation | None:
    """The conversation of reminder `message_id` if it was delivered to `org`."""
    if not message_id:
        return None
    item = await uow.mailbox.address(message_id)
    if (
        item is None
        or item.receiver_org_id != org.id
        or item.message_type != MessageType.ATTEST_REMINDER.value
    ):
        return None
    return await uow.conversations.get(item.conversation_id)


def _check_same_citizen(pseudonym_key: bytes, conv: Conversation, info: MessageInfo) -> None:
    """The reply's Patient must be the request's citizen: the case ref of its CPR number is
    the conversation's. The job centre's inbox carries no CPR number, so a caseworker could
    not notice an attest about someone else."""
    try:
        cpr = check_cpr(info.cpr or "")
    except PydanticCustomError:
        given = ""  # no CPR number at all, or not one: not the request's citizen
    else:
        given = pseudonyms.case_ref(cpr, pseudonym_key)
    if not hmac.compare_digest(given.encode("ascii"), conv.case_ref.encode("ascii")):
        raise InvalidInput(
            ErrorCode.PATIENT_MISMATCH,
            "the reply's Patient is not the citizen the request is about",
        )


async def _accept_reply(
    uow: UnitOfWork,
    keyring: KeyRing,
    gateway_org_id: str,
    pseudonym_key: bytes,
    org: Organisation,
    info: MessageInfo,
    *,
    bundle: Bundle,
    bundle_json: object,
    now: dt.datetime,
) -> tuple[Conversation, MessageType]:
    conv = await _revised_conversation(uow, org, info.replied_to)
    if conv is None:
        raise _unknown_request()
    jobcenter = await uow.directory.org_by_id(conv.jobcenter_org_id)
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
    _check_same_citizen(pseudonym_key, conv, info)
    await uow.conversations.lock(conv.id)  # against a cancellation at the same time
    if await uow.actions.get(conv.id, "cancel", "") is not None:
        raise Replay(ErrorCode.REQUEST_CANCELLED, "the job centre cancelled the request")
    try:
        check_attachments(bundle)
    except BundleError as exc:
        raise InvalidInput(exc.code, exc.detail) from exc
    if not info.texts and not info.attachments:
        raise InvalidInput(ErrorCode.EMPTY_REPLY, "an attest reply needs text or a PDF attachment")
    kind = check_reply_kind(conv, info)
    plaintext = orjson.dumps(bundle_json)
    await _forward(
        uow, keyring, gateway_org_id, org, conv, info, MessageType.ATTEST_REPLY, plaintext, now
    )
    await uow.stages.record(
        conv,
        Stage.REPLIED,
        message_id=info.message_id,
        message_type=MessageType.ATTEST_REPLY,
        at=now,
        # An answer without the attest says which (the tracker does not count it as one).
        detail=None if kind is ReplyKind.ATTEST else kind.value,
    )
    return conv, MessageType.ATTEST_REPLY


_LAE_CODE = re.compile(r"LÆ [0-9]{3}")


def check_reply_kind(conv: Conversation, info: MessageInfo) -> ReplyKind:
    """The reply's form against the request's pair, and its kind against what that kind
    needs. A reply names the attest type (its reply form) it answers on, if at all: it must
    be the one asked for. ``cannot-answer`` needs the clinician's own text; ``wrong-form``
    may suggest another LÆ form."""
    if info.attest_type is not None and info.attest_type != conv.attest_type:
        raise InvalidInput(
            ErrorCode.WRONG_REPLY_FORM,
            f"the reply is on {info.attest_type[:20]}, the request asked for {conv.attest_type}",
        )
    known = {k.value: k for k in ReplyKind}
    kind = known.get(ReplyKind.ATTEST.value if info.reply_kind is None else info.reply_kind)
    if kind is None:
        raise InvalidInput(
            ErrorCode.INVALID_REPLY_KIND,
            f"the reply kind is none of {', '.join(known)} ({REPLY_KIND_SYSTEM})",
        )
    own = [t for t in info.new_texts if t.strip() and t != PDF_ONLY_TEXT]
    if kind is ReplyKind.CANNOT_ANSWER and not own:
        raise InvalidInput(
            ErrorCode.INVALID_REPLY_KIND, "a cannot-answer reply needs a text saying why"
        )
    suggested = info.suggested_attest_type
    if suggested is not None and (
        kind is not ReplyKind.WRONG_FORM
        or not _LAE_CODE.fullmatch(suggested)
        or suggested == conv.attest_type
    ):
        raise InvalidInput(
            ErrorCode.INVALID_REPLY_KIND,
            "only a wrong-form reply suggests an attest type: an LÆ form other than the one "
            "asked for",
        )
    return kind
