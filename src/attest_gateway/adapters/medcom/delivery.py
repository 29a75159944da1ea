"""The delivery consumer: `medcom.messages` record → verified envelope → receiver's mailbox.

Pipeline, each stage a small function: parse the envelope → check it against the
directory (receiver, recipient key, signer key, signature) → store it in the receiver's
mailbox (idempotent on the message id) and record the stage, in one transaction. Anything
that fails a check raises `PermanentError` and goes to the dead-letter topic; a database
error is transient and retried. The envelope is never opened here: the gateway delivers
ciphertext.
"""

from __future__ import annotations

import datetime as dt

import pydantic
import sqlalchemy as sa
import structlog
from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.gateway import directory
from attest_gateway.gateway.bus import PermanentError, Topics, TransientError
from attest_gateway.gateway.crypto import utcnow, verify
from attest_gateway.gateway.errors import EnvelopeRejected
from attest_gateway.gateway.messaging import load_conversation, record_stage
from attest_gateway.gateway.store.db import insert_ignore
from attest_gateway.gateway.store.tables import mailbox, outbox
from attest_gateway.schemas.envelope import SealedEnvelope
from attest_gateway.schemas.events import MessageType, Stage

log = structlog.get_logger(__name__)

_DELIVERED_STAGE = {
    MessageType.ATTEST_REQUEST: Stage.IN_MAILBOX,
    MessageType.ATTEST_REPLY: Stage.REPLY_IN_INBOX,
}


def parse_envelope(raw: bytes | None) -> SealedEnvelope:
    if raw is None:
        raise PermanentError("invalid-envelope", "the record has no value")
    try:
        return SealedEnvelope.from_json(raw)
    except pydantic.ValidationError as exc:
        raise PermanentError("invalid-envelope", "the record is not a sealed envelope") from exc


async def check_envelope(
    conn: AsyncConnection, envelope: SealedEnvelope, gateway_org_id: str, now: dt.datetime
) -> None:
    """Everything that must hold before an envelope is delivered; raises PermanentError."""
    h = envelope.header
    receiver = await directory.org_by_id(conn, h.receiver)
    if receiver is None or not receiver.enabled:
        raise PermanentError("unknown-receiver", "the envelope's receiver is not in the directory")
    if await directory.hpke_key_owner(conn, h.recipient_key_id) != receiver.id:
        raise PermanentError("not-addressed-to-receiver", "sealed to a key the receiver lacks")
    key = await directory.signing_key(conn, h.signer_key_id)
    if key is None or key.org_id != h.signer:
        raise PermanentError("unknown-key", "the signer's key is not in the directory")
    if h.signer not in (h.sender, gateway_org_id):
        raise PermanentError("signer-not-sender", "only the sender or the gateway may sign")
    if not key.usable(now):
        raise PermanentError("key-not-valid", "the signing key is revoked or expired")
    try:
        verify(envelope, key.key())
    except EnvelopeRejected as exc:
        raise PermanentError(exc.code, exc.detail) from exc


async def deliver(
    conn: AsyncConnection, topics: Topics, envelope: SealedEnvelope, now: dt.datetime
) -> bool:
    """Put the envelope in the receiver's mailbox. False if it was there already."""
    h = envelope.header
    conv = await load_conversation(conn, h.conversation_id)
    if conv is None:
        raise PermanentError("unknown-conversation", "the envelope names no known conversation")
    is_new = await insert_ignore(
        conn,
        mailbox,
        {
            "message_id": h.message_id,
            "receiver_org_id": h.receiver,
            "sender_org_id": h.sender,
            "conversation_id": h.conversation_id,
            "message_type": h.message_type.value,
            "envelope": envelope.to_json(),
            "delivered_at": now,
        },
    )
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


async def _offer_resend(conn: AsyncConnection, envelope: SealedEnvelope) -> None:
    """A resend (same MessageHeader.id, new Bundle.id) of a message the receiver has not yet
    collected replaces the waiting copy and is offered again; anything else is a duplicate."""
    h = envelope.header
    row = (
        await conn.execute(
            sa.select(mailbox.c.envelope, mailbox.c.collected_at).where(
                mailbox.c.message_id == h.message_id
            )
        )
    ).one()
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
    def __init__(self, engine: AsyncEngine, topics: Topics, gateway_org_id: str) -> None:
        self._engine = engine
        self._topics = topics
        self._gateway_org_id = gateway_org_id

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        envelope = parse_envelope(record.value)
        h = envelope.header
        now = utcnow()
        try:
            async with self._engine.begin() as conn:
                await check_envelope(conn, envelope, self._gateway_org_id, now)
                is_new = await deliver(conn, self._topics, envelope, now)
        except sa.exc.DBAPIError as exc:
            raise TransientError("database-unavailable", type(exc).__name__) from exc
        log.info(
            "delivery.delivered" if is_new else "delivery.duplicate",
            message_id=h.message_id,
            conversation_id=h.conversation_id,
            message_type=h.message_type.value,
            receiver=h.receiver,
        )
