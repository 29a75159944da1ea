"""What an attest reply must be before the gateway accepts it: about the request's citizen, in
the request's conversation, under a message id nobody else's message has, nested within
bounds, with attachments of MedCom's MIME types. A refused reply gets 422/409 with a stable
code and leaves nothing behind: no accepted-message row, nothing on its way to the job
centre."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from attest_gateway.contracts.stages import MessageType
from attest_gateway.infra.db import tables
from attest_gateway.medcom.codes import CPR_SYSTEM
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import MAX_JSON_DEPTH
from tests.integration.conftest import Harness
from tests.integration.test_medcom_side import (
    JC,
    PSY,
    mailbox_rows,
    new_request,
    post,
    reply_to,
    sealed_for_gateway,
)
from tests.integration.test_roundtrip import mailbox_item, open_item
from tests.support.harness import CPR_2, PDF, attest_request_body, wait_for

ENVELOPE_JSON = "application/vnd.attest-gateway.envelope+json"


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def with_pdf(request: Bundle, content_type: str, data: bytes | None) -> dict[str, Any]:
    """A reply whose attachment is `data` labelled `content_type` (data None: by URL)."""
    reply = reply_to(request)
    communication = resources(reply, "Communication")[0]
    attachment: dict[str, Any] = {"contentType": content_type, "title": "Attest"}
    if data is None:
        attachment["url"] = "https://example.org/attest.pdf"
    else:
        attachment["data"] = base64.b64encode(data).decode("ascii")
    communication["payload"].append({"contentAttachment": attachment})
    return reply


async def refused_and_nothing_kept(
    h: Harness, conversation_id: str, reply: dict[str, Any], status: int, code: str
) -> None:
    response = await post(h, PSY, reply)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    await nothing_kept(h, conversation_id, reply["entry"][0]["resource"]["id"])


async def nothing_kept(h: Harness, conversation_id: str, message_id: str) -> None:
    async with h.gw.engine.connect() as conn:
        inbound = (
            await conn.execute(
                sa.select(tables.inbound_messages.c.message_id).where(
                    tables.inbound_messages.c.message_id == message_id
                )
            )
        ).all()
        replies_queued = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.outbox)
                .where(
                    tables.outbox.c.topic == h.gw.topics.medcom_messages,
                    tables.outbox.c.key == conversation_id,
                )
            )
        ).scalar_one()
    assert inbound == []
    assert replies_queued == 1  # the request only
    rows = await mailbox_rows(h, conversation_id)
    # Besides the request, only the gateway's negative acknowledgements of refused replies,
    # in the clinic's own mailbox (docs/medcom.md, "Negative acknowledgements").
    answers = [r for r in rows if r.message_type == MessageType.ACKNOWLEDGEMENT.value]
    assert all((r.sender_org_id, r.receiver_org_id) == ("gateway", PSY) for r in answers)
    assert [r.message_type for r in rows if r not in answers] == [MessageType.ATTEST_REQUEST.value]


async def test_reply_about_another_citizen_is_refused(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    cid = accepted["conversation_id"]

    other = reply_to(request)
    patient = resources(other, "Patient")[0]
    cpr = next(i for i in patient["identifier"] if i["system"] == CPR_SYSTEM)
    cpr["value"] = CPR_2
    await refused_and_nothing_kept(h, cid, other, 422, "patient-mismatch")

    for not_a_cpr in ("０１０１９０１２３４", "0101901234x", "3201901234"):
        odd = reply_to(request)
        odd_cpr = next(
            i for i in resources(odd, "Patient")[0]["identifier"] if i["system"] == CPR_SYSTEM
        )
        odd_cpr["value"] = not_a_cpr
        await refused_and_nothing_kept(h, cid, odd, 422, "patient-mismatch")

    anonymous = reply_to(request)
    resources(anonymous, "Patient")[0].pop("identifier")
    await refused_and_nothing_kept(h, cid, anonymous, 422, "patient-mismatch")

    # The same reply about the request's own citizen is accepted.
    assert (await post(h, PSY, reply_to(request))).status_code == 202


async def test_reply_naming_another_conversation_is_refused(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    # A conversation of another job centre with the same psychiatry unit.
    response = await h.client.post(
        "/jobcenter/v1/attest-requests",
        json=attest_request_body(municipality="751", jobcenter_gln=h.gln("jc-aarhus")),
        headers=h.auth("jc-aarhus"),
    )
    assert response.status_code == 202, response.text
    foreign = response.json()["conversation_id"]

    reply = reply_to(request)
    resources(reply, "Communication")[0]["identifier"] = [
        {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{foreign}"}
    ]
    await refused_and_nothing_kept(
        h, accepted["conversation_id"], reply, 422, "conversation-mismatch"
    )
    missing = reply_to(request)
    resources(missing, "Communication")[0].pop("identifier")
    await refused_and_nothing_kept(
        h, accepted["conversation_id"], missing, 422, "conversation-mismatch"
    )
    assert "attest-reply" not in [r.message_type for r in await mailbox_rows(h, foreign)]


async def test_reply_under_a_message_id_the_gateway_carries_is_refused(harness: Harness) -> None:
    """Reusing the request's MessageHeader.id: refused at once, not accepted and then lost as
    a replay in the delivery consumer."""
    h = harness
    accepted, request, _ = await new_request(h)
    reply = reply_to(request, message_id=accepted["message_id"])
    response = await post(h, PSY, reply)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "replayed-message-id"
    rows = await mailbox_rows(h, accepted["conversation_id"])
    kept = [r for r in rows if r.message_type != MessageType.ACKNOWLEDGEMENT.value]
    assert [r.message_id for r in kept] == [accepted["message_id"]]  # and the negative ack
    async with h.gw.engine.connect() as conn:
        inbound = (
            await conn.execute(
                sa.select(tables.inbound_messages).where(
                    tables.inbound_messages.c.message_id == accepted["message_id"]
                )
            )
        ).all()
    assert inbound == []


def nested(depth: int) -> dict[str, Any]:
    """An extension nested `depth` objects deep (FHIR allows nested extensions)."""
    value: dict[str, Any] = {"url": "urn:example:leaf", "valueString": "x"}
    for _ in range(depth - 1):
        value = {"url": "urn:example:node", "extension": [value]}
    return value


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
async def test_deeply_nested_reply_is_refused(harness: Harness, sealed: bool) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    reply = reply_to(request)
    resources(reply, "Communication")[0]["extension"] = [nested(300)]
    body: Any = reply
    content_type = "application/fhir+json"
    if sealed:
        envelope = sealed_for_gateway(
            h,
            h.client_keys(PSY),
            reply,
            conversation_id=accepted["conversation_id"],
            message_type=MessageType.ATTEST_REPLY,
            plaintext=json.dumps(reply).encode(),
        )
        body, content_type = json.loads(envelope.to_json()), ENVELOPE_JSON
    response = await h.client.post(  # json, not orjson: orjson refuses to write it
        "/medcom/v1/messages",
        content=json.dumps(body).encode(),
        headers={**h.auth(PSY), "Content-Type": content_type},
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "too-deeply-nested"
    await nothing_kept(h, accepted["conversation_id"], reply["entry"][0]["resource"]["id"])


async def test_nesting_within_the_limit_is_carried(harness: Harness) -> None:
    h = harness
    _, request, _ = await new_request(h)
    reply = reply_to(request)
    # Bundle → entry → [] → resource → extension → [] → the nested extension
    resources(reply, "Communication")[0]["extension"] = [nested((MAX_JSON_DEPTH - 6) // 2)]
    response = await post(h, PSY, reply)
    assert response.status_code == 202, response.text


PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)
HTML = b"<html><body><script>alert(1)</script></body></html>"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda r: with_pdf(r, "text/html", HTML), "unsupported-attachment-type"),
        (lambda r: with_pdf(r, "application/pdf; charset=x", PDF), "unsupported-attachment-type"),
        (lambda r: with_pdf(r, "application/pdf", HTML), "attachment-content-mismatch"),
        (lambda r: with_pdf(r, "image/png", PDF), "attachment-content-mismatch"),
        (lambda r: with_pdf(r, "application/pdf", None), "attachment-without-data"),
    ],
    ids=["html", "parameters", "html-as-pdf", "pdf-as-png", "by-url"],
)
async def test_attachment_outside_medcoms_mime_types_is_refused(
    harness: Harness, make: Callable[[Bundle], dict[str, Any]], code: str
) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    await refused_and_nothing_kept(h, accepted["conversation_id"], make(request), 422, code)


async def test_attachments_of_medcoms_mime_types_reach_the_job_centre(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    reply = with_pdf(request, "image/png", PNG)
    resources(reply, "Communication")[0]["payload"].append(
        {
            "contentAttachment": {
                "contentType": "application/pdf",
                "title": "Attest",
                "data": base64.b64encode(PDF).decode("ascii"),
            }
        }
    )
    assert (await post(h, PSY, reply)).status_code == 202

    async def in_inbox() -> dict[str, Any] | None:
        items = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
        return next((i for i in items if i["conversation_id"] == accepted["conversation_id"]), None)

    item = await wait_for(in_inbox)
    assert [
        (a["content_type"], base64.b64decode(a["data_base64"])) for a in item["attachments"]
    ] == [
        ("image/png", PNG),
        ("application/pdf", PDF),
    ]


async def test_a_request_can_still_be_read_after_refusals(harness: Harness) -> None:
    """The refusals above are per message: the clinic's mailbox still hands out requests."""
    h = harness
    accepted, _, _ = await new_request(h)
    item = await mailbox_item(h, PSY, accepted["message_id"])
    assert open_item(item, h.client_keys(PSY)).message_header.id == accepted["message_id"]
    assert orjson.loads(orjson.dumps(item))["conversation_id"] == accepted["conversation_id"]
