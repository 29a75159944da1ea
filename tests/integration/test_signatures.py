"""Signatures and envelope checks, on both paths and both databases.

Every envelope is signed by its sender (or by the gateway on the sender's behalf) over the
routing header and the ciphertext, and checked before anything is delivered. Each way an
envelope can be wrong is a case: an unknown signing key, a revoked key, an expired key, a
bad signature, a header changed after signing, a changed ciphertext, an envelope for someone
else, and a message id that another message already has.

- On Kafka (an envelope put straight on `medcom.messages`): dead-lettered with the reason,
  counted by `verification_failures_total{where="kafka"}`, in no mailbox.
- At the API (a health organisation's sealed submission): problem+json with a stable code,
  counted by `verification_failures_total{where="api"}`, nothing accepted or forwarded. The
  API answers at once, so no MedCom acknowledgement is sent for a refused submission.

An exact redelivery and a MedCom resend (same MessageHeader.id and routing, new Bundle.id)
are not replays: the first changes nothing, the second is offered again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Any

import orjson
import sqlalchemy as sa

from attest_gateway.contracts.envelope import CONTENT_TYPE, SealedEnvelope
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.clock import SystemClock
from attest_gateway.crypto.sealing import SigningKey
from attest_gateway.infra.db import tables
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.model import Bundle
from tests.integration.conftest import Harness
from tests.integration.test_authorisation import as_gp
from tests.integration.test_bad_input import assert_problem
from tests.integration.test_medcom_side import new_request, post
from tests.integration.test_roundtrip import mailbox_item, open_item
from tests.support.envelopes import (
    as_json,
    flip_byte,
    handled_in_order,
    hpke_key_of,
    mailbox_row,
    make_envelope,
    opened,
    register_signing_key,
    reseal,
    tampered,
    verification_failures,
)
from tests.support.harness import ATTEST_TEXT, attest_request_body, wait_for
from tests.support.people import CLINICIAN

JC, JC2, PSY, GP = "jc-koebenhavn", "jc-aarhus", "psyk-kbh", "gp-noerrebro"
DAY = dt.timedelta(days=1)


def new_id() -> str:
    return str(uuid.uuid4())


def bad_signature(envelope: SealedEnvelope) -> SealedEnvelope:
    return envelope.model_copy(update={"signature": flip_byte(envelope.signature, 5)})


def bad_ciphertext(envelope: SealedEnvelope) -> SealedEnvelope:
    position = len(envelope.ciphertext) - 3
    return envelope.model_copy(update={"ciphertext": flip_byte(envelope.ciphertext, position)})


def ack_of(request: Bundle, *, message_id: str | None = None) -> dict[str, Any]:
    return build_acknowledgement(
        acked=request,
        message_id=message_id or new_id(),
        bundle_id=new_id(),
        sent_at=dt.datetime.now(dt.UTC),
        code="ok",
    )


def ids_of(bundle: dict[str, Any]) -> dict[str, str]:
    return {"message_id": bundle["entry"][0]["resource"]["id"], "bundle_id": bundle["id"]}


async def test_on_kafka_each_bad_envelope_is_dead_lettered_with_its_reason(
    harness: Harness,
) -> None:
    h = harness
    first, request, item = await new_request(h)  # jc-koebenhavn → psychiatry, in its mailbox
    second, _, item2 = await new_request(h)
    good = SealedEnvelope.model_validate(item["envelope"])
    good2 = SealedEnvelope.model_validate(item2["envelope"])
    psy_signing = h.client_keys(PSY).current_signing
    gateway_signing = h.gw.keyring.signing(h.settings.gateway_org_id)
    jc_key, jc2_key, psy_key = [await hpke_key_of(h, org) for org in (JC, JC2, PSY)]
    revoked = await register_signing_key(h, PSY, revoked_at=SystemClock().now() - DAY)
    expired = await register_signing_key(h, PSY, not_after=SystemClock().now() - DAY)
    ack = orjson.dumps(ack_of(request))

    def from_psy(signer: SigningKey = psy_signing, recipient: Any = jc_key, **header: Any) -> Any:
        """Psychiatry's acknowledgement to the job centre, sealed and signed by psychiatry."""
        fields = {
            "message_id": new_id(),
            "bundle_id": new_id(),
            "conversation_id": first["conversation_id"],
            "message_type": MessageType.ACKNOWLEDGEMENT,
            "sender": PSY,
            "receiver": JC,
            **header,
        }
        return make_envelope(ack, recipient=recipient, signer=signer, signer_org=PSY, **fields)

    cases: list[tuple[str, SealedEnvelope, str]] = [
        ("unknown signing key", from_psy(signer=SigningKey.generate()), "unknown-key"),
        ("revoked key", from_psy(signer=revoked), "key-not-valid"),
        ("expired key", from_psy(signer=expired), "key-not-valid"),
        ("bad signature", bad_signature(from_psy()), "signature-invalid"),
        (
            "conversation changed after signing",
            tampered(from_psy(), conversation_id=second["conversation_id"]),
            "signature-invalid",
        ),
        (
            "message type changed after signing",
            tampered(from_psy(), message_type=MessageType.ATTEST_REPLY),
            "signature-invalid",
        ),
        (
            "receiver changed after signing",
            tampered(from_psy(), receiver=JC2),
            "not-addressed-to-receiver",
        ),
        ("ciphertext changed", bad_ciphertext(from_psy()), "signature-invalid"),
        (
            "sealed to another organisation's key",
            from_psy(receiver=JC2),
            "not-addressed-to-receiver",
        ),
        (
            "addressed to an organisation outside the conversation",
            from_psy(receiver=JC2, recipient=jc2_key),
            "conversation-mismatch",
        ),
        (
            "replayed message id: another sender, receiver and type",
            from_psy(message_id=first["message_id"]),
            "replayed-message-id",
        ),
        (
            "replayed message id: another conversation",
            reseal(
                good,
                opened(good, h, PSY),
                recipient=psy_key,
                signer=gateway_signing,
                signer_org=h.settings.gateway_org_id,
                bundle_id=new_id(),
                conversation_id=second["conversation_id"],
            ),
            "replayed-message-id",
        ),
    ]
    valid = from_psy()
    resend = reseal(
        good2,
        opened(good2, h, PSY),
        recipient=psy_key,
        signer=gateway_signing,
        signer_org=h.settings.gateway_org_id,
        bundle_id=new_id(),
    )
    controls = [good, valid, resend]  # an exact redelivery, a valid envelope, a MedCom resend

    reasons = Counter(reason for _, _, reason in cases)
    before = {reason: verification_failures("kafka", reason) for reason in reasons}
    values = [e.to_json() for _, e, _ in cases] + [c.to_json() for c in controls]
    placed, dead = await handled_in_order(h, first["conversation_id"].encode(), values)

    got = {
        name: dead.get(placed[i].offset, {}).get("dlq-reason")
        for i, (name, _, _) in enumerate(cases)
    }
    assert got == {name: reason for name, _, reason in cases}
    for where in placed[len(cases) :]:
        assert where.offset not in dead  # the controls are not dead letters
    for i, _ in enumerate(cases):
        assert dead[placed[i].offset]["dlq-source-topic"] == h.gw.topics.medcom_messages
    after = {reason: verification_failures("kafka", reason) for reason in reasons}
    assert {r: after[r] - before[r] for r in reasons} == dict(reasons)

    # Never delivered: none of the refused message ids is in a mailbox, and the replays left
    # the message that owns the id as it was.
    for name, envelope, _ in cases:
        if envelope.header.message_id != first["message_id"]:
            assert await mailbox_row(h, envelope.header.message_id) is None, name
    owner = await mailbox_row(h, first["message_id"])
    assert (owner.sender_org_id, owner.receiver_org_id) == (JC, PSY)
    assert owner.conversation_id == first["conversation_id"]
    assert SealedEnvelope.from_json(owner.envelope) == good  # the redelivery changed nothing

    # The controls: the valid envelope was delivered, the resend replaced the waiting copy.
    delivered = await mailbox_row(h, valid.header.message_id)
    assert (delivered.receiver_org_id, delivered.message_type) == (JC, "acknowledgement")
    offered = await mailbox_row(h, second["message_id"])
    assert SealedEnvelope.from_json(offered.envelope).header.bundle_id == resend.header.bundle_id
    assert offered.conversation_id == second["conversation_id"]


