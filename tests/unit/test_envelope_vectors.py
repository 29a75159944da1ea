"""The published envelope test vectors (docs/vectors/envelope-vectors.json) are right: the
gateway opens every one and verifies its signature; independent code opens them too (pyhpke,
its own RFC 9180 key schedule, for the X25519 suite; for the hybrid suite the X-Wing combiner
of draft-connolly-cfrg-xwing-kem and the RFC 9180 key schedule written out here, from the
identifiers docs/envelope.md names); and a tampered vector fails."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.core.errors import EnvelopeRejected
from attest_gateway.crypto.sealing import (
    PrivateHpkeKey,
    decode_verify_key,
    open_envelope,
    verify,
)
from attest_gateway.devtools import vectors as generator

VECTORS = Path(__file__).parents[2] / "docs" / "vectors" / "envelope-vectors.json"
SIGNING_CONTEXT = b"attest-gateway/envelope/v1\x00"  # as written in docs/envelope.md
XWING_LABEL = b"\\.//^\\"  # draft-connolly-cfrg-xwing-kem
MLKEM768_CT_LEN = 1088


def _load() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
    return vectors


def _by_suite(suite: str) -> dict[str, Any]:
    return next(v for v in _load() if v["suite"] == suite)


def _private(v: dict[str, Any]) -> PrivateHpkeKey:
    record = {"purpose": "hpke", "suite": v["suite"], **v["recipient"]}
    record.pop("public")
    return PrivateHpkeKey.from_record(record)


def _tampered(v: dict[str, Any], where: str) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(json.dumps(v["envelope"]))
    if where == "header":
        envelope["header"]["receiver"] = "another-receiver"
    else:
        raw = bytearray(base64.b64decode(envelope["ciphertext"]))
        raw[-1] ^= 1
        envelope["ciphertext"] = base64.b64encode(bytes(raw)).decode("ascii")
    return envelope


def test_one_vector_per_supported_suite() -> None:
    assert sorted(v["suite"] for v in _load()) == sorted(generator.SUITE_IDS)


def test_the_keys_are_the_generators_fixed_keys() -> None:
    """Running the generator again changes only the randomised parts."""
    for v in _load():
        assert v["recipient"]["public"] == generator.recipient_key(v["suite"]).public_encoded
        assert v["signer"]["public"] == generator.signing_key().public_encoded
        assert v["plaintext"] == generator.PLAINTEXT.decode()


@pytest.mark.parametrize("suite", sorted(generator.SUITE_IDS))
def test_the_gateway_opens_and_verifies_every_vector(suite: str) -> None:
    v = _by_suite(suite)
    envelope = SealedEnvelope.model_validate(v["envelope"])
    verify(envelope, decode_verify_key(v["signer"]["public"]))
    assert open_envelope(envelope, _private(v)) == v["plaintext"].encode()
    # The hex parts are the same bytes as the wire form.
    assert envelope.header.info().hex() == v["info_hex"]
    assert envelope.ciphertext.hex() == v["enc_hex"] + v["ct_hex"]
    assert envelope.signed_bytes().hex() == v["signed_bytes_hex"]
    assert envelope.signature.hex() == v["signature_hex"]
    assert _private(v).public_encoded == v["recipient"]["public"]


@pytest.mark.parametrize("suite", sorted(generator.SUITE_IDS))
@pytest.mark.parametrize("where", ["header", "ciphertext"])
def test_a_tampered_vector_fails(suite: str, where: str) -> None:
    v = _by_suite(suite)
    envelope = SealedEnvelope.model_validate(_tampered(v, where))
    with pytest.raises(EnvelopeRejected):
        verify(envelope, decode_verify_key(v["signer"]["public"]))
    with pytest.raises(EnvelopeRejected):
        open_envelope(envelope, _private(v))


def _independent_signature_check(v: dict[str, Any], envelope: dict[str, Any]) -> None:
    """Ed25519 over the bytes docs/envelope.md describes, built from the wire form."""
    info = json.dumps(
        envelope["header"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    ciphertext = base64.b64decode(envelope["ciphertext"])
    signed = SIGNING_CONTEXT + len(info).to_bytes(4, "big") + info + ciphertext
    public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(v["signer"]["public"]))
    public.verify(base64.b64decode(envelope["signature"]), signed)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _pyhpke_open(v: dict[str, Any], envelope: dict[str, Any]) -> bytes:
    assert (v["kem_id"], v["kdf_id"], v["aead_id"], v["mode"]) == (
        "0x0020",
        "0x0001",
        "0x0002",
        "0x00",
    )
    suite = CipherSuite.new(
        KEMId(int(v["kem_id"], 16)), KDFId(int(v["kdf_id"], 16)), AEADId(int(v["aead_id"], 16))
    )
    d = base64.b64decode(v["recipient"]["x25519"])
    x = x25519.X25519PrivateKey.from_private_bytes(d).public_key().public_bytes_raw()
    key = KEMKey.from_jwk({"kty": "OKP", "crv": "X25519", "x": _b64url(x), "d": _b64url(d)})
    info = json.dumps(
        envelope["header"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    ciphertext = base64.b64decode(envelope["ciphertext"])
    context = suite.create_recipient_context(ciphertext[:32], key, info=info)
    opened: bytes = context.open(ciphertext[32:], aad=b"")
    return opened


def test_pyhpke_opens_the_x25519_vector() -> None:
    v = _by_suite("X25519/HKDF_SHA256/AES_256_GCM")
    _independent_signature_check(v, v["envelope"])
    assert _pyhpke_open(v, v["envelope"]) == v["plaintext"].encode()


@pytest.mark.parametrize("where", ["header", "ciphertext"])
def test_pyhpke_refuses_a_tampered_x25519_vector(where: str) -> None:
    v = _by_suite("X25519/HKDF_SHA256/AES_256_GCM")
    envelope = _tampered(v, where)
    with pytest.raises(InvalidSignature):
        _independent_signature_check(v, envelope)
    with pytest.raises(Exception, match=r"(?i)fail|invalid|tag"):
        _pyhpke_open(v, envelope)


def _labeled(suite_id: bytes, label: bytes, data: bytes) -> bytes:
    return b"HPKE-v1" + suite_id + label + data


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def _xwing_open(v: dict[str, Any], envelope: dict[str, Any]) -> bytes:
    """RFC 9180 base mode, single shot, written out: X-Wing decapsulation (ML-KEM-768 and
    X25519 shared secrets, SHA3-256 combiner), then the key schedule with the suite id of
    the registered KEM, KDF and AEAD identifiers, then AES-256-GCM with the base nonce."""
    kem_id, kdf_id, aead_id = (int(v[k], 16) for k in ("kem_id", "kdf_id", "aead_id"))
    assert (kem_id, kdf_id, aead_id, v["mode"]) == (0x647A, 0x0001, 0x0002, "0x00")
    ciphertext = base64.b64decode(envelope["ciphertext"])
    enc, ct = ciphertext[:1120], ciphertext[1120:]
    ct_m, ct_x = enc[:MLKEM768_CT_LEN], enc[MLKEM768_CT_LEN:]
    m_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(
        base64.b64decode(v["recipient"]["mlkem768_seed"])
    )
    x_key = x25519.X25519PrivateKey.from_private_bytes(base64.b64decode(v["recipient"]["x25519"]))
    pk_x = base64.b64decode(v["recipient"]["public"])[-32:]
    ss_m = m_key.decapsulate(ct_m)
    ss_x = x_key.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    shared = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()
    suite_id = b"HPKE" + b"".join(i.to_bytes(2, "big") for i in (kem_id, kdf_id, aead_id))
    info = json.dumps(
        envelope["header"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    psk_id_hash = _extract(b"", _labeled(suite_id, b"psk_id_hash", b""))
    info_hash = _extract(b"", _labeled(suite_id, b"info_hash", info))
    context = bytes([0x00]) + psk_id_hash + info_hash  # mode base
    secret = _extract(shared, _labeled(suite_id, b"secret", b""))

    def expand(label: bytes, length: int) -> bytes:
        return _expand(
            secret, length.to_bytes(2, "big") + _labeled(suite_id, label, context), length
        )

    return AESGCM(expand(b"key", 32)).decrypt(expand(b"base_nonce", 12), ct, b"")


def test_independent_code_opens_the_hybrid_vector() -> None:
    v = _by_suite("MLKEM768_X25519/HKDF_SHA256/AES_256_GCM")
    _independent_signature_check(v, v["envelope"])
    assert _xwing_open(v, v["envelope"]) == v["plaintext"].encode()


@pytest.mark.parametrize("where", ["header", "ciphertext"])
def test_independent_code_refuses_a_tampered_hybrid_vector(where: str) -> None:
    v = _by_suite("MLKEM768_X25519/HKDF_SHA256/AES_256_GCM")
    envelope = _tampered(v, where)
    with pytest.raises(InvalidSignature):
        _independent_signature_check(v, envelope)
    with pytest.raises(InvalidTag):
        _xwing_open(v, envelope)
