"""The key store on a PKCS#11 token (python-pkcs11), tested against SoftHSM2.

What the token holds, as token objects it never lets out (CKA_SENSITIVE, not CKA_EXTRACTABLE):
- each Ed25519 signing key of the gateway and of the custodial organisations, labelled with
  its key id; it signs inside the token (CKM_EDDSA, pure Ed25519) and only its public half
  is read out. A token without Ed25519 gets them wrapped in the key file instead, like the
  HPKE keys;
- one AES-256 key-encryption key (PKCS11_KEK_LABEL, made on first use) that wraps what the
  token cannot hold as such: the HPKE private keys (X-Wing and X25519, which PKCS#11 has no
  mechanism for) and the pseudonym key. Wrapping is AES-256-GCM inside the token, a fresh
  96-bit nonce each time, with the key's context (organisation, key id, suite) as associated
  data, so a wrapped blob cannot be passed off as another key. The key files hold the
  wrapped blobs; the secrets are unwrapped into this process's memory only.

A wrapped secret's text: `pkcs11-aes-gcm:<KEK label>:<base64 of nonce || ciphertext || tag>`.

One logged-in session per process and token (`open_token`), shared by the event loop and
threads under a lock: a PKCS#11 session must not run two operations at once.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ed25519
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.mechanisms import GCMParams
from pkcs11.types import DecryptMixin, EncryptMixin, SignMixin
from pkcs11.util.ec import encode_named_curve_parameters

from attest_gateway.crypto.sealing import (
    WRAPPED_PREFIX,
    KeyStoreError,
    SigningKey,
    new_key_id,
)

_ED25519_OID = "1.3.101.112"
_NONCE_BYTES = 12
_TAG_BITS = 128


def _bytes(result: bytes | Iterator[bytes]) -> bytes:
    """python-pkcs11 answers bytes for bytes in (an iterator only for an iterator in)."""
    return result if isinstance(result, bytes) else b"".join(result)


def _ec_point_raw(point: bytes) -> bytes:
    """The 32 bytes of an Ed25519 CKA_EC_POINT: a DER OCTET STRING (04 20 …) or raw."""
    if len(point) == 34 and point[:2] == b"\x04\x20":
        return point[2:]
    if len(point) == 32:
        return point
    raise KeyStoreError("the token's Ed25519 public key has an unexpected encoding")


@dataclass(frozen=True, eq=False, slots=True)
class TokenEd25519:
    """An Ed25519 private key that stays in the token: `sign` runs CKM_EDDSA there."""

    store: TokenKeyStore
    private: SignMixin
    public: ed25519.Ed25519PublicKey

    def sign(self, data: bytes) -> bytes:
        with self.store.lock:
            return self.private.sign(data, mechanism=Mechanism.EDDSA)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self.public


class TokenKeyStore:
    """The key store port on one PKCS#11 token (see the module's docstring)."""

    def __init__(
        self,
        session: pkcs11.Session,
        lock: threading.RLock,
        token_label: str,
        kek_label: str,
        *,
        eddsa: bool,
    ) -> None:
        self.session = session
        self.lock = lock  # the session's: every store on this token shares it
        self.token_label = token_label
        self.kek_label = kek_label
        # Whether the token makes and signs with Ed25519 keys (CKM_EC_EDWARDS_KEY_PAIR_GEN,
        # CKM_EDDSA; SoftHSM2 does). Without, signing keys are made in memory and wrapped in
        # the key file like the HPKE keys.
        self.eddsa = eddsa

    @property
    def in_clear(self) -> bool:
        return False

    @property
    def description(self) -> str:
        return f"PKCS#11 token {self.token_label!r} (key-encryption key {self.kek_label!r})"

    # --- the key-encryption key ---------------------------------------------------------------

    def _kek(self, label: str, *, create: bool) -> _Kek:
        try:
            key = self.session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=label)
        except pkcs11_errors.NoSuchKey:
            if not create:
                raise KeyStoreError(
                    f"the token {self.token_label!r} holds no key-encryption key {label!r}: "
                    "the wrapped key was made with another token or key-encryption key"
                ) from None
            key = self.session.generate_key(
                KeyType.AES,
                256,
                label=label,
                id=label.encode("utf-8"),
                store=True,
                template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.PRIVATE: True,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                },
            )
        except pkcs11_errors.MultipleObjectsReturned:
            raise KeyStoreError(
                f"the token {self.token_label!r} holds several keys labelled {label!r}"
            ) from None
        if not isinstance(key, EncryptMixin) or not isinstance(key, DecryptMixin):
            raise KeyStoreError(f"the token's object {label!r} is no AES key")
        return _Kek(key, key)

    def wrap(self, secret: bytes, *, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        params = GCMParams(nonce, context.encode("utf-8"), _TAG_BITS)
        with self.lock:
            kek = self._kek(self.kek_label, create=True)
            sealed = _bytes(
                kek.encrypter.encrypt(secret, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            )
        blob = base64.b64encode(nonce + sealed).decode("ascii")
        return f"{WRAPPED_PREFIX}{self.kek_label}:{blob}"

    def unwrap(self, wrapped: str, *, context: str) -> bytes:
        label, sep, blob = wrapped.removeprefix(WRAPPED_PREFIX).rpartition(":")
        if not wrapped.startswith(WRAPPED_PREFIX) or not sep or not label:
            raise KeyStoreError("the wrapped key is not in the form pkcs11-aes-gcm:<label>:<…>")
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error as exc:
            raise KeyStoreError("the wrapped key is not valid base64") from exc
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        params = GCMParams(nonce, context.encode("utf-8"), _TAG_BITS)
        with self.lock:
            kek = self._kek(label, create=False)
            try:
                return _bytes(
                    kek.decrypter.decrypt(
                        sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params
                    )
                )
            except pkcs11_errors.PKCS11Error as exc:  # SoftHSM2 answers a bad tag so
                raise KeyStoreError(
                    "the wrapped key does not open with the token's key-encryption key "
                    "(damaged, or wrapped for another key)"
                ) from exc

    # --- signing keys -------------------------------------------------------------------------

    def _signer(self, key_id: str, public: pkcs11.Object, private: pkcs11.Object) -> SigningKey:
        if not isinstance(private, SignMixin):
            raise KeyStoreError(f"the token's object {key_id} cannot sign")
        raw = _ec_point_raw(bytes(public[Attribute.EC_POINT]))
        signer = TokenEd25519(self, private, ed25519.Ed25519PublicKey.from_public_bytes(raw))
        return SigningKey(key_id, signer)

    def new_signing_key(self, key_id: str | None = None) -> SigningKey:
        key_id = key_id or new_key_id("sig")
        if not self.eddsa:
            return SigningKey.generate(key_id)  # wrapped when its key file is written
        with self.lock:
            params = self.session.create_domain_parameters(
                KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID)},
                local=True,
            )
            public, private = params.generate_keypair(
                label=key_id,
                id=key_id.encode("utf-8"),
                store=True,
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                public_template={Attribute.VERIFY: True},
                private_template=_PRIVATE_TEMPLATE,
            )
            return self._signer(key_id, public, private)

    def token_signing_key(self, key_id: str, public_encoded: str) -> SigningKey:
        with self.lock:
            try:
                private = self.session.get_key(
                    ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, label=key_id
                )
                public = self.session.get_key(
                    ObjectClass.PUBLIC_KEY, KeyType.EC_EDWARDS, label=key_id
                )
            except pkcs11_errors.NoSuchKey:
                raise KeyStoreError(
                    f"the token {self.token_label!r} holds no signing key {key_id}"
                ) from None
            except pkcs11_errors.MultipleObjectsReturned:
                raise KeyStoreError(
                    f"the token {self.token_label!r} holds several keys labelled {key_id}"
                ) from None
            key = self._signer(key_id, public, private)
        if key.public_encoded != public_encoded:
            raise KeyStoreError(
                f"the token's signing key {key_id} is not the one the key file names"
            )
        return key

    def import_signing_key(self, key: SigningKey) -> SigningKey:
        if not isinstance(key.key, ed25519.Ed25519PrivateKey) or not self.eddsa:
            return key  # already in a token, or to be wrapped in the key file
        raw_private = key.key.private_bytes_raw()
        raw_public = key.key.public_key().public_bytes_raw()
        params = encode_named_curve_parameters(_ED25519_OID)
        common: dict[Attribute, Any] = {
            Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
            Attribute.TOKEN: True,
            Attribute.LABEL: key.key_id,
            Attribute.ID: key.key_id.encode("utf-8"),
            Attribute.EC_PARAMS: params,
        }
        with self.lock:
            self.forget_signing_key(key.key_id)  # an earlier, interrupted import
            public = self.session.create_object(
                {
                    **common,
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.VERIFY: True,
                    Attribute.EC_POINT: b"\x04\x20" + raw_public,
                }
            )
            private = self.session.create_object(
                {
                    **common,
                    **_PRIVATE_TEMPLATE,
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.VALUE: raw_private,
                }
            )
            return self._signer(key.key_id, public, private)

    def forget_signing_key(self, key_id: str) -> None:
        with self.lock:
            found = list(
                self.session.get_objects(
                    {Attribute.LABEL: key_id, Attribute.KEY_TYPE: KeyType.EC_EDWARDS}
                )
            )
            for obj in found:
                obj.destroy()


