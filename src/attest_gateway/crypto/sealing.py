"""Sealing and opening envelopes, signatures, key files and pseudonyms.

A bytes→bytes codec, separate from serialisation: `seal()` turns a FHIR Bundle's JSON bytes
into a `SealedEnvelope` for one recipient key and signs it; `verify()` checks the sender's
Ed25519 signature; `open_envelope()` decrypts with the receiver's private key. HPKE
(RFC 9180), Ed25519 and key encodings all come from `cryptography`; nothing here is a
hand-rolled primitive.

Key encodings (base64 in the directory and in key files):
- HPKE `MLKEM768_X25519` public key: ML-KEM-768 public key (1184 bytes) || X25519 public (32);
  private key: ML-KEM-768 seed (64 bytes) and X25519 private (32), kept separately.
- HPKE `X25519` public key: 32 raw bytes; private: 32 raw bytes.
- Ed25519 public key: 32 raw bytes; private: 32 raw bytes.

Where the private keys rest is the key store's (`KeyStore`, below): in clear in the key files
(development), or in a PKCS#11 token (infra/keys/pkcs11.py), whose key files hold HPKE keys
wrapped by the token's key-encryption key and only the names of the signing keys, which sign
inside the token. docs/keys.md says which key opens what.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope, Suite, signed_bytes
from attest_gateway.core.errors import EnvelopeRejected, ErrorCode

_MLKEM768_PUBLIC_LEN = 1184
_SUITES: dict[str, hpke.Suite] = {
    "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM": hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
    "X25519/HKDF_SHA256/AES_256_GCM": hpke.Suite(
        hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
}

HpkePublic = hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
HpkePrivate = hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def new_key_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


@dataclass(frozen=True, slots=True)
class PublicHpkeKey:
    key_id: str
    suite: Suite
    key: HpkePublic

    @classmethod
    def decode(cls, key_id: str, suite: Suite, encoded: str) -> PublicHpkeKey:
        """The key of a directory row (remembered: every message sealed to it parses it)."""
        return _decode_public_hpke(key_id, suite, encoded)

    @classmethod
    def _decode(cls, key_id: str, suite: Suite, encoded: str) -> PublicHpkeKey:
        raw = _unb64(encoded)
        if suite.startswith("MLKEM768_X25519"):
            mlkem_pub = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_LEN])
            x_pub = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_LEN:])
            return cls(key_id, suite, hpke.MLKEM768X25519PublicKey(mlkem_pub, x_pub))
        return cls(key_id, suite, x25519.X25519PublicKey.from_public_bytes(raw))


@functools.lru_cache(maxsize=1024)
def _decode_public_hpke(key_id: str, suite: Suite, encoded: str) -> PublicHpkeKey:
    return PublicHpkeKey._decode(key_id, suite, encoded)


@dataclass(frozen=True, slots=True)
class PrivateHpkeKey:
    """An HPKE private key with the raw parts it was made from (kept out of its repr)."""

    key_id: str
    suite: Suite
    x25519_key: x25519.X25519PrivateKey = field(repr=False)
    mlkem_key: mlkem.MLKEM768PrivateKey | None = field(default=None, repr=False)

    @classmethod
    def generate(cls, suite: Suite, key_id: str | None = None) -> PrivateHpkeKey:
        raise_if_unknown_suite(suite)
        hybrid = suite.startswith("MLKEM768_X25519")
        return cls(
            key_id or new_key_id("hpke"),
            suite,
            x25519.X25519PrivateKey.generate(),
            mlkem.MLKEM768PrivateKey.generate() if hybrid else None,
        )

    @property
    def key(self) -> HpkePrivate:
        if self.mlkem_key is None:
            return self.x25519_key
        return hpke.MLKEM768X25519PrivateKey(self.mlkem_key, self.x25519_key)

    @property
    def public_encoded(self) -> str:
        x_pub = self.x25519_key.public_key().public_bytes_raw()
        if self.mlkem_key is None:
            return _b64(x_pub)
        return _b64(self.mlkem_key.public_key().public_bytes_raw() + x_pub)

    def public(self) -> PublicHpkeKey:
        return PublicHpkeKey.decode(self.key_id, self.suite, self.public_encoded)

    def _secret(self) -> bytes:
        """X25519 private (32 bytes) || ML-KEM-768 seed (64 bytes, hybrid suites only)."""
        seed = b"" if self.mlkem_key is None else self.mlkem_key.private_bytes_raw()
        return self.x25519_key.private_bytes_raw() + seed

    @staticmethod
    def _wrap_context(org_id: str, key_id: str, suite: str) -> str:
        return f"attest-gateway/hpke/v1\x00{org_id}\x00{key_id}\x00{suite}"

    def to_record(self, org_id: str = "", store: KeyStore | None = None) -> dict[str, str]:
        """The key file's record: the private parts in clear (files), or wrapped by the
        store's key-encryption key, bound to the organisation, key id and suite (token)."""
        record = {"purpose": "hpke", "key_id": self.key_id, "suite": self.suite}
        if store is not None and not store.in_clear:
            record["wrapped"] = store.wrap(
                self._secret(), context=self._wrap_context(org_id, self.key_id, self.suite)
            )
            return record
        record["x25519"] = _b64(self.x25519_key.private_bytes_raw())
        if self.mlkem_key is not None:
            record["mlkem768_seed"] = _b64(self.mlkem_key.private_bytes_raw())
        return record

    @classmethod
    def from_record(
        cls, record: dict[str, str], org_id: str = "", store: KeyStore | None = None
    ) -> PrivateHpkeKey:
        suite = record["suite"]
        raise_if_unknown_suite(suite)
        if "wrapped" in record:
            if store is None or store.in_clear:
                raise KeyStoreError(
                    f"the key {record['key_id']} is wrapped by a PKCS#11 token's key-encryption "
                    "key: set PKCS11_MODULE (and the token's label and PIN) to open it"
                )
            context = cls._wrap_context(org_id, record["key_id"], suite)
            secret = store.unwrap(record["wrapped"], context=context)
            x_raw, seed_raw = secret[:32], secret[32:]
        else:
            x_raw = _unb64(record["x25519"])
            seed = record.get("mlkem768_seed")
            seed_raw = _unb64(seed) if seed else b""
        x_priv = x25519.X25519PrivateKey.from_private_bytes(x_raw)
        m_priv = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed_raw) if seed_raw else None
        return cls(record["key_id"], suite, x_priv, m_priv)  # type: ignore[arg-type]


