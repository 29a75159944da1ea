"""What each field and schema of the wire contracts means, for the generated documents
(OpenAPI and AsyncAPI): one sentence per field name, as the glossary of docs/architecture.md
uses one word per thing. A model's own `Field(description=…)` or docstring wins; these fill
in the rest, so that a vendor can build from the documents alone (a test walks both and
fails naming every field or schema left without a meaning).

`IN_SCHEMA` holds the fields whose meaning differs by schema: (schema, field) → meaning."""

from __future__ import annotations

from typing import Any

FIELDS: dict[str, str] = {
    "at": "when it happened (RFC 3339, UTC)",
    "attachments": "the attest's attached documents (a PDF), base64",
    "attempts": "how many times the gateway has posted it",
    "attest_text": "the attest's text, as the clinician wrote it in the reply's own segment",
    "attest_type": "the LÆ form asked for, e.g. `LÆ 155` (the catalogue: GET "
    "/jobcenter/v1/attest-types)",
    "bundle_id": "Bundle.id: new on every send of the same message",
    "case_id": "the gateway's id of the sickness case",
    "case_kind": "the benefit case the request is about: sygedagpenge, jobafklaringsforloeb "
    "or ressourceforloeb",
    "case_ref": "the citizen's pseudonym `<key id>.<hmac>` (a keyed HMAC of the CPR number); "
    "never the CPR number",
    "caseworker": "the caseworker who asks: name, phone and e-mail (sent to the clinic)",
    "caseworker_ref": "the job centre's own case reference (no CPR number)",
    "channel": "how the contact took place",
    "ciphertext": "base64: HPKE `enc` followed by the AEAD ciphertext of the FHIR Bundle JSON",
    "citizen_cpr": "the citizen's CPR number (10 digits); stored sealed, never shown again",
    "closed_at": "when the case was closed (UTC)",
    "closed_on": "the day the case was closed; none while it is open",
    "closure_id": "the gateway's id of the closure",
    "code": "the stable error code (the README's error table); `type` ends with it",
    "contact_date": "the day of the contact",
    "contact_id": "the gateway's id of the contact",
    "content_type": "the attachment's media type (application/pdf)",
    "conversation_id": "the conversation: a request and everything after it",
    "created_at": "when it was created (RFC 3339, UTC)",
    "data_base64": "the attachment's bytes, base64",
    "delivered_at": "when the endpoint answered 2xx (UTC); none until then",
    "deliveries": "the deliveries, newest first",
    "detail": "one sentence more; never the input or health data",
    "email": "the caseworker's e-mail address",
    "end_date": "the treatment's last day; none while it goes on",
    "endpoint_id": "the webhook endpoint it is for",
    "endpoints": "the organisation's webhook endpoints",
    "entries": "the audit entries, oldest first",
    "event_id": "the event's id: a consumer drops one it has seen",
    "event_type": "the webhook event",
    "events": "the webhook events the endpoint receives",
    "family": "the family name",
    "first_day_of_absence": "the citizen's first day of sickness absence",
    "gln": "the organisation's GLN (13 digits)",
    "header": "the clear routing header (no health data): the HPKE info, and signed",
    "id": "its id",
    "instance": "the path the problem occurred on",
    "items": "the items, oldest first",
    "jobcenter_org": "the job centre's organisation id",
    "last_attempt_at": "when it was last posted (UTC); none before the first attempt",
    "last_error": "the gateway's word for what went wrong last (timeout, refused …); never "
    "the endpoint's answer",
    "last_status_code": "the HTTP status the endpoint answered last; none if it did not answer",
    "message_id": "the message's id (MessageHeader.id): its identity",
    "message_type": "attest-request, attest-reply, acknowledgement or attest-reminder",
    "municipality": "the job centre's kommunekode (3 digits)",
    "name": "the organisation's name",
    "next_attempt_at": "when the next attempt is due (UTC); none when no more will be made",
    "org_id": "the organisation's id in the directory",
    "psychiatric_course": "whether the citizen is in a psychiatric course of treatment",
    "psychiatry_org": "the psychiatry organisation's id",
    "questions": "the job centre's questions to the clinician (free text, no CPR number)",
    "received_at": "when the reply reached the inbox (UTC)",
    "receiver": "the organisation the message is addressed to",
    "receiver_org": "the receiving health organisation's id",
    "recipient_key_id": "the receiver's HPKE key the envelope is sealed to",
    "region_code": "the region code (1081–1085) of the job centre's municipality",
    "registered_by": "who registered it: jobcenter or psychiatry",
    "reply_deadline": "the day the reply is due (the attest type's deadline in working days)",
    "retryable": "true: the same request may succeed later (after Retry-After)",
    "rotating_until": "until then the previous secret signs too",
    "sender": "the organisation the message is from",
    "signature": "base64: Ed25519 over the signing context, the header and the ciphertext",
    "signer": "the organisation whose key signed: the sender, or the gateway for a "
    "custodial job centre",
    "signer_key_id": "the signer's Ed25519 key id (GET /directory/v1/organisations/{id}/keys)",
    "sor": "the SOR code of the organisation (health sector)",
    "stage": "the stage reached",
    "stages": "each stage reached, with when",
    "start_date": "the treatment's first day",
    "status": "the state",
    "status_url": "where the request's status is read (also the Location header)",
    "suite": "the HPKE suite (ML-KEM-768 + X25519 hybrid, or X25519)",
    "timeline": "the conversation's steps in order, with their message ids",
    "title": "a short title",
    "treatment_id": "the gateway's id of the treatment",
    "type": "the record's kind",
    "url": "the https address the deliveries are posted to",
    "v": "the format's version",
    "ydernummer": "a GP practice's ydernummer",
}