async def nothing_accepted(h: Harness, message_id: str) -> None:
    async with h.gw.engine.connect() as conn:
        for table in (tables.inbound_messages, tables.outbox, tables.mailbox):
            rows = await conn.execute(sa.select(table).where(table.c.message_id == message_id))
            assert rows.first() is None, table.name


async def stages(h: Harness, conversation_id: str) -> set[str]:
    status = await h.get_json(f"/jobcenter/v1/attest-requests/{conversation_id}", JC)
    return set(status["stages"])


async def test_at_the_api_each_bad_sealed_submission_is_refused(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    cid, gateway_id = accepted["conversation_id"], h.settings.gateway_org_id
    gateway_key, jc_key = await hpke_key_of(h, gateway_id), await hpke_key_of(h, JC)
    psy_signing = h.client_keys(PSY).current_signing
    revoked = await register_signing_key(h, PSY, revoked_at=SystemClock().now() - DAY)
    expired = await register_signing_key(h, PSY, not_after=SystemClock().now() - DAY)
    ack = ack_of(request)
    ids = ids_of(ack)

    def sealed(
        signer: SigningKey = psy_signing, recipient: Any = gateway_key, **header: Any
    ) -> SealedEnvelope:
        """Psychiatry's acknowledgement, sealed for the gateway and signed by psychiatry."""
        fields = {
            **ids,
            "conversation_id": cid,
            "message_type": MessageType.ACKNOWLEDGEMENT,
            "sender": PSY,
            "receiver": gateway_id,
            **header,
        }
        return make_envelope(
            orjson.dumps(ack), recipient=recipient, signer=signer, signer_org=PSY, **fields
        )

    cases: list[tuple[str, str, SealedEnvelope, int, str]] = [
        ("unknown signing key", PSY, sealed(signer=SigningKey.generate()), 422, "unknown-key"),
        ("revoked key", PSY, sealed(signer=revoked), 422, "key-not-valid"),
        ("expired key", PSY, sealed(signer=expired), 422, "key-not-valid"),
        ("bad signature", PSY, bad_signature(sealed()), 422, "signature-invalid"),
        (
            "header changed after signing",
            PSY,
            tampered(sealed(), conversation_id=new_id()),
            422,
            "signature-invalid",
        ),
        ("ciphertext changed", PSY, bad_ciphertext(sealed()), 422, "signature-invalid"),
        (
            "addressed to a job centre",
            PSY,
            sealed(receiver=JC, recipient=jc_key),
            422,
            "not-addressed-to-gateway",
        ),
        # the gateway holds the job centre's custodial key, but this is not for the gateway
        (
            "sealed to a job centre's key",
            PSY,
            sealed(recipient=jc_key),
            422,
            "not-addressed-to-gateway",
        ),
        (
            "signed header names another message",
            PSY,
            sealed(message_id=new_id()),
            422,
            "header-mismatch",
        ),
        (
            "signed header names another type",
            PSY,
            sealed(message_type=MessageType.ATTEST_REPLY),
            422,
            "header-mismatch",
        ),
        ("sent by another organisation", GP, sealed(), 403, "sender-mismatch"),
    ]
    for name, org, envelope, status, code in cases:
        before = verification_failures("api", code)
        response = await post(h, org, as_json(envelope), CONTENT_TYPE)
        assert response.status_code == status, (name, response.text)
        assert_problem(response, status, code)
        assert verification_failures("api", code) == before + 1, name
    await nothing_accepted(h, ids["message_id"])
    assert "acknowledged" not in await stages(h, cid)
    assert (await mailbox_row(h, accepted["message_id"])).collected_at is None

    # The same envelope, correct: accepted, forwarded, the request acknowledged.
    valid = sealed()
    response = await post(h, PSY, as_json(valid), CONTENT_TYPE)
    assert response.status_code == 202, response.text
    assert "acknowledged" in await stages(h, cid)
    # The exact envelope again is a MedCom duplicate: the same answer, nothing new.
    before = verification_failures("api", "replayed-message-id")
    again = await post(h, PSY, as_json(valid), CONTENT_TYPE)
    assert again.status_code == 202
    assert again.json() == response.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert verification_failures("api", "replayed-message-id") == before


async def test_at_the_api_a_reused_message_id_is_a_replay(harness: Harness) -> None:
    """A message id names one message: another sender, another conversation or another type
    under a known id is refused as a replay, and nothing of it is delivered."""
    h = harness
    gateway_id = h.settings.gateway_org_id
    gateway_key = await hpke_key_of(h, gateway_id)
    first, request, item = await new_request(h)
    taken = ids_of(ack_of(request))["message_id"]
    psy_ack = ack_of(request, message_id=taken)

    def sealed_by(org: str, bundle: dict[str, Any], conversation_id: str, kind: MessageType) -> Any:
        return as_json(
            make_envelope(
                orjson.dumps(bundle),
                recipient=gateway_key,
                signer=h.client_keys(org).current_signing,
                signer_org=org,
                **ids_of(bundle),
                conversation_id=conversation_id,
                message_type=kind,
                sender=org,
                receiver=gateway_id,
            )
        )

    ack = MessageType.ACKNOWLEDGEMENT
    accepted = await post(
        h, PSY, sealed_by(PSY, psy_ack, first["conversation_id"], ack), CONTENT_TYPE
    )
    assert accepted.status_code == 202, accepted.text

    # Another conversation of the same sender.
    second, request2, _ = await new_request(h)
    # A GP with a request of its own.
    response = await h.client.post(
        "/jobcenter/v1/attest-requests",
        json=attest_request_body(
            jobcenter_gln=h.gln(JC), receiver={"ydernummer": "012345"}, attest_type="LÆ 265"
        ),
        headers=h.auth(JC),
    )
    assert response.status_code == 202, response.text
    gp_request = response.json()
    gp_bundle = open_item(await mailbox_item(h, GP, gp_request["message_id"]), h.client_keys(GP))
    reply = build_attest_reply(
        author=CLINICIAN,
        request=request, message_id=taken, bundle_id=new_id(), sent_at=SystemClock().now(),
        text=ATTEST_TEXT, pdf=None,
    )  # fmt: skip
    replays = [
        ("another conversation", PSY, ack_of(request2, message_id=taken), ack, second),
        ("another type", PSY, reply, MessageType.ATTEST_REPLY, first),
        ("another sender", GP, ack_of(gp_bundle, message_id=taken), ack, gp_request),
    ]
    for name, org, bundle, kind, conv in replays:
        before = verification_failures("api", "replayed-message-id")
        envelope = sealed_by(org, bundle, conv["conversation_id"], kind)
        response = await post(h, org, envelope, CONTENT_TYPE)
        assert_problem(response, 409, "replayed-message-id")
        assert verification_failures("api", "replayed-message-id") == before + 1, name
        reached = await stages(h, conv["conversation_id"])
        assert "replied" not in reached, name
        if conv is not first:  # (the first was acknowledged, by the message that owns the id)
            assert "acknowledged" not in reached, name
            assert (await mailbox_row(h, conv["message_id"])).collected_at is None, name

    # A GP answering psychiatry's request learns nothing about the id: the answer is the
    # one for a fresh id.
    plaintext = opened(SealedEnvelope.model_validate(item["envelope"]), h, PSY)
    as_gp_request = as_gp(plaintext, request_id=first["message_id"])
    reused = await post(h, GP, ack_of(as_gp_request, message_id=taken))
    fresh = await post(h, GP, ack_of(as_gp_request))
    assert_problem(reused, 404, "unknown-request")
    assert reused.content == fresh.content

    # Only psychiatry's acknowledgement reached the job centre under that id.
    delivered = await wait_for(lambda: mailbox_row(h, taken))
    assert (delivered.sender_org_id, delivered.receiver_org_id) == (PSY, JC)
    assert delivered.conversation_id == first["conversation_id"]
    assert delivered.message_type == "acknowledgement"
