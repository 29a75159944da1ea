"""The delivery consumer: `medcom.messages` record → verified envelope → receiver's mailbox.

Pipeline, each stage a small function: parse the envelope → check it against the
directory (receiver, recipient key, signer key, signature) → store it in the receiver's
mailbox (idempotent on the message id) and record the stage, in one transaction. Anything
that fails a check raises a gateway error that is not retryable (`EnvelopeRejected`,
`InvalidInput`, `Replay`) and goes to the dead-letter topic; a database error is
`Unavailable` and retried. The envelope is never opened here: the gateway delivers
ciphertext.

A message id names one message for good. The same envelope again (Kafka is at-least-once)
is a silent no-op, and a MedCom resend (same message id, sender, receiver, conversation and
type, new Bundle.id) replaces a copy not yet collected; any other envelope reusing a known
message id is a forged replay (`replayed-message-id`). The ids that reached a mailbox are
remembered beyond the mailbox row (`SeenIds`, pruned later than the mailbox): a message id
whose mailbox row was pruned is still a duplicate (a no-op) or a replay, and so is a Bundle.id
seen under another message id. An envelope must also travel between the two parties of the
conversation it names, in the direction its type allows (`conversation-mismatch`).

A job centre's inbox hands out its attest replies and refusals, never a positive
acknowledgement (its stage is the status the job centre sees). Such an acknowledgement is
delivered already collected (`_received_by_gateway`): kept, sealed, as the receiver's receipt
until retention removes it like any collected mail, and never left waiting where every inbox
read of that job centre would pass over it again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

import pydantic
import structlog

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core import trust
from attest_gateway.core.clock import Clock
from attest_gateway.core.errors import (
    ErrorCode,
    InvalidInput,
    Malformed,
    Replay,
    Unavailable,
)
from attest_gateway.crypto.sealing import decode_verify_key, verify
from attest_gateway.ports.records import Conversation, MailItem, SeenId, StageRecord
from attest_gateway.ports.store import Directory, Store, UnitOfWork

log = structlog.get_logger(__name__)

_DELIVERED_STAGE = {
    MessageType.ATTEST_REQUEST: Stage.IN_MAILBOX,
    MessageType.ATTEST_REPLY: Stage.REPLY_IN_INBOX,
}


def parse_envelope(raw: bytes | None) -> SealedEnvelope:
    if raw is None:
        raise Malformed(ErrorCode.INVALID_ENVELOPE, "the record has no value")
    try:
        return SealedEnvelope.from_json(raw)
    except pydantic.ValidationError as exc:
        raise Malformed(ErrorCode.INVALID_ENVELOPE, "the record is not a sealed envelope") from exc


async def check_envelope(
    directory: Directory, envelope: SealedEnvelope, gateway_org_id: str, now: dt.datetime
) -> None:
    """Everything that must hold before an envelope is delivered: the trust policy
    (core/trust.py); raises EnvelopeRejected."""
    await trust.check_envelope(
        envelope.header,
        directory,
        gateway_org_id=gateway_org_id,
        now=now,
        verify=lambda key: verify(envelope, decode_verify_key(key.public_key)),
    )


async def deliver(uow: UnitOfWork, envelope: SealedEnvelope, now: dt.datetime) -> bool:
    """Put the envelope in the receiver's mailbox. False if it was there already."""
    h = envelope.header
    conv = await uow.conversations.get(h.conversation_id)
    if conv is None:
        raise InvalidInput(
            ErrorCode.UNKNOWN_CONVERSATION, "the envelope names no known conversation"
        )
    if (h.sender, h.receiver) not in _parties(conv, h.message_type):
        raise InvalidInput(
            ErrorCode.CONVERSATION_MISMATCH,
            "the sender and receiver are not the conversation's parties",
        )
    seen = await uow.seen.find([h.message_id], [h.bundle_id])
    for entry in seen:
        if (reason := entry.conflict(envelope)) is not None:
            raise Replay(ErrorCode.REPLAYED_MESSAGE_ID, reason)
    if any(e.kind == "message" for e in seen) and await uow.mailbox.address(h.message_id) is None:
        # Delivered before, and its mailbox row pruned since: a late copy changes nothing.
        await uow.outbox.mark_delivered(h.message_id, now)
        return False
    received = await _received_by_gateway(uow, {conv.id: conv}, [envelope])
    is_new = await uow.mailbox.add(_mail_item(envelope, now, received))
    if not is_new:
        await _offer_resend(uow, envelope)
    await uow.seen.add(SeenId.of(envelope, now))
    await uow.outbox.mark_delivered(h.message_id, now)
    stage = _DELIVERED_STAGE.get(h.message_type)
    if is_new and stage is not None:
        await uow.stages.record(
            conv, stage, message_id=h.message_id, message_type=h.message_type, at=now
        )
    return is_new


