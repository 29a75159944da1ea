"""The reminder: a MedCom-like message to the receiver of an overdue attest request; and
the cancellation of a request, built the same way (`build_cancellation`).

Pure builder. Modelled, like the request, on CareCommunication 5.0 (event
``care-communication-message``), sent on behalf of the requesting job centre to the receiver:

- the Communication carries the conversation id as identifier (the same as the request's),
  MedCom's one category ``other``, a topic with the LÆ-type coding and a
  :data:`~attest_gateway.medcom.codes.MESSAGE_KIND_SYSTEM` ``reminder`` coding so systems
  can tell it from a new request, and a short Danish text segment that carries the original
  deadline (the reply-deadline extension);
- the Provenance (activity ``new-message``) has an entity with role ``revision`` pointing
  to ``MessageHeader/<request id>``: the Provenance chain that ties the reminder to the
  request, and the text segment as its ``source`` entity;
- the Patient and the author of the text segment are the request's: built from the
  gateway's own sealed copy of the request (``request``), the Patient (CPR identifier,
  official name) and the caseworker's PractitionerRole and Practitioner are copied, and the
  reminder's text segment carries the request segment's author and author-contact
  extensions. The tracker's tables never hold them: the copy is opened in memory and the
  reminder is sealed for its receiver at once. Without the copy (pruned by retention) the
  Patient is a reference-only resource with the id the request's Patient has (ids in our
  Bundles are derived from the message id) and the segment has no author: the receiver finds
  the citizen through the request it already holds.

The output passes :func:`attest_gateway.medcom.parse.parse_bundle`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final
from zoneinfo import ZoneInfo

from attest_gateway.medcom.build import (
    care_communication_bundle,
    category,
    payload_segment,
    segment_author_entries,
)
from attest_gateway.medcom.codes import (
    ACTIVITY_CODES_SYSTEM,
    ACTIVITY_NEW,
    ATTEST_TYPE_SYSTEM,
    CANCELLATION_CODE,
    CARE_COMMUNICATION_DEFINITION,
    DESTINATION_PRIMARY,
    DESTINATION_USE_EXTENSION_URL,
    DESTINATION_USE_SYSTEM,
    ENTITY_ROLE_REVISION,
    EVENT_CARE_COMMUNICATION,
    EVENT_CODES_SYSTEM,
    GLN_SYSTEM,
    MEDCOM_AUTHOR_CONTACT_EXTENSION_URL,
    MEDCOM_AUTHOR_EXTENSION_URL,
    MESSAGE_KIND_SYSTEM,
    PROFILE_CARE_COMMUNICATION,
    PROFILE_PATIENT,
    REMINDER_CODE,
    REPLY_DEADLINE_EXTENSION_URL,
    SOR_ENDPOINT_PREFIX,
    SOR_SYSTEM,
)
from attest_gateway.medcom.model import Bundle, Patient, to_fhir_json
from attest_gateway.medcom.read import OrgIdentifiers, message_communication

_BASE: Final = "https://medcomfhir.dk/ig/carecommunication"
# The namespace `medcom/build.py` derives resource ids in (so the reminder can
# point at the Patient id of the request without knowing the CPR number).
DANISH_TIME: Final = ZoneInfo("Europe/Copenhagen")  # the day a deadline date is counted in
_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:attest-gateway:fhir-resource-ids")


def derived_id(message_id: str, role: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{message_id}/{role}"))


def reminder_text(attest_type: str, due: dt.date, seq: int, *, sent_on: dt.date) -> str:
    """The reminder's text; a reminder sent by hand before the deadline says when the
    deadline is, not that it was."""
    ordinal = {1: "Påmindelse", 2: "2. påmindelse"}.get(seq, f"{seq}. påmindelse")
    deadline = "Svarfristen var" if due < sent_on else "Svarfristen er"
    return (
        f"{ordinal}: jobcentret har endnu ikke modtaget den anmodede {attest_type}. "
        f"{deadline} {due.strftime('%d-%m-%Y')}. Svar venligst på den oprindelige "
        "anmodning i samme samtale."
    )


def _org(org_id: str, org: OrgIdentifiers, role: str) -> dict[str, Any]:
    if not org.sor or not org.gln:
        raise ValueError(f"the {role} needs a SOR code and a GLN")
    resource: dict[str, Any] = {
        "resourceType": "Organization",
        "id": org_id,
        "identifier": [
            {"system": GLN_SYSTEM, "value": org.gln},
            {"system": SOR_SYSTEM, "value": org.sor},
        ],
    }
    if org.name:
        resource["name"] = org.name
    return resource


def build_reminder(
    *,
    request_message_id: str,
    conversation_id: str,
    message_id: str,
    bundle_id: str,
    sent_at: dt.datetime,
    sender: OrgIdentifiers,
    receiver: OrgIdentifiers,
    attest_type: str,
    due: dt.date,
    seq: int,
    request: Bundle | None = None,
) -> dict[str, Any]:
    """A reminder of request `request_message_id` (pure; same inputs, same Bundle).

    ``request`` is the request as the gateway sent it; its Patient and the author of its
    text segment are copied (see the module's docstring). Without it the reminder has a
    reference-only Patient and no segment author.
    """
    return _notice(
        request_message_id=request_message_id,
        conversation_id=conversation_id,
        message_id=message_id,
        bundle_id=bundle_id,
        sent_at=sent_at,
        sender=sender,
        receiver=receiver,
        attest_type=attest_type,
        kind=REMINDER_CODE,
        topic=f"Påmindelse om {attest_type}",
        text=reminder_text(attest_type, due, seq, sent_on=sent_at.astimezone(DANISH_TIME).date()),
        due=due,
        request=request,
    )


def cancellation_text(attest_type: str) -> str:
    return (
        f"Annullering: jobcentret har annulleret anmodningen om {attest_type}. Der skal ikke "
        "sendes en attest, og anmodningen i samme samtale kan lukkes."
    )


def build_cancellation(
    *,
    request_message_id: str,
    conversation_id: str,
    message_id: str,
    bundle_id: str,
    sent_at: dt.datetime,
    sender: OrgIdentifiers,
    receiver: OrgIdentifiers,
    attest_type: str,
    request: Bundle | None = None,
) -> dict[str, Any]:
    """The cancellation of request `request_message_id`: built as the reminder is (a new
    CareCommunication in the request's conversation, Provenance `revision` of the request),
    marked with the :data:`CANCELLATION_CODE` message kind and a text that says no attest is
    to be sent; no reply deadline (pure; same inputs, same Bundle)."""
    return _notice(
        request_message_id=request_message_id,
        conversation_id=conversation_id,
        message_id=message_id,
        bundle_id=bundle_id,
        sent_at=sent_at,
        sender=sender,
        receiver=receiver,
        attest_type=attest_type,
        kind=CANCELLATION_CODE,
        topic=f"Annullering af {attest_type}",
        text=cancellation_text(attest_type),
        due=None,
        request=request,
    )


def _notice(
    *,
    request_message_id: str,
    conversation_id: str,
    message_id: str,
    bundle_id: str,
    sent_at: dt.datetime,
    sender: OrgIdentifiers,
    receiver: OrgIdentifiers,
    attest_type: str,
    kind: str,
    topic: str,
    text: str,
    due: dt.date | None,
    request: Bundle | None,
) -> dict[str, Any]:
    """A message about request `request_message_id` to its receiver, of message kind `kind`."""
    if sent_at.tzinfo is None or sent_at.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    when = sent_at.isoformat()
    sender_id = derived_id(message_id, "Organization/sender")
    receiver_id = derived_id(message_id, "Organization/receiver")
    communication_id = derived_id(message_id, "Communication")
    payload_id = derived_id(message_id, "payload/0")
    patient_id = derived_id(request_message_id, "Patient")
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"profile": [PROFILE_PATIENT]},
    }
    author_extensions: list[dict[str, Any]] = []
    author_resources: list[dict[str, Any]] = []
    if request is not None:
        patient, author_extensions, author_resources = _from_request(request)
        patient_id = patient["id"]
    sender_ref, receiver_ref = f"Organization/{sender_id}", f"Organization/{receiver_id}"
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": message_id,
        "eventCoding": {"system": EVENT_CODES_SYSTEM, "code": EVENT_CARE_COMMUNICATION},
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
                "endpoint": f"{SOR_ENDPOINT_PREFIX}{receiver.sor}",
                "receiver": {"reference": receiver_ref},
            }
        ],
        "sender": {"reference": sender_ref},
        "source": {"endpoint": f"{SOR_ENDPOINT_PREFIX}{sender.sor}"},
        "focus": [{"reference": f"Communication/{communication_id}"}],
        "definition": CARE_COMMUNICATION_DEFINITION,
    }
    deadline = (
        [{"url": REPLY_DEADLINE_EXTENSION_URL, "valueDate": due.isoformat()}]
        if due is not None
        else []
    )
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "id": communication_id,
        "meta": {"profile": [PROFILE_CARE_COMMUNICATION]},
        "identifier": [{"value": f"urn:uuid:{conversation_id}"}],
        "status": "unknown",
        "category": [category()],
        "subject": {"reference": f"Patient/{patient_id}"},
        "topic": {
            "coding": [
                {"system": ATTEST_TYPE_SYSTEM, "code": attest_type},
                {"system": MESSAGE_KIND_SYSTEM, "code": kind},
            ],
            "text": topic,
        },
        "payload": [
            payload_segment(
                when,
                payload_id,
                sender_ref,
                {"contentString": text},
                extra=[*author_extensions, *deadline],
            )
        ],
    }
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": derived_id(message_id, "Provenance"),
        "target": [{"reference": f"MessageHeader/{message_id}"}],
        "occurredDateTime": when,
        "recorded": when,
        "activity": {"coding": [{"system": ACTIVITY_CODES_SYSTEM, "code": ACTIVITY_NEW}]},
        "agent": [{"who": {"reference": sender_ref}}],
        "entity": [
            {
                "role": ENTITY_ROLE_REVISION,
                "what": {"reference": f"MessageHeader/{request_message_id}"},
            },
            {"role": "source", "what": {"identifier": {"value": f"urn:uuid:{payload_id}"}}},
        ],
    }
    resources = [
        header,
        patient,
        communication,
        _org(receiver_id, receiver, "receiver"),
        _org(sender_id, sender, "sender"),
        *author_resources,
        provenance,
    ]
    bundle: dict[str, Any] = care_communication_bundle(bundle_id, when, resources)
    return bundle


def _from_request(
    request: Bundle,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The request's Patient (with its profile), and the author and author-contact extensions
    of its first text segment that has an author, with the PractitionerRole and Practitioner
    they name."""
    communication = message_communication(request, request.message_header)
    found = request.resolve(
        communication.subject.reference
        if communication is not None and communication.subject is not None
        else None
    )
    if not isinstance(found, Patient) or found.id is None:
        raise ValueError("the request has no Patient")
    patient = to_fhir_json(found)
    patient["meta"] = {"profile": [PROFILE_PATIENT]}
    urls = (MEDCOM_AUTHOR_EXTENSION_URL, MEDCOM_AUTHOR_CONTACT_EXTENSION_URL)
    for segment in communication.payload if communication is not None else []:
        if segment.contentString is None:
            continue
        extensions = [to_fhir_json(e) for e in segment.extension if e.url in urls]
        resources = segment_author_entries(request, [segment])
        if len(extensions) == len(urls) and resources:
            return patient, extensions, resources
    return patient, [], []
