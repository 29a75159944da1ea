"""Sealing with the keys the directory lists: a Bundle for its receiver's current key, signed
with the newest usable signing key the key ring holds; the copy of a sent message kept for
resends; a citizen's CPR number for the gateway's own key. Every hand-off goes through here,
the use cases' (services/) and the housekeeping's (resends, reminders) alike."""

from __future__ import annotations

import datetime as dt

import orjson

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.directory import MessageFormat
from attest_gateway.core.errors import ErrorCode, InvalidInput
from attest_gateway.crypto.pseudonyms import seal_citizen
from attest_gateway.crypto.sealing import KeyRing, seal
from attest_gateway.medcom.fhir_xml import json_to_xml
from attest_gateway.ports.store import Directory


async def seal_for(
    directory: Directory,
    keyring: KeyRing,
    *,
    signer_org_id: str,
    sender_org_id: str,
    receiver_org_id: str,
    message_type: MessageType,
    message_id: str,
    bundle_id: str,
    conversation_id: str,
    plaintext: bytes,
    now: dt.datetime,
) -> SealedEnvelope:
    """Seal a Bundle (FHIR JSON) for the receiver's current HPKE key and sign it with the
    signer's key. A receiver whose systems take FHIR XML (its `message_format`) gets the
    Bundle in XML; a custodial one never does: the gateway opens its mail itself."""
    recipient = await directory.current_hpke_key(receiver_org_id, now)
    if recipient is None:
        raise InvalidInput(
            ErrorCode.RECEIVER_HAS_NO_KEY, "the receiver has no usable encryption key"
        )
    usable = await directory.usable_signing_key_ids(signer_org_id, now)
    signer = keyring.signing_among(signer_org_id, usable) if usable else None
    if signer is None:
        raise RuntimeError(f"no usable signing key of {signer_org_id!r} in the key files")
    receiver = await directory.org_by_id(receiver_org_id)
    if (
        receiver is not None
        and receiver.message_format is MessageFormat.XML
        and not receiver.custodial
    ):
        plaintext = json_to_xml(orjson.loads(plaintext))
    header = EnvelopeHeader(
        message_id=message_id,
        bundle_id=bundle_id,
        conversation_id=conversation_id,
        message_type=message_type,
        sender=sender_org_id,
        receiver=receiver_org_id,
        suite=recipient.suite,
        recipient_key_id=recipient.key_id,
        signer=signer_org_id,
        signer_key_id=signer.key_id,
        created_at=now,
    )
    return seal(plaintext, header, recipient, signer)


async def sent_copy(
    directory: Directory,
    keyring: KeyRing,
    gateway_org_id: str,
    *,
    plaintext: bytes,
    envelope: SealedEnvelope,
    now: dt.datetime,
) -> SealedEnvelope:
    """The copy (sealed for the gateway itself, now) kept of a message that awaits a MedCom
    acknowledgement, so the resend rule can send it again with a new Bundle.id."""
    h = envelope.header
    return await seal_for(
        directory,
        keyring,
        signer_org_id=gateway_org_id,
        sender_org_id=h.sender,
        receiver_org_id=gateway_org_id,
        message_type=h.message_type,
        message_id=h.message_id,
        bundle_id=h.bundle_id,
        conversation_id=h.conversation_id,
        plaintext=plaintext,
        now=now,
    )


async def seal_for_gateway(
    directory: Directory,
    keyring: KeyRing,
    gateway_org_id: str,
    cpr: str,
    *,
    context: str,
    now: dt.datetime,
) -> str:
    """The CPR number sealed to the gateway's own current HPKE key as the directory lists it
    (never a revoked key), provided the key ring holds its private half, so that what is
    sealed to it can be opened again (to re-key the pseudonyms from)."""
    key = await directory.current_hpke_key(gateway_org_id, now)
    if key is None or keyring.hpke_key(key.key_id) is None:
        raise RuntimeError(
            f"the gateway organisation {gateway_org_id!r} has no usable HPKE key in its key file"
        )
    return seal_citizen(cpr, key, context=context)
