"""The partner client (`attest_gateway.client`) against a real gateway (the in-process
gateway, real broker and database): a job centre asks, the clinic reads its mailbox, opens the
request after checking the signature against the directory, acknowledges and replies; the job
centre reads the reply and acknowledges it. A tampered envelope is not opened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from attest_gateway.client import (
    AsyncClient,
    GatewayProblem,
    NotOpened,
    acknowledgement,
    attest_reply,
)
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.mailbox import MailboxItem
from tests.integration.conftest import Harness
from tests.support.flows import JC, PSY
from tests.support.harness import ATTEST_TEXT, attest_request_body, wait_for
from tests.support.people import CLINICIAN


@asynccontextmanager
async def partner(h: Harness, org: str) -> AsyncIterator[AsyncClient]:
    transport = httpx.ASGITransport(app=h.app)
    client = AsyncClient(
        "http://gateway",
        api_key=h.creds[org]["api_key"],
        gateway_org_id=h.settings.gateway_org_id,
        transport=transport,
    )
    async with client:
        yield client


async def _waiting(clinic: AsyncClient, message_id: str) -> MailboxItem:
    async def probe() -> MailboxItem | None:
        items = (await clinic.mailbox(limit=500)).items
        return next((i for i in items if i.message_id == message_id), None)

    return await wait_for(probe)


async def test_a_conversation_through_the_partner_client(harness: Harness) -> None:
    h = harness
    keys = h.client_keys(PSY)
    async with partner(h, JC) as jobcentre, partner(h, PSY) as clinic:
        accepted = await jobcentre.request_attest(attest_request_body(jobcenter_gln=h.gln(JC)))
        item = await _waiting(clinic, accepted.message_id)
        assert item.envelope.header.receiver == PSY

        request = await clinic.open(item, keys)  # the signer's keys from the directory
        assert request["resourceType"] == "Bundle"
        ack = await clinic.submit(acknowledgement(request))
        assert (ack.message_type.value, ack.conversation_id) == (
            "acknowledgement",
            accepted.conversation_id,
        )
        reply = await clinic.submit(attest_reply(request, CLINICIAN, text=ATTEST_TEXT))
        assert reply.message_type.value == "attest-reply"
        again = await clinic.collect(item.message_id)  # the acknowledgement collected it
        assert again.changed is False

        async def in_inbox() -> str | None:
            items = (await jobcentre.inbox()).items
            return next(
                (i.message_id for i in items if i.conversation_id == accepted.conversation_id),
                None,
            )

        reply_id = await wait_for(in_inbox)
        assert reply_id == reply.message_id
        acked = await jobcentre.ack(reply_id)
        assert (acked.acknowledged, acked.changed) == (True, True)

        # An error answer is the gateway's problem, with its stable code.
        with pytest.raises(GatewayProblem) as refused:
            await jobcentre.mailbox()
        assert (refused.value.status, refused.value.code) == (403, "forbidden")


async def test_the_client_does_not_open_a_tampered_envelope(harness: Harness) -> None:
    h = harness
    keys = h.client_keys(PSY)
    async with partner(h, JC) as jobcentre, partner(h, PSY) as clinic:
        accepted = await jobcentre.request_attest(attest_request_body(jobcenter_gln=h.gln(JC)))
        item = await _waiting(clinic, accepted.message_id)
        sealed: SealedEnvelope = item.envelope
        flipped = bytes([sealed.signature[0] ^ 1]) + sealed.signature[1:]
        tampered = sealed.model_copy(update={"signature": flipped})
        with pytest.raises(NotOpened) as refused:
            await clinic.open(tampered, keys)
        assert refused.value.code == "signature-invalid"
        # Without the check the ciphertext still opens: the check is what refused it.
        assert (await clinic.open(tampered, keys, verify=False))["resourceType"] == "Bundle"
        await clinic.collect(item.message_id)
