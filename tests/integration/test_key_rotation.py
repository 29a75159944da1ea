"""Key rotation, retirement and revocation against the running gateway (real broker, SQLite
and PostgreSQL), through the same admin functions `attest-gateway keys …` uses.

Each test makes its own job centre and psychiatry unit (the harness is shared with other
tests), except the last, which has to rotate the gateway's own signing key: afterwards the
gateway signs with its new key and the old one stays revoked for the rest of the session.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import EnvelopeRejected
from attest_gateway.core.identifiers import gln_check_digit
from attest_gateway.crypto.sealing import (
    OrgKeys,
    SigningKey,
    decode_verify_key,
    open_envelope,
    seal,
    verify,
)
from attest_gateway.infra.db import audit, directory, tables
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import read_message
from attest_gateway.services import admin
from tests.integration.conftest import Harness
from tests.support.harness import ATTEST_TEXT, attest_request_body, read_topic, wait_for
from tests.support.kafka import client_args
from tests.support.people import CLINICIAN

ACTOR = "operator:test"
SOURCE = "test"
ENVELOPE_TYPE = "application/vnd.attest-gateway.envelope+json"


@dataclass(frozen=True)
class Party:
    org: Organisation
    api_key: str
    key_file: Path | None  # a clinic's own private key file (None: custodial)

    @property
    def id(self) -> str:
        return self.org.id

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def keys(self) -> OrgKeys:
        assert self.key_file is not None
        return OrgKeys.load(self.key_file)


def _digits(n: int) -> str:
    return str(uuid.uuid4().int)[:n].rjust(n, "0")


def _gln() -> str:
    first12 = "57900" + _digits(7)
    return first12 + str(gln_check_digit(first12))


async def new_parties(h: Harness, tmp_path: Path) -> tuple[Party, Party]:
    """A custodial job centre (Odense) and a psychiatry unit with its own key file."""
    run = uuid.uuid4().hex[:8]
    jc = Organisation(
        id=f"jc-rot-{run}",
        name=f"Jobcenter Rotation {run}",
        role=Role.JOBCENTER,
        sor=_digits(15),
        gln=_gln(),
        kommunekode="461",
        ydernummer=None,
        region_code=None,
        custodial=True,
        enabled=True,
    )
    psy = Organisation(
        id=f"psy-rot-{run}",
        name=f"Psykiatri Rotation {run}",
        role=Role.PSYCHIATRY,
        sor=_digits(15),
        gln=_gln(),
        kommunekode=None,
        ydernummer=None,
        region_code="1083",
        custodial=False,
        enabled=True,
    )
    key_file = tmp_path / f"{psy.id}.json"
    async with h.gw.engine.begin() as conn:
        added_jc = await admin.add_org(conn, h.settings, jc, actor=ACTOR, source=SOURCE)
        added_psy = await admin.add_org(
            conn, h.settings, psy, actor=ACTOR, source=SOURCE, private_out=key_file
        )
    assert added_jc.api_key is not None
    assert added_psy.api_key is not None
    return (
        Party(added_jc.org, added_jc.api_key, None),
        Party(added_psy.org, added_psy.api_key, key_file),
    )


async def send_request(h: Harness, jc: Party, psy: Party) -> tuple[dict[str, Any], SealedEnvelope]:
    """A request from `jc` to `psy`, as it lands in the psychiatry mailbox."""
    assert jc.org.gln is not None
    assert psy.org.sor is not None
    body = attest_request_body(
        municipality="461", jobcenter_gln=jc.org.gln, receiver={"sor": psy.org.sor}
    )
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=jc.auth())
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()

    async def in_mailbox() -> dict[str, Any] | None:
        response = await h.client.get("/medcom/v1/mailbox", headers=psy.auth())
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        return next((i for i in items if i["message_id"] == accepted["message_id"]), None)

    item = await wait_for(in_mailbox)
    return accepted, SealedEnvelope.model_validate(item["envelope"])


def open_with(keys: OrgKeys, envelope: SealedEnvelope) -> Bundle:
    key = next(k for k in keys.hpke_keys if k.key_id == envelope.header.recipient_key_id)
    return parse_bundle(orjson.loads(open_envelope(envelope, key)))


async def answer(h: Harness, psy: Party, request: Bundle) -> None:
    """The psychiatry unit acknowledges the request and sends its attest (plain FHIR)."""
    now = dt.datetime.now(dt.UTC)
    headers = {**psy.auth(), "Content-Type": "application/fhir+json"}
    ack = build_acknowledgement(
        acked=request,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=now,
        code="ok",
    )
    response = await h.client.post(
        "/medcom/v1/messages", content=orjson.dumps(ack), headers=headers
    )
    assert response.status_code == 202, response.text
    reply = build_attest_reply(
        author=CLINICIAN,
        request=request,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=now,
        text=ATTEST_TEXT,
        pdf=None,
    )
    response = await h.client.post(
        "/medcom/v1/messages", content=orjson.dumps(reply), headers=headers
    )
    assert response.status_code == 202, response.text


async def delivered_reply(h: Harness, jc: Party, conversation_id: str) -> SealedEnvelope:
    """The sealed attest reply in the job centre's mailbox (not yet opened)."""

    async def probe() -> SealedEnvelope | None:
        async with h.gw.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(tables.mailbox.c.envelope).where(
                        tables.mailbox.c.receiver_org_id == jc.id,
                        tables.mailbox.c.conversation_id == conversation_id,
                        tables.mailbox.c.message_type == MessageType.ATTEST_REPLY.value,
                    )
                )
            ).first()
        return SealedEnvelope.from_json(row.envelope) if row is not None else None

    return await wait_for(probe)


