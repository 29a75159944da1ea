"""The health side's use cases on the fake ports: fetch the mailbox, mark a message collected,
unwrap a sealed submission, and submit an attest reply or an acknowledgement, with their
refusals (the MedCom duplicate rule included)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
import pytest

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core import audit
from attest_gateway.core.audit import AuditEvent
from attest_gateway.core.errors import (
    EnvelopeRejected,
    InvalidInput,
    Malformed,
    NotPermitted,
    Replay,
    Unknown,
)
from attest_gateway.medcom.model import Bundle
from attest_gateway.ports.records import MailItem
from attest_gateway.services import health
from tests.support.world import GATEWAY, GP, JC, PSY, World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


async def _delivered_request(world: World) -> tuple[str, Bundle]:
    """A request in the psychiatry unit's mailbox: (conversation id, the opened Bundle)."""
    accepted, _ = await world.request_attest()
    envelope = world.request_in_outbox(accepted.conversation_id)
    world.store.state.mailbox[accepted.message_id] = MailItem.of(envelope, world.clock.now())
    world.clock.advance(dt.timedelta(minutes=1))
    return accepted.conversation_id, world.opened(envelope, PSY)


def _reads(world: World) -> list[AuditEvent]:
    """The audit entries but those of the submissions (`request.submit`, `message.submit`)."""
    submissions = (audit.REQUEST_SUBMIT, audit.MESSAGE_SUBMIT)
    return [a for a in world.store.state.audit if a.action not in submissions]


def _stages(world: World) -> list[Stage]:
    return [e.stage for e in world.store.state.stage_events()]


def _of_type(world: World, message_type: MessageType) -> list[SealedEnvelope]:
    return [e for e in world.store.state.envelopes() if e.header.message_type is message_type]


async def test_the_mailbox_hands_out_sealed_mail_oldest_first_and_audits_it(
    world: World,
) -> None:
    first, _ = await _delivered_request(world)
    second, _ = await _delivered_request(world)
    items = await world.read_mailbox()
    assert [i["conversation_id"] for i in items] == [first, second]
    assert items[0]["envelope"]["header"]["receiver"] == PSY
    # one entry for the read, listing what it handed out
    [read] = _reads(world)
    assert read.action == audit.MAILBOX_FETCH
    assert read.detail is not None
    assert read.detail["message_ids"].split() == [i["message_id"] for i in items]
    assert read.detail["count"] == "2"
    assert _stages(world).count(Stage.FETCHED) == 2
    # fetched again (not yet collected): handed out again, no second stage
    assert len(await world.read_mailbox()) == 2
    assert _stages(world).count(Stage.FETCHED) == 2
    assert await world.read_mailbox(org=GP) == []
    assert len(await world.read_mailbox(limit=1)) == 1


async def test_a_collected_message_leaves_the_mailbox(world: World) -> None:
    await _delivered_request(world)
    mail = next(iter(world.store.state.mailbox))
    collect = health.mark_collected
    assert await collect(world.store, world.clock, world.orgs[PSY], mail)
    assert not await collect(world.store, world.clock, world.orgs[PSY], mail)
    assert await world.read_mailbox() == []
    with pytest.raises(Unknown):
        await collect(world.store, world.clock, world.orgs[GP], mail)
    with pytest.raises(Unknown):
        await collect(world.store, world.clock, world.orgs[PSY], "no-such-message")


async def test_a_reply_is_sealed_for_the_job_centre_and_remembered(world: World) -> None:
    conversation_id, request = await _delivered_request(world)
    reply = world.reply(request)
    answer, created = await world.submit(reply)
    assert created
    assert answer["conversation_id"] == conversation_id
    assert (answer["message_type"], answer["status"]) == ("attest-reply", "accepted")
    [sealed] = _of_type(world, MessageType.ATTEST_REPLY)
    assert (sealed.header.sender, sealed.header.receiver) == (PSY, JC)
    assert sealed.header.message_id == answer["message_id"]
    assert Stage.REPLIED in _stages(world)
    assert world.store.state.inbound[answer["message_id"]].sender_org_id == PSY
    # the same MessageHeader.id again, even with a new Bundle.id: the same answer, not resent
    again, created_again = await world.submit(world.reply(request, message_id=answer["message_id"]))
    assert (again, created_again) == (answer, False)
    assert len(_of_type(world, MessageType.ATTEST_REPLY)) == 1