def raise_if_unknown_suite(suite: str) -> None:
    if suite not in _SUITES:
        raise EnvelopeRejected(
            ErrorCode.UNSUPPORTED_SUITE, "the envelope's HPKE suite is not supported"
        )


class Ed25519Signer(Protocol):
    """What signs: an Ed25519 private key in memory (`cryptography`'s), or a handle on one
    that never leaves a PKCS#11 token (infra/keys/pkcs11.py)."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> ed25519.Ed25519PublicKey: ...


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    key: Ed25519Signer

    @classmethod
    def generate(cls, key_id: str | None = None) -> SigningKey:
        return cls(key_id or new_key_id("sig"), ed25519.Ed25519PrivateKey.generate())

    @property
    def public_encoded(self) -> str:
        return _b64(self.key.public_key().public_bytes_raw())

    @property
    def in_memory(self) -> bool:
        """True when the private key is in this process's memory (read from a clear key file
        or just made), False when it stays in a token."""
        return isinstance(self.key, ed25519.Ed25519PrivateKey)

    @staticmethod
    def _wrap_context(org_id: str, key_id: str) -> str:
        return f"attest-gateway/ed25519/v1\x00{org_id}\x00{key_id}"

    def to_record(self, org_id: str = "", store: KeyStore | None = None) -> dict[str, str]:
        """The key file's record: the token object it names; a key in memory in clear, or
        wrapped by the store's key-encryption key (a token that cannot sign Ed25519)."""
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            raw = self.key.private_bytes_raw()
            record = {"purpose": "signing", "key_id": self.key_id}
            if store is not None and not store.in_clear:
                context = self._wrap_context(org_id, self.key_id)
                return record | {"wrapped": store.wrap(raw, context=context)}
            return record | {"ed25519": _b64(raw)}
        return {
            "purpose": "signing",
            "key_id": self.key_id,
            "in_token": self.key_id,
            "ed25519_public": self.public_encoded,
        }

    @classmethod
    def from_record(
        cls, record: dict[str, str], org_id: str = "", store: KeyStore | None = None
    ) -> SigningKey:
        if "wrapped" in record:
            if store is None or store.in_clear:
                raise KeyStoreError(
                    f"the signing key {record['key_id']} is wrapped by a PKCS#11 token's "
                    "key-encryption key: set PKCS11_MODULE (and the token's label and PIN)"
                )
            context = cls._wrap_context(org_id, record["key_id"])
            raw = store.unwrap(record["wrapped"], context=context)
            return cls(record["key_id"], ed25519.Ed25519PrivateKey.from_private_bytes(raw))
        if "in_token" in record:
            if store is None or store.in_clear:
                raise KeyStoreError(
                    f"the signing key {record['key_id']} is in a PKCS#11 token: set "
                    "PKCS11_MODULE (and the token's label and PIN) to use it"
                )
            return store.token_signing_key(record["in_token"], record["ed25519_public"])
        key = ed25519.Ed25519PrivateKey.from_private_bytes(_unb64(record["ed25519"]))
        return cls(record["key_id"], key)