@dataclass(frozen=True, slots=True)
class _Kek:
    """The key-encryption key, as what encrypts and what decrypts (one token object)."""

    encrypter: EncryptMixin
    decrypter: DecryptMixin


_PRIVATE_TEMPLATE: dict[Attribute, Any] = {
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.PRIVATE: True,
    Attribute.SIGN: True,
}

_SESSIONS: dict[tuple[str, str], tuple[pkcs11.Session, threading.RLock]] = {}
_STORES: dict[tuple[str, str, str], TokenKeyStore] = {}
_OPEN_LOCK = threading.Lock()


def open_token(module: Path, token_label: str, pin: str, kek_label: str) -> TokenKeyStore:
    """The key store on the token `token_label` of the PKCS#11 library `module`, logged in
    with `pin`, wrapping with `kek_label`. A token has one logged-in session per process
    (PKCS#11 logs in per application, not per session), shared by its stores."""
    with _OPEN_LOCK:
        store = _STORES.get((str(module), token_label, kek_label))
        if store is not None:
            return store
        opened = _SESSIONS.get((str(module), token_label))
        if opened is None:
            opened = _SESSIONS[(str(module), token_label)] = (
                _login(module, token_label, pin),
                threading.RLock(),
            )
        session, lock = opened
        with lock:
            mechanisms = session.token.slot.get_mechanisms()
        eddsa = {Mechanism.EDDSA, Mechanism.EC_EDWARDS_KEY_PAIR_GEN} <= set(mechanisms)
        store = TokenKeyStore(session, lock, token_label, kek_label, eddsa=eddsa)
        _STORES[(str(module), token_label, kek_label)] = store
        return store


def _login(module: Path, token_label: str, pin: str) -> pkcs11.Session:
    try:
        lib = pkcs11.lib(str(module))  # loaded and initialised once per process
    except (RuntimeError, OSError) as exc:
        raise KeyStoreError(
            f"PKCS11_MODULE names {module}, which does not load as a PKCS#11 library"
        ) from exc
    try:
        return lib.get_token(token_label=token_label).open(user_pin=pin, rw=True)
    except pkcs11_errors.NoSuchToken:
        raise KeyStoreError(
            f"PKCS11_TOKEN_LABEL: the library {module} has no token labelled {token_label!r}"
        ) from None
    except (pkcs11_errors.PinIncorrect, pkcs11_errors.PinInvalid, pkcs11_errors.PinLenRange):
        raise KeyStoreError(f"PKCS11_PIN: the token {token_label!r} refused the PIN") from None
    except pkcs11_errors.PinLocked:
        raise KeyStoreError(
            f"the token {token_label!r} is locked after wrong PINs: its security officer "
            "must unlock it"
        ) from None
    except pkcs11_errors.PKCS11Error as exc:
        raise KeyStoreError(
            f"the token {token_label!r} could not be opened: {type(exc).__name__}"
        ) from exc
