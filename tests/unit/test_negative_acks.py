"""A refused submission of a readable message from the caller is also answered in MedCom: a
negative acknowledgement sealed for the caller in its mailbox, valid against MedCom's
profiles; nothing else changes. What cannot be answered is not."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.errors import GatewayError
from attest_gateway.medcom.model import Bundle, to_fhir_json
from attest_gateway.medcom.read import read_message
from attest_gateway.ports.records import MailItem
from tests.support.medcom_profiles import validate_bundle
from tests.support.world import GATEWAY, GP, PSY, World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


async def _delivered_request(world: World) -> tuple[str, Bundle]:
    accepted, _ = await world.request_attest()
    envelope = world.request_in_outbox(accepted.conversation_id)
    world.store.state.mailbox[accepted.message_id] = MailItem.of(envelope, world.clock.now())
    world.clock.advance(dt.timedelta(minutes=1))
    return accepted.conversation_id, world.opened(envelope, PSY)


def _acks_for(world: World, org: str) -> list[MailItem]:
    return [
        i
        for i in world.store.state.mailbox.values()
        if i.receiver_org_id == org and i.message_type == MessageType.ACKNOWLEDGEMENT.value
    ]


def _patient_of_another(reply: dict[str, Any]) -> dict[str, Any]:
    patient = next(
        e["resource"] for e in reply["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    patient["identifier"][0]["value"] = "1502857777"
    return reply


def _reply_to_unknown_request(world: World, request: Bundle, _: str) -> dict[str, Any]:
    world.store.state.conversations.clear()
    return world.reply(request)


Prepare = Callable[[World, Bundle, str], dict[str, Any]]

CASES: dict[str, tuple[Prepare, str, str]] = {
    "unknown-request": (
        _reply_to_unknown_request,
        "fatal-error",
        "MSG_NO_EXIST",
    ),
    "patient-mismatch": (
        lambda w, request, _: _patient_of_another(w.reply(request)),
        "fatal-error",
        "MSG_RESOURCE_ID_MISMATCH",
    ),
    "replayed-message-id": (
        lambda w, request, cid: w.reply(
            request, message_id=w.store.state.conversations[cid].request_message_id
        ),
        "fatal-error",
        "MSG_DUPLICATE_ID",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_refused_reply_gets_a_negative_ack_in_the_senders_mailbox(
    world: World, case: str
) -> None:
    cid, request = await _delivered_request(world)
    prepare, response_code, issue = CASES[case]
    reply = prepare(world, request, cid)
    outbox_before = list(world.store.state.outbox)
    with pytest.raises(GatewayError) as caught:
        await world.submit(reply)
    assert caught.value.code == case

    [item] = _acks_for(world, PSY)
    envelope = SealedEnvelope.from_json(item.envelope)
    assert (envelope.header.sender, envelope.header.signer) == (GATEWAY, GATEWAY)
    assert envelope.header.receiver == PSY
    nack = world.opened(envelope, PSY)
    info = read_message(nack)
    assert info.message_type == "acknowledgement"
    assert info.response_code == response_code
    assert info.response_to == reply["entry"][0]["resource"]["id"]
    assert info.issues == [issue]
    assert info.diagnostics[0].startswith(f"{case}: ")
    assert info.receiver.sor == read_message(request).receiver.sor  # back to the clinic
    errors = [i for i in validate_bundle(to_fhir_json(nack)) if i.severity == "error"]
    assert errors == []
    # Nothing else: no outbox row, no stage, nothing remembered as accepted.
    assert world.store.state.outbox == outbox_before
    assert world.store.state.inbound == {}

    # The same message refused again for the same reason: still one negative ack.
    with pytest.raises(GatewayError):
        await world.submit(reply)
    assert len(_acks_for(world, PSY)) == 1


async def test_a_full_outbox_is_a_transient_error(world: World) -> None:
    _, request = await _delivered_request(world)
    world.relay.full = True
    with pytest.raises(GatewayError) as caught:
        await world.submit(world.reply(request))
    assert caught.value.code == "outbox-full"
    [item] = _acks_for(world, PSY)
    info = read_message(world.opened(SealedEnvelope.from_json(item.envelope), PSY))
    assert (info.response_code, info.issues) == (
        "transient-error",
        ["MSG_Mailbox_Out_Of_Operation"],
    )


async def test_no_negative_ack_for_an_acknowledgement_or_another_senders_bundle(
    world: World,
) -> None:
    _, request = await _delivered_request(world)
    world.store.state.conversations.clear()
    with pytest.raises(GatewayError) as caught:  # an acknowledgement is never acknowledged
        await world.submit(world.ack(request))
    assert caught.value.code == "unknown-request"
    with pytest.raises(GatewayError) as caught:  # the Bundle's sender is not the caller
        await world.submit(world.reply(request), org=GP)
    assert caught.value.code == "sender-mismatch"
    assert _acks_for(world, PSY) == []
    assert _acks_for(world, GP) == []
