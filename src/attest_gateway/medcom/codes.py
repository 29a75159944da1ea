"""The code systems, identifier systems, extension URLs and codes of MedCom messaging that
the gateway reads and writes.

The gateway carries attest requests, attest replies and acknowledgements as FHIR Bundles of
type ``message``, shaped on MedCom Messaging 4.0, CareCommunication 5.0 and
Acknowledgement 2.0. **No MedCom profile exists for attests**, so request and reply are
modelled on CareCommunication: a Communication with the one category MedCom allows
(``other``), a topic (text, and a coding in :data:`ATTEST_TYPE_SYSTEM` for the LÆ type), a
text payload and, in replies, a PDF attachment. Conversation, case kind and reply deadline
ride in ``Communication.identifier``, a :data:`CASE_KIND_SYSTEM` coding of ``reasonCode``
and the :data:`REPLY_DEADLINE_EXTENSION_URL` extension of the request's text segment. The
project's systems have canonical URLs defined in docs/fhir/; the ``urn:attest-gateway:``
systems of the first shape are still read.
"""

from __future__ import annotations

from typing import Final, Literal

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


MEDCOM_AUTHOR_EXTENSION_URL: Final = (
    "http://medcomfhir.dk/ig/core/StructureDefinition/medcom-core-practitioner-extension"
)
"""The author of a message segment: a reference to a bundled PractitionerRole."""


MEDCOM_AUTHOR_CONTACT_EXTENSION_URL: Final = (
    "http://medcomfhir.dk/ig/core/StructureDefinition/medcom-core-contact-extension"
)
"""How to reach the author of a message segment: a ContactPoint with a phone number."""


AUTHORISATION_ID_SYSTEM: Final = "https://autregweb.sst.dk"
"""The Danish health professionals' authorisation id (autorisations-ID, five characters), the
fixed system of dk-core's authorization identifier."""


PRACTITIONER_ROLES_AUTHORISED_SYSTEM: Final = (
    f"{_TERMINOLOGY}/medcom-core-PractitionerRolesAutorisationsregistret"
)
"""MedCom's roles of authorised health professionals (``laege``, ``sygeplejerske`` …)."""
AUTHORISED_ROLES: Final[dict[str, str]] = {
    "ambulancebehandler": "Ambulancebehandler",
    "bandagist": "Bandagist",
    "behandlerfarmaceut": "Behandlerfarmaceut",
    "bioanalytiker": "Bioanalytiker",
    "ergoterapeut": "Ergoterapeut",
    "fodterapeut": "Fodterapeut",
    "fysioterapeut": "Fysioterapeut",
    "jordemoder": "Jordemoder",
    "kiropraktor": "Kiropraktor",
    "kliniskdiaetist": "Kliniskdiætist",
    "klinisktandtekniker": "Klinisktandkliniker",
    "laege": "Læge",
    "optikerogoptometrist": "Optiker og Optometrist",
    "osteopat": "Osteopat",
    "radiograf": "Radiograf",
    "socialogsundhedsassistent": "Social- og sundhedsassistent",
    "sygeplejerske": "Sygeplejerske",
    "tandlaege": "Tandlæge",
    "tandplejer": "Tandplejer",
}
"""The codes of :data:`PRACTITIONER_ROLES_AUTHORISED_SYSTEM` (1.8.1) and their displays."""


CARE_COMMUNICATION_DEFINITION: Final = (
    "http://medcomfhir.dk/ig/messagedefinitions/MessageDefinition/"
    "MedComCareCommunicationMessageDefinition|5.0"
)


ACKNOWLEDGEMENT_DEFINITION: Final = (
    "http://medcomfhir.dk/ig/messagedefinitions/MessageDefinition/"
    "MedComAcknowledgementMessageDefinition|2.0"
)


SOR_ENDPOINT_PREFIX: Final = "https://sor2.sum.dsdn.dk/#id="


# Project-specific: MedCom has no attest profile, so these are ours. Canonical URLs under
# PROJECT_CANONICAL_BASE, each defined by a resource published in docs/fhir/ (docs/medcom.md).
PROJECT_CANONICAL_BASE: Final = "https://attest-gateway.dk/fhir"


ATTEST_TYPE_SYSTEM: Final = f"{PROJECT_CANONICAL_BASE}/CodeSystem/attest-type"
"""The LÆ type, a coding of Communication.topic."""


CASE_KIND_SYSTEM: Final = f"{PROJECT_CANONICAL_BASE}/CodeSystem/case-kind"
"""The job centre's case kind, a coding of Communication.reasonCode."""


# Tells a reminder of a request (a new care-communication message too) from a new request.
MESSAGE_KIND_SYSTEM: Final = f"{PROJECT_CANONICAL_BASE}/CodeSystem/message-kind"


REMINDER_CODE: Final = "reminder"
CANCELLATION_CODE: Final = "cancellation"


REPLY_DEADLINE_EXTENSION_URL: Final = f"{PROJECT_CANONICAL_BASE}/StructureDefinition/reply-deadline"
"""The reply deadline, an extension (valueDate) of the request's and reminder's text segment."""


