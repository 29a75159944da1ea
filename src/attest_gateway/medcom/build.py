"""Build the gateway's outgoing MedCom-like FHIR messages as JSON-ready dicts.

Three messages: the attest request (job centre → clinic), the attest reply (clinic → job
centre) and the acknowledgement of either. **No MedCom profile exists for attests**, so
request and reply are modelled on CareCommunication 5.0 (event
``care-communication-message``, a Communication with category ``other`` plus a project
coding for the LÆ type, a text payload, and a PDF attachment in replies); the
acknowledgement follows Acknowledgement 2.0.

The builders are pure: they use only the values passed in. The caller supplies the message
and bundle ids and a timezone-aware send time; ids of the other resources in a new message
(Communication, Patient, Organizations, Provenance, OperationOutcome, payload identifiers)
are derived deterministically from the message id with UUIDv5, so the same inputs always
give the same Bundle. Every output passes
:func:`attest_gateway.medcom.parse.parse_bundle`, and
:func:`~attest_gateway.medcom.read.read_message` gives back the values put in.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from attest_gateway.medcom.codes import (
    ACK_ERROR_CODES,
    ACK_ERROR_CODES_SYSTEM,
    ACKNOWLEDGEMENT_DEFINITION,
    ACTIVITY_ACKNOWLEDGEMENT,
    ACTIVITY_CODES_SYSTEM,
    ACTIVITY_NEW,
    ACTIVITY_REPLY,
    ATTEST_TYPE_SYSTEM,
    ATTEST_TYPE_SYSTEMS,
    AUTHORISATION_ID_SYSTEM,
    CARE_COMMUNICATION_DEFINITION,
    CASE_KIND_SYSTEM,
    CASE_KIND_SYSTEMS,
    CATEGORY_CODES_SYSTEM,
    CATEGORY_OTHER,
    CITIZEN_CONSENT_EXTENSION_URL,
    CPR_SYSTEM,
    DESTINATION_PRIMARY,
    DESTINATION_USE_EXTENSION_URL,
    DESTINATION_USE_SYSTEM,
    ENTITY_ROLE_REVISION,
    EVENT_ACKNOWLEDGEMENT,
    EVENT_CARE_COMMUNICATION,
    EVENT_CODES_SYSTEM,
    GLN_SYSTEM,
    HL7_ACK_ISSUE_CODES,
    HL7_OPERATION_OUTCOME_SYSTEM,
    LEGAL_BASIS_EXTENSION_URL,
    MEDCOM_AUTHOR_CONTACT_EXTENSION_URL,
    MEDCOM_AUTHOR_EXTENSION_URL,
    MEDCOM_DATETIME_EXTENSION_URL,
    MEDCOM_IDENTIFIER_EXTENSION_URL,
    PRACTITIONER_ROLES_AUTHORISED_SYSTEM,
    PROFILE_CARE_COMMUNICATION,
    PROFILE_CARE_COMMUNICATION_HEADER,
    PROFILE_CARE_COMMUNICATION_MESSAGE,
    PROFILE_CARE_COMMUNICATION_PROVENANCE,
    PROFILE_ORGANIZATION,
    PROFILE_PATIENT,
    PROFILE_PRACTITIONER,
    PROFILE_PRACTITIONER_ROLE,
    REPLY_ATTEST,
    REPLY_CANNOT_ANSWER,
    REPLY_DEADLINE_EXTENSION_URL,
    REPLY_KIND_EXTENSION_URL,
    REPLY_KIND_SYSTEM,
    REPLY_KINDS,
    REPLY_NOT_IN_TREATMENT,
    REPLY_WRONG_FORM,
    SOR_ENDPOINT_PREFIX,
    SOR_SYSTEM,
    SUGGESTED_ATTEST_TYPE_EXTENSION_URL,
    ResponseCode,
)
from attest_gateway.medcom.model import (
    Bundle,
    Communication,
    CommunicationPayload,
    MessageHeader,
    Organization,
    OtherResource,
    Patient,
    Provenance,
    Reference,
    to_fhir_json,
)
from attest_gateway.medcom.read import (
    OrgIdentifiers,
    communication_coding,
    org_identifiers,
    own_provenance,
)

CARE_COMMUNICATION_BASE: Final = "https://medcomfhir.dk/ig/carecommunication"
"""Base of the fullUrls in request and reply Bundles (as in the MedCom examples)."""
ACKNOWLEDGEMENT_BASE: Final = "https://medcomfhir.dk/ig/acknowledgement"
"""Base of the fullUrls in acknowledgement Bundles (as in the MedCom examples)."""

_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:attest-gateway:fhir-resource-ids")

# FHIR IssueType for each acknowledgement error code (MedCom's example uses "structure").
_ISSUE_TYPE: Final[dict[str, str]] = {
    "MSG_Receiver_Identifier_UNKNOWN": "not-found",
    "MSG_Receiver_Identifier_MISSING": "required",
    "MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE": "not-supported",
    "MSG_Mailbox_Out_Of_Operation": "transient",
}


@dataclass(frozen=True, slots=True)
class PersonName:
    """A person's name: the family name and the given names, in order."""

    family: str
    given: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SegmentAuthor:
    """The author of a text segment (MedCom's author and author-contact extensions): a person
    in a role, reachable by phone.

    ``role`` is the role's name (``Sagsbehandler``, ``Læge``); with ``role_code`` (a code of
    :data:`PRACTITIONER_ROLES_AUTHORISED_SYSTEM`, e.g. ``laege``) the role is coded, else it
    is the role's text (MedCom wants exactly one of the two). ``authorisation_id`` is a
    health professional's autorisations-ID (:data:`AUTHORISATION_ID_SYSTEM`); ``email`` is a
    further way to reach the author, on the PractitionerRole.
    """

    name: PersonName
    phone: str
    role: str
    role_code: str | None = None
    authorisation_id: str | None = None
    email: str | None = None

    def __post_init__(self) -> None:
        if not self.name.family:
            raise ValueError("an author needs a family name")
        if not _PHONE.fullmatch(self.phone):
            raise ValueError("an author's phone is 8 to 15 digits, optionally after a '+'")
        if self.authorisation_id is not None and not AUTHORISATION_ID.fullmatch(
            self.authorisation_id
        ):
            raise ValueError("an authorisation id is 5 characters: digits, consonants and Y")


