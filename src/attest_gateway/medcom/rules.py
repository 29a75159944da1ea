"""MedCom's rules over a parsed Bundle (the message header, its parties, the Communication)
and the rules for attachments (MedCom's MIME types, content that is what it says). Each
broken rule raises :class:`~attest_gateway.medcom.parse.BundleError` with a stable code.
"""

from __future__ import annotations

from typing import Final

from attest_gateway.core.errors import ErrorCode
from attest_gateway.medcom.codes import (
    EVENT_ACKNOWLEDGEMENT,
    EVENT_CARE_COMMUNICATION,
    EVENT_CODES,
    EVENT_CODES_SYSTEM,
)
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.model import (
    FHIR_ID,
    Bundle,
    OperationOutcome,
    Organization,
    Patient,
    Provenance,
    Reference,
    b64decode,
    parse_fhir_date,
)
from attest_gateway.medcom.read import (
    deadline_extensions,
    message_communication,
    org_identifiers,
    own_provenance,
    segment_identifier,
)


def check_medcom_rules(bundle: Bundle) -> None:
    """The MedCom messaging rules on an already structurally valid Bundle."""
    if bundle.type != "message":
        raise BundleError(ErrorCode.BUNDLE_NOT_MESSAGE, "Bundle.type must be 'message'")
    header = bundle.message_header
    for where, value in (("Bundle.id", bundle.id), ("MessageHeader.id", header.id)):
        if not isinstance(value, str) or not FHIR_ID.fullmatch(value):
            raise BundleError(
                ErrorCode.INVALID_ID, f"{where} must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
            )
    if (
        header.eventCoding.system != EVENT_CODES_SYSTEM
        or header.eventCoding.code not in EVENT_CODES
    ):
        raise BundleError(
            ErrorCode.UNKNOWN_EVENT_CODE,
            "MessageHeader.eventCoding is not a MedCom messaging event code",
        )
    if not bundle.resources(Provenance):
        raise BundleError(ErrorCode.MISSING_PROVENANCE, "the Bundle has no Provenance")

    _require_organization(bundle, header.sender, "MessageHeader.sender")
    if not header.destination:
        raise BundleError(ErrorCode.MISSING_ORGANIZATION, "MessageHeader.destination is empty")
    for i, destination in enumerate(header.destination):
        _require_organization(bundle, destination.receiver, f"MessageHeader.destination[{i}]")

    event = header.eventCoding.code
    if event == EVENT_CARE_COMMUNICATION:
        communication = message_communication(bundle, header)
        if communication is None:
            raise BundleError(
                ErrorCode.MISSING_COMMUNICATION, "MessageHeader.focus has no Communication"
            )
        subject = bundle.resolve(communication.subject.reference if communication.subject else None)
        if not isinstance(subject, Patient):
            raise BundleError(
                ErrorCode.MISSING_PATIENT, "Communication.subject is not a Patient in the Bundle"
            )
        for ext in deadline_extensions(communication):
            if parse_fhir_date(ext.valueDate) is None:
                raise BundleError(
                    ErrorCode.INVALID_BUNDLE, "Communication: reply deadline is not a date"
                )
    elif event == EVENT_ACKNOWLEDGEMENT:
        if header.response is None:
            raise BundleError(
                ErrorCode.MISSING_RESPONSE, "an acknowledgement needs MessageHeader.response"
            )
        if header.response.code != "ok" and not bundle.resources(OperationOutcome):
            raise BundleError(
                ErrorCode.MISSING_OPERATION_OUTCOME,
                "an acknowledgement that is not ok needs an OperationOutcome",
            )


def _require_organization(bundle: Bundle, ref: Reference | None, where: str) -> Organization:
    org = bundle.resolve(ref.reference if ref is not None else None)
    if not isinstance(org, Organization):
        raise BundleError(
            ErrorCode.MISSING_ORGANIZATION, f"{where} is not an Organization in the Bundle"
        )
    ids = org_identifiers(org)
    if ids.sor is None:
        raise BundleError(
            ErrorCode.MISSING_IDENTIFIER, f"{where}: the Organization has no SOR identifier"
        )
    if ids.gln is None:
        raise BundleError(
            ErrorCode.MISSING_IDENTIFIER, f"{where}: the Organization has no GLN identifier"
        )
    return org


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
    {
        ErrorCode.UNSUPPORTED_ATTACHMENT_TYPE,
        ErrorCode.ATTACHMENT_WITHOUT_DATA,
        ErrorCode.ATTACHMENT_CONTENT_MISMATCH,
    }
)


def _content_matches(content_type: str, data: bytes) -> bool:
    if content_type == "application/pdf":
        return _PDF_MARKER in data[:_PDF_MARKER_WITHIN]
    return data.startswith(_SIGNATURES[content_type])


def _sources(provenance: Provenance) -> set[str]:
    return {
        entity.what.identifier.value
        for entity in provenance.entity
        if entity.role == "source"
        and entity.what.identifier is not None
        and entity.what.identifier.value
    }


def _earlier_segments(bundle: Bundle) -> set[str]:
    """The identifiers of segments an earlier message added: named as a source by another
    Provenance of the Bundle and not by the message's own."""
    own = own_provenance(bundle)
    earlier: set[str] = set()
    for provenance in bundle.resources(Provenance):
        if provenance is not own:
            earlier |= _sources(provenance)
    return earlier - (_sources(own) if own is not None else set())


def check_attachments(bundle: Bundle) -> None:
    """Every attachment of the message's Communication is inline data of a MedCom MIME type
    (:data:`ATTACHMENT_MIME_TYPES`) whose content is of that type, but for an earlier
    message's segment repeated without its data; raise BundleError.

    The receiving side of the gateway (a job centre's case system) shows what it gets: a
    document labelled as something else, or of a type MedCom does not allow (HTML, say), is
    refused here. Attachments by URL are refused too: the job centre cannot reach a URL on
    the health network, and the gateway does not fetch on its behalf."""
    communication = message_communication(bundle, bundle.message_header)
    payloads = communication.payload if communication is not None else []
    # A reply repeats the earlier segments, and a certified system may repeat an earlier
    # attachment by its title and type only, without the data: nothing is shown of it. Such a
    # segment is one an earlier message's Provenance names as its source and this message's
    # does not. Any other must carry its data; data, wherever it is, is checked.
    earlier = _earlier_segments(bundle)
    for index, item in enumerate(payloads):
        att = item.contentAttachment
        if att is None:
            continue
        if att.data is None and segment_identifier(item) in earlier:
            continue
        where = f"Communication.payload[{index}].contentAttachment"
        content_type = (att.contentType or "").strip().lower()
        if content_type not in ATTACHMENT_MIME_TYPES:
            raise BundleError(
                ErrorCode.UNSUPPORTED_ATTACHMENT_TYPE,
                f"{where}.contentType is not one of MedCom's attachment types "
                f"({', '.join(sorted(ATTACHMENT_MIME_TYPES))})",
            )
        if att.data is None:
            raise BundleError(
                ErrorCode.ATTACHMENT_WITHOUT_DATA, f"{where} has no data: send the document inline"
            )
        if not _content_matches(content_type, b64decode(att.data)):
            raise BundleError(
                ErrorCode.ATTACHMENT_CONTENT_MISMATCH, f"{where}.data is not of its contentType"
            )
