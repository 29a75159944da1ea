"""The FHIR models of a MedCom message Bundle, as far as the gateway reads them.

They parse FHIR coming from outside: unknown elements are kept (``extra="allow"``), the
models are frozen, and resource types we do not model (Practitioner, PractitionerRole, ...)
parse as :class:`OtherResource`. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
)

from attest_gateway.core.errors import ErrorCode
from attest_gateway.medcom.codes import ResponseCode
from attest_gateway.medcom.errors import BundleError


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
            b64decode(value)
        return value


class FhirResource(FhirElement):
    """Base of the resources. Its ``repr`` shows only type and id: resources carry CPR and text."""

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        yield "resourceType", getattr(self, "resourceType", None)
        yield "id", getattr(self, "id", None)


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
            raise BundleError(ErrorCode.MISSING_MESSAGE_HEADER, "entry[0] is not a MessageHeader")
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


FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def b64decode(value: str) -> bytes:
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def parse_fhir_date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None