AUTHORISATION_ID: Final = re.compile(r"[0-9BCDFGHJKLMNPQRSTVWXYZ]{5}")
"""An autorisations-ID: five characters, digits and upper-case consonants (Y counts as one)."""
_PHONE: Final = re.compile(r"\+?[0-9]{8,15}")


def build_attest_request(
    *,
    message_id: str,
    bundle_id: str,
    sent_at: datetime,
    sender: OrgIdentifiers,
    receiver: OrgIdentifiers,
    cpr: str,
    patient_name: PersonName,
    author: SegmentAuthor,
    attest_type: str,
    attest_title: str,
    case_kind: str,
    questions: str,
    reply_deadline: date,
    conversation_id: str,
    request_form: str | None = None,
    consent_date: date | None = None,
    legal_basis: str | None = None,
) -> dict[str, Any]:
    """A new CareCommunication-shaped attest request (Provenance activity ``new-message``):
    the citizen's official name on the Patient, ``author`` (the caseworker) as the author of
    the text segment, with a PractitionerRole and a Practitioner in the Bundle.

    ``request_form`` (e.g. ``LÆ 121``) names the form asked on in the topic's text. The
    citizen's consent (``consent_date``) or the law asked under without it (``legal_basis``)
    rides as an extension of the text segment and, for the clinician who reads only the
    text, as its last line (:func:`consent_line`)."""
    if consent_date is not None and legal_basis is not None:
        raise ValueError("give the consent's date or a legal basis, not both")
    when = _instant(sent_at)
    sender_id = _derived_id(message_id, "Organization/sender")
    receiver_id = _derived_id(message_id, "Organization/receiver")
    patient_id = _derived_id(message_id, "Patient")
    communication_id = _derived_id(message_id, "Communication")
    payload_id = _derived_id(message_id, "payload/0")
    author_resources = author_entries(message_id, author, f"Organization/{sender_id}")

    deadline = {"url": REPLY_DEADLINE_EXTENSION_URL, "valueDate": reply_deadline.isoformat()}
    consent: list[dict[str, Any]] = []
    if consent_date is not None:
        consent.append(
            {"url": CITIZEN_CONSENT_EXTENSION_URL, "valueDate": consent_date.isoformat()}
        )
    if legal_basis is not None:
        consent.append({"url": LEGAL_BASIS_EXTENSION_URL, "valueString": legal_basis})
    line = consent_line(consent_date, legal_basis)
    text = f"{questions}\n\n{line}" if line else questions
    asked = f"Anmodning ({request_form}) om" if request_form else "Anmodning om"
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "id": communication_id,
        "meta": {"profile": [PROFILE_CARE_COMMUNICATION]},
        "identifier": [{"value": f"urn:uuid:{conversation_id}"}],
        "status": "unknown",
        "category": [category()],
        "reasonCode": [{"coding": [{"system": CASE_KIND_SYSTEM, "code": case_kind}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "topic": {
            "coding": [
                {"system": ATTEST_TYPE_SYSTEM, "code": attest_type, "display": attest_title}
            ],
            "text": f"{asked} {attest_type}: {attest_title}",
        },
        "payload": [
            _payload(
                when,
                payload_id,
                f"Organization/{sender_id}",
                {"contentString": text},
                extra=[*author_extensions(author_resources[0]["id"], author), deadline, *consent],
            )
        ],
    }
    resources: list[dict[str, Any]] = [
        _message_header(
            message_id=message_id,
            event=EVENT_CARE_COMMUNICATION,
            sender_ref=f"Organization/{sender_id}",
            sender_sor=_require_sor(sender, "sender"),
            receiver_ref=f"Organization/{receiver_id}",
            receiver_sor=_require_sor(receiver, "receiver"),
            definition=CARE_COMMUNICATION_DEFINITION,
            focus=f"Communication/{communication_id}",
        ),
        {
            "resourceType": "Patient",
            "id": patient_id,
            "meta": {"profile": [PROFILE_PATIENT]},
            "identifier": [{"system": CPR_SYSTEM, "value": cpr}],
            "name": [official_name(patient_name)],
        },
        communication,
        _organization(receiver_id, receiver, "receiver"),
        _organization(sender_id, sender, "sender"),
        *author_resources,
        _provenance(
            provenance_id=_derived_id(message_id, "Provenance"),
            message_id=message_id,
            when=when,
            activity=ACTIVITY_NEW,
            agent_ref=f"Organization/{sender_id}",
            revision_of=None,
            sources=[payload_id],
        ),
    ]
    return care_communication_bundle(bundle_id, when, resources)


def build_attest_reply(
    *,
    request: Bundle,
    message_id: str,
    bundle_id: str,
    sent_at: datetime,
    author: SegmentAuthor,
    text: str | None,
    pdf: bytes | None,
    pdf_title: str = "Attest",
    kind: str = REPLY_ATTEST,
    suggested_attest_type: tuple[str, str | None] | None = None,
) -> dict[str, Any]:
    """The reply to an attest request (Provenance activity ``reply-message``).

    Sender and receiver are the request's receiver and sender; Patient, conversation
    identifier, case kind and topic (with the attest-type coding) are carried over from the
    request, in the current shape whichever shape the request has (the project's codings move
    out of the category, which holds MedCom's one ``other`` coding). The request's
    Provenances are copied and a new one points at the request's MessageHeader (entity role
    ``revision``). The request's text segments come first, unchanged, with the
    PractitionerRoles and Practitioners their author extensions name (MedCom: all previous
    message segments with text are included in a reply); then the reply's own segments,
    which ``author`` (the clinician) wrote and which alone the new Provenance names as its
    ``source`` entities. At least one of ``text`` and ``pdf`` is required; a reply with only
    a PDF gets :data:`PDF_ONLY_TEXT` as its text segment (CareCommunication requires one).

    ``kind`` (a code of :data:`REPLY_KIND_SYSTEM`) says what the reply is: ``attest`` (the
    default), or an answer without the attest: ``not-in-treatment``, ``wrong-form`` (with
    ``suggested_attest_type``, code and display, the type to ask for instead, if the clinic
    names one) or ``cannot-answer`` (``text`` required: why). Any kind but ``attest`` rides
    as the reply-kind extension of the reply's text segment, and carries no PDF; without a
    ``text`` it gets :data:`REPLY_KIND_TEXTS`' sentence.
    """
    if kind not in REPLY_KINDS:
        raise ValueError(f"unknown reply kind {kind!r}")
    if kind == REPLY_ATTEST:
        if text is None and pdf is None:
            raise ValueError("a reply needs a text, a PDF or both")
        if suggested_attest_type is not None:
            raise ValueError("only a wrong-form reply suggests an attest type")
    else:
        if pdf is not None:
            raise ValueError(f"a {kind} reply carries no attest PDF")
        if suggested_attest_type is not None and kind != REPLY_WRONG_FORM:
            raise ValueError("only a wrong-form reply suggests an attest type")
        if text is None:
            if kind == REPLY_CANNOT_ANSWER:
                raise ValueError("a cannot-answer reply needs a text saying why")
            text = REPLY_KIND_TEXTS[kind]
    when = _instant(sent_at)
    req_header = request.message_header
    if req_header.eventCoding.code != EVENT_CARE_COMMUNICATION:
        raise ValueError("only a CareCommunication-shaped message can be replied to")
    req_sender = _organization_at(request, req_header.sender, "sender")
    req_receiver = _organization_at(
        request, req_header.destination[0].receiver if req_header.destination else None, "receiver"
    )
    req_communication = _focus_communication(request, req_header)
    patient = request.resolve(
        req_communication.subject.reference if req_communication.subject else None
    )
    if not isinstance(patient, Patient):
        raise ValueError("the request has no Patient")

    # The reply goes from the request's receiver back to its sender.
    new_sender, new_receiver = req_receiver, req_sender
    sender_ref, receiver_ref = _reference_to(new_sender), _reference_to(new_receiver)
    communication_id = _derived_id(message_id, "Communication")

    earlier = [p for p in req_communication.payload if p.contentString is not None]
    earlier_authors = segment_author_entries(request, earlier)
    author_resources = author_entries(message_id, author, sender_ref)
    payload: list[dict[str, Any]] = [to_fhir_json(p) for p in earlier]
    payload_ids: list[str] = []
    if text is None:
        text = PDF_ONLY_TEXT
    kind_extensions: list[dict[str, Any]] = []
    if kind != REPLY_ATTEST:
        kind_extensions.append(
            {
                "url": REPLY_KIND_EXTENSION_URL,
                "valueCoding": {"system": REPLY_KIND_SYSTEM, "code": kind},
            }
        )
    if suggested_attest_type is not None:
        suggested: dict[str, Any] = {"system": ATTEST_TYPE_SYSTEM, "code": suggested_attest_type[0]}
        if suggested_attest_type[1] is not None:
            suggested["display"] = suggested_attest_type[1]
        kind_extensions.append(
            {"url": SUGGESTED_ATTEST_TYPE_EXTENSION_URL, "valueCoding": suggested}
        )
    payload_ids.append(_derived_id(message_id, f"payload/{len(payload_ids)}"))
    payload.append(
        _payload(
            when,
            payload_ids[-1],
            sender_ref,
            {"contentString": text},
            extra=[*author_extensions(author_resources[0]["id"], author), *kind_extensions],
        )
    )
    if pdf is not None:
        payload_ids.append(_derived_id(message_id, f"payload/{len(payload_ids)}"))
        attachment = {
            "contentType": "application/pdf",
            "data": base64.b64encode(pdf).decode("ascii"),
            "title": pdf_title,
        }
        payload.append(
            _payload(when, payload_ids[-1], sender_ref, {"contentAttachment": attachment})
        )

    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "id": communication_id,
        "meta": {"profile": [PROFILE_CARE_COMMUNICATION]},
    }
    if req_communication.identifier:
        communication["identifier"] = [to_fhir_json(i) for i in req_communication.identifier]
    communication["status"] = "unknown"
    communication["category"] = [category()]
    case_kind = communication_coding(req_communication, CASE_KIND_SYSTEMS)
    if case_kind is not None:
        communication["reasonCode"] = [
            {"coding": [{"system": CASE_KIND_SYSTEM, "code": case_kind.code}]}
        ]
    communication["subject"] = {"reference": _reference_to(patient)}
    topic: dict[str, Any] = {}
    attest = communication_coding(req_communication, ATTEST_TYPE_SYSTEMS)
    if attest is not None:
        coding = {"system": ATTEST_TYPE_SYSTEM, "code": attest.code}
        if attest.display is not None:
            coding["display"] = attest.display
        topic["coding"] = [coding]
    if req_communication.topic is not None and req_communication.topic.text is not None:
        topic["text"] = req_communication.topic.text
    if topic:
        topic.setdefault("text", f"Svar på {attest.code}" if attest else "Svar")
        communication["topic"] = topic
    communication["payload"] = payload

    resources: list[dict[str, Any]] = [
        _message_header(
            message_id=message_id,
            event=EVENT_CARE_COMMUNICATION,
            sender_ref=sender_ref,
            sender_sor=_require_sor(org_identifiers(new_sender), "sender"),
            receiver_ref=receiver_ref,
            receiver_sor=_require_sor(org_identifiers(new_receiver), "receiver"),
            definition=CARE_COMMUNICATION_DEFINITION,
            focus=f"Communication/{communication_id}",
        ),
        _with_profile(to_fhir_json(patient), PROFILE_PATIENT),
        communication,
        _with_profile(to_fhir_json(new_receiver), PROFILE_ORGANIZATION),
        _with_profile(to_fhir_json(new_sender), PROFILE_ORGANIZATION),
        *earlier_authors,
        *author_resources,
        *(
            _with_profile(to_fhir_json(p), PROFILE_CARE_COMMUNICATION_PROVENANCE)
            for p in request.resources(Provenance)
        ),
        _provenance(
            provenance_id=_derived_id(message_id, "Provenance"),
            message_id=message_id,
            when=when,
            activity=ACTIVITY_REPLY,
            agent_ref=sender_ref,
            revision_of=req_header.id,
            sources=payload_ids,
        ),
    ]
    return care_communication_bundle(bundle_id, when, resources)


def build_acknowledgement(
    *,
    acked: Bundle,
    message_id: str,
    bundle_id: str,
    sent_at: datetime,
    code: ResponseCode,
    error_code: str | None = None,
    error_text: str | None = None,
) -> dict[str, Any]:
    """A MedCom Acknowledgement 2.0 of ``acked``.

    Sender is the acknowledged message's receiver and receiver its sender (the published
    MedCom examples do not swap them; we do). ``response.identifier`` is the acknowledged
    MessageHeader.id. When ``code`` is not ``ok``, ``error_code`` is required (a MedCom
    acknowledgement error code, or one of the HL7 operation-outcome codes the MedCom
    issue-details ValueSet allows) and goes into an OperationOutcome together with
    ``error_text`` (as ``diagnostics``). The acknowledged message's own Provenance is copied
    and an ``acknowledgement`` Provenance points at its MessageHeader (role ``revision``).
    An acknowledgement is never acknowledged: ``acked`` must not be one.
    """
    when = _instant(sent_at)
    acked_header = acked.message_header
    if acked_header.eventCoding.code == EVENT_ACKNOWLEDGEMENT:
        raise ValueError("an acknowledgement is never acknowledged")
    if code == "ok" and (error_code is not None or error_text is not None):
        raise ValueError("an ok acknowledgement carries no error")
    issue_system: str | None = None
    if code != "ok":
        if error_code is None:
            raise ValueError("an acknowledgement that is not ok needs an error_code")
        if error_code in ACK_ERROR_CODES:
            issue_system = ACK_ERROR_CODES_SYSTEM
        elif error_code in HL7_ACK_ISSUE_CODES:
            issue_system = HL7_OPERATION_OUTCOME_SYSTEM
        else:
            raise ValueError("error_code is not a MedCom acknowledgement error code")

    acked_sender = _organization_at(acked, acked_header.sender, "sender")
    acked_receiver = _organization_at(
        acked,
        acked_header.destination[0].receiver if acked_header.destination else None,
        "receiver",
    )
    new_sender, new_receiver = acked_receiver, acked_sender
    sender_ref, receiver_ref = _reference_to(new_sender), _reference_to(new_receiver)

    outcome: dict[str, Any] | None = None
    if issue_system is not None and error_code is not None:
        outcome_id = _derived_id(message_id, "OperationOutcome")
        issue: dict[str, Any] = {
            "severity": "error",
            "code": _ISSUE_TYPE.get(error_code, "structure"),
            "details": {"coding": [{"system": issue_system, "code": error_code}]},
        }
        if error_text is not None:
            issue["diagnostics"] = error_text
        outcome = {"resourceType": "OperationOutcome", "id": outcome_id, "issue": [issue]}

    header = _message_header(
        message_id=message_id,
        event=EVENT_ACKNOWLEDGEMENT,
        sender_ref=sender_ref,
        sender_sor=_require_sor(org_identifiers(new_sender), "sender"),
        receiver_ref=receiver_ref,
        receiver_sor=_require_sor(org_identifiers(new_receiver), "receiver"),
        definition=ACKNOWLEDGEMENT_DEFINITION,
        focus=None,
    )
    response: dict[str, Any] = {"identifier": acked_header.id, "code": code}
    if outcome is not None:
        response["details"] = {"reference": f"OperationOutcome/{outcome['id']}"}
    header["response"] = response

    acked_provenance = own_provenance(acked)
    resources: list[dict[str, Any]] = [header]
    if acked_provenance is not None:
        resources.append(to_fhir_json(acked_provenance))
    resources += [
        _provenance(
            provenance_id=_derived_id(message_id, "Provenance"),
            message_id=message_id,
            when=when,
            activity=ACTIVITY_ACKNOWLEDGEMENT,
            agent_ref=sender_ref,
            revision_of=acked_header.id,
            sources=[],
        ),
        to_fhir_json(new_sender),
        to_fhir_json(new_receiver),
    ]
    if outcome is not None:
        resources.append(outcome)
    return _bundle(bundle_id, when, ACKNOWLEDGEMENT_BASE, resources)


# --- Helpers -------------------------------------------------------------------------------


def category() -> dict[str, Any]:
    """The one category coding of requests, replies and reminders (MedCom's ValueSet); a new
    dict each time, as the Bundles are mutable."""
    return {"coding": [{"system": CATEGORY_CODES_SYSTEM, "code": CATEGORY_OTHER}]}


def official_name(name: PersonName) -> dict[str, Any]:
    """A Patient's official name (medcom-core-patient: ``name:official``, family 1..1)."""
    human: dict[str, Any] = {"use": "official", "family": name.family}
    if name.given:
        human["given"] = list(name.given)
    return human


def _human_name(name: PersonName) -> dict[str, Any]:
    human: dict[str, Any] = {"family": name.family}
    if name.given:
        human["given"] = list(name.given)
    return human


def author_entries(
    message_id: str, author: SegmentAuthor, organization_ref: str
) -> list[dict[str, Any]]:
    """The PractitionerRole (first) and Practitioner of a segment's author, ids derived from
    ``message_id``; the role belongs to the Organization ``organization_ref``."""
    role_id = _derived_id(message_id, "PractitionerRole/author")
    practitioner_id = _derived_id(message_id, "Practitioner/author")
    concept: dict[str, Any] = (
        {
            "coding": [
                {
                    "system": PRACTITIONER_ROLES_AUTHORISED_SYSTEM,
                    "code": author.role_code,
                    "display": author.role,
                }
            ]
        }
        if author.role_code is not None
        else {"text": author.role}
    )
    practitioner: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": practitioner_id,
        "meta": {"profile": [PROFILE_PRACTITIONER]},
        "name": [_human_name(author.name)],
    }
    if author.authorisation_id is not None:
        practitioner["qualification"] = [
            {
                "identifier": [
                    {"system": AUTHORISATION_ID_SYSTEM, "value": author.authorisation_id}
                ],
                "code": concept,
            }
        ]
    role: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": role_id,
        "meta": {"profile": [PROFILE_PRACTITIONER_ROLE]},
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "organization": {"reference": organization_ref},
        "code": [concept],
    }
    if author.email is not None:
        role["telecom"] = [{"system": "email", "value": author.email}]
    return [role, practitioner]


