"""The MedCom resend rule: a request without acknowledgement after `resend_after_seconds`
(30 minutes) is sent again with a new Bundle.id and the same MessageHeader.id, at most
`max_resends` (2) times; after that the conversation is flagged `undeliverable`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.crypto.sealing import open_envelope
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.messaging import (
    enqueue_envelope,
    load_conversation,
    record_stage,
    seal_for,
)
from attest_gateway.infra.db.tables import sent_messages


async def resend_unacknowledged(gw: Gateway, now: dt.datetime) -> tuple[int, int]:
    """Send again what was not acknowledged in time; flag what ran out of resends.
    Returns (resent, undeliverable)."""
    cutoff = now - dt.timedelta(seconds=gw.settings.resend_after_seconds)
    resent = undeliverable = 0
    async with gw.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(sent_messages)
                .where(
                    sent_messages.c.acknowledged_at.is_(None),
                    sent_messages.c.undeliverable_at.is_(None),
                    sent_messages.c.last_sent_at < cutoff,
                )
                .limit(gw.settings.prune_batch_size)
            )
        ).all()
    for row in rows:
        async with gw.engine.begin() as conn:
            # Claim the row (another worker may be sweeping too).
            claimed = await conn.execute(
                sent_messages.update()
                .where(
                    sent_messages.c.message_id == row.message_id,
                    sent_messages.c.resend_count == row.resend_count,
                    sent_messages.c.acknowledged_at.is_(None),
                    sent_messages.c.undeliverable_at.is_(None),
                )
                .values(
                    last_sent_at=now,
                    resend_count=row.resend_count + 1,
                    undeliverable_at=now if row.resend_count >= gw.settings.max_resends else None,
                )
            )
            if claimed.rowcount != 1:
                continue
            conv = await load_conversation(conn, row.conversation_id)
            assert conv is not None
            if row.resend_count >= gw.settings.max_resends:
                undeliverable += 1
                await record_stage(
                    conn, gw.topics, conv, Stage.UNDELIVERABLE,
                    message_id=row.message_id, message_type=MessageType(row.message_type),
                    at=now, detail=f"no acknowledgement after {row.resend_count} resends",
                )  # fmt: skip
                continue
            await _resend(gw, conn, row, now)
            resent += 1
            await record_stage(
                conn, gw.topics, conv, Stage.RESENT,
                message_id=row.message_id, message_type=MessageType(row.message_type),
                at=now, detail=f"resend {row.resend_count + 1}",
            )  # fmt: skip
    return resent, undeliverable


async def _resend(gw: Gateway, conn: AsyncConnection, row: sa.Row[Any], now: dt.datetime) -> None:
    copy = SealedEnvelope.from_json(row.copy)
    key = gw.keyring.hpke_key(copy.header.recipient_key_id)
    if key is None:
        raise RuntimeError("the gateway no longer holds the key of its sent-message copy")
    bundle = orjson.loads(open_envelope(copy, key))
    bundle["id"] = new_bundle_id = str(uuid.uuid4())  # MedCom: new Bundle.id on every send
    bundle["timestamp"] = now.isoformat()
    envelope = await seal_for(
        conn,
        gw.keyring,
        signer_org_id=gw.settings.gateway_org_id,
        sender_org_id=copy.header.sender,
        receiver_org_id=str(row.receiver_org_id),
        message_type=copy.header.message_type,
        message_id=copy.header.message_id,
        bundle_id=new_bundle_id,
        conversation_id=copy.header.conversation_id,
        plaintext=orjson.dumps(bundle),
        now=now,
    )
    await enqueue_envelope(conn, gw.topics, envelope, now)
    await audit.record(  # the gateway opened its own copy: an opening, audited
        conn,
        gw.topics,
        actor=gw.settings.gateway_org_id,
        action=audit.ENVELOPE_OPEN,
        source=audit.SOURCE_GATEWAY,
        at=now,
        subject_org=copy.header.sender,
        message_id=copy.header.message_id,
        conversation_id=copy.header.conversation_id,
        detail={"key_id": key.key_id, "purpose": "resend"},
    )