@functools.lru_cache(maxsize=1024)
def decode_verify_key(encoded: str) -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PublicKey.from_public_bytes(_unb64(encoded))


def seal(
    plaintext: bytes, header: EnvelopeHeader, recipient: PublicHpkeKey, signer: SigningKey
) -> SealedEnvelope:
    """Encrypt `plaintext` for `recipient` with the header as HPKE info, then sign."""
    if header.recipient_key_id != recipient.key_id or header.signer_key_id != signer.key_id:
        raise ValueError("header key ids do not match the keys given")
    if header.suite != recipient.suite:
        raise ValueError("header suite does not match the recipient key")
    ciphertext = _SUITES[header.suite].encrypt(plaintext, recipient.key, info=header.info())
    signature = signer.key.sign(signed_bytes(header, ciphertext))
    return SealedEnvelope(header=header, ciphertext=ciphertext, signature=signature)


def verify(envelope: SealedEnvelope, signer_public: ed25519.Ed25519PublicKey) -> None:
    try:
        signer_public.verify(envelope.signature, envelope.signed_bytes())
    except InvalidSignature as exc:
        raise EnvelopeRejected(
            ErrorCode.SIGNATURE_INVALID, "the envelope's signature does not verify"
        ) from exc


def open_envelope(envelope: SealedEnvelope, private: PrivateHpkeKey) -> bytes:
    header = envelope.header
    raise_if_unknown_suite(header.suite)
    if header.recipient_key_id != private.key_id or header.suite != private.suite:
        raise EnvelopeRejected(
            ErrorCode.UNKNOWN_KEY, "the envelope is sealed to a key this holder lacks"
        )
    try:
        return _SUITES[header.suite].decrypt(envelope.ciphertext, private.key, info=header.info())
    except (InvalidTag, ValueError) as exc:
        raise EnvelopeRejected(ErrorCode.OPEN_FAILED, "the envelope could not be opened") from exc


