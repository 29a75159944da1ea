"""Read a parsed MedCom Bundle out into plain values (:class:`MessageInfo`): parties, the
citizen's CPR number, conversation, attest type, text and attachments. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime

from attest_gateway.medcom.codes import (
    ACTIVITY_CODES_SYSTEM,
    ACTIVITY_NEW,
    ACTIVITY_REPLY,
    ATTEST_TYPE_SYSTEMS,
    CANCELLATION_CODE,
    CASE_KIND_SYSTEMS,
    CITIZEN_CONSENT_EXTENSION_URL,
    CPR_SYSTEM,
    ENTITY_ROLE_REVISION,
    EVENT_ACKNOWLEDGEMENT,
    EVENT_CARE_COMMUNICATION,
    GLN_SYSTEMS,
    LEGAL_BASIS_EXTENSION_URL,
    MEDCOM_IDENTIFIER_EXTENSION_URL,
    MESSAGE_KIND_SYSTEMS,
    REMINDER_CODE,
    REPLY_DEADLINE_EXTENSION_URLS,
    REPLY_KIND_EXTENSION_URL,
    REPLY_KIND_SYSTEM,
    SOR_SYSTEM,
    SUGGESTED_ATTEST_TYPE_EXTENSION_URL,
    MedcomMessageType,
    ResponseCode,
)
from attest_gateway.medcom.model import (
    Bundle,
    CodeableConcept,
    Coding,
    Communication,
    CommunicationPayload,
    Extension,
    Identifier,
    MessageHeader,
    OperationOutcome,
    Organization,
    Patient,
    Provenance,
    Reference,
    b64decode,
    parse_fhir_date,
)


@dataclass(frozen=True, slots=True)
class OrgIdentifiers:
    """An organisation as the gateway sees it: name, SOR code and GLN (EAN) location number."""

    name: str | None
    sor: str | None
    gln: str | None


@dataclass(frozen=True, slots=True)
class Attachment:
    """A decoded payload attachment (e.g. the attest PDF)."""

    content_type: str | None
    title: str | None
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Everything the gateway needs from one message, as plain values.

    - ``message_id``: MessageHeader.id (the message's identity); ``bundle_id``: Bundle.id
      (new on every send); ``timestamp``: Bundle.timestamp.
    - ``message_type``: see :func:`read_message`; ``event_code`` and ``activity`` (of the newest
      Provenance) are what it is derived from.
    - ``sender``/``receiver``: the Organizations of MessageHeader.sender and of the first
      destination's receiver.
    - ``replied_to``: the MessageHeader id the newest Provenance revises (role ``revision``);
      set for replies and for acknowledgements.
    - ``response_to``/``response_code``: MessageHeader.response (acknowledgements).
    - ``conversation_id``: Communication.identifier without ``urn:uuid:``; ``attest_type`` and
      ``attest_title``: code and display of the :data:`ATTEST_TYPE_SYSTEM` coding;
      ``case_kind``: code of the :data:`CASE_KIND_SYSTEM` coding; ``topic``:
      Communication.topic.text; ``reply_deadline``: the :data:`REPLY_DEADLINE_EXTENSION_URL`
      extension (of a text segment, or of the Communication in the first shape).
    - ``cpr``: the subject Patient's CPR identifier; ``texts``: payload contentStrings in
      order (in a reply, the earlier segments first); ``new_texts``: the texts of the
      segments this message added (:func:`new_segments`); ``attachments``: decoded payload
      attachments in order.
    - ``issues``: OperationOutcome issue codes (the details coding, e.g. a MedCom
      acknowledgement error code, else issue.code); ``diagnostics``: their free texts.
    - ``reply_kind``: the code of the reply-kind extension of a segment this message added
      (None: none, an attest); ``suggested_attest_type``: the code of the
      suggested-attest-type extension there; ``consent_date`` and ``legal_basis``: the
      citizen-consent and legal-basis extensions of the text segments.

    ``cpr``, ``topic``, ``texts``, ``new_texts``, ``attachments`` and ``diagnostics`` are left
    out of ``repr``.
    """

    message_id: str
    bundle_id: str
    timestamp: datetime
    message_type: MedcomMessageType
    event_code: str
    activity: str | None
    sender: OrgIdentifiers
    receiver: OrgIdentifiers
    replied_to: str | None
    response_to: str | None
    response_code: ResponseCode | None
    conversation_id: str | None
    attest_type: str | None
    attest_title: str | None
    case_kind: str | None
    topic: str | None = field(repr=False)
    reply_deadline: date | None
    cpr: str | None = field(repr=False)
    texts: list[str] = field(repr=False)
    new_texts: list[str] = field(repr=False)
    attachments: list[Attachment] = field(repr=False)
    issues: list[str]
    diagnostics: list[str] = field(repr=False)
    reply_kind: str | None = None
    suggested_attest_type: str | None = None
    consent_date: date | None = None
    legal_basis: str | None = None