async def deliver_many(
    uow: UnitOfWork,
    envelopes: Sequence[SealedEnvelope],
    gateway_org_id: str,
    now: dt.datetime,
) -> list[SealedEnvelope]:
    """`check_envelope` and `deliver` for many new envelopes in one unit of work, each step
    one call for the whole batch (the store makes each a single statement). Returns those
    delivered. It leaves alone (delivers nothing of) every envelope that fails a check, whose
    message id is in a mailbox already or was seen before (a redelivery, a resend or a
    replay), whose Bundle.id was seen before, that repeats a message id or Bundle.id of the
    batch, or whose outbox record another transaction holds: the one-by-one path decides
    those, with their reasons.

    It never waits for a record another transaction holds (`Outbox.claim_undelivered`): a
    relay marking records published holds them in its own order, and a wait here could close
    a cycle with it. It delivers in message-id order; stages are recorded in conversation
    order.
    """
    checked: list[SealedEnvelope] = []
    for envelope in envelopes:
        try:
            await check_envelope(uow.directory, envelope, gateway_org_id, now)
        except InvalidInput:
            continue
        checked.append(envelope)
    convs = await uow.conversations.by_ids(e.header.conversation_id for e in checked)
    candidates: dict[str, SealedEnvelope] = {}
    bundles: dict[str, int] = {}
    for envelope in checked:
        h = envelope.header
        conv = convs.get(h.conversation_id)
        if conv is None or (h.sender, h.receiver) not in _parties(conv, h.message_type):
            continue
        if candidates.setdefault(h.message_id, envelope) is envelope:
            bundles[h.bundle_id] = bundles.get(h.bundle_id, 0) + 1
    for message_id, envelope in list(candidates.items()):
        if bundles[envelope.header.bundle_id] > 1:
            del candidates[message_id]
    ids = sorted(candidates)
    if not ids:
        return []
    for message_id in await uow.mailbox.known(ids):
        del candidates[message_id]
    seen = await uow.seen.find(ids, sorted(candidates[i].header.bundle_id for i in candidates))
    seen_bundles = {e.id for e in seen if e.kind == "bundle"}
    for message_id in {e.id for e in seen if e.kind == "message"} & set(candidates):
        del candidates[message_id]
    for message_id, envelope in list(candidates.items()):
        if envelope.header.bundle_id in seen_bundles:
            del candidates[message_id]
    for message_id in await uow.outbox.claim_undelivered(sorted(candidates)):
        candidates.pop(message_id, None)  # another transaction holds its record: left
    if not candidates:
        return []
    received = await _received_by_gateway(uow, convs, candidates.values())
    mail = [_mail_item(candidates[i], now, received) for i in sorted(candidates)]
    inserted = await uow.mailbox.add_new(mail)
    # One inserted meanwhile by another transaction is not ours: left to the one-by-one path.
    delivered = [candidates[i] for i in sorted(inserted)]
    await uow.seen.add([entry for e in delivered for entry in SeenId.of(e, now)])
    await uow.outbox.mark_claimed_delivered(inserted, now)
    reached: list[StageRecord] = []
    for envelope in delivered:
        h = envelope.header
        stage = _DELIVERED_STAGE.get(h.message_type)
        if stage is not None:
            conv = convs[h.conversation_id]
            reached.append(StageRecord(conv, stage, h.message_id, h.message_type, now))
    await uow.stages.record_many(reached)
    return delivered


def _mail_item(envelope: SealedEnvelope, now: dt.datetime, received: set[str]) -> MailItem:
    item = MailItem.of(envelope, now)
    if envelope.header.message_id in received:
        return dataclasses.replace(item, collected_at=now)
    return item


async def _received_by_gateway(
    uow: UnitOfWork, convs: Mapping[str, Conversation], envelopes: Iterable[SealedEnvelope]
) -> set[str]:
    """The message ids of positive acknowledgements addressed to their conversation's job
    centre: nothing reads them from its mailbox (see the module's docstring). A refusal is
    the acknowledgement whose message id the conversation's `refused` stage names (recorded
    when the receiver sent it, before its envelope reached the topic)."""
    acks = {
        e.header.message_id: e.header.conversation_id
        for e in envelopes
        if e.header.message_type is MessageType.ACKNOWLEDGEMENT
        and e.header.receiver == convs[e.header.conversation_id].jobcenter_org_id
    }
    if not acks:
        return set()
    timelines = await uow.stages.timelines(sorted(set(acks.values())))
    refusals = {
        entry.message_id
        for timeline in timelines.values()
        for entry in timeline
        if entry.stage == Stage.REFUSED.value
    }
    return set(acks) - refusals


