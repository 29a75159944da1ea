"""The whole conversation in process, on the real broker and both databases:
request → mailbox → open → acknowledgement → reply → job-centre inbox → ack."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

import orjson

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import StageEvent
from attest_gateway.crypto.sealing import OrgKeys, open_envelope
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import read_message
from tests.integration.conftest import Harness
from tests.support.harness import (
    ATTEST_TEXT,
    CPR,
    PDF,
    QUESTIONS,
    attest_request_body,
    read_topic,
    wait_for,
)
from tests.support.leaks import kafka_dump, store_dump
from tests.support.people import CLINICIAN

JC, PSY = "jc-koebenhavn", "psyk-kbh"


def open_item(item: dict[str, Any], keys: OrgKeys) -> Bundle:
    envelope = SealedEnvelope.model_validate(item["envelope"])
    key = next(k for k in keys.hpke_keys if k.key_id == envelope.header.recipient_key_id)
    return parse_bundle(orjson.loads(open_envelope(envelope, key)))


async def mailbox_item(h: Harness, org: str, message_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        # the most a read returns: the session's harness gathers every test's messages
        items = (await h.get_json("/medcom/v1/mailbox", org, params={"limit": 500}))["items"]
        return next((i for i in items if i["message_id"] == message_id), None)

    return await wait_for(probe)


async def submit(h: Harness, org: str, bundle: dict[str, Any]) -> dict[str, Any]:
    response = await h.client.post(
        "/medcom/v1/messages",
        content=orjson.dumps(bundle),
        headers={**h.auth(org), "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_round_trip(harness: Harness) -> None:
    h = harness
    body = attest_request_body(jobcenter_gln=h.gln(JC))
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    accepted = response.json()
    conversation_id = accepted["conversation_id"]
    assert response.headers["Location"] == accepted["status_url"]
    # LÆ 155: two months after the request.
    assert dt.date.fromisoformat(accepted["reply_deadline"]) > dt.date.today() + dt.timedelta(50)

    # Psychiatry fetches the sealed request and opens it with its own key.
    item = await mailbox_item(h, PSY, accepted["message_id"])
    assert item["envelope"]["header"]["receiver"] == PSY
    assert CPR not in orjson.dumps(item).decode()
    request_bundle = open_item(item, h.client_keys(PSY))
    info = read_message(request_bundle)
    assert (info.message_type, info.cpr, info.attest_type) == ("attest-request", CPR, "LÆ 155")
    # The questions, and the citizen's consent as the text's last line (and an extension).
    assert info.texts == [f"{QUESTIONS}\n\nBorgeren har givet samtykke den 02-01-2020."]
    assert info.consent_date == dt.date(2020, 1, 2)
    assert info.message_id == accepted["message_id"]

    now = dt.datetime.now(dt.UTC)
    ack = build_acknowledgement(
        acked=request_bundle,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=now,
        code="ok",
    )
    ack_answer = await submit(h, PSY, ack)
    assert ack_answer["conversation_id"] == conversation_id
    # An acknowledged request leaves the waiting list.
    waiting = (await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500}))["items"]
    assert accepted["message_id"] not in [i["message_id"] for i in waiting]

    reply = build_attest_reply(
        author=CLINICIAN,
        request=request_bundle,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=now,
        text=ATTEST_TEXT,
        pdf=PDF,
    )
    reply_answer = await submit(h, PSY, reply)

    async def inbox_item() -> dict[str, Any] | None:
        items = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
        return next((i for i in items if i["conversation_id"] == conversation_id), None)

    got = await wait_for(inbox_item)
    assert got["message_id"] == reply_answer["message_id"]
    assert got["attest_text"] == ATTEST_TEXT
    assert got["attest_type"] == "LÆ 155"
    assert got["caseworker_ref"] == body["caseworker_ref"]
    assert base64.b64decode(got["attachments"][0]["data_base64"]) == PDF
    assert got["sender"]["sor"] == "715381000016006"

    ack_response = await h.client.post(
        f"/jobcenter/v1/inbox/{got['message_id']}/ack", headers=h.auth(JC)
    )
    assert ack_response.status_code == 200
    assert ack_response.json()["changed"] is True
    again = await h.client.post(f"/jobcenter/v1/inbox/{got['message_id']}/ack", headers=h.auth(JC))
    assert again.json()["changed"] is False
    remaining = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
    assert got["message_id"] not in [i["message_id"] for i in remaining]

    # Psychiatry receives the job centre's MedCom acknowledgement of its reply.
    async def ack_for_reply() -> dict[str, Any] | None:
        items = (await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500}))["items"]
        return next(
            (
                i
                for i in items
                if i["conversation_id"] == conversation_id
                and i["message_type"] == "acknowledgement"
            ),
            None,
        )

    ack_item = await wait_for(ack_for_reply)
    ack_info = read_message(open_item(ack_item, h.client_keys(PSY)))
    assert (ack_info.response_to, ack_info.response_code) == (reply_answer["message_id"], "ok")
    collected = await h.client.post(
        f"/medcom/v1/mailbox/{ack_item['message_id']}/collected", headers=h.auth(PSY)
    )
    assert collected.json()["changed"] is True

    status = await h.get_json(f"/jobcenter/v1/attest-requests/{conversation_id}", JC)
    expected = [
        "submitted",
        "published",
        "in_mailbox",
        "fetched",
        "acknowledged",
        "replied",
        "reply_in_inbox",
        "reply_fetched",
        "reply_acknowledged",
    ]
    assert list(status["stages"]) == expected
    times = [dt.datetime.fromisoformat(status["stages"][s]) for s in expected]
    assert times == sorted(times)
    assert status["stage"] == "reply_acknowledged"
    assert status["timeline"][4]["detail"] == "ok"

    # Every stage went to gateway.tracking as a metadata-only event.
    async def tracked() -> list[StageEvent] | None:
        records = await read_topic(h.bootstrap, h.gw.topics.tracking)
        events = [
            StageEvent.model_validate_json(r.value)
            for r in records
            if r.value and r.key == conversation_id.encode()  # not other tests' records
        ]
        # A recovery replay may publish an event twice (consumers are idempotent): one per stage.
        mine = list({e.stage: e for e in events if e.conversation_id == conversation_id}.values())
        return mine if len(mine) == len(expected) else None

    events = await wait_for(tracked)
    assert sorted(e.stage.value for e in events) == sorted(expected)
    assert all(e.case_ref and CPR not in e.model_dump_json() for e in events)


async def test_no_health_data_in_clear_in_store_or_on_kafka(harness: Harness) -> None:
    """After a full exchange, neither the CPR number nor any text appears outside envelopes."""
    h = harness
    marker_cpr = "2912843339"  # 29 Dec 1984
    marker_text = f"Unik testtekst {uuid.uuid4().hex}"
    body = attest_request_body(jobcenter_gln=h.gln(JC), cpr=marker_cpr, questions=marker_text)
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202
    accepted = response.json()
    item = await mailbox_item(h, PSY, accepted["message_id"])
    request_bundle = open_item(item, h.client_keys(PSY))
    reply = build_attest_reply(
        author=CLINICIAN,
        request=request_bundle,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC),
        text=marker_text + " svar",
        pdf=None,
    )
    await submit(h, PSY, reply)

    async def delivered() -> bool:
        items = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
        return any(i["conversation_id"] == accepted["conversation_id"] for i in items)

    await wait_for(delivered)

    # The store: every column of every table, as text.
    text = await store_dump(h)
    assert accepted["conversation_id"] in text  # the dump really holds this exchange
    assert marker_cpr not in text
    assert marker_text not in text

    # Kafka: every record on every topic, headers included.
    blobs = await kafka_dump(h)
    assert blobs
    for blob in blobs:
        assert marker_cpr.encode() not in blob
        assert marker_text.encode() not in blob
