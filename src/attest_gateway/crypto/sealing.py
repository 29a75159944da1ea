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

    def to_record(self) -> dict[str, str]:
        record = {"purpose": "hpke", "key_id": self.key_id, "suite": self.suite}
        record["x25519"] = _b64(self.x25519_key.private_bytes_raw())
        if self.mlkem_key is not None:
            record["mlkem768_seed"] = _b64(self.mlkem_key.private_bytes_raw())
        return record

    @classmethod
    def from_record(cls, record: dict[str, str]) -> PrivateHpkeKey:
        suite = record["suite"]
        raise_if_unknown_suite(suite)
        x_priv = x25519.X25519PrivateKey.from_private_bytes(_unb64(record["x25519"]))
        seed = record.get("mlkem768_seed")
        m_priv = mlkem.MLKEM768PrivateKey.from_seed_bytes(_unb64(seed)) if seed else None
        return cls(record["key_id"], suite, x_priv, m_priv)  # type: ignore[arg-type]


def raise_if_unknown_suite(suite: str) -> None:
    if suite not in _SUITES:
        raise EnvelopeRejected(
            ErrorCode.UNSUPPORTED_SUITE, "the envelope's HPKE suite is not supported"
        )


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    key: ed25519.Ed25519PrivateKey

    @classmethod
    def generate(cls, key_id: str | None = None) -> SigningKey:
        return cls(key_id or new_key_id("sig"), ed25519.Ed25519PrivateKey.generate())

    @property
    def public_encoded(self) -> str:
        return _b64(self.key.public_key().public_bytes_raw())


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

    def to_json(self) -> str:
        keys: list[dict[str, str]] = [h.to_record() for h in self.hpke_keys]
        keys += [
            {"purpose": "signing", "key_id": s.key_id, "ed25519": _b64(s.key.private_bytes_raw())}
            for s in self.signing_keys
        ]
        return json.dumps({"org_id": self.org_id, "keys": keys}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> OrgKeys:
        data = json.loads(text)
        hpke_keys: list[PrivateHpkeKey] = []
        signing: list[SigningKey] = []
        for rec in data["keys"]:
            if rec["purpose"] == "signing":
                key = ed25519.Ed25519PrivateKey.from_private_bytes(_unb64(rec["ed25519"]))
                signing.append(SigningKey(rec["key_id"], key))
            else:
                hpke_keys.append(PrivateHpkeKey.from_record(rec))
        return cls(data["org_id"], hpke_keys, signing)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> OrgKeys:
        return cls.from_json(path.read_text(encoding="utf-8"))


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
            orgs = _load_key_files(self.directory)
        except (OSError, ValueError, KeyError):  # half-edited by hand: keep what we have
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
    def load_dir(cls, directory: Path) -> KeyRing:
        stamp = _dir_stamp(directory)
        ring = cls(_load_key_files(directory), directory, stamp)
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


def _load_key_files(directory: Path) -> dict[str, OrgKeys]:
    orgs: dict[str, OrgKeys] = {}
    if directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            keys = OrgKeys.load(path)
            orgs[keys.org_id] = keys
    return orgs
