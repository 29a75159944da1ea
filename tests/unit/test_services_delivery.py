"""The delivery pipeline on the fake ports: an envelope checked against the directory goes
into its receiver's mailbox once; a resend replaces a waiting copy; a replay, a stranger's
envelope or a broken signature is refused; a batch delivers what the one-by-one path would
and leaves it the rest."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.errors import InvalidInput, Replay, Unavailable
from attest_gateway.services.delivery import (
    DeliveryHandler,
    check_envelope,
    deliver,
    deliver_many,
    parse_envelope,
)
from tests.support.fakes import FakeStore, FakeUnitOfWork
from tests.support.world import GATEWAY, GP, JC, PSY, World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


async def _request(world: World) -> SealedEnvelope:
    """A request as the gateway put it in the outbox (for PSY, signed by the gateway)."""
    accepted, _ = await world.request_attest()
    return world.request_in_outbox(accepted.conversation_id)


def _reply(world: World, request: SealedEnvelope, **header: Any) -> SealedEnvelope:
    fields: dict[str, Any] = {
        "message_id": str(uuid.uuid4()),
        "bundle_id": str(uuid.uuid4()),
        "conversation_id": request.header.conversation_id,
        "message_type": MessageType.ATTEST_REPLY,
        "sender": PSY,
        **header,
    }
    return world.sealed(b"{}", to=fields.pop("to", JC), by=fields.pop("by", PSY), **fields)


async def _deliver(world: World, envelope: SealedEnvelope) -> bool:
    async with world.store.transaction() as uow:
        await check_envelope(uow.directory, envelope, GATEWAY, world.clock.now())
        return await deliver(uow, envelope, world.clock.now())


def _delivered_outbox(world: World, message_id: str) -> list[bool]:
    return [
        r.delivered_at is not None for r in world.store.state.outbox if r.message_id == message_id
    ]


async def test_an_envelope_is_delivered_once(world: World) -> None:
    request = await _request(world)
    assert await _deliver(world, request)
    assert not await _deliver(world, request)  # Kafka redelivers: a silent no-op
    item = world.store.state.mailbox[request.header.message_id]
    assert (item.receiver_org_id, item.sender_org_id) == (PSY, JC)
    assert SealedEnvelope.from_json(item.envelope) == request
    assert _delivered_outbox(world, request.header.message_id) == [True]
    events = world.store.state.stage_events()
    assert [e.stage for e in events].count(Stage.IN_MAILBOX) == 1


async def test_a_resend_replaces_the_copy_not_yet_collected(world: World) -> None:
    request = await _request(world)
    reply = _reply(world, request)
    assert await _deliver(world, reply)
    resend = _reply(world, request, message_id=reply.header.message_id)
    assert not await _deliver(world, resend)
    item = world.store.state.mailbox[reply.header.message_id]
    assert SealedEnvelope.from_json(item.envelope).header.bundle_id == resend.header.bundle_id


async def test_a_known_message_id_on_another_message_is_a_replay(world: World) -> None:
    request = await _request(world)
    assert await _deliver(world, request)
    replay = _reply(world, request, message_id=request.header.message_id)
    with pytest.raises(Replay) as caught:
        await _deliver(world, replay)
    assert caught.value.code == "replayed-message-id"


async def test_ids_are_known_after_the_mailbox_entry_is_gone(world: World) -> None:
    """The seen ids outlive the mailbox entry (retention removes it first): the same message
    again is a no-op, another message under its MessageHeader.id or Bundle.id a replay, in
    the one-by-one path and the batch alike."""
    request = await _request(world)
    reply = _reply(world, request)
    assert await _deliver(world, reply)
    del world.store.state.mailbox[reply.header.message_id]  # pruned
    assert not await _deliver(world, reply)
    assert reply.header.message_id not in world.store.state.mailbox
    async with world.store.transaction() as uow:
        assert await deliver_many(uow, [reply], GATEWAY, world.clock.now()) == []
    for reused in (
        {"message_id": reply.header.message_id, "message_type": MessageType.ACKNOWLEDGEMENT},
        {"bundle_id": reply.header.bundle_id},
    ):
        with pytest.raises(Replay) as caught:
            await _deliver(world, _reply(world, request, **reused))
        assert caught.value.code == "replayed-message-id"
    assert reply.header.message_id not in world.store.state.mailbox


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ({"conversation_id": "no-such-conversation"}, "unknown-conversation"),
        ({"sender": GP, "by": GP}, "conversation-mismatch"),
        ({"signer": JC}, "unknown-key"),
        ({"sender": GP}, "signer-not-sender"),
    ],
)
async def test_envelopes_that_are_refused(world: World, header: dict[str, Any], code: str) -> None:
    request = await _request(world)
    signer = header.pop("signer", None)
    envelope = _reply(world, request, **header)
    if signer is not None:  # names a signer whose key it is not
        envelope = envelope.model_copy(
            update={"header": envelope.header.model_copy(update={"signer": signer})}
        )
    with pytest.raises(InvalidInput) as caught:
        await _deliver(world, envelope)
    assert caught.value.code == code
    assert envelope.header.message_id not in world.store.state.mailbox


async def test_the_directory_decides_who_may_receive_and_sign(world: World) -> None:
    request = await _request(world)
    now = world.clock.now()
    sealed_to_another = _reply(world, request, to=GP, receiver=JC)
    with pytest.raises(InvalidInput) as other_key:
        await check_envelope(world.directory, sealed_to_another, GATEWAY, now)
    assert other_key.value.code == "not-addressed-to-receiver"
    reply = _reply(world, request)
    world.directory.disable(PSY)  # the signing organisation
    with pytest.raises(InvalidInput) as disabled_signer:
        await check_envelope(world.directory, reply, GATEWAY, now)
    assert disabled_signer.value.code == "key-not-valid"
    world.directory.disable(JC)
    with pytest.raises(InvalidInput) as receiver:
        await check_envelope(world.directory, reply, GATEWAY, now)
    assert receiver.value.code == "unknown-receiver"


async def test_an_envelope_signed_with_a_revoked_key_is_refused(world: World) -> None:
    request = await _request(world)  # signed by the gateway
    world.directory.revoke(world.keys(GATEWAY).current_signing.key_id, world.clock.now())
    with pytest.raises(InvalidInput) as revoked:
        await check_envelope(world.directory, request, GATEWAY, world.clock.now())
    assert revoked.value.code == "key-not-valid"


async def test_a_broken_signature_is_refused(world: World) -> None:
    request = await _request(world)
    forged = request.model_copy(update={"signature": bytes(64)})
    with pytest.raises(InvalidInput) as caught:
        await _deliver(world, forged)
    assert caught.value.code == "signature-invalid"


def test_a_record_that_is_no_envelope_is_refused() -> None:
    for raw in (None, b"not json", b"{}"):
        with pytest.raises(InvalidInput) as caught:
            parse_envelope(raw)
        assert caught.value.code == "invalid-envelope"


async def test_a_batch_delivers_the_new_valid_envelopes_and_leaves_the_rest(
    world: World,
) -> None:
    first, second, third = [await _request(world) for _ in range(3)]
    assert await _deliver(world, third)  # already in the mailbox: left
    stranger = _reply(world, first, sender=GP, by=GP)  # refused: left
    world.store.busy.add(second.header.message_id)  # its record held elsewhere: left
    reply = _reply(world, first)
    async with world.store.transaction() as uow:
        delivered = await deliver_many(
            uow, [first, second, third, stranger, reply], GATEWAY, world.clock.now()
        )
    assert {e.header.message_id for e in delivered} == {
        first.header.message_id,
        reply.header.message_id,
    }
    mailbox = world.store.state.mailbox
    assert second.header.message_id not in mailbox
    assert stranger.header.message_id not in mailbox
    assert _delivered_outbox(world, first.header.message_id) == [True]
    assert _delivered_outbox(world, second.header.message_id) == [False]
    stages = [(e.conversation_id, e.stage) for e in world.store.state.stage_events()]
    assert (first.header.conversation_id, Stage.IN_MAILBOX) in stages
    assert (first.header.conversation_id, Stage.REPLY_IN_INBOX) in stages
    assert (second.header.conversation_id, Stage.IN_MAILBOX) not in stages


async def _refuse(world: World, ack: SealedEnvelope) -> None:
    """The `refused` stage the gateway records when the receiver sends a refusal."""
    async with world.store.transaction() as uow:
        conv = await uow.conversations.get(ack.header.conversation_id)
        assert conv is not None
        await uow.stages.record(
            conv,
            Stage.REFUSED,
            message_id=ack.header.message_id,
            message_type=MessageType.ACKNOWLEDGEMENT,
            at=world.clock.now(),
        )


@pytest.mark.parametrize("batch", [False, True], ids=["one-by-one", "batch"])
async def test_a_positive_acknowledgement_to_a_job_centre_is_delivered_collected(
    world: World, batch: bool
) -> None:
    """The job centre's inbox never hands out a positive acknowledgement; left waiting, each
    one would be passed over by every later inbox read. A refusal waits to be read."""
    positive, refusal = [await _request(world) for _ in range(2)]
    acks = [_reply(world, r, message_type=MessageType.ACKNOWLEDGEMENT) for r in (positive, refusal)]
    await _refuse(world, acks[1])
    if batch:
        async with world.store.transaction() as uow:
            assert len(await deliver_many(uow, acks, GATEWAY, world.clock.now())) == 2
    else:
        for ack in acks:
            assert await _deliver(world, ack)
    mailbox = world.store.state.mailbox
    assert mailbox[acks[0].header.message_id].collected_at == world.clock.now()
    assert mailbox[acks[1].header.message_id].collected_at is None
    async with world.store.transaction() as uow:
        waiting = await uow.mailbox.waiting_refusals(JC, 10)
    assert [i.message_id for i in waiting] == [acks[1].header.message_id]


async def test_an_acknowledgement_to_a_clinic_waits_to_be_collected(world: World) -> None:
    request = await _request(world)
    ack = world.sealed(
        b"{}",
        to=PSY,
        by=GATEWAY,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        conversation_id=request.header.conversation_id,
        message_type=MessageType.ACKNOWLEDGEMENT,
        sender=JC,
    )
    assert await _deliver(world, ack)
    assert world.store.state.mailbox[ack.header.message_id].collected_at is None


@dataclass(frozen=True)
class _Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None


def _records(*values: bytes | None) -> list[_Record]:
    return [_Record("medcom.messages", 0, n, v) for n, v in enumerate(values)]


async def test_the_handler_delivers_a_poll_and_leaves_the_rest_to_one_by_one(
    world: World,
) -> None:
    woken: list[int] = []  # the relay, told that stage events wait in the outbox
    handler = DeliveryHandler(
        world.store,
        GATEWAY,
        world.clock,
        transient=(ConnectionError,),
        wake=lambda: woken.append(1),
    )
    first, second = [await _request(world) for _ in range(2)]
    polled = _records(first.to_json(), b"not an envelope", second.to_json(), first.to_json())
    left = await handler.handle_batch(polled)
    assert [r.offset for r in left] == [1, 3]  # unreadable, and the batch's second of a message
    assert {first.header.message_id, second.header.message_id} <= set(world.store.state.mailbox)
    assert woken == [1]  # once for the batch
    await handler(left[1])  # one by one: a duplicate, a silent no-op
    assert woken == [1]  # nothing new delivered
    with pytest.raises(InvalidInput):
        await handler(left[0])
    third = await _request(world)
    await handler(_records(third.to_json())[0])
    assert woken == [1, 1]


class _Unavailable(FakeStore):
    """A store whose database does not answer: every unit of work fails to begin."""

    answers = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeUnitOfWork]:
        if not self.answers:
            raise ConnectionError("the database does not answer")
        yield FakeUnitOfWork(self.state, self.directory, self.busy)


async def test_a_store_that_does_not_answer_is_transient(world: World) -> None:
    request = await _request(world)
    store = _Unavailable(world.directory)
    handler = DeliveryHandler(store, GATEWAY, world.clock, transient=(ConnectionError,))
    [record] = _records(request.to_json())
    with pytest.raises(Unavailable) as batch:
        await handler.handle_batch([record])
    with pytest.raises(Unavailable) as alone:
        await handler(record)
    assert batch.value.code == alone.value.code == "database-unavailable"
