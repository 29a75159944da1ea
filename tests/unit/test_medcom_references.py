"""What certified systems send back, on the fake ports: a reply may revise any earlier
message of the conversation (the request, the reminder, the caller's own earlier reply), and
may name it by a relative, absolute or versioned reference, or as ``urn:uuid:``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import orjson
import pytest

from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.errors import InvalidInput, Malformed, Unknown
from attest_gateway.medcom.codes import ACTIVITY_FORWARD, ENTITY_ROLE_REVISION
from attest_gateway.medcom.fhir_xml import json_to_xml
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import message_id_from_reference, read_message
from attest_gateway.ports.records import MailItem
from attest_gateway.services import health
from tests.support.world import GATEWAY, GP, JC, PSY, World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


async def _delivered_request(world: World) -> tuple[str, Bundle]:
    accepted, _ = await world.request_attest()
    envelope = world.request_in_outbox(accepted.conversation_id)
    world.store.state.mailbox[accepted.message_id] = MailItem.of(envelope, world.clock.now())
    world.clock.advance(dt.timedelta(minutes=1))
    return accepted.conversation_id, world.opened(envelope, PSY)


def _revising(reply: dict[str, Any], reference: str) -> dict[str, Any]:
    """The reply with its own Provenance's revision entity pointing at `reference`."""
    header_id = reply["entry"][0]["resource"]["id"]
    for entry in reply["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] != "Provenance":
            continue
        if not any(header_id in t["reference"] for t in resource["target"]):
            continue
        for entity in resource["entity"]:
            if entity["role"] == ENTITY_ROLE_REVISION:
                entity["what"] = {"reference": reference}
    return reply


def _deliver_reminder(world: World, conversation_id: str, to: str = PSY) -> str:
    reminder = world.sealed(
        b"{}",
        to=to,
        by=GATEWAY,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        conversation_id=conversation_id,
        message_type=MessageType.ATTEST_REMINDER,
        sender=JC,
    )
    world.store.state.mailbox[reminder.header.message_id] = MailItem.of(reminder, world.clock.now())
    return reminder.header.message_id


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("MessageHeader/abc", "abc"),
        ("MessageHeader/abc/_history/1", "abc"),
        ("https://x.example/fhir/MessageHeader/abc", "abc"),
        ("https://x.example/fhir/MessageHeader/abc/_history/7", "abc"),
        ("urn:uuid:2f1c1f4e-0b0a-4d3c-9d0e-6b5f2b6e9a10", "2f1c1f4e-0b0a-4d3c-9d0e-6b5f2b6e9a10"),
        ("Communication/abc", None),
        ("Communication/abc/_history/1", None),
        ("MessageHeader/", None),
        ("", None),
    ],
)
def test_message_ids_from_every_form_of_reference(reference: str, expected: str | None) -> None:
    assert message_id_from_reference(reference) == expected


@pytest.mark.parametrize(
    "form",
    [
        "MessageHeader/{id}/_history/1",
        "https://psykiatri.example.dk/fhir/MessageHeader/{id}",
        "https://psykiatri.example.dk/fhir/MessageHeader/{id}/_history/2",
        "urn:uuid:{id}",
    ],
)
async def test_a_reply_names_the_request_in_any_form_of_reference(world: World, form: str) -> None:
    conversation_id, request = await _delivered_request(world)
    reply = _revising(world.reply(request), form.format(id=request.message_header.id))
    answer, created = await world.submit(reply)
    assert created
    assert answer["conversation_id"] == conversation_id


async def test_a_reply_to_the_reminder_answers_its_conversation(world: World) -> None:
    conversation_id, request = await _delivered_request(world)
    reminder_id = _deliver_reminder(world, conversation_id)
    reply = _revising(world.reply(request), f"MessageHeader/{reminder_id}/_history/1")
    assert read_message(parse_bundle(reply)).replied_to == reminder_id
    answer, created = await world.submit(reply)
    assert created
    assert (answer["conversation_id"], answer["message_type"]) == (conversation_id, "attest-reply")


async def test_a_reply_to_an_earlier_reply_answers_its_conversation(world: World) -> None:
    conversation_id, request = await _delivered_request(world)
    first, _ = await world.submit(world.reply(request))
    second = _revising(world.reply(request), f"MessageHeader/{first['message_id']}")
    answer, created = await world.submit(second)
    assert created
    assert answer["conversation_id"] == conversation_id
    assert answer["message_id"] != first["message_id"]