def _parties(conv: Conversation, message_type: MessageType) -> set[tuple[str, str]]:
    """The (sender, receiver) pairs a message of this type may have in this conversation."""
    to_clinic = (conv.jobcenter_org_id, conv.receiver_org_id)
    to_jobcenter = (conv.receiver_org_id, conv.jobcenter_org_id)
    if message_type is MessageType.ATTEST_REPLY:
        return {to_jobcenter}
    if message_type is MessageType.ACKNOWLEDGEMENT:
        return {to_clinic, to_jobcenter}
    return {to_clinic}  # requests and reminders


async def _offer_resend(uow: UnitOfWork, envelope: SealedEnvelope) -> None:
    """A resend (same MessageHeader.id, new Bundle.id) of a message the receiver has not yet
    collected replaces the waiting copy and is offered again; anything else with the same
    routing is a duplicate. A different message under a known message id is refused."""
    h = envelope.header
    row = await uow.mailbox.get(h.message_id)
    assert row is not None  # it was there when the caller tried to add it
    known = (row.sender_org_id, row.receiver_org_id, row.conversation_id, row.message_type)
    if known != (h.sender, h.receiver, h.conversation_id, h.message_type.value):
        raise Replay(
            ErrorCode.REPLAYED_MESSAGE_ID,
            "another message was already delivered under this message id",
        )
    if row.collected_at is not None:
        return
    if SealedEnvelope.from_json(row.envelope).header.bundle_id == h.bundle_id:
        return
    await uow.mailbox.replace_envelope(h.message_id, envelope.to_json())


class ConsumedRecord(Protocol):
    """What the handler reads of a consumed `medcom.messages` record."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


R = TypeVar("R", bound=ConsumedRecord)


class DeliveryHandler:
    """The delivery consumer's handler: records in, a poll at a time (`handle_batch`) or a
    record at a time. `transient`: the store's errors worth a retry (a database that does not
    answer); they become `Unavailable` (retried), a refusal is an error that is not retryable
    (the dead-letter topic). `wake`: called after messages were delivered (the outbox relay
    of the same process: the stage events just written, which the tracker and the webhook
    dispatcher read, are published now rather than at its next look)."""

    def __init__(
        self,
        store: Store,
        gateway_org_id: str,
        clock: Clock,
        *,
        transient: tuple[type[Exception], ...],
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._gateway_org_id = gateway_org_id
        self._clock = clock
        self._transient = transient
        self._wake = wake

    def _delivered(self) -> None:
        if self._wake is not None:
            self._wake()

    async def handle_batch(self, records: Sequence[R]) -> list[R]:
        """Deliver a poll's new, valid envelopes in one transaction (`deliver_many`); returns
        the records left to the one-by-one path (unreadable, refused, already delivered, or
        a second record of a message id in the batch)."""
        by_message: dict[str, R] = {}
        envelopes: list[SealedEnvelope] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value)
            except InvalidInput:
                continue
            if envelope.header.message_id not in by_message:
                by_message[envelope.header.message_id] = record
                envelopes.append(envelope)
        now = self._clock.now()
        try:
            async with self._store.transaction() as uow:
                delivered = await deliver_many(uow, envelopes, self._gateway_org_id, now)
        except self._transient as exc:
            raise Unavailable(ErrorCode.DATABASE_UNAVAILABLE, type(exc).__name__) from exc
        if delivered:  # one line for the batch, not one per message
            self._delivered()
            log.info(
                "delivery.delivered",
                count=len(delivered),
                message_ids=[e.header.message_id for e in delivered],
            )
        done = {_place(by_message[e.header.message_id]) for e in delivered}
        return [record for record in records if _place(record) not in done]

    async def __call__(self, record: ConsumedRecord) -> None:
        envelope = parse_envelope(record.value)
        now = self._clock.now()
        try:
            async with self._store.transaction() as uow:
                await check_envelope(uow.directory, envelope, self._gateway_org_id, now)
                is_new = await deliver(uow, envelope, now)
        except self._transient as exc:
            raise Unavailable(ErrorCode.DATABASE_UNAVAILABLE, type(exc).__name__) from exc
        h = envelope.header
        if is_new:
            self._delivered()
        log.info(
            "delivery.delivered" if is_new else "delivery.duplicate",
            message_id=h.message_id,
            conversation_id=h.conversation_id,
            message_type=h.message_type.value,
            receiver=h.receiver,
        )


def _place(record: ConsumedRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset
