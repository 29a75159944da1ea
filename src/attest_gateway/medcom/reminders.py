"""The reminder: a MedCom-like message to the receiver of an overdue attest request.

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
- the Patient is a reference-only resource with the id the request's Patient has (ids in
  our Bundles are derived from the message id): the tracker knows no CPR number, and the
  receiver finds the citizen through the request it already holds.

The output passes :func:`attest_gateway.medcom.parse.parse_bundle`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final

from attest_gateway.medcom.build import care_communication_bundle, category, payload_segment
from attest_gateway.medcom.codes import (
    ACTIVITY_CODES_SYSTEM,
    ACTIVITY_NEW,
    ATTEST_TYPE_SYSTEM,
    CARE_COMMUNICATION_DEFINITION,
    DESTINATION_PRIMARY,
    DESTINATION_USE_EXTENSION_URL,
    DESTINATION_USE_SYSTEM,
    ENTITY_ROLE_REVISION,
    EVENT_CARE_COMMUNICATION,
    EVENT_CODES_SYSTEM,
    GLN_SYSTEM,
    MESSAGE_KIND_SYSTEM,
    PROFILE_CARE_COMMUNICATION,
    PROFILE_PATIENT,
    REMINDER_CODE,
    REPLY_DEADLINE_EXTENSION_URL,
    SOR_ENDPOINT_PREFIX,
    SOR_SYSTEM,
)
from attest_gateway.medcom.read import OrgIdentifiers

_BASE: Final = "https://medcomfhir.dk/ig/carecommunication"
# The namespace `medcom/build.py` derives resource ids in (so the reminder can
# point at the Patient id of the request without knowing the CPR number).
_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:attest-gateway:fhir-resource-ids")


def derived_id(message_id: str, role: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{message_id}/{role}"))


def reminder_text(attest_type: str, due: dt.date, seq: int) -> str:
    ordinal = {1: "Påmindelse", 2: "2. påmindelse"}.get(seq, f"{seq}. påmindelse")
    return (
        f"{ordinal}: jobcentret har endnu ikke modtaget den anmodede {attest_type}. "
        f"Svarfristen var {due.strftime('%d-%m-%Y')}. Svar venligst på den oprindelige "
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
) -> dict[str, Any]:
    """A reminder of request `request_message_id` (pure; same inputs, same Bundle)."""
    if sent_at.tzinfo is None or sent_at.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    when = sent_at.isoformat()
    sender_id = derived_id(message_id, "Organization/sender")
    receiver_id = derived_id(message_id, "Organization/receiver")
    communication_id = derived_id(message_id, "Communication")
    payload_id = derived_id(message_id, "payload/0")
    patient_id = derived_id(request_message_id, "Patient")
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
    deadline = {"url": REPLY_DEADLINE_EXTENSION_URL, "valueDate": due.isoformat()}
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
                {"system": MESSAGE_KIND_SYSTEM, "code": REMINDER_CODE},
            ],
            "text": f"Påmindelse om {attest_type}",
        },
        "payload": [
            payload_segment(
                when,
                payload_id,
                sender_ref,
                {"contentString": reminder_text(attest_type, due, seq)},
                extra=[deadline],
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
        {"resourceType": "Patient", "id": patient_id, "meta": {"profile": [PROFILE_PATIENT]}},
        communication,
        _org(receiver_id, receiver, "receiver"),
        _org(sender_id, sender, "sender"),
        provenance,
    ]
    bundle: dict[str, Any] = care_communication_bundle(bundle_id, when, resources)
    return bundle