async def test_a_reminder_delivered_to_someone_else_is_not_answerable(world: World) -> None:
    conversation_id, request = await _delivered_request(world)
    reminder_id = _deliver_reminder(world, conversation_id, to=GP)
    reply = _revising(world.reply(request), f"MessageHeader/{reminder_id}")
    with pytest.raises(Unknown) as caught:
        await world.submit(reply)
    assert caught.value.code == "unknown-request"


async def test_another_organisations_reply_is_not_answerable(world: World) -> None:
    _, request = await _delivered_request(world)
    first, _ = await world.submit(world.reply(request))
    inbound = world.store.state.inbound
    inbound[first["message_id"]] = dataclasses.replace(
        inbound[first["message_id"]], sender_org_id=GP
    )
    second = _revising(world.reply(request), f"MessageHeader/{first['message_id']}")
    with pytest.raises(Unknown):
        await world.submit(second)


# --- eCPR patients and forwards -------------------------------------------------------------

X_ECPR = "urn:oid:1.2.208.176.1.6.1.1"  # dk-core-x-ecpr-identifier: the national eCPR service


def _patient(bundle: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    return found


async def test_a_patient_with_an_ecpr_beside_the_cpr_is_the_requests_citizen(
    world: World,
) -> None:
    """MedCom's "double CPR" case: the Patient carries an X-eCPR as well as the CPR number."""
    conversation_id, request = await _delivered_request(world)
    reply = world.reply(request)
    _patient(reply)["identifier"].append({"use": "temp", "system": X_ECPR, "value": "0703921VJ4"})
    answer, created = await world.submit(reply)
    assert created
    assert answer["conversation_id"] == conversation_id


async def test_a_patient_known_only_by_an_ecpr_is_read_but_not_the_requests_citizen(
    world: World,
) -> None:
    _, request = await _delivered_request(world)
    reply = world.reply(request)
    _patient(reply)["identifier"] = [{"use": "temp", "system": X_ECPR, "value": "0703921VJ4"}]
    info = read_message(parse_bundle(reply))
    assert (info.message_type, info.cpr) == ("attest-reply", None)
    with pytest.raises(InvalidInput) as caught:
        await world.submit(reply)
    assert caught.value.code == "patient-mismatch"


async def test_a_forward_is_read_and_refused_as_a_message_the_gateway_does_not_carry(
    world: World,
) -> None:
    _, request = await _delivered_request(world)
    forward = world.reply(request)
    header_id = forward["entry"][0]["resource"]["id"]
    for entry in forward["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Provenance" and any(
            header_id in t["reference"] for t in resource["target"]
        ):
            resource["activity"]["coding"][0]["code"] = ACTIVITY_FORWARD
    info = read_message(parse_bundle(forward))
    assert (info.message_type, info.activity) == ("other-care-communication", ACTIVITY_FORWARD)
    with pytest.raises(InvalidInput) as caught:
        await world.submit(forward)
    assert caught.value.code == "unsupported-message"


# --- a sealed submission holding FHIR XML -------------------------------------------------


async def test_a_sealed_submission_may_hold_fhir_xml(world: World) -> None:
    conversation_id, request = await _delivered_request(world)
    reply = world.reply(request)
    header = reply["entry"][0]["resource"]
    envelope = world.sealed(
        json_to_xml(reply),
        to=GATEWAY,
        by=PSY,
        message_id=header["id"],
        bundle_id=reply["id"],
        conversation_id=conversation_id,
        message_type=MessageType.ATTEST_REPLY,
        sender=PSY,
    )
    opened = await health.unwrap_submission(
        world.store, world.keyring, world.clock, world.orgs[PSY],
        orjson.loads(envelope.to_json()), gateway_org_id=world.gateway_org_id,
    )  # fmt: skip
    assert opened == reply
    answer, created = await world.submit(opened)
    assert created
    assert answer["conversation_id"] == conversation_id


@pytest.mark.parametrize(
    ("plaintext", "code"),
    [(b"<Bundle", "malformed-xml"), (b"not a bundle", "invalid-bundle")],
)
async def test_a_sealed_submission_holding_neither_json_nor_xml_is_refused(
    world: World, plaintext: bytes, code: str
) -> None:
    envelope = world.sealed(
        plaintext,
        to=GATEWAY,
        by=PSY,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        conversation_id=str(uuid.uuid4()),
        message_type=MessageType.ATTEST_REPLY,
        sender=PSY,
    )
    with pytest.raises(Malformed) as caught:
        await health.unwrap_submission(
            world.store, world.keyring, world.clock, world.orgs[PSY],
            orjson.loads(envelope.to_json()), gateway_org_id=world.gateway_org_id,
        )  # fmt: skip
    assert caught.value.code == code
