"""MedCom-like FHIR messages: parse a message Bundle, check the MedCom rules, read it out.

The gateway carries attest requests, attest replies and acknowledgements as FHIR Bundles of
type ``message``, shaped on MedCom Messaging 4.0, CareCommunication 5.0 and
Acknowledgement 2.0. **No MedCom profile exists for attests**, so request and reply are
modelled on CareCommunication: a Communication with a category (``other`` plus a project
coding in :data:`ATTEST_TYPE_SYSTEM` for the LÆ type), a text payload and, in replies, a PDF
attachment. Conversation, case kind and reply deadline ride in
``Communication.identifier``, a :data:`CASE_KIND_SYSTEM` coding and the
:data:`REPLY_DEADLINE_EXTENSION_URL` extension.

The models parse FHIR coming from outside: unknown elements are kept (``extra="allow"``), the
models are frozen, and resource types we do not model (Practitioner, PractitionerRole, ...)
parse as :class:`OtherResource`. :func:`parse_bundle` raises only :class:`BundleError`, whose
detail names locations and error types, never input values (the input carries CPR numbers
and health text). :func:`read_message` turns a parsed Bundle into plain values
(:class:`MessageInfo`).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

# --- Code systems, identifier systems and URLs ------------------------------------------

SOR_SYSTEM: Final = "urn:oid:1.2.208.176.1.1"
GLN_SYSTEM: Final = "https://www.gs1.org/gln"
GLN_SYSTEMS: Final = frozenset(
    {"https://www.gs1.org/gln", "http://www.gs1.org/gln", "urn:oid:1.3.88"}
)
CPR_SYSTEM: Final = "urn:oid:1.2.208.176.1.2"

_TERMINOLOGY: Final = "http://medcomfhir.dk/ig/terminology/CodeSystem"
EVENT_CODES_SYSTEM: Final = f"{_TERMINOLOGY}/medcom-messaging-eventCodes"
ACTIVITY_CODES_SYSTEM: Final = f"{_TERMINOLOGY}/medcom-messaging-activityCodes"
DESTINATION_USE_SYSTEM: Final = f"{_TERMINOLOGY}/medcom-messaging-destinationUse"
CATEGORY_CODES_SYSTEM: Final = f"{_TERMINOLOGY}/medcom-careCommunication-categoryCodes"
ACK_ERROR_CODES_SYSTEM: Final = f"{_TERMINOLOGY}/medcom-acknowledgement-error-codes"
HL7_OPERATION_OUTCOME_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/operation-outcome"

DESTINATION_USE_EXTENSION_URL: Final = (
    "http://medcomfhir.dk/ig/messaging/StructureDefinition/medcom-messaging-destinationUseExtension"
)
MEDCOM_DATETIME_EXTENSION_URL: Final = (
    "http://medcomfhir.dk/ig/core/StructureDefinition/medcom-core-datetime-extension"
)
MEDCOM_IDENTIFIER_EXTENSION_URL: Final = (
    "http://medcomfhir.dk/ig/core/StructureDefinition/medcom-core-identifier-extension"
)
CARE_COMMUNICATION_DEFINITION: Final = (
    "http://medcomfhir.dk/ig/messagedefinitions/MessageDefinition/"
    "MedComCareCommunicationMessageDefinition|5.0"
)
ACKNOWLEDGEMENT_DEFINITION: Final = (
    "http://medcomfhir.dk/ig/messagedefinitions/MessageDefinition/"
    "MedComAcknowledgementMessageDefinition|2.0"
)
SOR_ENDPOINT_PREFIX: Final = "https://sor2.sum.dsdn.dk/#id="

# Project-specific: MedCom has no attest profile, so these are ours.
ATTEST_TYPE_SYSTEM: Final = "urn:attest-gateway:attest-type"
CASE_KIND_SYSTEM: Final = "urn:attest-gateway:case-kind"
# Tells a reminder of a request (a new care-communication message too) from a new request.
MESSAGE_KIND_SYSTEM: Final = "urn:attest-gateway:message-kind"
REMINDER_CODE: Final = "reminder"
REPLY_DEADLINE_EXTENSION_URL: Final = "urn:attest-gateway:reply-deadline"

EVENT_CARE_COMMUNICATION: Final = "care-communication-message"
EVENT_ACKNOWLEDGEMENT: Final = "acknowledgement-message"
EVENT_CODES: Final = frozenset(
    {
        "empty-message",
        EVENT_CARE_COMMUNICATION,
        "hospital-notification-message",
        EVENT_ACKNOWLEDGEMENT,
        "homecareobservation-message",
    }
)

ACTIVITY_NEW: Final = "new-message"
ACTIVITY_REPLY: Final = "reply-message"
ACTIVITY_FORWARD: Final = "forward-message"
ACTIVITY_ACKNOWLEDGEMENT: Final = "acknowledgement"
CATEGORY_OTHER: Final = "other"
DESTINATION_PRIMARY: Final = "primary"
ENTITY_ROLE_REVISION: Final = "revision"

ACK_ERROR_CODES: Final = frozenset(
    {
        "MSG_Receiver_Identifier_UNKNOWN",
        "MSG_Receiver_Identifier_MISSING",
        "MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE",
        "MSG_VALUESET_VALUE_UNKNOWN",
        "MSG_CodeSystem_VALUE_UNKNOWN",
        "MSG_Element_To_Long",
        "MSG_Datatype_Wrong",
        "MSG_Mailbox_Out_Of_Operation",
        "MSG_Damaged_durin_transport",
    }
)
"""The MedCom acknowledgement error codes (system :data:`ACK_ERROR_CODES_SYSTEM`)."""

HL7_ACK_ISSUE_CODES: Final = frozenset(
    {
        "MSG_ID_INVALID",
        "MSG_ID_TOO_LONG",
        "MSG_BAD_FORMAT",
        "MSG_BAD_SYNTAX",
        "MSG_DATE_FORMAT",
        "MSG_DUPLICATE_ID",
        "MSG_INVALID_ID",
        "MSG_JSON_OBJECT",
        "MSG_LOCAL_FAIL",
        "MSG_NO_MATCH",
        "MSG_NO_EXIST",
        "MSG_NO_SUMMARY",
        "MSG_PARAM_INVALID",
        "MSG_PARAM_NO_REPEAT",
        "MSG_PARAM_UNKNOWN",
        "MSG_RESOURCE_ID_MISMATCH",
        "MSG_RESOURCE_ID_FAIL",
        "MSG_RESOURCE_ID_MISSING",
        "MSG_RESOURCE_NOT_ALLOWED",
        "MSG_RESOURCE_REQUIRED",
        "MSG_RESOURCE_TYPE_MISMATCH",
        "MSG_TRANSACTION_DUPLICATE_ID",
        "MSG_TRANSACTION_MISSING_ID",
        "MSG_UNKNOWN_TYPE",
        "MSG_VERSION_AWARE",
        "MSG_VERSION_AWARE_CONFLICT",
        "MSG_VERSION_AWARE_URL",
        "MSG_WRONG_NS",
    }
)
"""The HL7 operation-outcome codes the MedCom acknowledgement issue-details ValueSet allows
(system :data:`HL7_OPERATION_OUTCOME_SYSTEM`)."""

ResponseCode = Literal["ok", "transient-error", "fatal-error"]
MedcomMessageType = Literal[
    "attest-request",
    "attest-reminder",
    "attest-reply",
    "acknowledgement",
    "other-care-communication",
]

# --- FHIR elements -----------------------------------------------------------------------


class FhirElement(BaseModel):
    """Base of every FHIR model here: frozen, unknown elements kept, inputs hidden in errors."""

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)


_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _iso_instant(value: object) -> object:
    """FHIR ``instant``: an ISO 8601 string with seconds and a zone (no Unix numbers)."""
    if isinstance(value, str) and not _INSTANT.match(value):
        raise ValueError("not an ISO 8601 date-time with a time zone")
    if not isinstance(value, str | datetime):
        raise ValueError("not an ISO 8601 date-time string")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_instant)]
"""A timezone-aware datetime parsed from a FHIR ``instant`` string."""


class Coding(FhirElement):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class CodeableConcept(FhirElement):
    coding: list[Coding] = Field(default_factory=list)
    text: str | None = None


class Identifier(FhirElement):
    system: str | None = None
    value: str | None = None


class Reference(FhirElement):
    reference: str | None = None
    identifier: Identifier | None = None
    display: str | None = None


class Extension(FhirElement):
    """An extension; the value[x] kinds we read are typed, the rest stay as extra elements."""

    url: str
    valueCoding: Coding | None = None
    valueString: str | None = None
    valueDate: str | None = None
    valueDateTime: str | None = None
    valueIdentifier: Identifier | None = None
    valueReference: Reference | None = None


class HumanName(FhirElement):
    use: str | None = None
    text: str | None = None
    family: str | None = None
    given: list[str] = Field(default_factory=list)


class FhirAttachment(FhirElement):
    """FHIR ``Attachment``; ``data`` is base64 (checked, decoded by :func:`read_message`)."""

    contentType: str | None = None
    data: str | None = None
    title: str | None = None

    @field_validator("data")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            _b64decode(value)
        return value


class FhirResource(FhirElement):
    """Base of the resources. Its ``repr`` shows only type and id: resources carry CPR and text."""

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        yield "resourceType", getattr(self, "resourceType", None)
        yield "id", getattr(self, "id", None)


# --- Resources ---------------------------------------------------------------------------


class MessageHeaderDestination(FhirElement):
    extension: list[Extension] = Field(default_factory=list)
    endpoint: str
    receiver: Reference | None = None


class MessageHeaderSource(FhirElement):
    endpoint: str


class MessageHeaderResponse(FhirElement):
    identifier: str
    code: ResponseCode
    details: Reference | None = None


class MessageHeader(FhirResource):
    resourceType: Literal["MessageHeader"]
    id: str
    eventCoding: Coding
    destination: list[MessageHeaderDestination] = Field(default_factory=list)
    sender: Reference | None = None
    source: MessageHeaderSource
    focus: list[Reference] = Field(default_factory=list)
    response: MessageHeaderResponse | None = None
    definition: str | None = None


class Organization(FhirResource):
    resourceType: Literal["Organization"]
    id: str | None = None
    identifier: list[Identifier] = Field(default_factory=list)
    name: str | None = None


class Patient(FhirResource):
    resourceType: Literal["Patient"]
    id: str | None = None
    identifier: list[Identifier] = Field(default_factory=list)
    name: list[HumanName] = Field(default_factory=list)


class CommunicationPayload(FhirElement):
    extension: list[Extension] = Field(default_factory=list)
    contentString: str | None = None
    contentAttachment: FhirAttachment | None = None


class Communication(FhirResource):
    resourceType: Literal["Communication"]
    id: str | None = None
    identifier: list[Identifier] = Field(default_factory=list)
    extension: list[Extension] = Field(default_factory=list)
    status: str
    category: list[CodeableConcept] = Field(default_factory=list)
    subject: Reference | None = None
    topic: CodeableConcept | None = None
    reasonCode: list[CodeableConcept] = Field(default_factory=list)
    payload: list[CommunicationPayload] = Field(default_factory=list)


class ProvenanceAgent(FhirElement):
    who: Reference


class ProvenanceEntity(FhirElement):
    role: str
    what: Reference


class Provenance(FhirResource):
    resourceType: Literal["Provenance"]
    id: str | None = None
    target: list[Reference] = Field(min_length=1)
    occurredDateTime: str | None = None
    recorded: Instant
    activity: CodeableConcept | None = None
    agent: list[ProvenanceAgent] = Field(default_factory=list)
    entity: list[ProvenanceEntity] = Field(default_factory=list)


class OperationOutcomeIssue(FhirElement):
    severity: str
    code: str
    details: CodeableConcept | None = None
    diagnostics: str | None = None


class OperationOutcome(FhirResource):
    resourceType: Literal["OperationOutcome"]
    id: str | None = None
    issue: list[OperationOutcomeIssue] = Field(min_length=1)


class OtherResource(FhirResource):
    """Any resource type not modelled above (Practitioner, PractitionerRole, ...), kept whole."""

    resourceType: str
    id: str | None = None


_MODELLED: Final = frozenset(
    {"MessageHeader", "Organization", "Patient", "Communication", "Provenance", "OperationOutcome"}
)
_OTHER_TAG: Final = "other"


def _resource_tag(value: Any) -> str | None:
    """Discriminator: the modelled resource type, else ``other``; None for non-objects."""
    if isinstance(value, dict):
        resource_type = value.get("resourceType")
    elif isinstance(value, FhirResource):
        resource_type = getattr(value, "resourceType", None)
    else:
        return None
    if not isinstance(resource_type, str):  # e.g. a list: OtherResource rejects it, typed
        return _OTHER_TAG
    return resource_type if resource_type in _MODELLED else _OTHER_TAG


Resource = Annotated[
    Annotated[MessageHeader, Tag("MessageHeader")]
    | Annotated[Organization, Tag("Organization")]
    | Annotated[Patient, Tag("Patient")]
    | Annotated[Communication, Tag("Communication")]
    | Annotated[Provenance, Tag("Provenance")]
    | Annotated[OperationOutcome, Tag("OperationOutcome")]
    | Annotated[OtherResource, Tag(_OTHER_TAG)],
    Discriminator(_resource_tag),
]
"""Any resource in a Bundle entry, as the model for its ``resourceType``."""

_R = TypeVar("_R", bound=FhirResource)


class BundleEntry(FhirElement):
    fullUrl: str | None = None
    resource: Resource


class Bundle(FhirResource):
    resourceType: Literal["Bundle"]
    id: str
    type: str
    timestamp: Instant
    entry: list[BundleEntry] = Field(default_factory=list)

    def resources(self, kind: builtins.type[_R]) -> list[_R]:
        """The entries' resources of one model class, in Bundle order."""
        return [e.resource for e in self.entry if isinstance(e.resource, kind)]

    @property
    def message_header(self) -> MessageHeader:
        """entry[0]'s MessageHeader (guaranteed by :func:`parse_bundle`)."""
        first = self.entry[0].resource if self.entry else None
        if not isinstance(first, MessageHeader):
            raise BundleError("missing-message-header", "entry[0] is not a MessageHeader")
        return first

    def resolve(self, reference: str | None) -> Resource | None:
        """The bundled resource a reference points at: by fullUrl, else by ``Type/id``."""
        if not reference:
            return None
        for e in self.entry:
            if e.fullUrl is not None and e.fullUrl == reference:
                return e.resource
        parts = reference.split("/")
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) < 2:
            return None
        resource_type, resource_id = parts[-2], parts[-1]
        for e in self.entry:
            if e.resource.resourceType == resource_type and e.resource.id == resource_id:
                return e.resource
        return None