async def test_after_rotation_new_mail_is_sealed_to_the_new_key_and_old_mail_still_opens(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    jc, psy = await new_parties(h, tmp_path)
    _, before = await send_request(h, jc, psy)
    old_key_id = before.header.recipient_key_id

    async with h.gw.engine.begin() as conn:
        made = await admin.rotate_keys(
            conn,
            h.settings,
            psy.id,
            purpose="hpke",
            private_out=psy.key_file,
            actor=ACTOR,
            source=SOURCE,
        )
    [new_key] = made.keys
    assert made.replaced == {"hpke": old_key_id}
    assert new_key.key_id != old_key_id

    accepted, after = await send_request(h, jc, psy)
    assert after.header.recipient_key_id == new_key.key_id
    keys = psy.keys()
    assert read_message(open_with(keys, after)).message_id == accepted["message_id"]
    assert read_message(open_with(keys, before)).message_type == "attest-request"  # old mail opens
    old_private = next(k for k in keys.hpke_keys if k.key_id == old_key_id)
    with pytest.raises(EnvelopeRejected):  # and the new mail is really sealed to the new key
        open_envelope(after, old_private)

    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.audit_log)
            .where(
                tables.audit_log.c.subject_org == psy.id,
                tables.audit_log.c.action == "key.rotate",
            )
            .order_by(tables.audit_log.c.seq)
        )
        rotations = [audit.entry_from_row(r) for r in rows]
    assert [(e.actor, e.source) for e in rotations] == [(ACTOR, SOURCE)]
    assert rotations[0].detail == {
        "key_id": new_key.key_id,
        "purpose": "hpke",
        "algorithm": new_key.algorithm,
        "previous_key_id": old_key_id,
    }


