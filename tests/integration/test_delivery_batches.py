"""The delivery consumer's batch path (`DeliveryHandler.handle_batch`), on both databases.

A poll's new, valid envelopes are delivered in one transaction; everything else is left to
the one-by-one path, which delivers it or dead-letters it with its reason. Left alone, and
not delivered by the batch: an unreadable record, an envelope that fails a check, one that
names no conversation, a message already in a mailbox, a second record of a message id of
the batch, and (PostgreSQL) an envelope whose outbox row another transaction holds locked:
the batch never waits for that lock.

The same records through the consumer on Kafka, mixed with bad ones, are in
test_signatures.py; this calls the handler directly, so that what it leaves is visible.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import ConsumerRecord

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.errors import Unavailable
from attest_gateway.infra.db import tables
from attest_gateway.infra.db.engine import STORE_ERRORS, make_engine
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.services.delivery import DeliveryHandler
from tests.integration.conftest import Harness
from tests.integration.test_medcom_side import new_request, reply_to
from tests.integration.test_signatures import ack_of
from tests.support.envelopes import flip_byte, hpke_key_of, mailbox_row, make_envelope

JC, PSY = "jc-koebenhavn", "psyk-kbh"


def new_id() -> str:
    return str(uuid.uuid4())


def records(topic: str, values: Sequence[bytes]) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of one poll: one partition, consecutive offsets."""
    return [
        ConsumerRecord(topic, 0, offset, 0, 0, b"k", value, None, 1, len(value), ())
        for offset, value in enumerate(values)
    ]


async def published_outbox_row(h: Harness, envelope: SealedEnvelope) -> int:
    """An outbox row for the envelope as the relay leaves it once published (so the running
    relay does not send it again): the delivery must mark it delivered."""
    async with h.gw.engine.begin() as conn:
        result = await conn.execute(
            tables.outbox.insert()
            .values(
                topic=h.gw.topics.medcom_messages,
                key=envelope.header.conversation_id,
                value=envelope.to_json(),
                headers="[]",
                message_id=envelope.header.message_id,
                created_at=SystemClock().now(),
                published_at=SystemClock().now(),
            )
            .returning(tables.outbox.c.id)
        )
        return int(result.scalar_one())


async def outbox_id(h: Harness, envelope: SealedEnvelope) -> int:
    async with h.gw.engine.connect() as conn:
        query = sa.select(tables.outbox.c.id).where(
            tables.outbox.c.message_id == envelope.header.message_id
        )
        return int((await conn.execute(query)).scalar_one())


async def delivered_at(h: Harness, outbox_id: int) -> Any:
    async with h.gw.engine.connect() as conn:
        query = sa.select(tables.outbox.c.delivered_at).where(tables.outbox.c.id == outbox_id)
        return (await conn.execute(query)).scalar_one()


async def stage_rows(h: Harness, conversation_id: str) -> dict[str, str]:
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.stages).where(tables.stages.c.conversation_id == conversation_id)
        )
        return {row.stage: row.message_id for row in rows}


async def stage_events(h: Harness, conversation_id: str) -> list[dict[str, Any]]:
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.outbox.c.value).where(
                tables.outbox.c.topic == h.gw.topics.tracking,
                tables.outbox.c.key == conversation_id,
            )
        )
        return [orjson.loads(row.value) for row in rows]


@asynccontextmanager
async def row_locked(h: Harness, outbox_id: int) -> AsyncIterator[None]:
    """Another transaction holds the outbox row locked (as a relay marking it published
    would) while the block runs."""
    async with h.gw.engine.connect() as other:
        await other.begin()
        await other.execute(
            sa.select(tables.outbox.c.id).where(tables.outbox.c.id == outbox_id).with_for_update()
        )
        try:
            yield
        finally:
            await other.rollback()


async def test_a_batch_delivers_the_new_valid_envelopes_and_leaves_the_rest(
    harness: Harness,
) -> None:
    h = harness
    first, request, item = await new_request(h)  # jc-koebenhavn → psychiatry, delivered
    conversation = first["conversation_id"]
    psy_signing = h.client_keys(PSY).current_signing
    jc_key = await hpke_key_of(h, JC)

    def from_psy(message_type: MessageType, **header: Any) -> SealedEnvelope:
        """Psychiatry's reply or acknowledgement to the job centre (a real Bundle: the harness
        is shared, and the job centre's inbox reads open what is in it)."""
        message_id = header.pop("message_id", new_id())
        if message_type is MessageType.ATTEST_REPLY:
            bundle = reply_to(request, message_id=message_id)
        else:
            bundle = ack_of(request, message_id=message_id)
        fields = {
            "message_id": message_id,
            "bundle_id": bundle["id"],
            "conversation_id": conversation,
            "message_type": message_type,
            "sender": PSY,
            "receiver": JC,
            **header,
        }
        return make_envelope(
            orjson.dumps(bundle), recipient=jc_key, signer=psy_signing, signer_org=PSY, **fields
        )

    reply = from_psy(MessageType.ATTEST_REPLY)  # new, with an outbox row: delivered
    ack = from_psy(MessageType.ACKNOWLEDGEMENT)  # new, no outbox row (sent straight to Kafka)
    held = from_psy(MessageType.ACKNOWLEDGEMENT)  # its outbox row is locked elsewhere
    forged = from_psy(MessageType.ACKNOWLEDGEMENT)
    forged = forged.model_copy(update={"signature": flip_byte(forged.signature, 3)})
    stranger = from_psy(MessageType.ACKNOWLEDGEMENT, conversation_id=new_id())
    already = SealedEnvelope.model_validate(item["envelope"])  # the request, in a mailbox
    await published_outbox_row(h, reply)
    await published_outbox_row(h, held)

    values = [
        b"not an envelope",
        reply.to_json(),
        forged.to_json(),
        ack.to_json(),
        already.to_json(),
        stranger.to_json(),
        reply.to_json(),  # the same message again in the same poll
        held.to_json(),
    ]
    polled = records(h.gw.topics.medcom_messages, values)
    try:
        await delivered_as_expected(h, polled, reply, ack, held, forged, stranger, already)
    finally:  # the harness is shared: take these out of the job centre's inbox again
        async with h.gw.engine.begin() as conn:
            mine = [e.header.message_id for e in (reply, ack, held)]
            await conn.execute(tables.mailbox.delete().where(tables.mailbox.c.message_id.in_(mine)))