def author_extensions(role_id: str, author: SegmentAuthor) -> list[dict[str, Any]]:
    """A text segment's author (the bundled PractitionerRole ``role_id``) and author-contact
    (the author's phone) extensions."""
    return [
        {
            "url": MEDCOM_AUTHOR_EXTENSION_URL,
            "valueReference": {"reference": f"PractitionerRole/{role_id}"},
        },
        {
            "url": MEDCOM_AUTHOR_CONTACT_EXTENSION_URL,
            "valueContactPoint": {"system": "phone", "value": author.phone},
        },
    ]


def segment_author_entries(
    request: Bundle, segments: list[CommunicationPayload]
) -> list[dict[str, Any]]:
    """The PractitionerRoles the author extensions of ``segments`` name, each followed by
    the Practitioner it names, as they are in ``request`` (each once)."""
    found: list[dict[str, Any]] = []
    seen: set[tuple[str, str | None]] = set()

    def add(resource: object) -> None:
        if not isinstance(resource, OtherResource):
            return
        key = (resource.resourceType, resource.id)
        if key not in seen:
            seen.add(key)
            found.append(to_fhir_json(resource))

    for segment in segments:
        for ext in segment.extension:
            if ext.url != MEDCOM_AUTHOR_EXTENSION_URL or ext.valueReference is None:
                continue
            role = request.resolve(ext.valueReference.reference)
            if not isinstance(role, OtherResource) or role.resourceType != "PractitionerRole":
                continue
            add(role)
            practitioner = (role.model_extra or {}).get("practitioner")
            if isinstance(practitioner, dict):
                add(request.resolve(practitioner.get("reference")))
    return found


