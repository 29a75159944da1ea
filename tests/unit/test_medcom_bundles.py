"""The MedCom-like message builders round-trip through parse_bundle/read_message, and
parse_bundle rejects broken Bundles with stable BundleError codes that never echo input."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest_gateway.medcom.build import (
    PDF_ONLY_TEXT,
    build_acknowledgement,
    build_attest_reply,
    build_attest_request,
)
from attest_gateway.medcom.codes import (
    ACK_ERROR_CODES_SYSTEM,
    ACTIVITY_CODES_SYSTEM,
    ATTEST_TYPE_SYSTEM,
    CASE_KIND_SYSTEM,
    CATEGORY_CODES_SYSTEM,
    MESSAGE_KIND_SYSTEM,
    REPLY_DEADLINE_EXTENSION_URL,
    SOR_SYSTEM,
    ResponseCode,
)
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.model import Bundle, Provenance
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import OrgIdentifiers, read_message
from tests.support.people import CASEWORKER, CITIZEN_NAME, CLINICIAN

JOBCENTRE = OrgIdentifiers(name="Jobcenter Aarhus", sor="123456789012345", gln="5790000123456")
CLINIC = OrgIdentifiers(name="Psykiatrien Region Midt", sor="987654321000016", gln="5790001348120")
SENT_AT = datetime(2025, 3, 4, 10, 15, 30, tzinfo=ZoneInfo("Europe/Copenhagen"))
REPLIED_AT = datetime(2025, 3, 10, 8, 0, tzinfo=UTC)
CPR = "0101901234"
CONVERSATION = "6f1c2a8e-3b7d-4c1e-9a0f-2d5e8b7c4a11"
QUESTIONS = "Hvilken behandling får borgeren, og hvornår forventes den afsluttet?"
PDF = b"%PDF-1.7\n% an attest\n%%EOF\n"


def _request_dict(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "message_id": "2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01",
        "bundle_id": "9b1f0a4c-6b53-4b3e-8f0e-7f3b1a2c9d02",
        "sent_at": SENT_AT,
        "sender": JOBCENTRE,
        "receiver": CLINIC,
        "cpr": CPR,
        "patient_name": CITIZEN_NAME,
        "author": CASEWORKER,
        "attest_type": "LÆ 125",
        "attest_title": "Statusattest",
        "case_kind": "sygedagpenge",
        "questions": QUESTIONS,
        "reply_deadline": date(2025, 3, 18),
        "conversation_id": CONVERSATION,
    }
    values.update(overrides)
    return build_attest_request(**values)


def _request() -> Bundle:
    return parse_bundle(_request_dict())


def _reply_dict(
    request: Bundle, *, text: str | None = "Se vedhæftede attest.", pdf: bytes | None = PDF
) -> dict[str, Any]:
    return build_attest_reply(
        author=CLINICIAN,
        request=request,
        message_id="c3e9a1d0-7f4b-4f2a-9e61-5b8d2c0a7e03",
        bundle_id="e4f0b2c1-8a5c-4b3d-af72-6c9e3d1b8f04",
        sent_at=REPLIED_AT,
        text=text,
        pdf=pdf,
        pdf_title="LÆ 125 Statusattest",
    )


def _resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


# --- Round trips ---------------------------------------------------------------------------


def test_request_round_trip() -> None:
    built = _request_dict()
    info = read_message(parse_bundle(json.loads(json.dumps(built))))
    assert info.message_type == "attest-request"
    assert info.message_id == "2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01"
    assert info.bundle_id == "9b1f0a4c-6b53-4b3e-8f0e-7f3b1a2c9d02"
    assert info.timestamp == SENT_AT
    assert info.sender == JOBCENTRE
    assert info.receiver == CLINIC
    assert info.cpr == CPR
    assert info.attest_type == "LÆ 125"
    assert info.attest_title == "Statusattest"
    assert info.case_kind == "sygedagpenge"
    assert info.texts == [QUESTIONS]
    assert info.reply_deadline == date(2025, 3, 18)
    assert info.conversation_id == CONVERSATION
    assert info.topic is not None
    assert info.topic.startswith("Anmodning om LÆ 125")
    assert info.replied_to is None
    assert info.response_code is None
    assert info.attachments == []


def test_request_shape() -> None:
    built = _request_dict()
    assert built["timestamp"] == "2025-03-04T10:15:30+01:00"
    header = built["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["destination"][0]["endpoint"] == "https://sor2.sum.dsdn.dk/#id=987654321000016"
    assert header["destination"][0]["extension"][0]["valueCoding"]["code"] == "primary"
    assert header["source"]["endpoint"] == "https://sor2.sum.dsdn.dk/#id=123456789012345"
    assert header["definition"].endswith("MedComCareCommunicationMessageDefinition|5.0")
    [communication] = _resources(built, "Communication")
    # MedCom allows one category coding; the LÆ type is a coding of the topic
    assert communication["category"] == [
        {"coding": [{"system": CATEGORY_CODES_SYSTEM, "code": "other"}]}
    ]
    topic_codings = communication["topic"]["coding"]
    assert topic_codings == [
        {"system": ATTEST_TYPE_SYSTEM, "code": "LÆ 125", "display": "Statusattest"}
    ]
    assert not any("urn:attest-gateway:" in k for k in json.dumps(built).split('"'))
    assert communication["identifier"] == [{"value": f"urn:uuid:{CONVERSATION}"}]
    for org in _resources(built, "Organization"):
        systems = {i["system"] for i in org["identifier"]}
        assert systems == {SOR_SYSTEM, "https://www.gs1.org/gln"}
    [provenance] = _resources(built, "Provenance")
    assert provenance["activity"]["coding"][0]["code"] == "new-message"
    assert provenance["target"] == [{"reference": f"MessageHeader/{header['id']}"}]


def test_builders_are_deterministic() -> None:
    assert _request_dict() == _request_dict()
    request = _request()
    assert _reply_dict(request) == _reply_dict(request)


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        _request_dict(sent_at=datetime(2025, 3, 4, 10, 0))


def test_reply_round_trip() -> None:
    request = _request()
    info = read_message(parse_bundle(json.loads(json.dumps(_reply_dict(request)))))
    assert info.message_type == "attest-reply"
    assert info.message_id == "c3e9a1d0-7f4b-4f2a-9e61-5b8d2c0a7e03"
    assert info.bundle_id == "e4f0b2c1-8a5c-4b3d-af72-6c9e3d1b8f04"
    assert info.timestamp == REPLIED_AT
    assert info.sender == CLINIC
    assert info.receiver == JOBCENTRE
    assert info.replied_to == "2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01"
    assert info.cpr == CPR
    assert info.attest_type == "LÆ 125"
    assert info.attest_title == "Statusattest"
    assert info.case_kind == "sygedagpenge"
    assert info.conversation_id == CONVERSATION
    # the request's segment first (MedCom: a reply repeats the earlier segments), then its own
    assert info.texts == [QUESTIONS, "Se vedhæftede attest."]
    assert info.new_texts == ["Se vedhæftede attest."]
    [attachment] = info.attachments
    assert attachment.content_type == "application/pdf"
    assert attachment.title == "LÆ 125 Statusattest"
    assert attachment.data == PDF


def test_reply_with_only_text_or_only_pdf() -> None:
    request = _request()
    text_only = read_message(parse_bundle(_reply_dict(request, pdf=None)))
    assert text_only.new_texts == ["Se vedhæftede attest."]
    assert text_only.attachments == []
    pdf_only = read_message(parse_bundle(_reply_dict(request, text=None)))
    assert pdf_only.new_texts == [PDF_ONLY_TEXT]  # CareCommunication requires a text segment
    assert [a.data for a in pdf_only.attachments] == [PDF]


def test_reply_needs_text_or_pdf() -> None:
    with pytest.raises(ValueError, match="text"):
        _reply_dict(_request(), text=None, pdf=None)


def test_reply_provenance_chain() -> None:
    request_dict = _request_dict()
    request = parse_bundle(request_dict)
    reply = _reply_dict(request)
    provenances = _resources(reply, "Provenance")
    assert _resources(request_dict, "Provenance")[0] in provenances
    [own] = [
        p
        for p in provenances
        if p["target"] == [{"reference": "MessageHeader/c3e9a1d0-7f4b-4f2a-9e61-5b8d2c0a7e03"}]
    ]
    assert own["activity"]["coding"] == [{"system": ACTIVITY_CODES_SYSTEM, "code": "reply-message"}]
    assert {
        "role": "revision",
        "what": {"reference": "MessageHeader/2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01"},
    } in own["entity"]
    # The same Patient as the request.
    assert _resources(reply, "Patient") == _resources(request_dict, "Patient")


def test_acknowledgement_ok_round_trip_swaps_sender_and_receiver() -> None:
    request = _request()
    ack = build_acknowledgement(
        acked=request,
        message_id="a1b2c3d4-0000-4000-8000-000000000005",
        bundle_id="a1b2c3d4-0000-4000-8000-000000000006",
        sent_at=SENT_AT,
        code="ok",
    )
    info = read_message(parse_bundle(json.loads(json.dumps(ack))))
    assert info.message_type == "acknowledgement"
    assert info.message_id == "a1b2c3d4-0000-4000-8000-000000000005"
    assert info.bundle_id == "a1b2c3d4-0000-4000-8000-000000000006"
    assert info.timestamp == SENT_AT
    assert info.response_code == "ok"
    assert info.response_to == "2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01"
    assert info.replied_to == "2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01"
    assert info.sender == CLINIC  # the request's receiver
    assert info.receiver == JOBCENTRE  # the request's sender
    assert info.issues == []
    assert info.cpr is None
    assert _resources(ack, "OperationOutcome") == []
    assert _resources(ack, "Patient") == []
    activities = [p["activity"]["coding"][0]["code"] for p in _resources(ack, "Provenance")]
    assert activities == ["new-message", "acknowledgement"]
    [own] = [p for p in _resources(ack, "Provenance") if p["entity"][0]["role"] == "revision"]
    assert own["entity"][0]["what"] == {
        "reference": "MessageHeader/2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01"
    }


def test_acknowledgement_error_round_trip() -> None:
    reply = parse_bundle(_reply_dict(_request()))
    ack = build_acknowledgement(
        acked=reply,
        message_id="a1b2c3d4-0000-4000-8000-000000000007",
        bundle_id="a1b2c3d4-0000-4000-8000-000000000008",
        sent_at=SENT_AT,
        code="fatal-error",
        error_code="MSG_Datatype_Wrong",
        error_text="payload could not be read",
    )
    info = read_message(parse_bundle(ack))
    assert info.response_code == "fatal-error"
    assert info.response_to == "c3e9a1d0-7f4b-4f2a-9e61-5b8d2c0a7e03"
    assert info.issues == ["MSG_Datatype_Wrong"]
    assert info.diagnostics == ["payload could not be read"]
    assert info.sender == JOBCENTRE  # the reply's receiver
    assert info.receiver == CLINIC
    [outcome] = _resources(ack, "OperationOutcome")
    assert outcome["issue"][0]["details"]["coding"] == [
        {"system": ACK_ERROR_CODES_SYSTEM, "code": "MSG_Datatype_Wrong"}
    ]
    header = ack["entry"][0]["resource"]
    assert header["response"]["details"] == {"reference": f"OperationOutcome/{outcome['id']}"}


def test_acknowledgement_argument_checks() -> None:
    request = _request()
    common: dict[str, Any] = {
        "message_id": "a1b2c3d4-0000-4000-8000-000000000009",
        "bundle_id": "a1b2c3d4-0000-4000-8000-00000000000a",
        "sent_at": SENT_AT,
    }
    with pytest.raises(ValueError, match="error_code"):
        build_acknowledgement(acked=request, code="transient-error", **common)
    with pytest.raises(ValueError, match="not a MedCom"):
        build_acknowledgement(acked=request, code="fatal-error", error_code="NOPE", **common)
    with pytest.raises(ValueError, match="no error"):
        build_acknowledgement(acked=request, code="ok", error_code="MSG_Datatype_Wrong", **common)
    ack = parse_bundle(build_acknowledgement(acked=request, code="ok", **common))
    with pytest.raises(ValueError, match="never acknowledged"):
        build_acknowledgement(acked=ack, code="ok", **common)


@settings(max_examples=40, deadline=None, database=None)
@given(
    cpr=st.from_regex(r"[0-9]{10}", fullmatch=True),
    questions=st.text(max_size=300),
    answer=st.text(max_size=300),
    pdf=st.none() | st.binary(max_size=200),
)
def test_round_trip_property(cpr: str, questions: str, answer: str, pdf: bytes | None) -> None:
    request = parse_bundle(json.loads(json.dumps(_request_dict(cpr=cpr, questions=questions))))
    asked = read_message(request)
    assert (asked.cpr, asked.texts) == (cpr, [questions])
    reply = read_message(
        parse_bundle(json.loads(json.dumps(_reply_dict(request, text=answer, pdf=pdf))))
    )
    assert reply.cpr == cpr
    assert (reply.texts, reply.new_texts) == ([questions, answer], [answer])
    assert [a.data for a in reply.attachments] == ([] if pdf is None else [pdf])


# --- parse_bundle errors -------------------------------------------------------------------


def _broken(mutate: Callable[[dict[str, Any]], object]) -> BundleError:
    data = copy.deepcopy(_request_dict())
    mutate(data)
    with pytest.raises(BundleError) as caught:
        parse_bundle(data)
    return caught.value


def _drop(resource_type: str) -> Callable[[dict[str, Any]], object]:
    def mutate(data: dict[str, Any]) -> None:
        data["entry"] = [e for e in data["entry"] if e["resource"]["resourceType"] != resource_type]

    return mutate


def _set_type(data: dict[str, Any]) -> None:
    data["type"] = "collection"


def _patient_first(data: dict[str, Any]) -> None:
    data["entry"].insert(0, data["entry"].pop(1))


def _event(system: str, code: str) -> Callable[[dict[str, Any]], object]:
    def mutate(data: dict[str, Any]) -> None:
        data["entry"][0]["resource"]["eventCoding"] = {"system": system, "code": code}

    return mutate


def _drop_sender_org(data: dict[str, Any]) -> None:
    sender_ref = data["entry"][0]["resource"]["sender"]["reference"]
    data["entry"] = [e for e in data["entry"] if not e["fullUrl"].endswith(f"/{sender_ref}")]


def _drop_receiver_sor(data: dict[str, Any]) -> None:
    receiver_id = data["entry"][0]["resource"]["destination"][0]["receiver"]["reference"]
    for e in data["entry"]:
        r = e["resource"]
        if f"Organization/{r.get('id')}" == receiver_id:
            r["identifier"] = [i for i in r["identifier"] if i["system"] != SOR_SYSTEM]


EVENTS = "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-eventCodes"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (_set_type, "bundle-not-message"),
        (_patient_first, "missing-message-header"),
        (_drop("MessageHeader"), "missing-message-header"),
        (_drop("Provenance"), "missing-provenance"),
        (_event(EVENTS, "attest-message"), "unknown-event-code"),
        (_event("urn:other", "care-communication-message"), "unknown-event-code"),
        (_drop_sender_org, "missing-organization"),
        (_drop_receiver_sor, "missing-identifier"),
        (_drop("Communication"), "missing-communication"),
        (_drop("Patient"), "missing-patient"),
    ],
)
def test_rule_violations(mutate: Callable[[dict[str, Any]], object], code: str) -> None:
    error = _broken(mutate)
    assert error.code == code
    assert CPR not in str(error)


def _ack_dict(code: ResponseCode = "ok", **kwargs: Any) -> dict[str, Any]:
    return build_acknowledgement(
        acked=_request(),
        message_id="a1b2c3d4-0000-4000-8000-00000000000b",
        bundle_id="a1b2c3d4-0000-4000-8000-00000000000c",
        sent_at=SENT_AT,
        code=code,
        **kwargs,
    )


def test_acknowledgement_without_response() -> None:
    data = _ack_dict()
    del data["entry"][0]["resource"]["response"]
    with pytest.raises(BundleError) as caught:
        parse_bundle(data)
    assert caught.value.code == "missing-response"


def test_error_acknowledgement_without_operation_outcome() -> None:
    data = _ack_dict("fatal-error", error_code="MSG_Datatype_Wrong")
    data["entry"] = [
        e for e in data["entry"] if e["resource"]["resourceType"] != "OperationOutcome"
    ]
    with pytest.raises(BundleError) as caught:
        parse_bundle(data)
    assert caught.value.code == "missing-operation-outcome"


@pytest.mark.parametrize(
    "garbage",
    [[], ["a", "list"], "a string", b"bytes", None, 42, {}, {"resourceType": "Patient"}],
)
def test_garbage_is_invalid_bundle(garbage: object) -> None:
    with pytest.raises(BundleError) as caught:
        parse_bundle(garbage)
    assert caught.value.code == "invalid-bundle"
    assert caught.value.detail


def test_bad_base64_is_invalid_bundle() -> None:
    data = _reply_dict(_request())
    for e in data["entry"]:
        for item in e["resource"].get("payload", []):
            if "contentAttachment" in item:
                item["contentAttachment"]["data"] = "not base64 !!"
    with pytest.raises(BundleError) as caught:
        parse_bundle(data)
    assert caught.value.code == "invalid-bundle"
    assert "contentAttachment" in caught.value.detail


def _cpr_as_number(data: dict[str, Any]) -> None:
    _resources(data, "Patient")[0]["identifier"][0]["value"] = int(CPR)


def _cpr_as_timestamp(data: dict[str, Any]) -> None:
    data["timestamp"] = CPR


def _cpr_as_identifier_list(data: dict[str, Any]) -> None:
    _resources(data, "Patient")[0]["identifier"] = CPR


def _cpr_as_resource(data: dict[str, Any]) -> None:
    data["entry"][1]["resource"] = CPR


def _cpr_as_response_code(data: dict[str, Any]) -> None:
    data["entry"][0]["resource"]["response"] = {"identifier": "x", "code": CPR}


def _cpr_in_text_as_base64(data: dict[str, Any]) -> None:
    _resources(data, "Communication")[0]["payload"][0]["contentAttachment"] = {"data": f"{CPR}!"}


@pytest.mark.parametrize(
    "mutate",
    [
        _cpr_as_number,
        _cpr_as_timestamp,
        _cpr_as_identifier_list,
        _cpr_as_resource,
        _cpr_as_response_code,
        _cpr_in_text_as_base64,
    ],
)
def test_errors_never_echo_the_cpr(mutate: Callable[[dict[str, Any]], object]) -> None:
    error = _broken(mutate)
    assert error.code == "invalid-bundle"
    for shown in (str(error), error.detail, repr(error), str(error.__cause__)):
        assert CPR not in shown
        assert str(int(CPR)) not in shown
        assert QUESTIONS not in shown


def test_reply_attachment_is_base64_pdf() -> None:
    reply = _reply_dict(_request(), text=None)
    [communication] = _resources(reply, "Communication")
    [_asked, text, item] = communication["payload"]
    assert text["contentString"] == PDF_ONLY_TEXT
    assert item["contentAttachment"] == {
        "contentType": "application/pdf",
        "data": base64.b64encode(PDF).decode("ascii"),
        "title": "LÆ 125 Statusattest",
    }


def test_resources_are_discriminated_by_type() -> None:
    bundle = _request()
    [provenance] = bundle.resources(Provenance)
    assert provenance.recorded == SENT_AT
    assert [type(e.resource).__name__ for e in bundle.entry] == [
        "MessageHeader",
        "Patient",
        "Communication",
        "Organization",
        "Organization",
        "OtherResource",  # the caseworker's PractitionerRole
        "OtherResource",  # and Practitioner
        "Provenance",
    ]


# --- The first shape (urn:attest-gateway: systems) is still read ---------------------------


def _first_shape(built: dict[str, Any]) -> dict[str, Any]:
    """A request as the gateway built it before it followed the MedCom profiles: the LÆ type
    and the reminder marker as category codings, the case kind and the reply deadline under
    urn:attest-gateway: systems, the deadline as an extension of the Communication."""
    data = copy.deepcopy(built)
    [communication] = _resources(data, "Communication")
    legacy = {
        ATTEST_TYPE_SYSTEM: "urn:attest-gateway:attest-type",
        CASE_KIND_SYSTEM: "urn:attest-gateway:case-kind",
        MESSAGE_KIND_SYSTEM: "urn:attest-gateway:message-kind",
    }
    topic_codings = communication["topic"].pop("coding")
    for coding in topic_codings:
        coding["system"] = legacy[coding["system"]]
    communication["category"][0]["coding"] += topic_codings
    for concept in communication.get("reasonCode", []):
        for coding in concept["coding"]:
            coding["system"] = legacy[coding["system"]]
    payload = communication["payload"][0]
    [deadline] = [e for e in payload["extension"] if e["url"] == REPLY_DEADLINE_EXTENSION_URL]
    payload["extension"].remove(deadline)
    communication["extension"] = [{**deadline, "url": "urn:attest-gateway:reply-deadline"}]
    assert "urn:attest-gateway:" in json.dumps(data)
    return data


def test_first_shape_request_reads_the_same() -> None:
    current = read_message(_request())
    first = read_message(parse_bundle(_first_shape(_request_dict())))
    assert first == current
    assert (first.attest_type, first.case_kind, first.reply_deadline) == (
        "LÆ 125",
        "sygedagpenge",
        date(2025, 3, 18),
    )


def test_reply_to_a_first_shape_request_has_the_current_shape() -> None:
    request = parse_bundle(_first_shape(_request_dict()))
    reply = _reply_dict(request)
    assert "urn:attest-gateway:" not in json.dumps(reply)
    info = read_message(parse_bundle(reply))
    assert (info.attest_type, info.attest_title, info.case_kind) == (
        "LÆ 125",
        "Statusattest",
        "sygedagpenge",
    )