def to_fhir_json(model: FhirElement) -> dict[str, Any]:
    """FHIR JSON of a parsed model: the elements that were present, unknown ones included."""
    return model.model_dump(mode="json", exclude_unset=True, exclude_none=True)


# --- Errors --------------------------------------------------------------------------------

BUNDLE_ERROR_CODES: Final = frozenset(
    {
        "invalid-bundle",
        "invalid-id",
        "bundle-not-message",
        "missing-message-header",
        "unknown-event-code",
        "missing-provenance",
        "missing-organization",
        "missing-identifier",
        "missing-communication",
        "missing-patient",
        "missing-response",
        "missing-operation-outcome",
        "too-deeply-nested",
    }
)


class BundleError(ValueError):
    """A Bundle that is not a valid MedCom-like message.

    ``code`` is stable (kebab-case, one of :data:`BUNDLE_ERROR_CODES`); ``detail`` names
    locations and error types only, never input values.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


_SAFE_LOC = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-\[\]\(\)\., ]{0,80}$")
_MAX_REPORTED_ERRORS: Final = 5


def _describe(exc: ValidationError) -> str:
    """Locations and error types of a ValidationError, no input values."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for err in errors[:_MAX_REPORTED_ERRORS]:
        loc = ".".join(
            str(p) if isinstance(p, int) or _SAFE_LOC.match(p) else "?" for p in err["loc"]
        )
        parts.append(f"{loc or '<root>'}: {err['type']}")
    more = len(errors) - _MAX_REPORTED_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