PDF_ONLY_TEXT: Final = "Attesten er vedhæftet som PDF."
"""The text segment of a reply that carries only a PDF."""


REPLY_KIND_TEXTS: Final[dict[str, str]] = {
    REPLY_NOT_IN_TREATMENT: "Borgeren er ikke i behandling hos os.",
    REPLY_WRONG_FORM: "Der er anmodet om en attesttype, vi ikke kan udstede.",
}
"""The text segment of an answer without an attest when the clinician wrote none."""


def consent_line(consent_date: date | None, legal_basis: str | None) -> str | None:
    """The request text's last line about consent, for the clinician who reads the text."""
    if consent_date is not None:
        return f"Borgeren har givet samtykke den {consent_date:%d-%m-%Y}."
    if legal_basis is not None:
        return f"Anmodningen sker uden samtykke med hjemmel i {legal_basis}."
    return None


def _with_profile(resource: dict[str, Any], profile: str) -> dict[str, Any]:
    """``resource`` claiming ``profile`` in meta.profile (the profiles it had are kept)."""
    meta = dict(resource.get("meta") or {})
    profiles = list(meta.get("profile") or [])
    if profile not in profiles:
        profiles.append(profile)
    meta["profile"] = profiles
    head: dict[str, Any] = {k: resource[k] for k in ("resourceType", "id") if k in resource}
    rest = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
    return {**head, "meta": meta, **rest}


