"""The health side against the real broker: duplicates, dead letters, sealed submissions,
and submissions that must be refused."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.clock import SystemClock
from attest_gateway.crypto.sealing import OrgKeys, seal
from attest_gateway.infra.db import audit, tables
from attest_gateway.infra.db.tables import audit_log
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.read import read_message
from tests.integration.conftest import Harness
from tests.integration.test_roundtrip import mailbox_item, open_item, submit
from tests.support.harness import ATTEST_TEXT, attest_request_body, read_topic, wait_for
from tests.support.kafka import client_args
from tests.support.people import CLINICIAN

JC, PSY, GP = "jc-koebenhavn", "psyk-kbh", "gp-noerrebro"


async def new_request(h: Harness) -> tuple[dict[str, Any], Bundle, dict[str, Any]]:
    response = await h.client.post(
        "/jobcenter/v1/attest-requests",
        json=attest_request_body(jobcenter_gln=h.gln(JC)),
        headers=h.auth(JC),
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    item = await mailbox_item(h, PSY, accepted["message_id"])
    return accepted, open_item(item, h.client_keys(PSY)), item


def reply_to(
    request: Bundle, *, message_id: str | None = None, bundle_id: str | None = None
) -> dict[str, Any]:
    return build_attest_reply(
        author=CLINICIAN,
        request=request,
        message_id=message_id or str(uuid.uuid4()),
        bundle_id=bundle_id or str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC),
        text=ATTEST_TEXT,
        pdf=None,
    )


async def post(h: Harness, org: str, body: Any, content_type: str = "application/fhir+json") -> Any:
    return await h.client.post(
        "/medcom/v1/messages",
        content=orjson.dumps(body),
        headers={**h.auth(org), "Content-Type": content_type},
    )


async def mailbox_rows(h: Harness, conversation_id: str) -> list[Any]:
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.mailbox).where(tables.mailbox.c.conversation_id == conversation_id)
        )
        return list(rows)


async def test_duplicate_reply_same_answer_delivered_once(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    message_id = str(uuid.uuid4())
    first = await submit(h, PSY, reply_to(request, message_id=message_id))
    # A resend: same MessageHeader.id, new Bundle.id → identical answer, not delivered twice.
    resend = await post(h, PSY, reply_to(request, message_id=message_id))
    assert resend.status_code == 202
    assert resend.json() == first
    assert resend.headers["idempotent-replayed"] == "true"

    async def delivered() -> list[Any] | None:
        rows = [
            r
            for r in await mailbox_rows(h, accepted["conversation_id"])
            if r.message_type == "attest-reply"
        ]
        return rows or None

    rows = await wait_for(delivered)
    assert len(rows) == 1
    # Same Bundle.id under a new MessageHeader.id is an error (MedCom duplicate rule).
    reused = await post(h, PSY, reply_to(request, bundle_id=first["bundle_id"]))
    assert reused.status_code == 409
    assert reused.json()["code"] == "message-id-conflict"


async def test_submissions_that_must_be_refused(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    # The GP did not receive this request: same answer as for a request that does not exist.
    gp_bundle = reply_to(request)
    refused = await post(h, GP, gp_bundle)
    assert refused.status_code == 403  # the Bundle's sender is psychiatry, not the GP
    assert refused.json()["code"] == "sender-mismatch"

    not_a_bundle = await post(h, PSY, {"resourceType": "Patient"})
    assert not_a_bundle.status_code == 400
    assert not_a_bundle.json()["code"] == "unsupported-body"

    broken = reply_to(request)
    broken["type"] = "collection"
    response = await post(h, PSY, broken)
    assert response.status_code == 422
    assert response.json()["code"] == "bundle-not-message"

    unknown = reply_to(request)
    for entry in unknown["entry"]:
        for prov_entity in entry["resource"].get("entity", []):
            if prov_entity.get("role") == "revision":
                prov_entity["what"]["reference"] = f"MessageHeader/{uuid.uuid4()}"
    response = await post(h, PSY, unknown)
    assert response.status_code == 404
    assert response.json()["code"] == "unknown-request"

    wrong_type = await h.client.post(
        "/medcom/v1/messages",
        content=b"<Bundle/>",
        headers={**h.auth(PSY), "Content-Type": "text/plain"},  # XML is taken as fhir+xml
    )
    assert wrong_type.status_code == 415
    assert wrong_type.json()["code"] == "unsupported-media-type"

    # Nothing of the refused submissions reached the job centre; the clinic got MedCom's
    # answer to the one it may be told about (the unknown request), in its mailbox.
    rows = await mailbox_rows(h, accepted["conversation_id"])
    assert {r.receiver_org_id for r in rows} == {PSY}
    assert sorted(r.message_type for r in rows) == ["acknowledgement", "attest-request"]
    nack_row = next(r for r in rows if r.message_type == "acknowledgement")
    nack = read_message(
        open_item(await mailbox_item(h, PSY, nack_row.message_id), h.client_keys(PSY))
    )
    assert (nack.response_code, nack.issues) == ("fatal-error", ["MSG_NO_EXIST"])
    assert nack.response_to == unknown["entry"][0]["resource"]["id"]


def sealed_for_gateway(
    h: Harness,
    keys: OrgKeys,
    bundle: dict[str, Any],
    *,
    conversation_id: str,
    message_type: MessageType,
    plaintext: bytes | None = None,
) -> SealedEnvelope:
    gateway_key = h.gw.keyring.orgs[h.settings.gateway_org_id].current_hpke
    header = EnvelopeHeader(
        message_id=bundle["entry"][0]["resource"]["id"],
        bundle_id=bundle["id"],
        conversation_id=conversation_id,
        message_type=message_type,
        sender=keys.org_id,
        receiver=h.settings.gateway_org_id,
        suite=gateway_key.suite,
        recipient_key_id=gateway_key.key_id,
        signer=keys.org_id,
        signer_key_id=keys.current_signing.key_id,
        created_at=SystemClock().now(),
    )
    body = orjson.dumps(bundle) if plaintext is None else plaintext
    return seal(body, header, gateway_key.public(), keys.current_signing)


async def test_sealed_submission(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    keys = h.client_keys(PSY)
    ack = build_acknowledgement(
        acked=request,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=SystemClock().now(),
        code="ok",
    )
    envelope = sealed_for_gateway(
        h,
        keys,
        ack,
        conversation_id=accepted["conversation_id"],
        message_type=MessageType.ACKNOWLEDGEMENT,
    )
    tampered = envelope.model_copy(update={"signature": bytes(64)})
    response = await post(
        h, PSY, orjson.loads(tampered.to_json()), "application/vnd.attest-gateway.envelope+json"
    )
    assert response.status_code == 422
    assert response.json()["code"] == "signature-invalid"
    response = await post(
        h, PSY, orjson.loads(envelope.to_json()), "application/vnd.attest-gateway.envelope+json"
    )
    assert response.status_code == 202, response.text
    status = await h.get_json(f"/jobcenter/v1/attest-requests/{accepted['conversation_id']}", JC)
    assert "acknowledged" in status["stages"]

    # The gateway opened the submission at the edge: audited once (the refused one was never
    # opened: its signature failed first); then it was accepted from the clinic.
    await audit.chain_all(h.gw.engine, h.gw.topics)
    async with h.gw.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(audit_log)
                .where(audit_log.c.message_id == envelope.header.message_id)
                .order_by(audit_log.c.seq)
            )
        ).all()
    assert [(r.action, r.actor, r.subject_org) for r in rows] == [
        (audit.ENVELOPE_OPEN, h.settings.gateway_org_id, PSY),
        (audit.MESSAGE_SUBMIT, PSY, JC),
    ]
    assert orjson.loads(rows[0].detail)["purpose"] == "submission"


async def test_bad_records_go_to_the_dead_letter_topic(harness: Harness) -> None:
    """Unparseable, tampered and misaddressed records are dead-lettered with their reason,
    never delivered, and do not block the partition."""
    h = harness
    accepted, _request, item = await new_request(h)
    good = SealedEnvelope.model_validate(item["envelope"])
    run = uuid.uuid4().hex
    tampered_header = good.model_copy(
        update={"header": good.header.model_copy(update={"message_id": f"tampered-{run}"})}
    )
    readdressed = good.model_copy(
        update={
            "header": good.header.model_copy(
                update={"message_id": f"readdressed-{run}", "receiver": GP}
            )
        }
    )
    unknown_key = good.model_copy(
        update={
            "header": good.header.model_copy(
                update={"message_id": f"unknown-key-{run}", "signer_key_id": "sig-nope"}
            )
        }
    )
    unknown_type = orjson.loads(good.to_json())
    unknown_type["header"]["message_type"] = "lab-result"  # a valid envelope of an unknown type
    records = {
        f"garbage-{run}": b"this is not an envelope",
        f"unknown-type-{run}": orjson.dumps(unknown_type),
        f"truncated-{run}": good.to_json()[: len(good.to_json()) // 2],
        f"tampered-{run}": tampered_header.to_json(),
        f"readdressed-{run}": readdressed.to_json(),
        f"unknown-key-{run}": unknown_key.to_json(),
    }
    producer = AIOKafkaProducer(**client_args(h.bootstrap), acks="all")
    await producer.start()
    try:
        for key, value in records.items():
            await producer.send_and_wait(h.gw.topics.medcom_messages, value=value, key=key.encode())
    finally:
        await producer.stop()

    async def dead_lettered() -> dict[str, dict[str, str]] | None:
        found = {}
        for record in await read_topic(h.bootstrap, h.gw.topics.dead_letter):
            key = (record.key or b"").decode()
            if key in records:
                found[key] = {k: v.decode() for k, v in record.headers or ()}
        return found if len(found) == len(records) else None

    found = await wait_for(dead_lettered)
    assert found[f"garbage-{run}"]["dlq-reason"] == "invalid-envelope"
    assert found[f"unknown-type-{run}"]["dlq-reason"] == "invalid-envelope"
    assert found[f"truncated-{run}"]["dlq-reason"] == "invalid-envelope"
    assert found[f"tampered-{run}"]["dlq-reason"] == "signature-invalid"
    assert found[f"readdressed-{run}"]["dlq-reason"] == "not-addressed-to-receiver"
    assert found[f"unknown-key-{run}"]["dlq-reason"] == "unknown-key"
    for headers in found.values():
        assert headers["dlq-source-topic"] == h.gw.topics.medcom_messages
        assert int(headers["dlq-source-offset"]) >= 0
    async with h.gw.engine.connect() as conn:
        ids = set((await conn.execute(sa.select(tables.mailbox.c.message_id))).scalars())
    assert not ids & {f"tampered-{run}", f"readdressed-{run}", f"unknown-key-{run}"}

    # The partitions are not blocked: a new request still arrives.
    later, _, _ = await new_request(h)
    assert later["conversation_id"] != accepted["conversation_id"]


async def test_redelivered_record_is_stored_once(harness: Harness) -> None:
    h = harness
    accepted, _request, item = await new_request(h)
    key = accepted["conversation_id"].encode()
    producer = AIOKafkaProducer(**client_args(h.bootstrap), acks="all")
    await producer.start()
    try:
        value = SealedEnvelope.model_validate(item["envelope"]).to_json()
        for _ in range(3):
            await producer.send_and_wait(h.gw.topics.medcom_messages, value=value, key=key)
        # Same key, so same partition, after the copies: once this unparseable marker is
        # dead-lettered, the copies before it have been handled.
        marker = await producer.send_and_wait(h.gw.topics.medcom_messages, b"marker", key=key)
    finally:
        await producer.stop()

    async def marker_dead_lettered() -> bool:
        for record in await read_topic(h.bootstrap, h.gw.topics.dead_letter):
            headers = {k: v.decode() for k, v in record.headers or ()}
            if headers.get("dlq-source-partition") == str(marker.partition) and headers.get(
                "dlq-source-offset"
            ) == str(marker.offset):
                return True
        return False

    await wait_for(marker_dead_lettered)
    rows = await mailbox_rows(h, accepted["conversation_id"])
    assert len(rows) == 1