def org_identifiers(org: Organization) -> OrgIdentifiers:
    """Name, SOR code and GLN (from any of :data:`GLN_SYSTEMS`) of an Organization."""
    return OrgIdentifiers(
        name=org.name,
        sor=_identifier(org.identifier, {SOR_SYSTEM}),
        gln=_identifier(org.identifier, GLN_SYSTEMS),
    )


def own_provenance(bundle: Bundle) -> Provenance | None:
    """The newest Provenance: the one targeting this message's MessageHeader (latest
    ``recorded`` if several), else the latest recorded of all."""
    header = bundle.message_header
    provenances = bundle.resources(Provenance)
    own = [p for p in provenances if any(bundle.resolve(t.reference) is header for t in p.target)]
    candidates = own or provenances
    if not candidates:
        return None
    return max(enumerate(candidates), key=lambda ip: (ip[1].recorded, ip[0]))[1]


def read_message(bundle: Bundle) -> MessageInfo:
    """Read a Bundle that :func:`parse_bundle` accepted into a :class:`MessageInfo`.

    ``message_type``: ``acknowledgement`` for event ``acknowledgement-message``; for
    ``care-communication-message``, ``attest-request`` when the newest Provenance's activity
    is ``new-message`` (``attest-reminder`` if the Communication carries the
    :data:`MESSAGE_KIND_SYSTEM` ``reminder`` coding, ``attest-cancellation`` if it has the
    ``cancellation`` one) and ``attest-reply`` when it is
    ``reply-message``; anything else
    (forwards, other MedCom events) is ``other-care-communication``. The message type does not
    depend on an attest type being present (the published examples have none).
    """
    header = bundle.message_header
    event = header.eventCoding.code or ""
    provenance = own_provenance(bundle)
    activity = _provenance_activity(provenance)

    receiver_ref = header.destination[0].receiver if header.destination else None
    communication = message_communication(bundle, header)
    message_type: MedcomMessageType
    if event == EVENT_ACKNOWLEDGEMENT:
        message_type = "acknowledgement"
    elif event == EVENT_CARE_COMMUNICATION and activity == ACTIVITY_NEW:
        marker = communication_coding(communication, MESSAGE_KIND_SYSTEMS)
        kind = marker.code if marker is not None else None
        if kind == REMINDER_CODE:
            message_type = "attest-reminder"
        elif kind == CANCELLATION_CODE:
            message_type = "attest-cancellation"
        else:
            message_type = "attest-request"
    elif event == EVENT_CARE_COMMUNICATION and activity == ACTIVITY_REPLY:
        message_type = "attest-reply"
    else:
        message_type = "other-care-communication"

    attest = communication_coding(communication, ATTEST_TYPE_SYSTEMS)
    case_kind = communication_coding(communication, CASE_KIND_SYSTEMS)

    texts: list[str] = []
    new_texts: list[str] = []
    attachments: list[Attachment] = []
    deadline: date | None = None
    conversation_id: str | None = None
    cpr: str | None = None
    reply_kind: str | None = None
    suggested: str | None = None
    consent_date: date | None = None
    legal_basis: str | None = None
    if communication is not None:
        for item in communication.payload:
            if item.contentString is not None:
                texts.append(item.contentString)
            for ext in item.extension:
                if ext.url == CITIZEN_CONSENT_EXTENSION_URL and ext.valueDate is not None:
                    consent_date = parse_fhir_date(ext.valueDate)
                elif ext.url == LEGAL_BASIS_EXTENSION_URL and ext.valueString is not None:
                    legal_basis = ext.valueString
        added = new_segments(communication, provenance)
        new_texts = [item.contentString for item in added if item.contentString is not None]
        for item in added:
            for ext in item.extension:
                if ext.url == REPLY_KIND_EXTENSION_URL and ext.valueCoding is not None:
                    coding = ext.valueCoding
                    # A code of another system is no reply kind the gateway knows: "".
                    reply_kind = (coding.code or "") if coding.system == REPLY_KIND_SYSTEM else ""
                elif ext.url == SUGGESTED_ATTEST_TYPE_EXTENSION_URL and ext.valueCoding is not None:
                    suggested = ext.valueCoding.code
        for item in communication.payload:
            att = item.contentAttachment
            if att is not None and att.data is not None:
                attachments.append(Attachment(att.contentType, att.title, b64decode(att.data)))
        for ext in deadline_extensions(communication):
            deadline = parse_fhir_date(ext.valueDate)
        conversation_id = _conversation_id(communication)
        cpr = _cpr(bundle, communication)

    issues: list[str] = []
    diagnostics: list[str] = []
    for outcome in bundle.resources(OperationOutcome):
        for issue in outcome.issue:
            codes = [c.code for c in (issue.details.coding if issue.details else []) if c.code]
            issues.extend(codes or [issue.code])
            if issue.diagnostics is not None:
                diagnostics.append(issue.diagnostics)

    return MessageInfo(
        message_id=header.id,
        bundle_id=bundle.id,
        timestamp=bundle.timestamp,
        message_type=message_type,
        event_code=event,
        activity=activity,
        sender=_org_at(bundle, header.sender),
        receiver=_org_at(bundle, receiver_ref),
        replied_to=_revision_of(provenance),
        response_to=header.response.identifier if header.response else None,
        response_code=header.response.code if header.response else None,
        conversation_id=conversation_id,
        attest_type=attest.code if attest else None,
        attest_title=attest.display if attest else None,
        case_kind=case_kind.code if case_kind else None,
        topic=communication.topic.text if communication and communication.topic else None,
        reply_deadline=deadline,
        cpr=cpr,
        texts=texts,
        new_texts=new_texts,
        attachments=attachments,
        issues=issues,
        diagnostics=diagnostics,
        reply_kind=reply_kind,
        suggested_attest_type=suggested,
        consent_date=consent_date,
        legal_basis=legal_basis,
    )