async def test_a_custodial_job_centre_reads_replies_sealed_to_its_old_and_new_keys(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    jc, psy = await new_parties(h, tmp_path)
    first, sealed_first = await send_request(h, jc, psy)
    second, sealed_second = await send_request(h, jc, psy)
    await answer(h, psy, open_with(psy.keys(), sealed_first))
    old_reply = await delivered_reply(h, jc, first["conversation_id"])  # sent before rotating

    async with h.gw.engine.begin() as conn:
        made = await admin.rotate_keys(
            conn, h.settings, jc.id, purpose="hpke", actor=ACTOR, source=SOURCE
        )
    [new_key] = made.keys
    held = OrgKeys.load(admin.custodial_key_file(h.settings, jc.id))
    assert {old_reply.header.recipient_key_id, new_key.key_id} <= {k.key_id for k in held.hpke_keys}

    await answer(h, psy, open_with(psy.keys(), sealed_second))
    new_reply = await delivered_reply(h, jc, second["conversation_id"])
    assert old_reply.header.recipient_key_id == made.replaced["hpke"]
    assert new_reply.header.recipient_key_id == new_key.key_id

    # The gateway opens both at the edge, without a restart.
    response = await h.client.get("/jobcenter/v1/inbox", headers=jc.auth())
    assert response.status_code == 200, response.text
    conversations = {i["conversation_id"] for i in response.json()["items"]}
    assert {first["conversation_id"], second["conversation_id"]} <= conversations

    # Retiring the old key takes it out of the key file: the gateway lets go of it.
    async with h.gw.engine.begin() as conn:
        retired = await admin.retire_key(
            conn, h.settings, made.replaced["hpke"], actor=ACTOR, source=SOURCE
        )
    assert retired.changed
    assert retired.removed_from_key_file

    async def let_go() -> bool:
        return h.gw.keyring.hpke_key(made.replaced["hpke"]) is None

    await wait_for(let_go, within=5)
    assert h.gw.keyring.hpke_key(new_key.key_id) is not None


def _sealed(
    *,
    plaintext: bytes,
    bundle: dict[str, Any],
    conversation_id: str,
    message_type: MessageType,
    sender: str,
    receiver: str,
    recipient: Any,
    signer: SigningKey,
) -> SealedEnvelope:
    header = EnvelopeHeader(
        message_id=bundle["entry"][0]["resource"]["id"],
        bundle_id=bundle["id"],
        conversation_id=conversation_id,
        message_type=message_type,
        sender=sender,
        receiver=receiver,
        suite=recipient.suite,
        recipient_key_id=recipient.key_id,
        signer=sender,
        signer_key_id=signer.key_id,
        created_at=dt.datetime.now(dt.UTC),
    )
    return seal(plaintext, header, recipient, signer)


async def test_a_revoked_signing_key_is_refused_at_once_at_the_api_and_on_kafka(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    jc, psy = await new_parties(h, tmp_path)
    accepted, sealed = await send_request(h, jc, psy)
    request = open_with(psy.keys(), sealed)
    old_signing = psy.keys().current_signing

    async with h.gw.engine.begin() as conn:
        await admin.rotate_keys(
            conn,
            h.settings,
            psy.id,
            purpose="signing",
            private_out=psy.key_file,
            actor=ACTOR,
            source=SOURCE,
        )
        revoked = await admin.revoke_key(
            conn,
            h.settings,
            old_signing.key_id,
            reason="test: key compromised",
            actor=ACTOR,
            source=SOURCE,
        )
        gateway_key = await directory.current_hpke_key(
            conn, h.settings.gateway_org_id, dt.datetime.now(dt.UTC)
        )
        jc_key = await directory.current_hpke_key(conn, jc.id, dt.datetime.now(dt.UTC))
    assert revoked.changed
    assert revoked.key.revoked_at is not None
    assert gateway_key is not None
    assert jc_key is not None
    new_signing = psy.keys().current_signing
    assert new_signing.key_id != old_signing.key_id

    def sealed_ack(signer: SigningKey) -> bytes:
        ack = build_acknowledgement(
            acked=request,
            message_id=str(uuid.uuid4()),
            bundle_id=str(uuid.uuid4()),
            sent_at=dt.datetime.now(dt.UTC),
            code="ok",
        )
        return _sealed(
            plaintext=orjson.dumps(ack),
            bundle=ack,
            conversation_id=accepted["conversation_id"],
            message_type=MessageType.ACKNOWLEDGEMENT,
            sender=psy.id,
            receiver=h.settings.gateway_org_id,
            recipient=gateway_key,
            signer=signer,
        ).to_json()

    headers = {**psy.auth(), "Content-Type": ENVELOPE_TYPE}
    refused = await h.client.post(
        "/medcom/v1/messages", content=sealed_ack(old_signing), headers=headers
    )
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "key-not-valid"
    accepted_ack = await h.client.post(
        "/medcom/v1/messages", content=sealed_ack(new_signing), headers=headers
    )
    assert accepted_ack.status_code == 202, accepted_ack.text

    # Straight onto Kafka, signed by the clinic with the revoked key: dead-lettered.
    reply = build_attest_reply(
        author=CLINICIAN,
        request=request,
        message_id=f"revoked-{uuid.uuid4().hex}",
        bundle_id=str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC),
        text=ATTEST_TEXT,
        pdf=None,
    )
    envelope = _sealed(
        plaintext=orjson.dumps(reply),
        bundle=reply,
        conversation_id=accepted["conversation_id"],
        message_type=MessageType.ATTEST_REPLY,
        sender=psy.id,
        receiver=jc.id,
        recipient=jc_key,
        signer=old_signing,
    )
    message_id = envelope.header.message_id
    producer = AIOKafkaProducer(**client_args(h.bootstrap), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            h.gw.topics.medcom_messages, value=envelope.to_json(), key=message_id.encode()
        )
    finally:
        await producer.stop()

    async def dead_lettered() -> dict[str, str] | None:
        for record in await read_topic(h.bootstrap, h.gw.topics.dead_letter):
            if (record.key or b"").decode() == message_id:
                return {k: v.decode() for k, v in record.headers or ()}
        return None

    headers_found = await wait_for(dead_lettered)
    assert headers_found["dlq-reason"] == "key-not-valid"
    async with h.gw.engine.connect() as conn:
        delivered = (
            await conn.execute(
                sa.select(tables.mailbox.c.message_id).where(
                    tables.mailbox.c.message_id == message_id
                )
            )
        ).first()
    assert delivered is None


async def test_the_gateway_signs_with_its_new_key_after_rotating_and_revoking_the_old(
    harness: Harness, tmp_path: Path
) -> None:
    """Changes the shared harness for good: the gateway's first signing key stays revoked."""
    h = harness
    gateway = h.settings.gateway_org_id
    jc, psy = await new_parties(h, tmp_path)
    _, before = await send_request(h, jc, psy)
    old_key_id = before.header.signer_key_id
    assert before.header.signer == gateway

    async with h.gw.engine.begin() as conn:
        made = await admin.rotate_keys(
            conn, h.settings, gateway, purpose="signing", actor=ACTOR, source=SOURCE
        )
        revoked = await admin.revoke_key(
            conn, h.settings, old_key_id, reason="test rotation", actor=ACTOR, source=SOURCE
        )
    [new_key] = made.keys
    assert revoked.removed_from_key_file
    held = OrgKeys.load(admin.custodial_key_file(h.settings, gateway))
    assert old_key_id not in {k.key_id for k in held.signing_keys}

    # At once (no restart, no wait): new messages are signed with the new key and delivered.
    accepted, after = await send_request(h, jc, psy)
    assert after.header.signer_key_id == new_key.key_id
    async with h.gw.engine.connect() as conn:
        public = await directory.signing_key(conn, new_key.key_id)
        old = await directory.signing_key(conn, old_key_id)
    assert public is not None
    assert old is not None
    verify(after, decode_verify_key(public.public_key))
    assert not old.usable(dt.datetime.now(dt.UTC))
    await answer(h, psy, open_with(psy.keys(), after))
    reply = await delivered_reply(h, jc, accepted["conversation_id"])
    assert reply.header.signer_key_id == new_key.key_id
    ready = await h.client.get("/readyz")
    assert ready.json()["checks"]["keys"]["ok"] is True, ready.text
