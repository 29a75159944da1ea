"""A receiver's check of a sealed envelope against the directory's published keys
(`GET /directory/v1/organisations/{signer}/keys`): the signer is the sender or the gateway,
the signing key is the signer's, was not revoked and had not expired when the envelope was
made, and the signature verifies. The reference client (`client open`) runs it before it
opens anything."""

from __future__ import annotations

from attest_gateway.contracts.directory import OrganisationKeys
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.core.errors import EnvelopeRejected, ErrorCode
from attest_gateway.crypto.sealing import decode_verify_key, verify


def verify_against_directory(
    envelope: SealedEnvelope, signer_keys: OrganisationKeys, *, gateway_org_id: str
) -> None:
    """Raise `EnvelopeRejected` unless the envelope is signed by a valid key of its signer,
    and the signer is its sender or the gateway (which signs for custodial organisations)."""
    header = envelope.header
    if header.signer not in (header.sender, gateway_org_id):
        raise EnvelopeRejected(
            ErrorCode.SIGNER_NOT_SENDER,
            "the envelope is signed by neither its sender nor the gateway",
        )
    if signer_keys.org_id != header.signer:
        raise EnvelopeRejected(ErrorCode.UNKNOWN_KEY, "the keys given are not the signer's")
    key = next(
        (
            k
            for k in signer_keys.keys
            if k.key_id == header.signer_key_id and k.purpose == "signing"
        ),
        None,
    )
    if key is None:
        raise EnvelopeRejected(ErrorCode.UNKNOWN_KEY, "the signer has no such signing key")
    if key.revoked_at is not None or (
        key.valid_until is not None and key.valid_until <= header.created_at
    ):
        raise EnvelopeRejected(ErrorCode.KEY_NOT_VALID, "the signing key is revoked or expired")
    verify(envelope, decode_verify_key(key.public_key))
