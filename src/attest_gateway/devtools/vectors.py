"""Test vectors of the sealed envelope (docs/envelope.md), for other implementations.

`python -m attest_gateway.devtools.vectors [--out docs/vectors/envelope-vectors.json]` writes
one vector per HPKE suite the gateway supports: the recipient's and the signer's keys (fixed,
derived from a label, so they are the same on every run), the header, `info`, the plaintext,
the envelope as it travels, and its parts in hex (`enc`, `ct`, the signed bytes).

HPKE encapsulation is randomised, so the ciphertext differs on every run: the committed file
records the output of one run, and an implementation checks that it OPENS the recorded
ciphertext with the recorded private key to the recorded plaintext and that the recorded
signature VERIFIES (tests/unit/test_envelope_vectors.py does so with the gateway and with
independent code). Ed25519 is deterministic, so the signature follows from the ciphertext.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, get_args

from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from attest_gateway.contracts.envelope import EnvelopeHeader, Suite
from attest_gateway.contracts.stages import MessageType
from attest_gateway.crypto.sealing import PrivateHpkeKey, SigningKey, seal

DEFAULT_OUT = Path("docs/vectors/envelope-vectors.json")

# The registered identifiers of each suite (RFC 9180 section 7; the IANA HPKE registry).
SUITE_IDS: dict[str, dict[str, str]] = {
    "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM": {
        "kem": "MLKEM768-X25519 (X-Wing), 0x647a",
        "kdf": "HKDF-SHA256, 0x0001",
        "aead": "AES-256-GCM, 0x0002",
    },
    "X25519/HKDF_SHA256/AES_256_GCM": {
        "kem": "DHKEM(X25519, HKDF-SHA256), 0x0020",
        "kdf": "HKDF-SHA256, 0x0001",
        "aead": "AES-256-GCM, 0x0002",
    },
}
KEM_IDS: dict[str, int] = {
    "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM": 0x647A,
    "X25519/HKDF_SHA256/AES_256_GCM": 0x0020,
}
ENC_LENGTHS: dict[str, int] = {
    "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM": 1120,
    "X25519/HKDF_SHA256/AES_256_GCM": 32,
}
PLAINTEXT = (
    '{"resourceType":"Bundle","id":"5f0c2a9e-0d7b-4c44-9a53-2f1d8c0e7b11","type":"message",'
    '"entry":[],"note":"Testvektor: æøå ÆØÅ"}'
).encode()


def _fixed(label: str, size: int) -> bytes:
    """Key material that is the same on every run (these keys protect nothing)."""
    digest = hashlib.shake_256(f"attest-gateway envelope test vector: {label}".encode())
    return digest.digest(size)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def recipient_key(suite: Suite) -> PrivateHpkeKey:
    short = suite.split("/")[0].lower()
    seed = _fixed(f"{suite} ML-KEM-768 seed", 64) if suite.startswith("MLKEM768") else None
    return PrivateHpkeKey(
        key_id=f"hpke-vector-{short}",
        suite=suite,
        x25519_key=x25519.X25519PrivateKey.from_private_bytes(_fixed(f"{suite} X25519", 32)),
        mlkem_key=mlkem.MLKEM768PrivateKey.from_seed_bytes(seed) if seed else None,
    )


def signing_key() -> SigningKey:
    raw = _fixed("Ed25519", 32)
    return SigningKey("sig-vector", ed25519.Ed25519PrivateKey.from_private_bytes(raw))


def header_for(suite: Suite, recipient: PrivateHpkeKey, signer: SigningKey) -> EnvelopeHeader:
    return EnvelopeHeader(
        message_id="0e6f3b52-7c1d-4d0a-8f6e-3a9b2c4d5e01",
        bundle_id="5f0c2a9e-0d7b-4c44-9a53-2f1d8c0e7b11",
        conversation_id="c3a1d2e4-5b6f-4a7b-8c9d-0e1f2a3b4c02",
        message_type=MessageType.ATTEST_REPLY,
        sender="psykiatri-vector",
        receiver="jobcenter-vector",
        suite=suite,
        recipient_key_id=recipient.key_id,
        signer="attest-gateway",
        signer_key_id=signer.key_id,
        created_at=dt.datetime(2026, 11, 23, 9, 30, 15, 123456, tzinfo=dt.UTC),
    )


def vector(suite: Suite) -> dict[str, Any]:
    recipient, signer = recipient_key(suite), signing_key()
    header = header_for(suite, recipient, signer)
    envelope = seal(PLAINTEXT, header, recipient.public(), signer)
    enc_len = ENC_LENGTHS[suite]
    record = recipient.to_record()
    return {
        "suite": suite,
        "kem": SUITE_IDS[suite]["kem"],
        "kem_id": f"0x{KEM_IDS[suite]:04x}",
        "kdf_id": "0x0001",
        "aead_id": "0x0002",
        "mode": "0x00",
        "recipient": {
            "key_id": recipient.key_id,
            "public": recipient.public_encoded,
            **{k: record[k] for k in ("x25519", "mlkem768_seed") if k in record},
        },
        "signer": {
            "key_id": signer.key_id,
            "public": signer.public_encoded,
            "ed25519": signer.to_record()["ed25519"],
        },
        "plaintext": PLAINTEXT.decode(),
        "info_hex": header.info().hex(),
        "aad_hex": "",
        "enc_hex": envelope.ciphertext[:enc_len].hex(),
        "ct_hex": envelope.ciphertext[enc_len:].hex(),
        "signed_bytes_hex": envelope.signed_bytes().hex(),
        "signature_hex": envelope.signature.hex(),
        "envelope": json.loads(envelope.to_json()),
    }


def vectors() -> dict[str, Any]:
    return {
        "description": (
            "Test vectors of the attest gateway's sealed envelope, version 1 (docs/envelope.md). "
            "HPKE (RFC 9180) base mode, single shot: info = the header as canonical JSON, "
            "empty AAD, ciphertext = enc || ct. The signature is Ed25519 over "
            "'attest-gateway/envelope/v1' || 0x00 || len(info) (4 bytes, big-endian) || info "
            "|| ciphertext. Keys are the key-file encodings (base64); ids are the HPKE "
            "registry's. HPKE is randomised: open the recorded ciphertext, do not expect to "
            "reproduce it. The keys are test keys and protect nothing."
        ),
        "vectors": [vector(suite) for suite in get_args(Suite)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write the envelope test vectors")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(vectors(), indent=2, ensure_ascii=False) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
