"""The delivery consumer: `medcom.messages` record → verified envelope → receiver's mailbox.

Pipeline, each stage a small function: parse the envelope → check it against the trust
policy (core/trust.py: receiver, recipient key, signer key, signature) → store it in the
receiver's mailbox (idempotent on the message id) and record the stage, in one transaction.
Anything that fails a check raises an input error (`EnvelopeRejected`, `Malformed` …) and goes
to the dead-letter topic; a database error is `Unavailable` and retried. The envelope is never
opened here: the gateway delivers ciphertext.

A message id names one message for good. The same envelope again (Kafka is at-least-once)
is a silent no-op, and a MedCom resend (same message id, sender, receiver, conversation and
type, new Bundle.id) replaces a copy not yet collected; any other envelope reusing a known
message id is a forged replay (`replayed-message-id`). An envelope must also travel between
the two parties of the conversation it names, in the direction its type allows
(`conversation-mismatch`).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import pydantic
import sqlalchemy as sa
import structlog
from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.engine import STORE_ERRORS, dialect_insert, insert_ignore, one_of
from attest_gateway.infra.db.tables import mailbox, outbox
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.services.messaging import (
    Conversation,
    StageRecord,
    conversations_by_id,
    load_conversation,
    record_stage,
    record_stages,
)

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
    conn: AsyncConnection, envelope: SealedEnvelope, gateway_org_id: str, now: dt.datetime
) -> None:
    """Everything that must hold before an envelope is delivered: the trust policy
    (core/trust.py); raises EnvelopeRejected."""
    await trust.check_envelope(
        envelope.header,
        directory.TrustLookups(conn),
        gateway_org_id=gateway_org_id,
        now=now,
        verify=lambda key: verify(envelope, decode_verify_key(key.public_key)),
    )


async def deliver(
    conn: AsyncConnection, topics: Topics, envelope: SealedEnvelope, now: dt.datetime
) -> bool:
    """Put the envelope in the receiver's mailbox. False if it was there already."""
    h = envelope.header
    conv = await load_conversation(conn, h.conversation_id)
    if conv is None:
        raise InvalidInput(
            ErrorCode.UNKNOWN_CONVERSATION, "the envelope names no known conversation"
        )
    if (h.sender, h.receiver) not in _parties(conv, h.message_type):
        raise InvalidInput(
            ErrorCode.CONVERSATION_MISMATCH,
            "the sender and receiver are not the conversation's parties",
        )
    is_new = await insert_ignore(conn, mailbox, _mailbox_row(envelope, now))
    if not is_new:
        await _offer_resend(conn, envelope)
    await conn.execute(
        outbox.update()
        .where(outbox.c.message_id == h.message_id, outbox.c.delivered_at.is_(None))
        .values(delivered_at=now)
    )
    stage = _DELIVERED_STAGE.get(h.message_type)
    if is_new and stage is not None:
        await record_stage(
            conn, topics, conv, stage, message_id=h.message_id, message_type=h.message_type, at=now
        )
    return is_new


@functools.cache
def _insert_new_mail(dialect: str) -> Any:
    """Mailbox rows unless their message id is there, returning those inserted. Built once;
    unordered RETURNING lets SQLAlchemy send the rows as one multi-row INSERT."""
    return dialect_insert(dialect, mailbox).on_conflict_do_nothing().returning(mailbox.c.message_id)


def _mailbox_row(envelope: SealedEnvelope, now: dt.datetime) -> dict[str, object]:
    h = envelope.header
    return {
        "message_id": h.message_id,
        "receiver_org_id": h.receiver,
        "sender_org_id": h.sender,
        "conversation_id": h.conversation_id,
        "message_type": h.message_type.value,
        "envelope": envelope.to_json(),
        "delivered_at": now,
    }