def care_communication_bundle(
    bundle_id: str, when: str, resources: list[dict[str, Any]]
) -> dict[str, Any]:
    """A CareCommunication message Bundle: the Bundle, its MessageHeader, Organizations and
    Provenances claim their MedCom profiles (medcom-careCommunication-1 and -3)."""
    claimed: dict[str, str] = {
        "MessageHeader": PROFILE_CARE_COMMUNICATION_HEADER,
        "Organization": PROFILE_ORGANIZATION,
        "Provenance": PROFILE_CARE_COMMUNICATION_PROVENANCE,
    }
    resources = [
        _with_profile(r, claimed[r["resourceType"]]) if r["resourceType"] in claimed else r
        for r in resources
    ]
    bundle = _bundle(bundle_id, when, CARE_COMMUNICATION_BASE, resources)
    return _with_profile(bundle, PROFILE_CARE_COMMUNICATION_MESSAGE)


def _instant(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.isoformat()


def _derived_id(message_id: str, role: str) -> str:
    """A stable id for one resource of one message (UUIDv5, no randomness)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{message_id}/{role}"))


def _require_sor(org: OrgIdentifiers, role: str) -> str:
    if not org.sor:
        raise ValueError(f"the {role} has no SOR code")
    return org.sor


def _organization(org_id: str, org: OrgIdentifiers, role: str) -> dict[str, Any]:
    sor = _require_sor(org, role)
    if not org.gln:
        raise ValueError(f"the {role} has no GLN")
    resource: dict[str, Any] = {
        "resourceType": "Organization",
        "id": org_id,
        "identifier": [
            {"system": GLN_SYSTEM, "value": org.gln},
            {"system": SOR_SYSTEM, "value": sor},
        ],
    }
    if org.name is not None:
        resource["name"] = org.name
    return resource


def _message_header(
    *,
    message_id: str,
    event: str,
    sender_ref: str,
    sender_sor: str,
    receiver_ref: str,
    receiver_sor: str,
    definition: str,
    focus: str | None,
) -> dict[str, Any]:
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": message_id,
        "eventCoding": {"system": EVENT_CODES_SYSTEM, "code": event},
        "destination": [
            {
                "extension": [
                    {
                        "url": DESTINATION_USE_EXTENSION_URL,
                        "valueCoding": {
                            "system": DESTINATION_USE_SYSTEM,
                            "code": DESTINATION_PRIMARY,
                        },
                    }
                ],
                "endpoint": f"{SOR_ENDPOINT_PREFIX}{receiver_sor}",
                "receiver": {"reference": receiver_ref},
            }
        ],
        "sender": {"reference": sender_ref},
        "source": {"endpoint": f"{SOR_ENDPOINT_PREFIX}{sender_sor}"},
    }
    if focus is not None:
        header["focus"] = [{"reference": focus}]
    header["definition"] = definition
    return header


def payload_segment(
    when: str,
    payload_id: str,
    author_ref: str,
    content: dict[str, Any],
    *,
    extra: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One message segment: its date and identifier extensions (and ``extra`` ones), then
    its content (``contentString`` or ``contentAttachment``)."""
    return {
        "extension": [
            {"url": MEDCOM_DATETIME_EXTENSION_URL, "valueDateTime": when},
            {
                "url": MEDCOM_IDENTIFIER_EXTENSION_URL,
                "valueIdentifier": {
                    "value": f"urn:uuid:{payload_id}",
                    "assigner": {"reference": author_ref},
                },
            },
            *(extra or []),
        ],
        **content,
    }


_payload = payload_segment


def _provenance(
    *,
    provenance_id: str,
    message_id: str,
    when: str,
    activity: str,
    agent_ref: str,
    revision_of: str | None,
    sources: list[str],
) -> dict[str, Any]:
    entity: list[dict[str, Any]] = []
    if revision_of is not None:
        entity.append(
            {"role": ENTITY_ROLE_REVISION, "what": {"reference": f"MessageHeader/{revision_of}"}}
        )
    entity += [
        {"role": "source", "what": {"identifier": {"value": f"urn:uuid:{s}"}}} for s in sources
    ]
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": f"MessageHeader/{message_id}"}],
        "occurredDateTime": when,
        "recorded": when,
        "activity": {"coding": [{"system": ACTIVITY_CODES_SYSTEM, "code": activity}]},
        "agent": [{"who": {"reference": agent_ref}}],
    }
    if entity:
        provenance["entity"] = entity
    return provenance


