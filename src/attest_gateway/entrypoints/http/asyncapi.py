"""The AsyncAPI 3 document of the gateway's Kafka topics, generated from the code.

Payload schemas come from the pydantic models (`SealedEnvelope` in contracts/envelope.py,
`StageEvent` in contracts/stages.py, `ContactEvent` in contracts/contacts.py); record
headers come from `HEADERS` below, which a test
holds against the records the gateway really writes (every header of every record on every
topic after a full round trip must validate against these schemas, and so must every value).
Topic addresses carry the configured prefix. The document is served at `/asyncapi.json`;
`attest-gateway contracts write docs` writes it to `docs/asyncapi.json` and renders
`docs/messages.md` from it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from attest_gateway import __version__
from attest_gateway.config import Settings
from attest_gateway.contracts.audit import AuditEntry
from attest_gateway.contracts.contacts import ContactEvent
from attest_gateway.contracts.envelope import CONTENT_TYPE, SealedEnvelope
from attest_gateway.contracts.glossary import describe
from attest_gateway.contracts.stages import MessageType, StageEvent
from attest_gateway.infra.kafka.topics import AUDIT, DEAD_LETTER, MEDCOM_MESSAGES, TRACKING

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
_REF = "#/components/schemas/{model}"


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


# Record headers per record schema: name → JSON schema of the (UTF-8) header value.
HEADERS: dict[str, dict[str, dict[str, Any]]] = {
    "SealedEnvelope": {
        "content-type": _string("media type of the value", const=CONTENT_TYPE),
        "schema-version": _string("version of the envelope format", const="1"),
        "message-type": _string("what the sealed Bundle is", enum=[t.value for t in MessageType]),
        "message-id": _string("MessageHeader.id of the sealed Bundle (its identity)"),
        "conversation-id": _string("the conversation; also the record key"),
        "sender": _string("organisation id of the sender"),
        "receiver": _string("organisation id of the receiver"),
        "key-id": _string("the receiver's HPKE key id the envelope is sealed to"),
    },
    "StageEvent": {
        "content-type": _string("media type of the value", const="application/json"),
        "schema-version": _string("version of the stage event", const="1"),
        "message-type": _string("always `stage`", const="stage"),
        "conversation-id": _string("the conversation; also the record key"),
    },
    "ContactEvent": {
        "content-type": _string("media type of the value", const="application/json"),
        "schema-version": _string("version of the contact event", const="1"),
        "message-type": _string("always `contact`", const="contact"),
    },
    "AuditEntry": {
        "content-type": _string("media type of the value", const="application/json"),
        "schema-version": _string("version of the audit entry", const="1"),
        "message-type": _string("always `audit`", const="audit"),
        "audit-seq": _string("the entry's position in the chain", pattern="^[0-9]+$"),
    },
    "DeadLetter": {
        "dlq-reason": _string("stable code of why the record was refused, e.g. signature-invalid"),
        "dlq-detail": _string("one sentence; never the record's content"),
        "dlq-source-topic": _string("topic the record was consumed from"),
        "dlq-source-partition": _string("partition it was consumed from", pattern="^[0-9]+$"),
        "dlq-source-offset": _string("offset it had there", pattern="^[0-9]+$"),
    },
}

# Which headers a record always has (the others may be missing on older records).
REQUIRED_HEADERS: dict[str, list[str]] = {name: sorted(h) for name, h in HEADERS.items()}


def headers_schema(message: str) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": HEADERS[message],
        "required": REQUIRED_HEADERS[message],
        # A dead-lettered record keeps its original headers next to the dlq-* ones.
        "additionalProperties": message == "DeadLetter",
    }
    return schema


def _model_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF, mode="serialization")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _kafka_key(description: str) -> dict[str, Any]:
    return {"kafka": {"key": _string(description), "bindingVersion": KAFKA_BINDING_VERSION}}


def _channel_bindings(settings: Settings, topic: str) -> dict[str, Any]:
    return {
        "kafka": {
            "topic": topic,
            "partitions": settings.kafka_partitions,
            "replicas": settings.kafka_replication_factor,
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }


def _group(settings: Settings, name: str) -> dict[str, Any]:
    return {
        "kafka": {
            "groupId": {"type": "string", "const": f"{settings.kafka_group_prefix}.{name}"},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }


_CONVERSATION = "6f1c2d9e-3b7a-4c61-9d2e-0a4b8c7d5e31"
_MESSAGE = "0b6a9a3e-52a4-4d0c-a0a1-5b5c8a2f4e10"
_AT = "2026-10-29T09:30:00Z"
_CASE_REF = "3f9a1c.8d2e5b7a0c4f6e1d9b3a2c5e7f0a1b2c"
_ENVELOPE: dict[str, Any] = {
    "header": {
        "v": 1,
        "message_id": _MESSAGE,
        "bundle_id": "7d0e5c1b-9a8f-4e3d-b2c1-0f9e8d7c6b5a",
        "conversation_id": _CONVERSATION,
        "message_type": "attest-request",
        "sender": "jc-koebenhavn",
        "receiver": "psyk-kbh",
        "suite": "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM",
        "recipient_key_id": "hpke-3f9a1c2b7d4e",
        "signer": "gateway",
        "signer_key_id": "sig-8b2d4f6a1c3e",
        "created_at": _AT,
    },
    # base64 of HPKE enc || AEAD ciphertext (shortened here), and of the Ed25519 signature
    "ciphertext": "chYmsf+SkCuvwUJc69wJOm4qBtlCOlXUUxBvnOoGhbLrbe/EOhrVpSR0mNz1",
    "signature": "W9X8kpcgSJDlNgkZN0NfBMVbup8h6HAYN7FExti2OC2MrPweps9ZZ92sCeX0zSE9"
    "xXhwwoN6iHZcB2opNXglaA==",
}

# One example record per message: its headers (as strings, as on Kafka) and its value.
EXAMPLES: dict[str, dict[str, Any]] = {
    "SealedEnvelope": {
        "name": "attestRequest",
        "summary": "An attest request sealed for psychiatry, signed by the gateway for the "
        "job centre.",
        "headers": {
            "content-type": CONTENT_TYPE,
            "schema-version": "1",
            "message-type": "attest-request",
            "message-id": _MESSAGE,
            "conversation-id": _CONVERSATION,
            "sender": "jc-koebenhavn",
            "receiver": "psyk-kbh",
            "key-id": "hpke-3f9a1c2b7d4e",
        },
        "payload": _ENVELOPE,
    },
    "StageEvent": {
        "name": "inMailbox",
        "summary": "The request reached psychiatry's mailbox.",
        "headers": {
            "content-type": "application/json",
            "schema-version": "1",
            "message-type": "stage",
            "conversation-id": _CONVERSATION,
        },
        "payload": {
            "type": "stage",
            "v": 1,
            "event_id": "e1b2c3d4-5f60-4718-9a2b-3c4d5e6f7a80",
            "conversation_id": _CONVERSATION,
            "message_id": _MESSAGE,
            "message_type": "attest-request",
            "stage": "in_mailbox",
            "at": _AT,
            "attest_type": "LÆ 155",
            "case_kind": "sygedagpenge",
            "municipality": "101",
            "region_code": "1084",
            "jobcenter_org": "jc-koebenhavn",
            "receiver_org": "psyk-kbh",
            "case_ref": _CASE_REF,
            "psychiatric_course": True,
            "first_day_of_absence": "2026-10-01",
            "reply_deadline": "2026-12-29",
            "detail": None,
        },
    },
    "ContactEvent": {
        "name": "meeting",
        "summary": "A job centre registered a meeting with psychiatry about a citizen.",
        "headers": {
            "content-type": "application/json",
            "schema-version": "1",
            "message-type": "contact",
        },
        "payload": {
            "type": "contact",
            "v": 1,
            "event_id": "a7c1e2f3-4b5d-4e6f-8a9b-0c1d2e3f4a5b",
            "contact_id": "5e2d8c1a-7b3f-4a90-8c6e-1d2f3a4b5c6d",
            "at": _AT,
            "contact_date": "2026-10-20",
            "jobcenter_org": "jc-koebenhavn",
            "psychiatry_org": "psyk-kbh",
            "municipality": "101",
            "region_code": "1084",
            "case_kind": "sygedagpenge",
            "case_ref": _CASE_REF,
            "first_day_of_absence": "2026-10-01",
            "channel": "meeting",
            "registered_by": "jobcenter",
        },
    },
    "AuditEntry": {
        "name": "mailboxFetch",
        "summary": "Psychiatry read its mailbox and was handed one message.",
        "headers": {
            "content-type": "application/json",
            "schema-version": "1",
            "message-type": "audit",
            "audit-seq": "41",
        },
        "payload": {
            "seq": 41,
            "at": _AT,
            "actor": "psyk-kbh",
            "action": "mailbox.fetch",
            "source": "192.0.2.10",
            "subject_org": "psyk-kbh",
            "message_id": _MESSAGE,
            "conversation_id": _CONVERSATION,
            "detail": None,
            "prev_hash": "3b1f0c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c",
            "hash": "9d4e7a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f",
        },
    },
    "DeadLetter": {
        "name": "signatureInvalid",
        "summary": "An envelope whose signature did not verify, kept with the reason.",
        "headers": {
            "dlq-reason": "signature-invalid",
            "dlq-detail": "the envelope's signature does not verify",
            "dlq-source-topic": "medcom.messages",
            "dlq-source-partition": "3",
            "dlq-source-offset": "1842",
            "content-type": CONTENT_TYPE,
            "message-id": _MESSAGE,
        },
        "payload": _ENVELOPE,
    },
}


def build_asyncapi(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3 document for these settings (topic prefix, partitions, groups)."""
    schemas: dict[str, Any] = {}
    envelope_ref = _model_schema(SealedEnvelope, schemas)
    stage_ref = _model_schema(StageEvent, schemas)
    audit_ref = _model_schema(AuditEntry, schemas)
    contact_ref = _model_schema(ContactEvent, schemas)
    messages: dict[str, dict[str, Any]] = {
        "SealedEnvelope": {
            "name": "SealedEnvelope",
            "title": "A sealed MedCom message",
            "summary": "An attest request, attest reply or acknowledgement, sealed end to end "
            "for its receiver (HPKE, RFC 9180) and signed (Ed25519). The clear header is "
            "routing metadata only; docs/architecture.md § Encryption describes the format.",
            "contentType": CONTENT_TYPE,
            "headers": headers_schema("SealedEnvelope"),
            "payload": envelope_ref,
            "bindings": _kafka_key("the conversation id: a conversation stays on one partition"),
        },
        "StageEvent": {
            "name": "StageEvent",
            "title": "A stage of a conversation",
            "summary": "Metadata only: the citizen is known by a keyed pseudonym (case_ref), "
            "never by CPR number, and no message text is included.",
            "contentType": "application/json",
            "headers": headers_schema("StageEvent"),
            "payload": stage_ref,
            "bindings": _kafka_key("the conversation id"),
        },
        "ContactEvent": {
            "name": "ContactEvent",
            "title": "A direct contact between a job centre and psychiatry",
            "summary": "Registered by a job centre (POST /jobcenter/v1/contacts): counts for "
            "contact coverage. Metadata only: the citizen is known by case_ref.",
            "contentType": "application/json",
            "headers": headers_schema("ContactEvent"),
            "payload": contact_ref,
            "bindings": _kafka_key("the citizen's case ref"),
        },
        "AuditEntry": {
            "name": "AuditEntry",
            "title": "An entry of the audit log",
            "summary": "Who read which message (or changed what), when, from where; one "
            "link of the hash chain (docs/architecture.md § Audit). Ids and addresses only: "
            "never content, a CPR number or a case ref.",
            "contentType": "application/json",
            "headers": headers_schema("AuditEntry"),
            "payload": audit_ref,
            "bindings": _kafka_key("always `audit`: the whole chain on one partition"),
        },
        "DeadLetter": {
            "name": "DeadLetter",
            "title": "A record a consumer could not process",
            "summary": "The original key, value and headers, plus dlq-* headers that say why "
            "and where it came from. The offset of the original was committed.",
            "headers": headers_schema("DeadLetter"),
            "payload": {"description": "the original record's value, unchanged (any bytes)"},
            "bindings": _kafka_key("the original record's key"),
        },
    }
    for name, message in messages.items():
        message["examples"] = [EXAMPLES[name]]
    describe(schemas)
    medcom = settings.topic(MEDCOM_MESSAGES)
    tracking = settings.topic(TRACKING)
    dead_letter = settings.topic(DEAD_LETTER)
    audit = settings.topic(AUDIT)

    def channel(address: str, description: str, *names: str) -> dict[str, Any]:
        return {
            "address": address,
            "description": description,
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
            "bindings": _channel_bindings(settings, address),
        }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "attest gateway — Kafka topics",
            "version": __version__,
            "description": "Every message between job centres and the health sector travels "
            "on these topics, sealed; every step of a conversation is a metadata-only stage "
            "event. Topic names carry the KAFKA_TOPIC_PREFIX of the installation.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "production": {
                "host": "{bootstrap}",
                "protocol": "kafka-secure",
                "description": "Apache Kafka over TLS (KAFKA_SECURITY_PROTOCOL=SSL)",
                "variables": {
                    "bootstrap": {
                        "default": "kafka:9093",
                        "description": "KAFKA_BOOTSTRAP_SERVERS",
                    }
                },
            },
            "embedded": {
                "host": "127.0.0.1:{port}",
                "protocol": "kafka",
                "description": "the embedded broker of `make run` (loopback, plain text)",
                "variables": {"port": {"description": "a free port chosen at start"}},
            },
        },
        "channels": {
            "medcomMessages": channel(
                medcom, "Sealed MedCom messages on their way to a mailbox.", "SealedEnvelope"
            ),
            "tracking": channel(
                tracking,
                "Stage events and registered contacts for the tracker.",
                "StageEvent",
                "ContactEvent",
            ),
            "deadLetter": channel(dead_letter, "Records no consumer could process.", "DeadLetter"),
            "audit": channel(
                audit,
                "The audit trail of reads and administrative changes: a copy of each "
                "entry, out of reach of the database, that `attest-gateway audit verify` "
                "holds the stored chain against.",
                "AuditEntry",
            ),
        },
        "operations": {
            "publishSealedEnvelope": {
                "action": "send",
                "channel": {"$ref": "#/channels/medcomMessages"},
                "summary": "The outbox relay publishes what the API accepted (acks=all).",
                "messages": [{"$ref": "#/channels/medcomMessages/messages/SealedEnvelope"}],
            },
            "deliverSealedEnvelope": {
                "action": "receive",
                "channel": {"$ref": "#/channels/medcomMessages"},
                "summary": "The delivery consumer verifies the signature and stores the "
                "envelope in the receiver's mailbox, then commits.",
                "bindings": _group(settings, "delivery"),
                "messages": [{"$ref": "#/channels/medcomMessages/messages/SealedEnvelope"}],
            },
            "publishStageEvent": {
                "action": "send",
                "channel": {"$ref": "#/channels/tracking"},
                "summary": "The outbox relay publishes a stage event for every stage reached.",
                "messages": [{"$ref": "#/channels/tracking/messages/StageEvent"}],
            },
            "trackStageEvent": {
                "action": "receive",
                "channel": {"$ref": "#/channels/tracking"},
                "summary": "The tracker keeps each conversation's timeline and each "
                "citizen's contacts.",
                "bindings": _group(settings, "tracker"),
                "messages": [
                    {"$ref": "#/channels/tracking/messages/StageEvent"},
                    {"$ref": "#/channels/tracking/messages/ContactEvent"},
                ],
            },
            "publishContactEvent": {
                "action": "send",
                "channel": {"$ref": "#/channels/tracking"},
                "summary": "The outbox relay publishes each contact a job centre registers.",
                "messages": [{"$ref": "#/channels/tracking/messages/ContactEvent"}],
            },
            "publishAuditEntry": {
                "action": "send",
                "channel": {"$ref": "#/channels/audit"},
                "summary": "The outbox relay publishes every audit entry, written in the "
                "transaction of the read or change it records.",
                "messages": [{"$ref": "#/channels/audit/messages/AuditEntry"}],
            },
            "publishDeadLetter": {
                "action": "send",
                "channel": {"$ref": "#/channels/deadLetter"},
                "summary": "A consumer sends what it cannot process, with the reason.",
                "messages": [{"$ref": "#/channels/deadLetter/messages/DeadLetter"}],
            },
        },
        "components": {"schemas": schemas, "messages": messages},
    }