async def delivered_as_expected(
    h: Harness,
    polled: list[ConsumerRecord[bytes, bytes]],
    reply: SealedEnvelope,
    ack: SealedEnvelope,
    held: SealedEnvelope,
    forged: SealedEnvelope,
    stranger: SealedEnvelope,
    already: SealedEnvelope,
) -> None:
    conversation = reply.header.conversation_id
    reply_row, held_row = [await outbox_id(h, e) for e in (reply, held)]
    handler = DeliveryHandler(
        h.gw.store, h.settings.gateway_org_id, h.gw.clock, transient=STORE_ERRORS
    )
    if h.kind == "postgres":
        async with row_locked(h, held_row):
            left = await handler.handle_batch(polled)
    else:  # SQLite has no row locks: a writer holds the whole database, and the batch waits
        left = await handler.handle_batch(polled)

    delivered_offsets = {1, 3} if h.kind == "postgres" else {1, 3, 7}
    assert {r.offset for r in left} == set(range(len(polled))) - delivered_offsets

    for envelope in (reply, ack):
        row = await mailbox_row(h, envelope.header.message_id)
        assert row is not None
        assert (row.sender_org_id, row.receiver_org_id) == (PSY, JC)
        assert SealedEnvelope.from_json(row.envelope) == envelope
    assert await delivered_at(h, reply_row) is not None
    for envelope in (forged, stranger):
        assert await mailbox_row(h, envelope.header.message_id) is None
    if h.kind == "postgres":  # left whole: no mailbox row, its outbox row untouched
        assert await mailbox_row(h, held.header.message_id) is None
        assert await delivered_at(h, held_row) is None
    else:
        assert await delivered_at(h, held_row) is not None
    owner = await mailbox_row(h, already.header.message_id)
    assert SealedEnvelope.from_json(owner.envelope) == already  # unchanged

    # The reply reached the job centre's inbox: its stage, once, with one stage event.
    assert (await stage_rows(h, conversation))[Stage.REPLY_IN_INBOX.value] == (
        reply.header.message_id
    )
    events = [
        e for e in await stage_events(h, conversation) if e["stage"] == Stage.REPLY_IN_INBOX.value
    ]
    assert [e["message_id"] for e in events] == [reply.header.message_id]

    # What the batch left, the one-by-one path decides: the held envelope is delivered once
    # the lock is gone, a repeat of a delivered message changes nothing.
    if h.kind == "postgres":
        await handler(polled[7])
        assert await mailbox_row(h, held.header.message_id) is not None
        assert await delivered_at(h, held_row) is not None
    await handler(polled[6])
    again = await handler.handle_batch(polled[1:2] + polled[3:4])
    assert [r.offset for r in again] == [1, 3]  # both in a mailbox now: left, not redone
    events = [
        e for e in await stage_events(h, conversation) if e["stage"] == Stage.REPLY_IN_INBOX.value
    ]
    assert len(events) == 1


async def test_a_busy_pool_is_a_transient_error_not_a_dead_letter(harness: Harness) -> None:
    """Every connection of the handler's pool busy past the pool's timeout: both paths raise
    the retryable TransientError (the consumer tries the record again later), not an
    unexpected exception, which the consumer would dead-letter as a bug."""
    h = harness
    _first, _request, item = await new_request(h)
    envelope = SealedEnvelope.model_validate(item["envelope"])
    polled = records(h.gw.topics.medcom_messages, [envelope.to_json()])
    engine = make_engine(
        h.gw.engine.url.render_as_string(hide_password=False), pool_size=1, pool_timeout=0.1
    )
    store = SqlStore(engine, h.gw.topics)
    handler = DeliveryHandler(store, h.settings.gateway_org_id, h.gw.clock, transient=STORE_ERRORS)
    try:
        async with engine.connect() as held:
            await held.execute(sa.text("SELECT 1"))
            with pytest.raises(Unavailable) as batch:
                await handler.handle_batch(polled)
            with pytest.raises(Unavailable) as one:
                await handler(polled[0])
    finally:
        await engine.dispose()
    for raised in (batch.value, one.value):
        assert raised.retryable
        assert raised.code == "database-unavailable"
        assert isinstance(raised.__cause__, sa.exc.TimeoutError)
