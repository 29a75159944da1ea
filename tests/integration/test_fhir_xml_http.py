"""FHIR XML at the API, on the real broker and databases: a clinic whose directory entry says
xml gets its requests sealed as FHIR XML, the directory API says so, its XML reply is accepted
and reaches the job centre's inbox; hostile or broken XML is a problem+json, never a 5xx."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.core.directory import MessageFormat
from attest_gateway.crypto.sealing import open_envelope
from attest_gateway.medcom.fhir_xml import json_to_xml, xml_to_json
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.services import admin
from tests.integration.conftest import Harness
from tests.integration.test_medcom_side import new_request, reply_to
from tests.integration.test_roundtrip import mailbox_item
from tests.support.harness import attest_request_body, wait_for
from tests.unit.test_fhir_xml import BILLION_LAUGHS, EXTERNAL_ENTITY

JC, PSY = "jc-koebenhavn", "psyk-kbh"
XML = "application/fhir+xml"


async def _set_format(h: Harness, org_id: str, fmt: MessageFormat) -> None:
    async with h.gw.engine.begin() as conn:
        await admin.set_message_format(conn, h.settings, org_id, fmt, actor="test", source="test")


@asynccontextmanager
async def _taking_xml(h: Harness, org_id: str) -> AsyncIterator[None]:
    """`org_id` takes XML while the block runs (the session's organisations are shared)."""
    await _set_format(h, org_id, MessageFormat.XML)
    try:
        yield
    finally:
        await _set_format(h, org_id, MessageFormat.JSON)


def _plaintext(item: dict[str, Any], h: Harness, org_id: str) -> bytes:
    envelope = SealedEnvelope.model_validate(item["envelope"])
    keys = h.client_keys(org_id)
    key = next(k for k in keys.hpke_keys if k.key_id == envelope.header.recipient_key_id)
    return open_envelope(envelope, key)


async def _new_request(h: Harness) -> dict[str, Any]:
    response = await h.client.post(
        "/jobcenter/v1/attest-requests",
        json=attest_request_body(jobcenter_gln=h.gln(JC)),
        headers=h.auth(JC),
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def _post_xml(h: Harness, org: str, body: bytes, content_type: str = XML) -> Any:
    return await h.client.post(
        "/medcom/v1/messages", content=body, headers={**h.auth(org), "Content-Type": content_type}
    )


async def test_a_clinic_that_takes_xml_gets_xml_and_answers_in_xml(harness: Harness) -> None:
    h = harness
    async with _taking_xml(h, PSY):
        keys = await h.get_json(f"/directory/v1/organisations/{PSY}/keys", JC)
        assert keys["message_format"] == "xml"
        accepted = await _new_request(h)
        item = await mailbox_item(h, PSY, accepted["message_id"])
        plaintext = _plaintext(item, h, PSY)
        assert plaintext.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Bundle ')
        request: Bundle = parse_bundle(xml_to_json(plaintext))
        assert request.message_header.id == accepted["message_id"]

        reply = reply_to(request)
        response = await _post_xml(h, PSY, json_to_xml(reply))
        assert response.status_code == 202, response.text
        assert response.json()["conversation_id"] == accepted["conversation_id"]

        # the job centre (custodial: the gateway opens its mail) reads it as ever
        async def in_inbox() -> dict[str, Any] | None:
            items = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
            return next(
                (i for i in items if i["conversation_id"] == accepted["conversation_id"]), None
            )

        assert (await wait_for(in_inbox))["message_id"] == reply["entry"][0]["resource"]["id"]
    assert (await h.get_json(f"/directory/v1/organisations/{PSY}/keys", JC))[
        "message_format"
    ] == "json"
    _, _, item = await new_request(h)
    assert _plaintext(item, h, PSY).startswith(b"{")


async def test_xml_that_must_be_refused_is_a_problem_not_a_failure(harness: Harness) -> None:
    h = harness
    _, request, _ = await new_request(h)
    for body, status, code in [
        (BILLION_LAUGHS, 400, "xml-not-allowed"),
        (EXTERNAL_ENTITY, 400, "xml-not-allowed"),
        (b"<Bundle", 400, "malformed-xml"),
        (b'<Bundle xmlns="http://hl7.org/fhir"><nope value="1"/></Bundle>', 422, "invalid-bundle"),
        (json_to_xml({**reply_to(request), "type": "collection"}), 422, "bundle-not-message"),
    ]:
        response = await _post_xml(h, PSY, body)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code
    unsupported = await _post_xml(h, PSY, b"<x/>", content_type="application/yaml")
    assert unsupported.status_code == 415


async def test_a_sealed_json_reply_and_an_xml_reply_mean_the_same(harness: Harness) -> None:
    """The same reply, once as text/xml: accepted like application/fhir+json."""
    h = harness
    accepted, request, _ = await new_request(h)
    reply = reply_to(request, message_id=str(uuid.uuid4()))
    response = await _post_xml(h, PSY, json_to_xml(reply), content_type="text/xml")
    assert response.status_code == 202, response.text
    assert response.json()["message_type"] == "attest-reply"
    item = await mailbox_item(h, PSY, accepted["message_id"])
    assert item["conversation_id"] == accepted["conversation_id"]
