"""A whole conversation through the in-process gateway, for tests that look at what it
leaves behind (metrics, Kafka records)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.crypto.sealing import open_envelope
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.parse import parse_bundle
from tests.support.harness import (
    ATTEST_TEXT,
    CPR,
    PDF,
    QUESTIONS,
    Harness,
    attest_request_body,
    wait_for,
)
from tests.support.kafka import client_args
from tests.support.people import CLINICIAN

JC = "jc-koebenhavn"
PSY = "psyk-kbh"


@dataclass
class Conversation:
    conversation_id: str
    request_message_id: str
    reply_message_id: str
    envelope: SealedEnvelope  # the sealed request, as the mailbox gave it


async def round_trip(
    h: Harness, *, cpr: str = CPR, questions: str = QUESTIONS, text: str = ATTEST_TEXT
) -> Conversation:
    """Request → psychiatry's mailbox → ack → reply → job centre's inbox → ack of the reply."""
    body = attest_request_body(jobcenter_gln=h.gln(JC), cpr=cpr, questions=questions)
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    accepted = response.json()

    async def in_mailbox() -> dict[str, Any] | None:
        # the most a read returns: the session's harness gathers every test's messages
        items = (await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500}))["items"]
        return next((i for i in items if i["message_id"] == accepted["message_id"]), None)

    item = await wait_for(in_mailbox)
    envelope = SealedEnvelope.model_validate(item["envelope"])
    keys = h.client_keys(PSY)
    key = next(k for k in keys.hpke_keys if k.key_id == envelope.header.recipient_key_id)
    request = parse_bundle(orjson.loads(open_envelope(envelope, key)))
    now = dt.datetime.now(dt.UTC)
    fhir = {**h.auth(PSY), "Content-Type": "application/fhir+json"}
    ack = build_acknowledgement(
        acked=request, message_id=str(uuid.uuid4()), bundle_id=str(uuid.uuid4()),
        sent_at=now, code="ok",
    )  # fmt: skip
    assert (await h.client.post("/medcom/v1/messages", json=ack, headers=fhir)).status_code == 202
    reply = build_attest_reply(
        author=CLINICIAN,
        request=request, message_id=str(uuid.uuid4()), bundle_id=str(uuid.uuid4()),
        sent_at=now, text=text, pdf=PDF,
    )  # fmt: skip
    answer = await h.client.post("/medcom/v1/messages", json=reply, headers=fhir)
    assert answer.status_code == 202, answer.text

    async def in_inbox() -> dict[str, Any] | None:
        items = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
        return next((i for i in items if i["conversation_id"] == accepted["conversation_id"]), None)

    got = await wait_for(in_inbox)
    acked = await h.client.post(f"/jobcenter/v1/inbox/{got['message_id']}/ack", headers=h.auth(JC))
    assert acked.status_code == 200
    return Conversation(
        accepted["conversation_id"], accepted["message_id"], got["message_id"], envelope
    )


async def poison(h: Harness, envelope: SealedEnvelope) -> str:
    """Put a tampered copy of a real envelope on medcom.messages; returns its message id."""
    message_id = f"tampered-{uuid.uuid4().hex}"
    tampered = envelope.model_copy(
        update={"header": envelope.header.model_copy(update={"message_id": message_id})}
    )
    producer = AIOKafkaProducer(**client_args(h.bootstrap), acks="all")
    try:  # closed even when its start fails
        await producer.start()
        await producer.send_and_wait(
            h.gw.topics.medcom_messages, value=tampered.to_json(), key=message_id.encode()
        )
    finally:
        await producer.stop()
    return message_id
