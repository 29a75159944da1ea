"""The published MedCom example Bundles parse and read out as expected.

The examples are CareCommunication 5.0 (new message, reply with PDF) and Acknowledgement 2.0
(ok, fatal-error). They carry no attest type (no MedCom attest profile exists), and the
acknowledgements are not fully self-consistent (sender/receiver not swapped; the fatal one's
response.identifier and Provenance point to different messages): reading must still work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from attest_gateway.medcom.model import Bundle, OtherResource, to_fhir_json
from attest_gateway.medcom.parse import parse_bundle, parse_bundle_json
from attest_gateway.medcom.read import MessageInfo, OrgIdentifiers, read_message

# Verbatim copies of the published MedCom examples (see SOURCES.txt there).
EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "medcom"

NEW_MESSAGE = "Bundle-add5e7e2-0c0f-4a4a-bfff-f6f984fa7e3c.json"
REPLY = "Bundle-b56549f7-ed10-422d-8088-f7222b686e46.json"
ACK_OK = "Bundle-a8c041b8-c65a-4fde-a90f-962076918834.json"
ACK_FATAL = "Bundle-bc9535ef-ed94-4060-a928-7baddec7ee71.json"
ALL = [NEW_MESSAGE, REPLY, ACK_OK, ACK_FATAL]

FIRST_MESSAGE_ID = "42cb9200-f421-4d08-8391-7d51a2503cb4"
EXAMPLE_CPR = "2509479989"

HOSPITAL = OrgIdentifiers(
    name="Hjerteafdelingen på Herlev og Gentofte hospital",
    sor="265161000016000",
    gln="5790000209354",
)
NURSING_HOME = OrgIdentifiers(name="Plejecenter Herlev", sor="953741000016009", gln="5790001348120")
ACK_SENDER = OrgIdentifiers(name="Sender Organization", sor="953741000016009", gln="5790001348120")
ACK_RECEIVER = OrgIdentifiers(
    name="Receiver Organization", sor="265161000016000", gln="5790000209354"
)


def _load(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def _read(name: str) -> MessageInfo:
    return read_message(parse_bundle(_load(name)))


@pytest.mark.parametrize("name", ALL)
def test_example_parses(name: str) -> None:
    bundle = parse_bundle(_load(name))
    assert bundle.type == "message"
    assert bundle.id in name
    assert bundle.timestamp.tzinfo is not None


@pytest.mark.parametrize("name", ALL)
def test_dump_and_reparse_is_equal(name: str) -> None:
    bundle = parse_bundle(_load(name))
    dumped = to_fhir_json(bundle)
    again = parse_bundle(json.loads(json.dumps(dumped)))
    assert again == bundle
    assert to_fhir_json(again) == dumped


@pytest.mark.parametrize("name", ALL)
def test_parse_bundle_json_agrees(name: str) -> None:
    raw = (EXAMPLES / name).read_bytes()
    assert parse_bundle_json(raw) == parse_bundle(_load(name))


def test_unmodelled_resources_are_kept() -> None:
    bundle = parse_bundle(_load(NEW_MESSAGE))
    others = bundle.resources(OtherResource)
    assert sorted(o.resourceType for o in others) == ["Practitioner", "PractitionerRole"]
    role = next(o for o in others if o.resourceType == "PractitionerRole")
    assert role.model_extra is not None
    assert role.model_extra["practitioner"] == {
        "reference": "Practitioner/58c811a5-4082-44eb-9d66-ccbb112d4973"
    }


def test_new_message() -> None:
    info = _read(NEW_MESSAGE)
    assert info.message_type == "attest-request"
    assert info.message_id == FIRST_MESSAGE_ID
    assert info.bundle_id == "add5e7e2-0c0f-4a4a-bfff-f6f984fa7e3c"
    assert info.event_code == "care-communication-message"
    assert info.activity == "new-message"
    assert info.sender == HOSPITAL
    assert info.receiver == NURSING_HOME
    assert info.replied_to is None
    assert info.response_to is None
    assert info.response_code is None
    assert info.cpr == EXAMPLE_CPR
    assert info.conversation_id == "b2eb3d0e-5de5-4de9-b2a3-0ff321ad1c3a"
    assert info.attest_type is None
    assert info.case_kind is None
    assert info.reply_deadline is None
    assert info.topic == "Forspørgsel på seneste resultater"
    assert len(info.texts) == 1
    assert info.texts[0].startswith("Til rette vedkommende.")
    assert info.attachments == []
    assert info.issues == []


def test_reply_with_pdf() -> None:
    info = _read(REPLY)
    assert info.message_type == "attest-reply"
    assert info.message_id == "d5bd2111-2576-48d3-84d4-8be0297a038d"
    assert info.bundle_id == "b56549f7-ed10-422d-8088-f7222b686e46"
    assert info.activity == "reply-message"
    assert info.replied_to == FIRST_MESSAGE_ID
    assert info.sender == NURSING_HOME
    assert info.receiver == HOSPITAL
    assert info.cpr == EXAMPLE_CPR
    assert info.conversation_id == "b2eb3d0e-5de5-4de9-b2a3-0ff321ad1c3a"
    assert len(info.texts) == 2  # MedCom replies repeat the earlier payload
    assert info.texts[1].startswith("Hej Michael")
    [pdf] = info.attachments
    assert pdf.content_type == "application/pdf"
    assert pdf.title == "Blodprøveresultater"
    assert pdf.data.startswith(b"%PDF")


def test_acknowledgement_ok() -> None:
    info = _read(ACK_OK)
    assert info.message_type == "acknowledgement"
    assert info.message_id == "aba2d9bf-2c6c-47e8-bce4-7928bcd51019"
    assert info.bundle_id == "a8c041b8-c65a-4fde-a90f-962076918834"
    assert info.response_code == "ok"
    assert info.response_to == FIRST_MESSAGE_ID
    assert info.replied_to == FIRST_MESSAGE_ID
    assert info.activity == "acknowledgement"
    assert info.sender == ACK_SENDER
    assert info.receiver == ACK_RECEIVER
    assert info.issues == []
    assert info.cpr is None
    assert info.texts == []


def test_acknowledgement_fatal_error() -> None:
    info = _read(ACK_FATAL)
    assert info.message_type == "acknowledgement"
    assert info.message_id == "b879c81e-0607-4ccb-b358-24a72208e30d"
    assert info.response_code == "fatal-error"
    # The published example's flaw: response and Provenance point to different messages.
    assert info.response_to == "53128d9b-cede-4c7f-8904-809eab322d7d"
    assert info.replied_to == FIRST_MESSAGE_ID
    assert info.issues == ["MSG_VALUESET_VALUE_UNKNOWN"]
    assert info.sender == ACK_SENDER
    assert info.receiver == ACK_RECEIVER


def test_reprs_hide_cpr_and_text() -> None:
    bundle: Bundle = parse_bundle(_load(REPLY))
    info = read_message(bundle)
    for shown in (repr(bundle), repr(bundle.entry), repr(info)):
        assert EXAMPLE_CPR not in shown
        assert "Hej Michael" not in shown
