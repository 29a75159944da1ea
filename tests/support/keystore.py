"""A fake token at the key store port (crypto.sealing.KeyStore), for unit tests: it writes
key files as the PKCS#11 token does (HPKE keys wrapped, signing keys named) without one.
Its "wrapping" is no encryption at all: it only binds the context, so that a unit test sees a
blob passed off as another key refused. The real token is tests/integration/test_pkcs11_keys.py.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from attest_gateway.crypto.sealing import WRAPPED_PREFIX, KeyStoreError, SigningKey, new_key_id


@dataclass(frozen=True, eq=False)
class HeldKey:
    """A signing key the fake token holds (not `cryptography`'s type, so it counts as held)."""

    private: ed25519.Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self.private.public_key()


@dataclass
class FakeToken:
    kek_label: str = "fake-kek"
    held: dict[str, HeldKey] = field(default_factory=dict)

    @property
    def in_clear(self) -> bool:
        return False

    @property
    def description(self) -> str:
        return "a fake token"

    def wrap(self, secret: bytes, *, context: str) -> str:
        tag = hashlib.sha256(context.encode()).digest()[:8]
        return f"{WRAPPED_PREFIX}{self.kek_label}:{base64.b64encode(tag + secret).decode()}"

    def unwrap(self, wrapped: str, *, context: str) -> bytes:
        raw = base64.b64decode(wrapped.rpartition(":")[2])
        if raw[:8] != hashlib.sha256(context.encode()).digest()[:8]:
            raise KeyStoreError("the wrapped key does not open")
        return raw[8:]

    def new_signing_key(self, key_id: str | None = None) -> SigningKey:
        key_id = key_id or new_key_id("sig")
        self.held[key_id] = HeldKey(ed25519.Ed25519PrivateKey.generate())
        return SigningKey(key_id, self.held[key_id])

    def token_signing_key(self, key_id: str, public_encoded: str) -> SigningKey:
        if key_id not in self.held:
            raise KeyStoreError(f"the fake token holds no signing key {key_id}")
        return SigningKey(key_id, self.held[key_id])

    def import_signing_key(self, key: SigningKey) -> SigningKey:
        if isinstance(key.key, ed25519.Ed25519PrivateKey):
            self.held[key.key_id] = HeldKey(key.key)
            return SigningKey(key.key_id, self.held[key.key_id])
        return key

    def forget_signing_key(self, key_id: str) -> None:
        self.held.pop(key_id, None)
