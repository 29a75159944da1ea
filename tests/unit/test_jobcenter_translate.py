"""Job-centre JSON ↔ MedCom-like Bundles, and validation of the job-centre request contract."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from attest_gateway.contracts.jobcenter import AttestRequestIn, CaseKind, InboxItem, ReceiverRef
from attest_gateway.core.attests import DEFAULT_CATALOGUE
from attest_gateway.medcom.build import build_attest_reply
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import MessageInfo, OrgIdentifiers, read_message
from attest_gateway.medcom.translate import inbox_item, request_bundle
from tests.support.people import CLINICIAN, caseworker_json, citizen_name_json, consent_json

CPR = "0101901234"
JOBCENTER_GLN = "5790001348120"
CLINIC_SOR = "715381000016006"
CLINIC_GLN = "5790000209354"
QUESTIONS = "Hvilken behandling får borgeren, og hvornår forventes den afsluttet?"
PDF = b"%PDF-1.4 x"

JOBCENTER = OrgIdentifiers(name="Jobcenter København", sor="123456789012345", gln=JOBCENTER_GLN)
CLINIC = OrgIdentifiers(name="Lægehuset Nørrebro", sor=CLINIC_SOR, gln=CLINIC_GLN)

CONVERSATION = "6f1c2a8e-3b7d-4c1e-9a0f-2d5e8b7c4a11"
REQUEST_MESSAGE = "2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01"
REQUEST_BUNDLE = "9b1f0a4c-6b53-4b3e-8f0e-7f3b1a2c9d02"
REPLY_MESSAGE = "c3e9a1d0-7f4b-4f2a-9e61-5b8d2c0a7e03"
REPLY_BUNDLE = "e4f0b2c1-8a5c-4b3d-af72-6c9e3d1b8f04"
SENT_AT = dt.datetime(2026, 1, 31, 9, 30, tzinfo=dt.UTC)
REPLIED_AT = dt.datetime(2026, 2, 10, 14, 0, tzinfo=dt.UTC)
RECEIVED_AT = dt.datetime(2026, 2, 10, 14, 0, 5, tzinfo=dt.UTC)


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "municipality": "101",
        "jobcenter_gln": JOBCENTER_GLN,
        "caseworker_ref": "sag-4711",
        "citizen_cpr": CPR,
        "citizen_name": citizen_name_json(),
        "caseworker": caseworker_json(),
        "attest_type": "LÆ 265",
        "receiver": {"sor": CLINIC_SOR},
        "case_kind": "sygedagpenge",
        "first_day_of_absence": "2026-01-05",
        "psychiatric_course": False,
        "questions": QUESTIONS,
        "consent": consent_json(),
    }
    body.update(overrides)
    return body


def _request_in(**overrides: Any) -> AttestRequestIn:
    return AttestRequestIn.model_validate(_body(**overrides))


def _request_dict(body: AttestRequestIn) -> dict[str, Any]:
    kind = DEFAULT_CATALOGUE[body.attest_type]
    return request_bundle(
        body,
        kind=kind,
        reply_deadline=kind.reply_deadline.due(SENT_AT.date()),
        sender=JOBCENTER,
        receiver=CLINIC,
        conversation_id=CONVERSATION,
        message_id=REQUEST_MESSAGE,
        bundle_id=REQUEST_BUNDLE,
        sent_at=SENT_AT,
    )


def _reply_dict(
    text: str | None = "Borgeren er i behandling.", pdf: bytes | None = PDF
) -> dict[str, Any]:
    request = parse_bundle(_request_dict(_request_in()))
    return build_attest_reply(
        author=CLINICIAN,
        request=request,
        message_id=REPLY_MESSAGE,
        bundle_id=REPLY_BUNDLE,
        sent_at=REPLIED_AT,
        text=text,
        pdf=pdf,
    )


def _reply_info(
    text: str | None = "Borgeren er i behandling.", pdf: bytes | None = PDF
) -> MessageInfo:
    return read_message(parse_bundle(_reply_dict(text, pdf)))


def _inbox(info: MessageInfo, attest_type: str = "LÆ 265") -> InboxItem:
    return inbox_item(
        info,
        conversation_id=CONVERSATION,
        caseworker_ref="sag-4711",
        attest_type=attest_type,
        received_at=RECEIVED_AT,
    )


# --- request → Bundle -------------------------------------------------------------------------


def test_request_carries_the_citizens_name_and_the_caseworker() -> None:
    bundle = _request_dict(_request_in())
    resources = {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}
    assert resources["Patient"]["name"] == [
        {"use": "official", "family": "Jensen", "given": ["Anne", "Marie"]}
    ]
    assert resources["Practitioner"]["name"] == [{"family": "Nielsen", "given": ["Lars"]}]
    assert resources["PractitionerRole"]["code"] == [{"text": "Sagsbehandler"}]
    assert resources["PractitionerRole"]["telecom"] == [
        {"system": "email", "value": "lars.nielsen@jobcenter.example"}
    ]
    [segment] = resources["Communication"]["payload"]
    contact = [e for e in segment["extension"] if e["url"].endswith("contact-extension")]
    assert contact == [
        {
            "url": "http://medcomfhir.dk/ig/core/StructureDefinition/medcom-core-contact-extension",
            "valueContactPoint": {"system": "phone", "value": "+4587131313"},
        }
    ]


def test_request_in_is_normalised() -> None:
    body = _request_in(citizen_cpr="010190-1234")
    assert body.citizen_cpr == CPR
    assert body.case_kind is CaseKind.SYGEDAGPENGE
    assert body.receiver == ReceiverRef(sor=CLINIC_SOR)
    assert body.first_day_of_absence == dt.date(2026, 1, 5)
    assert body.reply_deadline is None


def test_request_bundle_reads_back() -> None:
    info = read_message(parse_bundle(_request_dict(_request_in(citizen_cpr="010190-1234"))))
    assert info.message_type == "attest-request"
    assert info.message_id == REQUEST_MESSAGE
    assert info.bundle_id == REQUEST_BUNDLE
    assert info.timestamp == SENT_AT
    assert info.cpr == CPR
    assert info.attest_type == "LÆ 265"
    assert info.attest_title == DEFAULT_CATALOGUE["LÆ 265"].title
    assert info.case_kind == "sygedagpenge"
    # The consent rides as an extension and, for the clinician, as the text's last line.
    assert info.texts == [f"{QUESTIONS}\n\nBorgeren har givet samtykke den 02-01-2020."]
    assert (info.consent_date, info.legal_basis) == (dt.date(2020, 1, 2), None)
    assert info.topic == "Anmodning (LÆ 261) om LÆ 265: Lægeattest til rehabiliteringsteam"
    assert info.attachments == []
    assert info.conversation_id == CONVERSATION
    assert info.reply_deadline == dt.date(2026, 3, 2)  # 30 days after 2026-01-31
    assert info.sender == JOBCENTER
    assert info.receiver == CLINIC
    assert info.replied_to is None


@pytest.mark.parametrize("code", sorted(DEFAULT_CATALOGUE))
def test_every_catalogue_kind_translates(code: str) -> None:
    info = read_message(parse_bundle(_request_dict(_request_in(attest_type=code))))
    assert info.attest_type == code
    assert info.attest_title == DEFAULT_CATALOGUE[code].title
    assert info.reply_deadline == DEFAULT_CATALOGUE[code].reply_deadline.due(SENT_AT.date())


def test_case_kind_is_carried() -> None:
    body = _request_in(case_kind="ressourceforloeb")
    info = read_message(parse_bundle(_request_dict(body)))
    assert info.case_kind == "ressourceforloeb"


# --- reply Bundle → inbox item ----------------------------------------------------------------


def test_reply_becomes_an_inbox_item() -> None:
    info = _reply_info()
    assert info.message_type == "attest-reply"
    assert info.replied_to == REQUEST_MESSAGE
    item = _inbox(info)
    assert item.message_id == REPLY_MESSAGE
    assert item.conversation_id == CONVERSATION
    assert item.caseworker_ref == "sag-4711"
    assert item.attest_type == "LÆ 265"
    assert item.received_at == RECEIVED_AT
    assert item.attest_text == "Borgeren er i behandling."
    assert item.sender.sor == CLINIC_SOR
    assert item.sender.gln == CLINIC_GLN
    assert item.sender.name == "Lægehuset Nørrebro"
    (attachment,) = item.attachments
    assert attachment.content_type == "application/pdf"
    assert attachment.title == "Attest"
    assert base64.b64decode(attachment.data_base64, validate=True) == PDF
    dumped = item.model_dump_json()
    assert CPR not in dumped


def test_reply_with_pdf_only_has_no_text() -> None:
    item = _inbox(_reply_info(text=None))
    assert item.attest_text is None
    assert [base64.b64decode(a.data_base64) for a in item.attachments] == [PDF]


def test_reply_with_text_only_has_no_attachments() -> None:
    item = _inbox(_reply_info(pdf=None))
    assert item.attest_text == "Borgeren er i behandling."
    assert item.attachments == []


def test_inbox_item_joins_texts_and_skips_empty_ones() -> None:
    info = dataclasses.replace(_reply_info(), new_texts=["første", "", "anden"])
    assert _inbox(info).attest_text == "første\n\nanden"
    assert _inbox(dataclasses.replace(info, new_texts=[""])).attest_text is None


def test_inbox_item_shows_only_the_replys_own_segment() -> None:
    # The reply repeats the request's segment (the questions) before its own.
    info = _reply_info(pdf=None)
    asked = f"{QUESTIONS}\n\nBorgeren har givet samtykke den 02-01-2020."
    assert info.texts == [asked, "Borgeren er i behandling."]
    assert _inbox(info).attest_text == "Borgeren er i behandling."


def test_inbox_item_of_a_reply_whose_provenance_names_no_segment_shows_every_text() -> None:
    # An older shape, or a sender that names no source entities: every segment is new.
    reply = _reply_dict(pdf=None)
    for entry in reply["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Provenance":
            resource["entity"] = [e for e in resource.get("entity", []) if e["role"] != "source"]
    info = read_message(parse_bundle(reply))
    asked = f"{QUESTIONS}\n\nBorgeren har givet samtykke den 02-01-2020."
    assert _inbox(info).attest_text == f"{asked}\n\nBorgeren er i behandling."


def test_inbox_item_falls_back_to_the_known_attest_type() -> None:
    info = dataclasses.replace(_reply_info(), attest_type=None)
    assert _inbox(info, attest_type="LÆ 125").attest_type == "LÆ 125"
    assert _inbox(_reply_info(), attest_type="LÆ 125").attest_type == "LÆ 265"


# --- AttestRequestIn validation ---------------------------------------------------------------


def _error_types(exc: ValidationError) -> list[str]:
    return [e["type"] for e in exc.errors()]


@pytest.mark.parametrize(
    "receiver",
    [{"sor": CLINIC_SOR, "ydernummer": "12345"}, {}, {"sor": None, "ydernummer": None}],
)
def test_receiver_needs_exactly_one_identifier(receiver: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        _request_in(receiver=receiver)
    assert [e["loc"][0] for e in info.value.errors()] == ["receiver"]
    assert "exactly one" in str(info.value)


def test_receiver_by_ydernummer() -> None:
    assert _request_in(receiver={"ydernummer": "123456"}).receiver == ReceiverRef(
        ydernummer="123456"
    )


def test_extra_fields_are_rejected() -> None:
    with pytest.raises(ValidationError) as top:
        _request_in(unexpected="x")
    assert _error_types(top.value) == ["extra_forbidden"]
    with pytest.raises(ValidationError) as nested:
        _request_in(receiver={"sor": CLINIC_SOR, "gln": CLINIC_GLN})
    assert _error_types(nested.value) == ["extra_forbidden"]


@pytest.mark.parametrize("cpr", ["3102901234", "010190123", "01019O1234"])
def test_bad_cpr_is_invalid_cpr(cpr: str) -> None:
    with pytest.raises(ValidationError) as info:
        _request_in(citizen_cpr=cpr)
    (error,) = info.value.errors()
    assert error["type"] == "invalid_cpr"
    assert error["loc"] == ("citizen_cpr",)
    assert cpr not in error["msg"]


@pytest.mark.parametrize(
    ("field", "value", "error_type"),
    [
        ("jobcenter_gln", "5790001348121", "invalid_gln"),
        ("municipality", "999", "invalid_kommunekode"),
        ("receiver", {"sor": "12345"}, "invalid_sor"),
        ("receiver", {"ydernummer": "1234"}, "invalid_ydernummer"),
        ("case_kind", "fleksjob", "enum"),
        ("questions", "", "string_too_short"),
        ("caseworker_ref", "", "string_too_short"),
        ("citizen_name", {"given": ["Anne"]}, "missing"),
        ("citizen_name", {"given": ["Anne"], "family": "J" * 101}, "string_too_long"),
        ("citizen_name", {"given": ["A\x1bnne"], "family": "Jensen"}, "control_character"),
        ("caseworker", {"given": [], "family": "Nielsen"}, "missing"),
        (
            "caseworker",
            {"given": [], "family": "Nielsen", "phone": "8713"},
            "string_pattern_mismatch",
        ),
        (
            "caseworker",
            {"given": [], "family": "Nielsen", "phone": "87131313", "email": "a b@c.dk"},
            "string_pattern_mismatch",
        ),
    ],
)
def test_other_fields_are_checked(field: str, value: object, error_type: str) -> None:
    with pytest.raises(ValidationError) as info:
        _request_in(**{field: value})
    assert _error_types(info.value) == [error_type]


def test_request_in_is_frozen() -> None:
    body = _request_in()
    with pytest.raises(ValidationError):
        body.citizen_cpr = "0202901234"  # type: ignore[misc]
    assert body.citizen_cpr == CPR