# --- rendering for docs/ -----------------------------------------------------------------------


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"])
    if "const" in schema:
        return f"`{schema['const']}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = str(schema.get("type", "any"))
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else kind


def _fields_table(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        meaning = str(prop.get("description", "")).replace("|", "\\|")
        lines.append(
            f"| `{name}` | {_type_of(prop)} | {'yes' if name in required else 'no'} | {meaning} |"
        )
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    """docs/messages.md: the topics, their records' keys, headers and payloads."""
    out = [
        "# Kafka topics and messages",
        "",
        "Generated from `docs/asyncapi.json` (AsyncAPI "
        f"{doc['asyncapi']}) by `attest-gateway contracts write docs`; do not edit by hand.",
        "",
        str(doc["info"]["description"]),
        "",
        "| topic | messages | sent by | received by |",
        "|---|---|---|---|",
    ]
    ops = doc["operations"]
    for key, ch in doc["channels"].items():
        senders = [o["summary"] for o in ops.values() if o["channel"]["$ref"].endswith(f"/{key}")
                   and o["action"] == "send"]  # fmt: skip
        receivers = [o["summary"] for o in ops.values() if o["channel"]["$ref"].endswith(f"/{key}")
                     and o["action"] == "receive"]  # fmt: skip
        names = ", ".join(ch.get("messages", {})) or "—"
        out.append(
            f"| `{ch['address']}` | {names} | {' '.join(senders) or '—'} | "
            f"{' '.join(receivers) or '—'} |"
        )
    schemas = doc["components"]["schemas"]
    for name, message in doc["components"]["messages"].items():
        out += ["", f"## {name}: {message['title']}", "", str(message["summary"]), ""]
        out += [f"Content type: `{message.get('contentType', 'any')}`. "
                f"Key: {message['bindings']['kafka']['key']['description']}.", ""]  # fmt: skip
        out += ["Headers:", "", *_fields_table(message["headers"]), ""]
        payload = message["payload"]
        if "$ref" in payload:
            target = _type_of(payload)
            out += [f"Value: `{target}` (JSON).", "", *_fields_table(schemas[target])]
            for sub_name, sub in schemas.items():
                if sub_name != target and f'/{sub_name}"' in str(schemas[target]).replace("'", '"'):
                    if "properties" in sub:
                        out += ["", f"`{sub_name}`:", "", *_fields_table(sub)]
                    elif "enum" in sub:
                        out += ["", f"`{sub_name}`: {_type_of(sub)}"]
        else:
            out.append(f"Value: {payload['description']}.")
    return "\n".join(out) + "\n"


# --- the route --------------------------------------------------------------------------------

router = APIRouter(tags=["operations"])


@router.get("/asyncapi.json", summary="The AsyncAPI 3 document of the Kafka topics")
async def asyncapi_document(request: Request) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    return build_asyncapi(settings)