# --- Parsing -------------------------------------------------------------------------------


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

MAX_JSON_DEPTH: Final = 64
"""The deepest nesting of objects and arrays a message may have. A MedCom message nests about
a dozen levels (Bundle → entry → resource → extension → extension → value → coding); the
limit leaves room for that and stops a hostile document long before a JSON encoder's or a
validator's own recursion limit (orjson's is 254)."""


def json_depth_exceeds(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether decoded JSON nests objects and arrays more than `limit` levels deep.
    Iterative, so that the check itself cannot hit Python's recursion limit."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_bundle(data: object) -> Bundle:
    """Validate a FHIR message Bundle (decoded JSON) and the MedCom rules; raise BundleError."""
    if json_depth_exceeds(data):
        raise BundleError(
            "too-deeply-nested", f"the Bundle nests more than {MAX_JSON_DEPTH} levels deep"
        )
    try:
        bundle = Bundle.model_validate(data)
    except ValidationError as exc:
        raise BundleError("invalid-bundle", _describe(exc)) from exc
    check_medcom_rules(bundle)
    return bundle


def parse_bundle_json(raw: str | bytes) -> Bundle:
    """Like :func:`parse_bundle`, from JSON text (decoded first, so that the depth limit
    holds for both)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BundleError("invalid-bundle", "<root>: json_invalid") from exc
    return parse_bundle(data)


def check_medcom_rules(bundle: Bundle) -> None:
    """The MedCom messaging rules on an already structurally valid Bundle."""
    if bundle.type != "message":
        raise BundleError("bundle-not-message", "Bundle.type must be 'message'")
    header = bundle.message_header
    for where, value in (("Bundle.id", bundle.id), ("MessageHeader.id", header.id)):
        if not isinstance(value, str) or not _FHIR_ID.fullmatch(value):
            raise BundleError("invalid-id", f"{where} must be a FHIR id (1-64 of A-Z a-z 0-9 - .)")
    if (
        header.eventCoding.system != EVENT_CODES_SYSTEM
        or header.eventCoding.code not in EVENT_CODES
    ):
        raise BundleError(
            "unknown-event-code", "MessageHeader.eventCoding is not a MedCom messaging event code"
        )
    if not bundle.resources(Provenance):
        raise BundleError("missing-provenance", "the Bundle has no Provenance")

    _require_organization(bundle, header.sender, "MessageHeader.sender")
    if not header.destination:
        raise BundleError("missing-organization", "MessageHeader.destination is empty")
    for i, destination in enumerate(header.destination):
        _require_organization(bundle, destination.receiver, f"MessageHeader.destination[{i}]")

    event = header.eventCoding.code
    if event == EVENT_CARE_COMMUNICATION:
        communication = _communication(bundle, header)
        if communication is None:
            raise BundleError("missing-communication", "MessageHeader.focus has no Communication")
        subject = bundle.resolve(communication.subject.reference if communication.subject else None)
        if not isinstance(subject, Patient):
            raise BundleError(
                "missing-patient", "Communication.subject is not a Patient in the Bundle"
            )
        for j, ext in enumerate(communication.extension):
            if ext.url == REPLY_DEADLINE_EXTENSION_URL and _parse_date(ext.valueDate) is None:
                raise BundleError(
                    "invalid-bundle", f"Communication.extension[{j}]: reply deadline is not a date"
                )
    elif event == EVENT_ACKNOWLEDGEMENT:
        if header.response is None:
            raise BundleError("missing-response", "an acknowledgement needs MessageHeader.response")
        if header.response.code != "ok" and not bundle.resources(OperationOutcome):
            raise BundleError(
                "missing-operation-outcome",
                "an acknowledgement that is not ok needs an OperationOutcome",
            )


def _require_organization(bundle: Bundle, ref: Reference | None, where: str) -> Organization:
    org = bundle.resolve(ref.reference if ref is not None else None)
    if not isinstance(org, Organization):
        raise BundleError("missing-organization", f"{where} is not an Organization in the Bundle")
    ids = org_identifiers(org)
    if ids.sor is None:
        raise BundleError("missing-identifier", f"{where}: the Organization has no SOR identifier")
    if ids.gln is None:
        raise BundleError("missing-identifier", f"{where}: the Organization has no GLN identifier")
    return org


# --- Reading -------------------------------------------------------------------------------


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
      extension.
    - ``cpr``: the subject Patient's CPR identifier; ``texts``: payload contentStrings in
      order; ``attachments``: decoded payload attachments in order.
    - ``issues``: OperationOutcome issue codes (the details coding, e.g. a MedCom
      acknowledgement error code, else issue.code); ``diagnostics``: their free texts.

    ``cpr``, ``topic``, ``texts``, ``attachments`` and ``diagnostics`` are left out of ``repr``.
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
    attachments: list[Attachment] = field(repr=False)
    issues: list[str]
    diagnostics: list[str] = field(repr=False)


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
    :data:`MESSAGE_KIND_SYSTEM` ``reminder`` coding) and ``attest-reply`` when it is
    ``reply-message``; anything else
    (forwards, other MedCom events) is ``other-care-communication``. The message type does not
    depend on an attest type being present (the published examples have none).
    """
    header = bundle.message_header
    event = header.eventCoding.code or ""
    provenance = own_provenance(bundle)
    activity = _provenance_activity(provenance)

    receiver_ref = header.destination[0].receiver if header.destination else None
    communication = _communication(bundle, header)
    message_type: MedcomMessageType
    if event == EVENT_ACKNOWLEDGEMENT:
        message_type = "acknowledgement"
    elif event == EVENT_CARE_COMMUNICATION and activity == ACTIVITY_NEW:
        marker = _coding(communication, MESSAGE_KIND_SYSTEM)
        is_reminder = marker is not None and marker.code == REMINDER_CODE
        message_type = "attest-reminder" if is_reminder else "attest-request"
    elif event == EVENT_CARE_COMMUNICATION and activity == ACTIVITY_REPLY:
        message_type = "attest-reply"
    else:
        message_type = "other-care-communication"

    attest = _coding(communication, ATTEST_TYPE_SYSTEM)
    case_kind = _coding(communication, CASE_KIND_SYSTEM)

    texts: list[str] = []
    attachments: list[Attachment] = []
    deadline: date | None = None
    conversation_id: str | None = None
    cpr: str | None = None
    if communication is not None:
        for item in communication.payload:
            if item.contentString is not None:
                texts.append(item.contentString)
            att = item.contentAttachment
            if att is not None and att.data is not None:
                attachments.append(Attachment(att.contentType, att.title, _b64decode(att.data)))
        for ext in communication.extension:
            if ext.url == REPLY_DEADLINE_EXTENSION_URL:
                deadline = _parse_date(ext.valueDate)
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
        attachments=attachments,
        issues=issues,
        diagnostics=diagnostics,
    )