async def deliver_many(
    conn: AsyncConnection,
    topics: Topics,
    envelopes: Sequence[SealedEnvelope],
    gateway_org_id: str,
    now: dt.datetime,
) -> list[SealedEnvelope]:
    """`check_envelope` and `deliver` for many new envelopes in one transaction, in a fixed
    number of statements. Returns those delivered. It leaves alone (delivers nothing of) every
    envelope that fails a check, whose message id is in a mailbox already (a redelivery, a
    resend or a replay), that repeats a message id of the batch, or whose outbox row another
    transaction holds: the one-by-one path decides those, with their reasons.

    It never waits for a lock another transaction holds on an outbox row (SKIP LOCKED): a
    relay marking rows published locks them in its own order, and a wait here could close a
    cycle with it. It inserts in message-id order and records stages in conversation order.
    """
    checked: list[SealedEnvelope] = []
    for envelope in envelopes:
        try:
            await check_envelope(conn, envelope, gateway_org_id, now)
        except InvalidInput:
            continue
        checked.append(envelope)
    convs = await conversations_by_id(conn, (e.header.conversation_id for e in checked))
    candidates: dict[str, SealedEnvelope] = {}
    for envelope in checked:
        h = envelope.header
        conv = convs.get(h.conversation_id)
        if conv is None or (h.sender, h.receiver) not in _parties(conv, h.message_type):
            continue
        candidates.setdefault(h.message_id, envelope)
    ids = sorted(candidates)
    if not ids:
        return []
    dialect = conn.dialect.name
    in_mailbox = await conn.scalars(
        sa.select(mailbox.c.message_id).where(one_of(dialect, mailbox.c.message_id, ids))
    )
    for message_id in in_mailbox:
        del candidates[message_id]
    undelivered = (
        one_of(dialect, outbox.c.message_id, sorted(candidates)),
        outbox.c.delivered_at.is_(None),
    )
    rows = sa.select(outbox.c.id, outbox.c.message_id).where(*undelivered)
    locking = rows.order_by(outbox.c.id).with_for_update(skip_locked=True)
    held = {(row.id, row.message_id) for row in await conn.execute(locking)}
    for row in await conn.execute(rows):
        if (row.id, row.message_id) not in held:  # another transaction holds it: left
            candidates.pop(row.message_id, None)
    if not candidates:
        return []
    mail = [_mailbox_row(candidates[i], now) for i in sorted(candidates)]
    inserted = set(await conn.scalars(_insert_new_mail(conn.dialect.name), mail))
    # One inserted meanwhile by another transaction is not ours: left to the one-by-one path.
    delivered = [candidates[i] for i in sorted(inserted)]
    mine = sorted(row_id for row_id, message_id in held if message_id in inserted)
    if mine:
        mark = outbox.update().where(one_of(dialect, outbox.c.id, mine))
        await conn.execute(mark.values(delivered_at=now))
    reached: list[StageRecord] = []
    for envelope in delivered:
        h = envelope.header
        stage = _DELIVERED_STAGE.get(h.message_type)
        if stage is not None:
            conv = convs[h.conversation_id]
            reached.append(StageRecord(conv, stage, h.message_id, h.message_type, now))
    await record_stages(conn, topics, reached)
    return delivered


def _parties(conv: Conversation, message_type: MessageType) -> set[tuple[str, str]]:
    """The (sender, receiver) pairs a message of this type may have in this conversation."""
    to_clinic = (conv.jobcenter_org_id, conv.receiver_org_id)
    to_jobcenter = (conv.receiver_org_id, conv.jobcenter_org_id)
    if message_type is MessageType.ATTEST_REPLY:
        return {to_jobcenter}
    if message_type is MessageType.ACKNOWLEDGEMENT:
        return {to_clinic, to_jobcenter}
    return {to_clinic}  # requests and reminders


async def _offer_resend(conn: AsyncConnection, envelope: SealedEnvelope) -> None:
    """A resend (same MessageHeader.id, new Bundle.id) of a message the receiver has not yet
    collected replaces the waiting copy and is offered again; anything else with the same
    routing is a duplicate. A different message under a known message id is refused."""
    h = envelope.header
    row = (
        await conn.execute(
            sa.select(
                mailbox.c.envelope,
                mailbox.c.collected_at,
                mailbox.c.sender_org_id,
                mailbox.c.receiver_org_id,
                mailbox.c.conversation_id,
                mailbox.c.message_type,
            ).where(mailbox.c.message_id == h.message_id)
        )
    ).one()
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
    await conn.execute(
        mailbox.update()
        .where(mailbox.c.message_id == h.message_id)
        .values(envelope=envelope.to_json(), fetched_at=None)
    )


class DeliveryHandler:
    def __init__(
        self, engine: AsyncEngine, topics: Topics, gateway_org_id: str, *, clock: Clock
    ) -> None:
        self._engine = engine
        self._topics = topics
        self._gateway_org_id = gateway_org_id
        self._clock = clock

    async def handle_batch(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Deliver a poll's new, valid envelopes in one transaction (`deliver_many`); returns
        the records left to the one-by-one path (unreadable, refused, already delivered, or
        a second record of a message id in the batch)."""
        by_message: dict[str, ConsumerRecord[bytes, bytes]] = {}
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
            async with self._engine.begin() as conn:
                delivered = await deliver_many(
                    conn, self._topics, envelopes, self._gateway_org_id, now
                )
        except STORE_ERRORS as exc:
            raise Unavailable(ErrorCode.DATABASE_UNAVAILABLE, type(exc).__name__) from exc
        if delivered:  # one line per batch: docs/decisions/0006-one-log-line-per-batch.md
            log.info(
                "delivery.delivered",
                count=len(delivered),
                message_ids=[e.header.message_id for e in delivered],
            )
        done = {_place(by_message[e.header.message_id]) for e in delivered}
        return [record for record in records if _place(record) not in done]

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        envelope = parse_envelope(record.value)
        now = self._clock.now()
        try:
            async with self._engine.begin() as conn:
                await check_envelope(conn, envelope, self._gateway_org_id, now)
                is_new = await deliver(conn, self._topics, envelope, now)
        except STORE_ERRORS as exc:
            raise Unavailable(ErrorCode.DATABASE_UNAVAILABLE, type(exc).__name__) from exc
        h = envelope.header
        log.info(
            "delivery.delivered" if is_new else "delivery.duplicate",
            message_id=h.message_id,
            conversation_id=h.conversation_id,
            message_type=h.message_type.value,
            receiver=h.receiver,
        )


def _place(record: ConsumerRecord[bytes, bytes]) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset
