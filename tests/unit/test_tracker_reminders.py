"""The reminder is a MedCom-like message that refers to its request and carries no CPR."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from attest_gateway.medcom.codes import (
    CPR_SYSTEM,
    ENTITY_ROLE_REVISION,
    MESSAGE_KIND_SYSTEM,
    PROFILE_PATIENT,
)
from attest_gateway.medcom.model import Provenance
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import OrgIdentifiers, read_message
from attest_gateway.medcom.reminders import build_reminder, derived_id

JC = OrgIdentifiers(name="Jobcenter København", sor="101181000016003", gln="5790001010014")
PSY = OrgIdentifiers(
    name="Psykiatrisk Center København", sor="715381000016006", gln="5790004210014"
)


def _reminder(
    seq: int = 1, sent_at: dt.datetime = dt.datetime(2026, 11, 2, 7, 0, tzinfo=dt.UTC)
) -> dict[str, Any]:
    return build_reminder(
        request_message_id="req-1",
        conversation_id="conv-1",
        message_id=f"rem-{seq}",
        bundle_id=f"bundle-{seq}",
        sent_at=sent_at,
        sender=JC,
        receiver=PSY,
        attest_type="LÆ 155",
        due=dt.date(2026, 10, 30),
        seq=seq,
    )


def test_the_reminder_passes_the_medcom_rules_and_refers_to_the_request() -> None:
    bundle = parse_bundle(_reminder())
    header = bundle.message_header
    assert header.id == "rem-1"
    provenance = bundle.resources(Provenance)[0]
    assert [(e.role, e.what.reference) for e in provenance.entity] == [
        (ENTITY_ROLE_REVISION, "MessageHeader/req-1"),
        ("source", None),  # the text segment, by its identifier
    ]
    info = read_message(bundle)
    assert info.message_type == "attest-reminder"  # not a new request, though also a new message
    assert info.conversation_id == "conv-1"
    assert info.attest_type == "LÆ 155"
    assert info.sender.sor == JC.sor
    assert info.receiver.sor == PSY.sor
    assert info.texts
    assert "Påmindelse" in info.texts[0]
    assert "30-10-2026" in info.texts[0]


def test_the_reminder_names_the_requests_patient_without_a_cpr_number() -> None:
    data = _reminder()
    text = json.dumps(data)
    assert CPR_SYSTEM not in text
    patient = next(
        e["resource"] for e in data["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert patient == {
        "resourceType": "Patient",
        "id": derived_id("req-1", "Patient"),
        "meta": {"profile": [PROFILE_PATIENT]},
    }


def test_the_reminder_is_marked_as_one() -> None:
    assert f'"system": "{MESSAGE_KIND_SYSTEM}", "code": "reminder"' in json.dumps(_reminder())


def test_the_builder_is_pure() -> None:
    assert _reminder() == _reminder()
    assert "2. påmindelse" in json.dumps(_reminder(2), ensure_ascii=False)


def test_a_first_shape_reminder_is_still_told_from_a_request() -> None:
    data = _reminder()
    communication = next(
        e["resource"] for e in data["entry"] if e["resource"]["resourceType"] == "Communication"
    )
    communication["topic"]["coding"] = []
    communication["category"][0]["coding"].append(
        {"system": "urn:attest-gateway:message-kind", "code": "reminder"}
    )
    assert read_message(parse_bundle(data)).message_type == "attest-reminder"


def test_a_reminder_says_the_deadline_was_only_once_it_has_passed() -> None:
    def text(sent_at: dt.datetime) -> str:
        return read_message(parse_bundle(_reminder(sent_at=sent_at))).texts[0]

    # A reminder by hand before the deadline; on its day; the day after (Danish time:
    # 23:30 UTC on the 30th is already the 31st in Copenhagen).
    assert "Svarfristen er 30-10-2026" in text(dt.datetime(2026, 10, 20, 9, tzinfo=dt.UTC))
    assert "Svarfristen er 30-10-2026" in text(dt.datetime(2026, 10, 30, 9, tzinfo=dt.UTC))
    assert "Svarfristen var 30-10-2026" in text(dt.datetime(2026, 10, 30, 23, 30, tzinfo=dt.UTC))