def segment_identifier(segment: CommunicationPayload) -> str | None:
    """The value of a message segment's MedCom identifier extension (``urn:uuid:…``)."""
    for ext in segment.extension:
        if ext.url == MEDCOM_IDENTIFIER_EXTENSION_URL and ext.valueIdentifier is not None:
            return ext.valueIdentifier.value
    return None


def new_segments(
    communication: Communication, provenance: Provenance | None
) -> list[CommunicationPayload]:
    """The segments a message added: those whose identifier its own Provenance names as a
    ``source`` entity (MedCom: a reply repeats the earlier segments, and each message's
    Provenance names the segments it added). When that Provenance names none of the
    segments (older shapes, or a sender that names no sources), every segment counts as
    new."""
    sources = {
        entity.what.identifier.value
        for entity in (provenance.entity if provenance is not None else [])
        if entity.role == "source" and entity.what.identifier is not None
    }
    named = [p for p in communication.payload if segment_identifier(p) in sources]
    return named or list(communication.payload)


def message_id_from_reference(reference: str | None) -> str | None:
    """``MessageHeader/<id>`` → ``<id>``: relative or absolute, versioned or not
    (``…/MessageHeader/<id>/_history/<version>``), or ``urn:uuid:<id>``."""
    if not reference:
        return None
    if reference.startswith("urn:uuid:"):
        return reference.removeprefix("urn:uuid:") or None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == "MessageHeader" and parts[-1]:
        return parts[-1]
    return None


def _identifier(
    identifiers: Iterable[Identifier], systems: set[str] | frozenset[str]
) -> str | None:
    for ident in identifiers:
        if ident.system in systems and ident.value:
            return ident.value
    return None


def _org_at(bundle: Bundle, ref: Reference | None) -> OrgIdentifiers:
    org = bundle.resolve(ref.reference if ref is not None else None)
    if isinstance(org, Organization):
        return org_identifiers(org)
    return OrgIdentifiers(name=None, sor=None, gln=None)


def message_communication(bundle: Bundle, header: MessageHeader) -> Communication | None:
    for ref in header.focus:
        found = bundle.resolve(ref.reference)
        if isinstance(found, Communication):
            return found
    communications = bundle.resources(Communication)
    return communications[0] if communications else None


def _concepts(communication: Communication) -> Iterator[CodeableConcept]:
    yield from communication.category
    if communication.topic is not None:
        yield communication.topic
    yield from communication.reasonCode


def communication_coding(
    communication: Communication | None, systems: frozenset[str]
) -> Coding | None:
    """The first coding with a code in one of ``systems`` (a current system and its legacy
    ``urn:attest-gateway:`` one) in the category, topic or reasonCode."""
    if communication is None:
        return None
    for concept in _concepts(communication):
        for coding in concept.coding:
            if coding.system in systems and coding.code:
                return coding
    return None


def deadline_extensions(communication: Communication) -> list[Extension]:
    """The reply-deadline extensions: on a text segment (current shape) or on the
    Communication itself (the first shape)."""
    candidates = [*communication.extension]
    for item in communication.payload:
        candidates.extend(item.extension)
    return [e for e in candidates if e.url in REPLY_DEADLINE_EXTENSION_URLS]


def _conversation_id(communication: Communication) -> str | None:
    for ident in communication.identifier:
        if ident.value:
            return ident.value.removeprefix("urn:uuid:")
    return None


def _cpr(bundle: Bundle, communication: Communication) -> str | None:
    patient = bundle.resolve(communication.subject.reference if communication.subject else None)
    if not isinstance(patient, Patient):
        patients = bundle.resources(Patient)
        patient = patients[0] if patients else None
    if patient is None:
        return None
    return _identifier(patient.identifier, {CPR_SYSTEM})


def _provenance_activity(provenance: Provenance | None) -> str | None:
    if provenance is None or provenance.activity is None:
        return None
    codings = provenance.activity.coding
    for coding in codings:
        if coding.system == ACTIVITY_CODES_SYSTEM and coding.code:
            return coding.code
    return None


def _revision_of(provenance: Provenance | None) -> str | None:
    if provenance is None:
        return None
    for entity in provenance.entity:
        if entity.role == ENTITY_ROLE_REVISION:
            found = message_id_from_reference(entity.what.reference)
            if found is not None:
                return found
    return None
