"""The envelope format is documented well enough for another implementation: an independent
HPKE library (pyhpke, its own RFC 9180 key schedule) opens what the gateway seals and seals
what the gateway opens, for the `X25519/HKDF_SHA256/AES_256_GCM` suite. The test builds
`info` and the signed bytes from the documented wire format (docs/envelope.md), not from the
gateway's helpers, and reads keys from the documented key-file encoding."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope, Suite
from attest_gateway.core.errors import EnvelopeRejected
from attest_gateway.crypto.sealing import (
    PrivateHpkeKey,
    SigningKey,
    decode_verify_key,
    open_envelope,
    seal,
    verify,
)

SUITE: Suite = "X25519/HKDF_SHA256/AES_256_GCM"
PLAINTEXT = '{"resourceType":"Bundle","id":"b-1","note":"Tekst med æøå"}'.encode()
PYHPKE_SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)
SIGNING_CONTEXT = b"attest-gateway/envelope/v1\x00"  # as written in docs/envelope.md
X25519_ENC_LEN = 32


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _info(header: dict[str, Any]) -> bytes:
    """Canonical JSON of the header: keys sorted, no whitespace, UTF-8 (docs/envelope.md)."""
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _signed(info: bytes, ciphertext: bytes) -> bytes:
    return SIGNING_CONTEXT + len(info).to_bytes(4, "big") + info + ciphertext


def _pyhpke_private(record: dict[str, str]) -> Any:
    """The receiver's key from the key-file record (raw X25519 private key, base64)."""
    d = base64.b64decode(record["x25519"])
    x = x25519.X25519PrivateKey.from_private_bytes(d).public_key().public_bytes_raw()
    return KEMKey.from_jwk({"kty": "OKP", "crv": "X25519", "x": _b64url(x), "d": _b64url(d)})


def _header(recipient: PrivateHpkeKey, signer: SigningKey) -> EnvelopeHeader:
    return EnvelopeHeader(
        message_id="2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01",
        bundle_id="9b1f0a4c-6b53-4b3e-8f0e-7f3b1a2c9d02",
        conversation_id="6f1c2a8e-3b7d-4c1e-9a0f-2d5e8b7c4a11",
        message_type="attest-request",  # type: ignore[arg-type]
        sender="jc-koebenhavn",
        receiver="psyk-kbh",
        suite=SUITE,
        recipient_key_id=recipient.key_id,
        signer="jc-koebenhavn",
        signer_key_id=signer.key_id,
        created_at=dt.datetime(2026, 11, 23, 9, 30, 15, 123456, tzinfo=dt.UTC),
    )


def test_an_independent_hpke_library_opens_what_the_gateway_seals() -> None:
    recipient = PrivateHpkeKey.generate(SUITE)
    signer = SigningKey.generate()
    envelope = seal(PLAINTEXT, _header(recipient, signer), recipient.public(), signer)
    wire = json.loads(envelope.to_json())  # what travels: JSON with base64 fields

    info = _info(wire["header"])
    ciphertext = base64.b64decode(wire["ciphertext"])
    signature = base64.b64decode(wire["signature"])
    public = base64.b64decode(signer.public_encoded)  # the directory's encoding
    ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, _signed(info, ciphertext))

    enc, ct = ciphertext[:X25519_ENC_LEN], ciphertext[X25519_ENC_LEN:]
    context = PYHPKE_SUITE.create_recipient_context(
        enc, _pyhpke_private(recipient.to_record()), info=info
    )
    assert context.open(ct) == PLAINTEXT

    # The header is bound as HPKE info: another header does not open.
    other = _info({**wire["header"], "receiver": "gp-noerrebro"})
    wrong = PYHPKE_SUITE.create_recipient_context(
        enc, _pyhpke_private(recipient.to_record()), info=other
    )
    with pytest.raises(Exception, match=r"(?i)fail|invalid|tag"):
        wrong.open(ct)


def test_the_gateway_opens_what_an_independent_library_seals() -> None:
    recipient = PrivateHpkeKey.generate(SUITE)
    signer = SigningKey.generate()
    header = json.loads(_header(recipient, signer).model_dump_json())
    info = _info(header)
    public_raw = base64.b64decode(recipient.public_encoded)
    pkr = KEMKey.from_jwk({"kty": "OKP", "crv": "X25519", "x": _b64url(public_raw)})
    enc, sender = PYHPKE_SUITE.create_sender_context(pkr, info=info)
    ciphertext = enc + sender.seal(PLAINTEXT)
    signature = signer.key.sign(_signed(info, ciphertext))
    wire = json.dumps(
        {
            "header": header,
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "signature": base64.b64encode(signature).decode(),
        }
    )

    envelope = SealedEnvelope.from_json(wire)
    verify(envelope, decode_verify_key(signer.public_encoded))
    assert open_envelope(envelope, recipient) == PLAINTEXT

    # A signature over other bytes is refused by the gateway.
    forged = envelope.model_copy(update={"signature": signer.key.sign(info)})
    with pytest.raises(EnvelopeRejected):
        verify(forged, decode_verify_key(signer.public_encoded))
    with pytest.raises(InvalidSignature):
        decode_verify_key(signer.public_encoded).verify(forged.signature, _signed(info, ciphertext))