IN_SCHEMA: dict[tuple[str, str], str] = {
    ("AttestRequestIn", "receiver"): "the organisation asked: its SOR code, or a GP "
    "practice's ydernummer (exactly one)",
    ("ConversationStatus", "receiver"): "the organisation asked for the attest",
    ("InboxItem", "sender"): "the health organisation that sent the reply",
    ("Inbox", "items"): "the replies not yet acknowledged, oldest first",
    ("Problem", "type"): "a URI that ends with the stable code",
    ("Problem", "title"): "the status's short title",
    ("Problem", "status"): "the HTTP status",
    ("Problem", "detail"): "one sentence; never repeats the rejected input",
    ("Delivery", "status"): "pending, delivered or failed",
    ("DeliveryQueued", "status"): "always pending: queued for its endpoint",
    ("DeliveryQueued", "id"): "the new delivery's id (its `webhook-id`)",
    ("Endpoint", "id"): "the endpoint's id",
    ("EndpointCreated", "id"): "the endpoint's id",
    ("EndpointRotated", "id"): "the endpoint's id",
    ("StageEvent", "type"): "always `stage`",
    ("ContactEvent", "type"): "always `contact`",
    ("StageEvent", "v"): "the event format's version, 1",
    ("ContactEvent", "v"): "the event format's version, 1",
    ("EnvelopeHeader", "v"): "the envelope format's version, 1",
    ("StageEvent", "detail"): "why, for a refusal or a flag; for `replied`, the reply kind "
    "when it is no attest (one sentence, no health data)",
    ("TimelineEntry", "detail"): "why, for a refusal or a flag; for `replied`, the reply kind "
    "when it is no attest (one sentence, no health data)",
    ("AttachmentOut", "title"): "the attachment's title",
    ("ConversationStatus", "stage"): "the latest stage reached",
    ("StageEvent", "at"): "when the stage was reached (UTC)",
    ("ContactEvent", "at"): "when the contact was registered (UTC)",
    ("TimelineEntry", "message_id"): "the message of the step",
    ("CasePatch", "psychiatric_course"): "whether the citizen is now in a psychiatric course",
}

SCHEMAS: dict[str, str] = {
    "AttachmentOut": "A document attached to the attest reply.",
    "AttestRequestAccepted": "The attest request is accepted: sealed and on its way.",
    "CaseClosed": "The case is closed; its citizen's data go with retention.",
    "CaseKind": "The benefit case an attest is asked for.",
    "CaseOut": "A sickness case as the gateway holds it (no CPR number).",
    "ContactAccepted": "The contact is registered.",
    "ContactChannel": "How a contact between job centre and psychiatry took place.",
    "ConversationStatus": "An attest request's conversation: where it is and how it got there.",
    "Deliveries": "The organisation's webhook deliveries.",
    "DeliveryQueued": "A delivery queued again (redeliver) or a test (ping).",
    "DeadlineUnit": "The unit of a reply deadline: days or months.",
    "DeliveryStatus": "The state of a webhook delivery.",
    "Endpoint": "A webhook endpoint of the organisation.",
    "EndpointCreated": "The new endpoint with its signing secret (shown this once).",
    "EndpointRotated": "The endpoint's new signing secret (shown this once).",
    "Endpoints": "The organisation's webhook endpoints.",
    "EnvelopeHeader": "The clear routing header of a sealed envelope: ids, parties and key "
    "ids; never health data. Its canonical JSON is the HPKE info and is signed.",
    "Inbox": "A job centre's inbox: the replies, opened and translated to job-centre JSON.",
    "MessageType": "What a message is.",
    "OrganisationSummary": "An organisation: its name and identifiers.",
    "ReplyKind": "What a clinic's reply is: the attest, or an answer without it.",
    "Role": "An organisation's role: jobcenter, psychiatry, gp, hospital, specialist, ministry "
    "or operator.",
    "SealedEnvelope": "A MedCom message sealed for its receiver (HPKE, RFC 9180) and signed "
    "by its signer (Ed25519); docs/envelope.md.",
    "TimelineEntry": "One step of a conversation.",
    "TreatmentAccepted": "The psychiatric treatment is registered.",
}


def describe(schemas: dict[str, Any]) -> None:
    """Give every schema and property of `schemas` (components.schemas) a description where
    it has none, from the tables above (in place)."""
    for name, schema in schemas.items():
        if not schema.get("description") and name in SCHEMAS:
            schema["description"] = SCHEMAS[name]
        for field, prop in schema.get("properties", {}).items():
            if prop.get("description"):
                continue
            meaning = IN_SCHEMA.get((name, field), FIELDS.get(field))
            if meaning is not None:
                prop["description"] = meaning


def missing(schemas: dict[str, Any]) -> list[str]:
    """`Schema` and `Schema.field` of every schema and property without a description."""
    gaps = [name for name, schema in schemas.items() if not schema.get("description")]
    gaps += [
        f"{name}.{field}"
        for name, schema in schemas.items()
        for field, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    return sorted(gaps)