def fingerprint(data: bytes, key: bytes) -> str:
    """A keyed digest of a request body (it holds a CPR number, so never a plain hash)."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


# --- where private keys rest: the key store port -------------------------------------------


class KeyStoreError(Exception):
    """A key the store cannot make, open or find (one sentence, for the operator)."""


class KeyStore(Protocol):
    """Where the private keys the gateway holds rest (the key store port).

    Two implementations: `ClearFiles` (development: the keys in clear in the key files, as
    `make run` has them) and `TokenKeyStore` (infra/keys/pkcs11.py: a PKCS#11 token holds
    the Ed25519 signing keys, which sign inside it, and an AES key-encryption key that wraps
    the HPKE private keys and the pseudonym key; only the wrapped blobs are on disk).
    """

    @property
    def in_clear(self) -> bool:
        """True when the key files hold the private keys themselves."""
        ...

    @property
    def description(self) -> str:
        """Where the keys rest, for the operator (no secret in it)."""
        ...

    def wrap(self, secret: bytes, *, context: str) -> str:
        """`secret` encrypted under the key-encryption key, bound to `context` (text)."""
        ...

    def unwrap(self, wrapped: str, *, context: str) -> bytes:
        """The secret of `wrap`'s text; KeyStoreError when it does not open (wrong context,
        another token, damaged)."""
        ...

    def new_signing_key(self, key_id: str | None = None) -> SigningKey:
        """A new Ed25519 signing key, made where this store keeps signing keys (in a token
        that cannot sign Ed25519: in memory, and wrapped in the key file)."""
        ...

    def token_signing_key(self, key_id: str, public_encoded: str) -> SigningKey:
        """The signing key the token holds under `key_id` (KeyStoreError if absent)."""
        ...

    def import_signing_key(self, key: SigningKey) -> SigningKey:
        """A key read from a clear key file, moved where this store keeps signing keys."""
        ...

    def forget_signing_key(self, key_id: str) -> None:
        """Destroy a signing key the store holds (retired or revoked); nothing if absent."""
        ...


@dataclass(frozen=True, slots=True)
class ClearFiles:
    """Development's key store: the private keys in clear in the key files (mode 0600)."""

    @property
    def in_clear(self) -> bool:
        return True

    @property
    def description(self) -> str:
        return "key files in clear (development)"

    def wrap(self, secret: bytes, *, context: str) -> str:
        raise KeyStoreError("clear key files wrap nothing: configure PKCS11_MODULE")

    def unwrap(self, wrapped: str, *, context: str) -> bytes:
        raise KeyStoreError(
            "this key is wrapped by a PKCS#11 token's key-encryption key: set PKCS11_MODULE "
            "(and the token's label and PIN) to open it"
        )

    def new_signing_key(self, key_id: str | None = None) -> SigningKey:
        return SigningKey.generate(key_id)

    def token_signing_key(self, key_id: str, public_encoded: str) -> SigningKey:
        raise KeyStoreError(
            f"the signing key {key_id} is in a PKCS#11 token: set PKCS11_MODULE (and the "
            "token's label and PIN) to use it"
        )

    def import_signing_key(self, key: SigningKey) -> SigningKey:
        return key

    def forget_signing_key(self, key_id: str) -> None:
        return None


CLEAR_FILES = ClearFiles()
#: The start of a secret file's text (the pseudonym key) that a token's key wraps.
WRAPPED_PREFIX = "pkcs11-aes-gcm:"


def is_wrapped(text: str) -> bool:
    return text.startswith(WRAPPED_PREFIX)


def read_secret_file(path: Path, store: KeyStore, *, context: str) -> bytes:
    """A one-line secret file (the pseudonym key): in clear, or wrapped by the store."""
    text = path.read_text(encoding="ascii").strip()
    if is_wrapped(text):
        return store.unwrap(text, context=context)
    return text.encode("ascii")


def secret_file_text(secret: bytes, store: KeyStore, *, context: str) -> str:
    """What a secret file holds: the secret itself (clear files) or wrapped by the token."""
    return secret.decode("ascii") if store.in_clear else store.wrap(secret, context=context)


# --- key files -----------------------------------------------------------------------------


@dataclass(slots=True)
class OrgKeys:
    """The private keys one organisation holds: HPKE keys (newest last) and signing keys."""

    org_id: str
    hpke_keys: list[PrivateHpkeKey]
    signing_keys: list[SigningKey]

    @property
    def current_hpke(self) -> PrivateHpkeKey:
        return self.hpke_keys[-1]

    @property
    def current_signing(self) -> SigningKey:
        return self.signing_keys[-1]

    @classmethod
    def generate(cls, org_id: str, suite: Suite) -> OrgKeys:
        return cls(org_id, [PrivateHpkeKey.generate(suite)], [SigningKey.generate()])

    def to_json(self, store: KeyStore = CLEAR_FILES) -> str:
        """The key file: with a token, the HPKE keys wrapped and the signing keys named."""
        keys: list[dict[str, str]] = [h.to_record(self.org_id, store) for h in self.hpke_keys]
        keys += [s.to_record(self.org_id, store) for s in self.signing_keys]
        return json.dumps({"org_id": self.org_id, "keys": keys}, indent=2)

    @classmethod
    def from_json(cls, text: str, store: KeyStore = CLEAR_FILES) -> OrgKeys:
        data = json.loads(text)
        org_id = data["org_id"]
        hpke_keys: list[PrivateHpkeKey] = []
        signing: list[SigningKey] = []
        for rec in data["keys"]:
            if rec["purpose"] == "signing":
                signing.append(SigningKey.from_record(rec, org_id, store))
            else:
                hpke_keys.append(PrivateHpkeKey.from_record(rec, org_id, store))
        return cls(org_id, hpke_keys, signing)

    def save(self, path: Path, store: KeyStore = CLEAR_FILES) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.to_json(store))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, store: KeyStore = CLEAR_FILES) -> OrgKeys:
        return cls.from_json(path.read_text(encoding="utf-8"), store)