REPLY_KIND_SYSTEM: Final = f"{PROJECT_CANONICAL_BASE}/CodeSystem/reply-kind"
"""What a reply is: ``attest``, ``not-in-treatment``, ``wrong-form``, ``cannot-answer``."""


REPLY_ATTEST: Final = "attest"
REPLY_NOT_IN_TREATMENT: Final = "not-in-treatment"
REPLY_WRONG_FORM: Final = "wrong-form"
REPLY_CANNOT_ANSWER: Final = "cannot-answer"
REPLY_KINDS: Final = frozenset(
    {REPLY_ATTEST, REPLY_NOT_IN_TREATMENT, REPLY_WRONG_FORM, REPLY_CANNOT_ANSWER}
)
"""The codes of :data:`REPLY_KIND_SYSTEM` (docs/fhir/CodeSystem-reply-kind.json); the same
as ``core.attests.ReplyKind``."""


REPLY_KIND_EXTENSION_URL: Final = f"{PROJECT_CANONICAL_BASE}/StructureDefinition/reply-kind"
"""The reply kind, an extension (valueCoding in :data:`REPLY_KIND_SYSTEM`) of the reply's own
text segment. A reply without it is an attest (certified systems do not send it)."""


SUGGESTED_ATTEST_TYPE_EXTENSION_URL: Final = (
    f"{PROJECT_CANONICAL_BASE}/StructureDefinition/suggested-attest-type"
)
"""With reply kind ``wrong-form``: the attest type the clinic suggests, an extension
(valueCoding in :data:`ATTEST_TYPE_SYSTEM`) of the reply's own text segment."""


CITIZEN_CONSENT_EXTENSION_URL: Final = (
    f"{PROJECT_CANONICAL_BASE}/StructureDefinition/citizen-consent"
)
"""The day the citizen consented to the request, an extension (valueDate) of the request's
text segment."""


LEGAL_BASIS_EXTENSION_URL: Final = f"{PROJECT_CANONICAL_BASE}/StructureDefinition/legal-basis"
"""The law the job centre asks under without consent (e.g. ``sygedagpengeloven § 11 a``), an
extension (valueString) of the request's text segment."""


# The systems of the first shape (before the MedCom profiles were followed): still read, never
# written, while messages built with them may be in flight or stored.
LEGACY_ATTEST_TYPE_SYSTEM: Final = "urn:attest-gateway:attest-type"
LEGACY_CASE_KIND_SYSTEM: Final = "urn:attest-gateway:case-kind"
LEGACY_MESSAGE_KIND_SYSTEM: Final = "urn:attest-gateway:message-kind"
LEGACY_REPLY_DEADLINE_EXTENSION_URL: Final = "urn:attest-gateway:reply-deadline"
ATTEST_TYPE_SYSTEMS: Final = frozenset({ATTEST_TYPE_SYSTEM, LEGACY_ATTEST_TYPE_SYSTEM})
CASE_KIND_SYSTEMS: Final = frozenset({CASE_KIND_SYSTEM, LEGACY_CASE_KIND_SYSTEM})
MESSAGE_KIND_SYSTEMS: Final = frozenset({MESSAGE_KIND_SYSTEM, LEGACY_MESSAGE_KIND_SYSTEM})
REPLY_DEADLINE_EXTENSION_URLS: Final = frozenset(
    {REPLY_DEADLINE_EXTENSION_URL, LEGACY_REPLY_DEADLINE_EXTENSION_URL}
)


# The MedCom profiles the CareCommunication-shaped Bundles claim in meta.profile.
_MEDCOM_IG: Final = "http://medcomfhir.dk/ig"
PROFILE_CARE_COMMUNICATION_MESSAGE: Final = (
    f"{_MEDCOM_IG}/carecommunication/StructureDefinition/medcom-careCommunication-message"
)
PROFILE_CARE_COMMUNICATION_HEADER: Final = (
    f"{_MEDCOM_IG}/carecommunication/StructureDefinition/medcom-careCommunication-messageHeader"
)
PROFILE_CARE_COMMUNICATION: Final = (
    f"{_MEDCOM_IG}/carecommunication/StructureDefinition/medcom-careCommunication-communication"
)
PROFILE_CARE_COMMUNICATION_PROVENANCE: Final = (
    f"{_MEDCOM_IG}/carecommunication/StructureDefinition/medcom-careCommunication-provenance"
)
PROFILE_PATIENT: Final = f"{_MEDCOM_IG}/core/StructureDefinition/medcom-core-patient"
PROFILE_PRACTITIONER: Final = f"{_MEDCOM_IG}/core/StructureDefinition/medcom-core-practitioner"
PROFILE_PRACTITIONER_ROLE: Final = (
    f"{_MEDCOM_IG}/core/StructureDefinition/medcom-core-practitionerrole"
)
PROFILE_ORGANIZATION: Final = (
    f"{_MEDCOM_IG}/messaging/StructureDefinition/medcom-messaging-organization"
)


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
    "attest-cancellation",
    "attest-reply",
    "acknowledgement",
    "other-care-communication",
]
