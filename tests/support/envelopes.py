"""Envelopes made by hand for the tests of the gateway's checks: sealed to a chosen key, signed
by a chosen key (registered in the directory as revoked or expired when asked), put straight
on `medcom.messages`, and what the gateway then did with each record."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from prometheus_client import REGISTRY

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope
from attest_gateway.core.clock import SystemClock
from attest_gateway.crypto.sealing import PublicHpkeKey, SigningKey, open_envelope, seal
from attest_gateway.infra.db import directory, tables
from tests.support.harness import Harness, read_topic, wait_for
from tests.support.kafka import client_args


async def register_signing_key(
    h: Harness,
    org_id: str,
    *,
    revoked_at: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> SigningKey:
    """A new Ed25519 key of `org_id` in `org_keys`, revoked or expired when asked."""
    key = SigningKey.generate()
    async with h.gw.engine.begin() as conn:
        await conn.execute(
            tables.org_keys.insert().values(
                key_id=key.key_id,
                org_id=org_id,
                purpose="signing",
                algorithm="Ed25519",
                public_key=key.public_encoded,
                created_at=SystemClock().now() - dt.timedelta(days=30),
                revoked_at=revoked_at,
                not_after=not_after,
            )
        )
    return key


async def hpke_key_of(h: Harness, org_id: str) -> PublicHpkeKey:
    """The organisation's current public HPKE key, as the directory gives it to senders."""
    async with h.gw.engine.connect() as conn:
        key = await directory.current_hpke_key(conn, org_id, SystemClock().now())
    assert key is not None, org_id
    return key


def make_envelope(
    plaintext: bytes,
    *,
    recipient: PublicHpkeKey,
    signer: SigningKey,
    signer_org: str,
    **header: Any,
) -> SealedEnvelope:
    """A correctly sealed and signed envelope; `header` gives the routing fields (message
    and bundle id, conversation, type, sender, receiver), the keys give the rest."""
    fields = {
        "created_at": SystemClock().now(),
        **header,
        "recipient_key_id": recipient.key_id,
        "suite": recipient.suite,
        "signer": signer_org,
        "signer_key_id": signer.key_id,
    }
    return seal(plaintext, EnvelopeHeader.model_validate(fields), recipient, signer)


def reseal(
    envelope: SealedEnvelope,
    plaintext: bytes,
    *,
    recipient: PublicHpkeKey,
    signer: SigningKey,
    signer_org: str,
    **header: Any,
) -> SealedEnvelope:
    """Like `envelope` (its routing header with `header` applied), sealed and signed anew."""
    keyed = {"suite", "recipient_key_id", "signer", "signer_key_id"}  # follow the keys given
    fields = {k: v for k, v in envelope.header.model_dump().items() if k not in keyed} | header
    return make_envelope(
        plaintext, recipient=recipient, signer=signer, signer_org=signer_org, **fields
    )


def tampered(envelope: SealedEnvelope, **header: Any) -> SealedEnvelope:
    """The same ciphertext and signature under a header changed after signing."""
    return envelope.model_copy(update={"header": envelope.header.model_copy(update=header)})


def flip_byte(data: bytes, position: int = 0) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def opened(envelope: SealedEnvelope, h: Harness, org_id: str) -> bytes:
    """The plaintext of an envelope, opened with the organisation's key file."""
    keys = h.client_keys(org_id)
    key = next(k for k in keys.hpke_keys if k.key_id == envelope.header.recipient_key_id)
    return open_envelope(envelope, key)


async def publish(h: Harness, key: bytes, values: Sequence[bytes]) -> list[RecordMetadata]:
    """Put `values` on `medcom.messages` in order, all with one record key (so one partition,
    handled in this order); returns where each landed."""
    producer = AIOKafkaProducer(**client_args(h.bootstrap), acks="all")
    try:  # closed even when its start fails
        await producer.start()
        return [
            await producer.send_and_wait(h.gw.topics.medcom_messages, value=v, key=key)
            for v in values
        ]
    finally:
        await producer.stop()


async def dead_letters_of(
    h: Harness, placed: Sequence[RecordMetadata]
) -> dict[int, dict[str, str]]:
    """The dead-letter headers of those records (by source offset) that have been
    dead-lettered so far."""
    wanted = {(m.partition, m.offset) for m in placed}
    found: dict[int, dict[str, str]] = {}
    for record in await read_topic(h.bootstrap, h.gw.topics.dead_letter):
        headers = {k: v.decode() for k, v in record.headers or ()}
        if headers.get("dlq-source-topic") != h.gw.topics.medcom_messages:
            continue
        source = (int(headers["dlq-source-partition"]), int(headers["dlq-source-offset"]))
        if source in wanted:
            found[source[1]] = headers
    return found


async def handled_in_order(
    h: Harness, key: bytes, values: Sequence[bytes]
) -> tuple[list[RecordMetadata], dict[int, dict[str, str]]]:
    """Publish `values` and then an unreadable marker under one key; once the marker is
    dead-lettered, every record before it has been handled. Returns the records' places and
    the dead letters among them (by offset)."""
    placed = await publish(h, key, [*values, b"marker: not an envelope"])
    marker = placed[-1]

    async def marker_seen() -> dict[int, dict[str, str]] | None:
        found = await dead_letters_of(h, placed)
        return found if marker.offset in found else None

    found = await wait_for(marker_seen)
    del found[marker.offset]
    return placed[:-1], found


def verification_failures(where: str, reason: str) -> float:
    """The alert metric's current value (process-wide: compare before with after)."""
    value = REGISTRY.get_sample_value(
        "attest_gateway_verification_failures_total", {"where": where, "reason": reason}
    )
    return value or 0.0


async def mailbox_row(h: Harness, message_id: str) -> Any:
    async with h.gw.engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(tables.mailbox).where(tables.mailbox.c.message_id == message_id)
            )
        ).first()


def as_json(envelope: SealedEnvelope) -> Any:
    return orjson.loads(envelope.to_json())