async def test_a_known_bundle_id_under_a_new_message_id_is_a_conflict(world: World) -> None:
    _, request = await _delivered_request(world)
    answer, _ = await world.submit(world.reply(request))
    with pytest.raises(Replay) as caught:
        await world.submit(world.reply(request, bundle_id=answer["bundle_id"]))
    assert caught.value.code == "message-id-conflict"


async def test_a_message_id_the_gateway_carries_already_is_a_replay(world: World) -> None:
    conversation_id, request = await _delivered_request(world)
    request_id = world.store.state.conversations[conversation_id].request_message_id
    with pytest.raises(Replay) as caught:
        await world.submit(world.reply(request, message_id=request_id))
    assert caught.value.code == "replayed-message-id"


async def test_a_reply_about_another_citizen_is_refused(world: World) -> None:
    _, request = await _delivered_request(world)
    reply = world.reply(request)
    patient = next(
        e["resource"] for e in reply["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    patient["identifier"][0]["value"] = "1502857777"
    with pytest.raises(InvalidInput) as caught:
        await world.submit(reply)
    assert caught.value.code == "patient-mismatch"
    assert world.store.state.inbound == {}
    assert _of_type(world, MessageType.ATTEST_REPLY) == []


async def test_a_reply_from_someone_the_request_was_not_sent_to_is_refused(
    world: World,
) -> None:
    _, request = await _delivered_request(world)
    reply = world.reply(request)
    with pytest.raises(NotPermitted) as caught:  # the Bundle's sender is not the caller
        await world.submit(reply, org=GP)
    assert caught.value.code == "sender-mismatch"


async def test_a_reply_to_an_unknown_request_is_not_found(world: World) -> None:
    _, request = await _delivered_request(world)
    world.store.state.conversations.clear()
    with pytest.raises(Unknown) as caught:
        await world.submit(world.reply(request))
    assert caught.value.code == "unknown-request"


async def test_a_reply_without_text_or_attachment_is_refused(world: World) -> None:
    _, request = await _delivered_request(world)
    reply = world.reply(request)
    reply["entry"] = [
        e for e in reply["entry"] if e["resource"]["resourceType"] != "DocumentReference"
    ]
    for entry in reply["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Communication":
            resource["payload"] = [
                p for p in resource.get("payload", []) if "contentString" not in p
            ]
    with pytest.raises(InvalidInput) as caught:
        await world.submit(reply)
    assert caught.value.code == "empty-reply"


async def test_acknowledging_the_request_reaches_the_job_centre(world: World) -> None:
    conversation_id, request = await _delivered_request(world)
    conv = world.store.state.conversations[conversation_id]
    answer, created = await world.submit(world.ack(request))
    assert created
    assert answer["message_type"] == "acknowledgement"
    [ack] = _of_type(world, MessageType.ACKNOWLEDGEMENT)
    assert (ack.header.sender, ack.header.receiver) == (PSY, JC)
    state = world.store.state
    assert state.mailbox[conv.request_message_id].collected_at == world.clock.now()
    assert state.sent[conv.request_message_id][1] == world.clock.now()  # no resend now
    assert Stage.ACKNOWLEDGED in _stages(world)


async def test_acknowledging_a_reminder_is_kept_not_forwarded(world: World) -> None:
    conversation_id, request = await _delivered_request(world)
    reminder = world.sealed(
        b"{}",
        to=PSY,
        by=GATEWAY,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        conversation_id=conversation_id,
        message_type=MessageType.ATTEST_REMINDER,
        sender=JC,
    )
    world.store.state.mailbox[reminder.header.message_id] = MailItem.of(reminder, world.clock.now())
    ack = world.ack(request)
    header = next(e for e in ack["entry"] if e["resource"]["resourceType"] == "MessageHeader")
    header["resource"]["response"]["identifier"] = reminder.header.message_id
    answer, created = await world.submit(ack)
    assert created
    assert answer["conversation_id"] == conversation_id
    assert _of_type(world, MessageType.ACKNOWLEDGEMENT) == []
    assert world.store.state.mailbox[reminder.header.message_id].collected_at is not None
    assert Stage.ACKNOWLEDGED not in _stages(world)


# --- sealed submissions -----------------------------------------------------------------


def _sealed_reply(world: World, reply: dict[str, Any], **header: Any) -> dict[str, Any]:
    ids = next(e for e in reply["entry"] if e["resource"]["resourceType"] == "MessageHeader")
    fields: dict[str, Any] = {
        "message_id": ids["resource"]["id"],
        "bundle_id": reply["id"],
        "conversation_id": str(uuid.uuid4()),
        "message_type": MessageType.ATTEST_REPLY,
        "sender": PSY,
        **header,
    }
    envelope = world.sealed(orjson.dumps(reply), to=GATEWAY, by=PSY, **fields)
    return orjson.loads(envelope.to_json())  # type: ignore[no-any-return]


async def _unwrap(world: World, body: object, org: str = PSY) -> object:
    return await health.unwrap_submission(
        world.store, world.keyring, world.clock, world.orgs[org], body,
        gateway_org_id=world.gateway_org_id,
    )  # fmt: skip


async def test_a_sealed_submission_is_opened_and_the_opening_audited(world: World) -> None:
    _, request = await _delivered_request(world)
    reply = world.reply(request)
    assert await _unwrap(world, reply) == reply  # a plain Bundle passes as it is
    opened = await _unwrap(world, _sealed_reply(world, reply))
    assert opened == orjson.loads(orjson.dumps(reply))
    [entry] = _reads(world)
    assert (entry.action, entry.actor, entry.subject_org) == (audit.ENVELOPE_OPEN, GATEWAY, PSY)


@pytest.mark.parametrize(
    ("body", "error", "code"),
    [
        ({"resourceType": "Patient"}, Malformed, "unsupported-body"),
        ({"header": {}, "ciphertext": "x"}, Malformed, "invalid-envelope"),
    ],
)
async def test_bodies_that_are_neither_bundle_nor_envelope(
    world: World, body: object, error: type[Exception], code: str
) -> None:
    with pytest.raises(error) as caught:
        await _unwrap(world, body)
    assert getattr(caught.value, "code", None) == code


async def test_sealed_submissions_that_are_refused(world: World) -> None:
    _, request = await _delivered_request(world)
    reply = world.reply(request)
    for org, body, error, code in [
        (GP, _sealed_reply(world, reply), NotPermitted, "sender-mismatch"),
        (PSY, _sealed_reply(world, reply, message_id=str(uuid.uuid4())), EnvelopeRejected,
         "header-mismatch"),
    ]:  # fmt: skip
        with pytest.raises(error) as caught:
            await _unwrap(world, body, org)
        assert getattr(caught.value, "code", None) == code
    to_psy = world.sealed(
        orjson.dumps(reply), to=PSY, by=PSY, receiver=GATEWAY, message_id="m", bundle_id="b",
        conversation_id="c", message_type=MessageType.ATTEST_REPLY, sender=PSY,
    )  # fmt: skip
    with pytest.raises(EnvelopeRejected) as rejected:
        await _unwrap(world, orjson.loads(to_psy.to_json()))
    assert rejected.value.code == "not-addressed-to-gateway"
    world.directory.revoke(world.keys(PSY).current_signing.key_id, world.clock.now())
    with pytest.raises(EnvelopeRejected) as revoked:
        await _unwrap(world, _sealed_reply(world, reply))
    assert revoked.value.code == "key-not-valid"
    # only the envelope whose header did not match its Bundle was opened (and audited)
    assert len(_reads(world)) == 1


async def test_a_read_of_many_items_is_one_audit_entry_listing_them(world: World) -> None:
    for _ in range(50):
        await _delivered_request(world)
    before = len(world.store.state.audit)
    items = await world.read_mailbox(limit=500)
    assert len(items) == 50
    added = world.store.state.audit[before:]
    assert len(added) == 1
    assert added[0].action == audit.MAILBOX_FETCH
    assert added[0].message_id is None  # more than one: they are listed in the detail
    assert added[0].detail is not None
    assert added[0].detail["message_ids"].split() == [i["message_id"] for i in items]
    # every read is audited: the same items read again are a second entry
    await world.read_mailbox(limit=500)
    assert len(world.store.state.audit) == before + 2