@dataclass(slots=True)
class KeyRing:
    """The private keys the gateway itself holds: its own and those of custodial organisations.

    Loaded from a directory of key files (`load_dir`), the ring follows that directory: at
    most once a second, and at once when a key id is missing, it compares the files' stat
    signatures and reloads when one changed, so a rotation made by `attest-gateway keys` in
    another process is seen without a restart. A file that cannot be read keeps the old keys.
    """

    orgs: dict[str, OrgKeys]
    directory: Path | None = None
    store: KeyStore = CLEAR_FILES
    _stamp: tuple[tuple[str, int, int, int], ...] = ()
    _checked: float = 0.0

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the key files if they changed; True if the ring was reloaded."""
        if self.directory is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked < _KEYRING_CHECK_SECONDS:
            return False
        self._checked = now
        stamp = _dir_stamp(self.directory)
        if stamp == self._stamp:
            return False
        try:
            orgs = _load_key_files(self.directory, self.store)
        except (OSError, ValueError, KeyError, KeyStoreError):  # half-edited: keep what we have
            return False
        self.orgs, self._stamp = orgs, stamp
        return True

    def hpke_key(self, key_id: str) -> PrivateHpkeKey | None:
        self.refresh()
        found = self._find_hpke(key_id)
        if found is None and self.refresh(force=True):
            found = self._find_hpke(key_id)
        return found

    def _find_hpke(self, key_id: str) -> PrivateHpkeKey | None:
        for keys in self.orgs.values():
            for k in keys.hpke_keys:
                if k.key_id == key_id:
                    return k
        return None

    def signing(self, org_id: str) -> SigningKey:
        """The newest signing key in the organisation's key file."""
        self.refresh()
        return self.orgs[org_id].current_signing

    def signing_among(self, org_id: str, usable: Sequence[str]) -> SigningKey | None:
        """The first key of `usable` (the directory's usable signing key ids, newest first)
        that the ring holds: the gateway never signs with a key the directory no longer
        accepts, and signs with a rotated-in key as soon as the directory has it."""
        self.refresh()
        found = self._find_signing(org_id, usable)
        if (found is None or found.key_id != usable[0]) and self.refresh(force=True):
            found = self._find_signing(org_id, usable)
        return found

    def _find_signing(self, org_id: str, usable: Sequence[str]) -> SigningKey | None:
        keys = self.orgs.get(org_id)
        if keys is None:
            return None
        held = {s.key_id: s for s in keys.signing_keys}
        return next((held[k] for k in usable if k in held), None)

    @classmethod
    def load_dir(cls, directory: Path, store: KeyStore = CLEAR_FILES) -> KeyRing:
        stamp = _dir_stamp(directory)
        ring = cls(_load_key_files(directory, store), directory, store, stamp)
        ring._checked = time.monotonic()
        return ring


_KEYRING_CHECK_SECONDS = 1.0


def _dir_stamp(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(name, inode, size, mtime in ns) of every key file: replaced files change the inode."""
    if not directory.is_dir():
        return ()
    stamp = []
    for path in sorted(directory.glob("*.json")):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        stamp.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def _load_key_files(directory: Path, store: KeyStore) -> dict[str, OrgKeys]:
    orgs: dict[str, OrgKeys] = {}
    if directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            keys = OrgKeys.load(path, store)
            orgs[keys.org_id] = keys
    return orgs