def _bundle(
    bundle_id: str, when: str, base: str, resources: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "message",
        "timestamp": when,
        "entry": [
            {"fullUrl": _full_url(base, bundle_id, i, r), "resource": r}
            for i, r in enumerate(resources)
        ],
    }


def _full_url(base: str, bundle_id: str, index: int, resource: dict[str, Any]) -> str:
    if "id" in resource:
        return f"{base}/{resource['resourceType']}/{resource['id']}"
    # A copied resource without an id (allowed in FHIR): give its entry a stable urn.
    return f"urn:uuid:{_derived_id(bundle_id, f'entry/{index}')}"


def _reference_to(resource: Organization | Patient) -> str:
    if resource.id is None:
        raise ValueError(f"the {resource.resourceType} has no id")
    return f"{resource.resourceType}/{resource.id}"


def _organization_at(bundle: Bundle, ref: Reference | None, role: str) -> Organization:
    found = bundle.resolve(ref.reference if ref is not None else None)
    if not isinstance(found, Organization):
        raise ValueError(f"the message's {role} Organization is not in its Bundle")
    return found


def _focus_communication(bundle: Bundle, header: MessageHeader) -> Communication:
    for ref in header.focus:
        found = bundle.resolve(ref.reference)
        if isinstance(found, Communication):
            return found
    communications = bundle.resources(Communication)
    if not communications:
        raise ValueError("the request has no Communication")
    return communications[0]