ATTACHMENT_MIME_TYPES: Final = frozenset(
    {"application/pdf", "image/gif", "image/jpeg", "image/png", "image/tiff", "image/bmp"}
)
"""MedCom's attachment MIME types (ValueSet medcom-core-attachmentMimeTypes 1.8.1, bound
`required` to CareCommunication's attachment contentType)."""

# How each allowed type's content begins. A PDF reader accepts "%PDF-" within the first
# kilobyte; the image formats start with their signature.
_SIGNATURES: Final[dict[str, tuple[bytes, ...]]] = {
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "image/bmp": (b"BM",),
}
_PDF_MARKER: Final = b"%PDF-"
_PDF_MARKER_WITHIN: Final = 1024

ATTACHMENT_ERROR_CODES: Final = frozenset(
    {"unsupported-attachment-type", "attachment-without-data", "attachment-content-mismatch"}
)


def _content_matches(content_type: str, data: bytes) -> bool:
    if content_type == "application/pdf":
        return _PDF_MARKER in data[:_PDF_MARKER_WITHIN]
    return data.startswith(_SIGNATURES[content_type])


def check_attachments(bundle: Bundle) -> None:
    """Every attachment of the message's Communication is inline data of a MedCom MIME type
    (:data:`ATTACHMENT_MIME_TYPES`) whose content is of that type; raise BundleError.

    The receiving side of the gateway (a job centre's case system) shows what it gets: a
    document labelled as something else, or of a type MedCom does not allow (HTML, say), is
    refused here. Attachments by URL are refused too: the job centre cannot reach a URL on
    the health network, and the gateway does not fetch on its behalf."""
    communication = _communication(bundle, bundle.message_header)
    payloads = communication.payload if communication is not None else []
    for index, item in enumerate(payloads):
        att = item.contentAttachment
        if att is None:
            continue
        where = f"Communication.payload[{index}].contentAttachment"
        content_type = (att.contentType or "").strip().lower()
        if content_type not in ATTACHMENT_MIME_TYPES:
            raise BundleError(
                "unsupported-attachment-type",
                f"{where}.contentType is not one of MedCom's attachment types "
                f"({', '.join(sorted(ATTACHMENT_MIME_TYPES))})",
            )
        if att.data is None:
            raise BundleError(
                "attachment-without-data", f"{where} has no data: send the document inline"
            )
        if not _content_matches(content_type, _b64decode(att.data)):
            raise BundleError(
                "attachment-content-mismatch", f"{where}.data is not of its contentType"
            )


def message_id_from_reference(reference: str | None) -> str | None:
    """``MessageHeader/<id>`` (relative, absolute or ``urn:uuid:<id>``) → ``<id>``."""
    if not reference:
        return None
    if reference.startswith("urn:uuid:"):
        return reference.removeprefix("urn:uuid:") or None
    parts = reference.split("/")
    if len(parts) >= 2 and parts[-2] == "MessageHeader" and parts[-1]:
        return parts[-1]
    return None


# --- Helpers -------------------------------------------------------------------------------


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def _parse_date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
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


def _communication(bundle: Bundle, header: MessageHeader) -> Communication | None:
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


def _coding(communication: Communication | None, system: str) -> Coding | None:
    if communication is None:
        return None
    for concept in _concepts(communication):
        for coding in concept.coding:
            if coding.system == system and coding.code:
                return coding
    return None


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
