"""Attest semantics without I/O: the catalogue's form pairs and consent rules, the consent and
reply-kind checks, the reply kinds built and read back, the partner client's `reply --kind`,
and the project's FHIR definitions in docs/fhir/ for every canonical it writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from attest_gateway.client import cli as partner_cli
from attest_gateway.contracts.jobcenter import ConsentIn
from attest_gateway.core.attests import (
    DEFAULT_CATALOGUE,
    FormSource,
    ReplyKind,
    reply_kind_of_detail,
)
from attest_gateway.core.errors import InvalidInput
from attest_gateway.entrypoints.cli import main as server_cli
from attest_gateway.medcom import codes
from attest_gateway.medcom.build import (
    REPLY_KIND_TEXTS,
    build_attest_reply,
    build_attest_request,
)
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import MessageInfo, OrgIdentifiers, read_message
from attest_gateway.medcom.translate import inbox_item
from attest_gateway.ports.records import Conversation
from attest_gateway.services.health import check_reply_kind
from attest_gateway.services.jobcenter import attest_types, check_consent
from tests.support.people import CASEWORKER, CITIZEN_NAME, CLINICIAN
from tests.support.world import make_world

DOCS_FHIR = Path(__file__).resolve().parents[2] / "docs" / "fhir"
TODAY = dt.date(2026, 3, 4)
SENT_AT = dt.datetime(2026, 3, 4, 10, 0, tzinfo=dt.UTC)


# --- the catalogue ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply_form", "request_form"),
    [("LÆ 125", "LÆ 121"), ("LÆ 265", "LÆ 261"), ("LÆ 285", "LÆ 281")],
)
def test_the_pairs_the_domain_names_are_observed(reply_form: str, request_form: str) -> None:
    kind = DEFAULT_CATALOGUE[reply_form]
    assert (kind.request_form, kind.reply_form) == (request_form, reply_form)
    assert kind.request_form_source is FormSource.OBSERVED


def test_every_other_pair_follows_the_numbering_and_says_so() -> None:
    others = {c: k for c, k in DEFAULT_CATALOGUE.items() if c not in {"LÆ 125", "LÆ 265", "LÆ 285"}}
    assert others
    for code, kind in others.items():
        assert kind.request_form_source is FormSource.INFERRED
        assert int(kind.request_form.removeprefix("LÆ ")) == int(code.removeprefix("LÆ ")) - 4


def test_only_lae_285_may_be_asked_for_without_consent() -> None:
    without = {c for c, k in DEFAULT_CATALOGUE.items() if not k.consent_required}
    assert without == {"LÆ 285"}
    assert DEFAULT_CATALOGUE["LÆ 285"].legal_bases == {"sygedagpengeloven § 11 a"}


def test_the_catalogue_answer_lists_every_type_once_in_order() -> None:
    listed = attest_types(DEFAULT_CATALOGUE).items
    assert [t.code for t in listed] == sorted(DEFAULT_CATALOGUE)
    lae155 = next(t for t in listed if t.code == "LÆ 155")
    assert (lae155.request_form, lae155.reply_form, lae155.consent_required) == (
        "LÆ 151",
        "LÆ 155",
        True,
    )


# --- consent ---------------------------------------------------------------------------------


def _consent(**fields: Any) -> ConsentIn:
    return ConsentIn.model_validate(fields)


@pytest.mark.parametrize("code", sorted(DEFAULT_CATALOGUE))
def test_consent_given_before_or_on_today_is_enough_for_every_type(code: str) -> None:
    kind = DEFAULT_CATALOGUE[code]
    check_consent(kind, _consent(given=True, date=TODAY), TODAY)
    check_consent(kind, _consent(given=True, date=TODAY - dt.timedelta(days=400)), TODAY)


@pytest.mark.parametrize(
    ("code", "consent"),
    [
        ("LÆ 155", None),
        ("LÆ 285", None),  # a legal basis must be named, if not consent
        ("LÆ 155", {"legal_basis": "sygedagpengeloven § 11 a"}),
        ("LÆ 285", {"legal_basis": "retssikkerhedsloven § 11 c"}),
        ("LÆ 125", {"given": True, "date": "2026-03-05"}),  # after today
    ],
)
def test_a_type_refuses_a_request_without_the_consent_it_needs(
    code: str, consent: dict[str, Any] | None
) -> None:
    given = None if consent is None else _consent(**consent)
    with pytest.raises(InvalidInput) as caught:
        check_consent(DEFAULT_CATALOGUE[code], given, TODAY)
    assert caught.value.code == "consent-required"


def test_lae_285_may_name_its_legal_basis() -> None:
    check_consent(
        DEFAULT_CATALOGUE["LÆ 285"], _consent(legal_basis="sygedagpengeloven § 11 a"), TODAY
    )


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"given": True},
        {"date": "2026-01-02"},
        {"given": False, "date": "2026-01-02"},
        {"given": True, "date": "2026-01-02", "legal_basis": "x"},
        {"legal_basis": ""},
        {"legal_basis": "to\nlinjer"},
    ],
)
def test_consent_is_either_given_with_a_date_or_a_legal_basis(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ConsentIn.model_validate(fields)


def test_the_json_schema_states_the_consent_rule() -> None:
    """Every combination of present, absent and null fields: the OpenAPI document's schema
    and the check agree (a null counts as absent in both)."""
    schema = ConsentIn.model_json_schema()
    values: dict[str, list[Any]] = {
        "given": [True, False, None],
        "date": ["2026-01-02", None],
        "legal_basis": ["sygedagpengeloven § 11 a", None],
    }
    absent = object()
    for combination in itertools.product(*[[absent, *v] for v in values.values()]):
        doc = {k: v for k, v in zip(values, combination, strict=True) if v is not absent}
        try:
            ConsentIn.model_validate(doc)
            checked = True
        except ValidationError:
            checked = False
        assert jsonschema.Draft202012Validator(schema).is_valid(doc) is checked, doc


# --- reply kinds in the Bundles ---------------------------------------------------------------

JOBCENTRE = OrgIdentifiers(name="Jobcenter Aarhus", sor="123456789012345", gln="5790000123456")
CLINIC = OrgIdentifiers(name="Psykiatrien", sor="987654321000016", gln="5790001348120")
CONVERSATION = "6f1c2a8e-3b7d-4c1e-9a0f-2d5e8b7c4a11"


def _request(**more: Any) -> dict[str, Any]:
    return build_attest_request(
        message_id="2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01",
        bundle_id="9b1f0a4c-6b53-4b3e-8f0e-7f3b1a2c9d02",
        sent_at=SENT_AT,
        sender=JOBCENTRE,
        receiver=CLINIC,
        cpr="0101901234",
        patient_name=CITIZEN_NAME,
        author=CASEWORKER,
        attest_type="LÆ 125",
        attest_title="Statusattest",
        case_kind="sygedagpenge",
        questions="Hvilken behandling får borgeren?",
        reply_deadline=dt.date(2026, 3, 18),
        conversation_id=CONVERSATION,
        **more,
    )


def _reply(**more: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"text": None, "pdf": None, **more}
    return build_attest_reply(
        request=parse_bundle(_request()),
        message_id="c3e9a1d0-7f4b-4f2a-9e61-5b8d2c0a7e03",
        bundle_id="e4f0b2c1-8a5c-4b3d-af72-6c9e3d1b8f04",
        sent_at=SENT_AT + dt.timedelta(days=2),
        author=CLINICIAN,
        **arguments,
    )


def _info(bundle: dict[str, Any]) -> MessageInfo:
    return read_message(parse_bundle(bundle))


def test_the_request_carries_the_consent_or_the_legal_basis() -> None:
    consented = _info(_request(consent_date=dt.date(2026, 3, 1), request_form="LÆ 121"))
    assert (consented.consent_date, consented.legal_basis) == (dt.date(2026, 3, 1), None)
    assert consented.texts[0].endswith("\n\nBorgeren har givet samtykke den 01-03-2026.")
    assert consented.topic == "Anmodning (LÆ 121) om LÆ 125: Statusattest"
    basis = _info(_request(legal_basis="sygedagpengeloven § 11 a"))
    assert (basis.consent_date, basis.legal_basis) == (None, "sygedagpengeloven § 11 a")
    assert basis.texts[0].endswith("med hjemmel i sygedagpengeloven § 11 a.")
    plain = _info(_request())
    assert (plain.consent_date, plain.legal_basis) == (None, None)
    assert plain.texts == ["Hvilken behandling får borgeren?"]
    with pytest.raises(ValueError, match="not both"):
        _request(consent_date=dt.date(2026, 3, 1), legal_basis="x")


def test_a_reply_says_its_kind_only_when_it_is_no_attest() -> None:
    attest = _info(_reply(text="Se attesten."))
    assert (attest.reply_kind, attest.suggested_attest_type) == (None, None)
    absent = _info(_reply(kind="not-in-treatment"))
    assert absent.reply_kind == "not-in-treatment"
    assert absent.new_texts == [REPLY_KIND_TEXTS["not-in-treatment"]]
    wrong = _info(_reply(kind="wrong-form", suggested_attest_type=("LÆ 155", "Speciallægeattest")))
    assert (wrong.reply_kind, wrong.suggested_attest_type) == ("wrong-form", "LÆ 155")
    cannot = _info(_reply(kind="cannot-answer", text="Ingen konsultation i to år."))
    assert (cannot.reply_kind, cannot.new_texts) == (
        "cannot-answer",
        ["Ingen konsultation i to år."],
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kind": "cannot-answer"}, "needs a text"),
        ({"kind": "not-in-treatment", "pdf": b"%PDF-1.7"}, "no attest PDF"),
        ({"kind": "attest", "text": "x", "suggested_attest_type": ("LÆ 155", None)}, "only"),
        ({"kind": "cannot-answer", "text": "x", "suggested_attest_type": ("LÆ 155", None)}, "only"),
        ({"kind": "maybe"}, "unknown reply kind"),
    ],
)
def test_the_builder_refuses_a_reply_its_kind_does_not_allow(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _reply(**arguments)


def _conversation() -> Conversation:
    return Conversation(
        id=CONVERSATION,
        jobcenter_org_id="jc",
        receiver_org_id="psy",
        request_message_id="2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01",
        attest_type="LÆ 125",
        case_kind="sygedagpenge",
        caseworker_ref="sag-1",
        municipality="101",
        region_code="1084",
        case_ref="k.ref",
        psychiatric_course=True,
        first_day_of_absence=dt.date(2026, 2, 1),
        reply_deadline=dt.date(2026, 3, 18),
        created_at=SENT_AT,
    )


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"attest_type": "LÆ 155"}, "wrong-reply-form"),
        ({"reply_kind": ""}, "invalid-reply-kind"),
        ({"reply_kind": "later"}, "invalid-reply-kind"),
        ({"reply_kind": "cannot-answer", "new_texts": ["  "]}, "invalid-reply-kind"),
        ({"reply_kind": "wrong-form", "suggested_attest_type": "LÆ 125"}, "invalid-reply-kind"),
        ({"reply_kind": "wrong-form", "suggested_attest_type": "journal"}, "invalid-reply-kind"),
        ({"suggested_attest_type": "LÆ 155"}, "invalid-reply-kind"),
    ],
)
def test_the_gateway_checks_a_replys_form_and_kind(change: dict[str, Any], code: str) -> None:
    info = dataclasses.replace(_info(_reply(text="Se attesten.")), **change)
    with pytest.raises(InvalidInput) as caught:
        check_reply_kind(_conversation(), info)
    assert caught.value.code == code


def test_a_reply_without_a_kind_or_an_attest_type_is_an_attest() -> None:
    info = dataclasses.replace(_info(_reply(text="Se attesten.")), attest_type=None)
    assert check_reply_kind(_conversation(), info) is ReplyKind.ATTEST
    wrong = _info(_reply(kind="wrong-form", suggested_attest_type=("LÆ 155", None)))
    assert check_reply_kind(_conversation(), wrong) is ReplyKind.WRONG_FORM


def test_the_inbox_item_and_the_status_name_the_kind() -> None:
    item = inbox_item(
        _info(_reply(kind="wrong-form", suggested_attest_type=("LÆ 155", None))),
        conversation_id=CONVERSATION,
        caseworker_ref="sag-1",
        attest_type="LÆ 125",
        received_at=SENT_AT,
    )
    assert (item.reply_kind, item.suggested_attest_type) == (ReplyKind.WRONG_FORM, "LÆ 155")
    assert item.attest_text == REPLY_KIND_TEXTS["wrong-form"]
    assert reply_kind_of_detail(None) is ReplyKind.ATTEST
    assert reply_kind_of_detail("cannot-answer") is ReplyKind.CANNOT_ANSWER


# --- the partner client and the server's client command ----------------------------------------

CLINICIAN_OPTIONS = [
    "--family", "Holm", "--given", "Mette", "--authorisation-id", "0C4B1",
    "--phone", "+4578470000",
]  # fmt: skip


def _request_file(tmp_path: Path) -> Path:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(_request()), encoding="utf-8")
    return path


def test_attest_client_reply_builds_an_answer_without_attest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = str(_request_file(tmp_path))
    argv = ["reply", request, *CLINICIAN_OPTIONS, "--kind", "wrong-form", "--suggest", "LÆ 155"]
    assert partner_cli.main(argv) == 0
    info = _info(json.loads(capsys.readouterr().out))
    assert (info.reply_kind, info.suggested_attest_type) == ("wrong-form", "LÆ 155")

    assert partner_cli.main(["reply", request, *CLINICIAN_OPTIONS, "--kind", "cannot-answer"]) == 1
    assert "needs a text" in capsys.readouterr().err


def test_the_servers_client_reply_takes_a_kind(tmp_path: Path) -> None:
    request = str(_request_file(tmp_path))
    options = ["client", "reply", request, *CLINICIAN_OPTIONS]
    result = CliRunner().invoke(server_cli.app, [*options, "--kind", "not-in-treatment"])
    assert result.exit_code == 0, result.output
    assert _info(json.loads(result.stdout)).reply_kind == "not-in-treatment"
    refused = CliRunner().invoke(server_cli.app, [*options, "--kind", "later"])
    assert refused.exit_code != 0


# --- docs/fhir ---------------------------------------------------------------------------------


def test_every_project_canonical_is_defined_in_docs_fhir() -> None:
    defined = {
        json.loads(p.read_text("utf-8"))["url"]: json.loads(p.read_text("utf-8"))
        for p in DOCS_FHIR.glob("*.json")
    }
    written = {
        value
        for name, value in vars(codes).items()
        if isinstance(value, str)
        and value.startswith(f"{codes.PROJECT_CANONICAL_BASE}/")
        and not name.startswith("_")
    }
    assert written
    assert written <= set(defined)
    reply_kinds = defined[codes.REPLY_KIND_SYSTEM]
    assert {c["code"] for c in reply_kinds["concept"]} == codes.REPLY_KINDS == set(ReplyKind)


async def test_consent_dated_today_in_denmark_is_taken_before_utc_midnight() -> None:
    """00:30 in Copenhagen on 5 March is 23:30 UTC on 4 March: consent the citizen gave that
    night is not 'after today'; a day later than the Danish date still is."""
    world = make_world()
    world.clock.set(dt.datetime(2026, 3, 4, 23, 30, tzinfo=dt.UTC))
    accepted, created = await world.request_attest(consent={"given": True, "date": "2026-03-05"})
    assert created
    assert accepted.conversation_id in world.store.state.conversations
    with pytest.raises(InvalidInput) as caught:
        await world.request_attest(consent={"given": True, "date": "2026-03-06"})
    assert caught.value.code == "consent-required"
    assert len(world.store.state.conversations) == 1  # the refused one stored nothing
