"""A job centre's inbox with a reply the gateway cannot open: the others are handed out first
and can be acknowledged, the bad one is named with its code, and once it can be opened again
it is handed out like any other."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.infra.db.tables import mailbox
from attest_gateway.medcom.build import build_attest_reply
from tests.integration.conftest import Harness
from tests.integration.test_medcom_side import JC, PSY, new_request, post
from tests.support.envelopes import flip_byte
from tests.support.harness import ATTEST_TEXT, wait_for
from tests.support.people import CLINICIAN


async def delivered_reply(h: Harness) -> tuple[str, str]:
    """A reply delivered to the job centre's mailbox: (conversation id, message id)."""
    accepted, request, _ = await new_request(h)
    reply = build_attest_reply(
        author=CLINICIAN,
        request=request, message_id=str(uuid.uuid4()), bundle_id=str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC), text=ATTEST_TEXT, pdf=None,
    )  # fmt: skip
    assert (await post(h, PSY, reply)).status_code == 202
    message_id = reply["entry"][0]["resource"]["id"]

    async def in_mailbox() -> Any:
        async with h.gw.engine.connect() as conn:
            return (
                await conn.execute(sa.select(mailbox).where(mailbox.c.message_id == message_id))
            ).first()

    await wait_for(in_mailbox)
    return accepted["conversation_id"], message_id


async def set_envelope(h: Harness, message_id: str, envelope: bytes) -> None:
    async with h.gw.engine.begin() as conn:
        await conn.execute(
            mailbox.update().where(mailbox.c.message_id == message_id).values(envelope=envelope)
        )


async def marked(h: Harness, message_id: str) -> tuple[Any, Any]:
    async with h.gw.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(mailbox.c.unreadable_at, mailbox.c.unreadable_reason).where(
                    mailbox.c.message_id == message_id
                )
            )
        ).one()
    return row.unreadable_at, row.unreadable_reason


async def test_one_unreadable_reply_does_not_block_the_inbox(harness: Harness) -> None:
    h = harness
    bad_cid, bad = await delivered_reply(h)  # the older one
    good_cid, good = await delivered_reply(h)
    async with h.gw.engine.connect() as conn:
        original = (
            await conn.execute(sa.select(mailbox.c.envelope).where(mailbox.c.message_id == bad))
        ).scalar_one()
    envelope = SealedEnvelope.from_json(original)
    damaged = envelope.model_copy(update={"ciphertext": flip_byte(envelope.ciphertext, 20)})
    await set_envelope(h, bad, damaged.to_json())

    inbox = await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500})
    assert good in [i["message_id"] for i in inbox["items"]]
    assert bad not in [i["message_id"] for i in inbox["items"]]
    named = [u for u in inbox["unreadable"] if u["message_id"] == bad]
    assert [(u["conversation_id"], u["code"]) for u in named] == [(bad_cid, "open-failed")]
    assert set(named[0]) == {
        "message_id", "conversation_id", "caseworker_ref", "received_at", "code"
    }  # fmt: skip
    at, reason = await marked(h, bad)
    assert at is not None
    assert reason == "open-failed"

    # Readable replies come first: a read of as many as are readable names no unreadable one.
    readable = len(inbox["items"])
    first = await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": readable})
    assert [i["message_id"] for i in first["items"]] == [i["message_id"] for i in inbox["items"]]
    assert first["unreadable"] == []

    acked = await h.client.post(f"/jobcenter/v1/inbox/{good}/ack", headers=h.auth(JC))
    assert acked.status_code == 200, acked.text
    status = await h.get_json(f"/jobcenter/v1/attest-requests/{good_cid}", JC)
    assert "reply_acknowledged" in status["stages"]
    refused = await h.client.post(f"/jobcenter/v1/inbox/{bad}/ack", headers=h.auth(JC))
    assert (refused.status_code, refused.json()["code"]) == (422, "open-failed")

    # Mended (here: the envelope as delivered): handed out, the mark cleared.
    await set_envelope(h, bad, original)
    inbox = await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500})
    assert bad in [i["message_id"] for i in inbox["items"]]
    assert bad not in [u["message_id"] for u in inbox["unreadable"]]
    assert await marked(h, bad) == (None, None)
    acked = await h.client.post(f"/jobcenter/v1/inbox/{bad}/ack", headers=h.auth(JC))
    assert acked.status_code == 200, acked.text
