"""Citizens' pseudonyms (case refs) and the CPR numbers sealed to re-key them from.

- A case ref is `<key id>.<32 hex>`: the key id is the first 6 hex digits of SHA-256 of the
  pseudonym key, the rest is `bare_ref` (HMAC-SHA256 of the CPR number under that key,
  truncated). A pseudonym made under another key is recognisable by its key id. Refs made
  before key ids existed are bare (32 hex) and belong to the key the store first recorded.
- At ingest the CPR number is also sealed with HPKE to the gateway organisation's own current
  key (`seal_citizen`), bound to the row it belongs to (`conversation:<id>`,
  `contact:<id>`). Only the gateway, holding the private key in its key ring, can open it;
  `attest-gateway pseudonyms rekey` (infra/db/rekey.py) does, to compute the pseudonyms
  under a new key. Which key the store was written with is recorded in the store
  (infra/db/pseudonyms.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from cryptography.exceptions import InvalidTag

from attest_gateway.crypto import sealing as crypto
from attest_gateway.crypto.sealing import KeyRing, PublicHpkeKey

KEY_ID_HEX = 6
#: What the pseudonym key is bound to when a token's key-encryption key wraps its file.
KEY_FILE_CONTEXT = "attest-gateway/pseudonym-key/v1"
_SEAL_INFO = b"attest-gateway/citizen-cpr/v1"


class CitizenSealError(ValueError):
    """A sealed CPR number that cannot be opened (unknown key, wrong row, damaged)."""


def bare_ref(cpr: str, key: bytes) -> str:
    """A pseudonym without its key id (as made before key ids existed): HMAC-SHA256 of the
    CPR number under the pseudonym key, truncated."""
    return hmac.new(key, cpr.encode("ascii"), hashlib.sha256).hexdigest()[:32]


def key_id(key: bytes) -> str:
    """The short public id of a pseudonym key (reveals nothing usable about the key)."""
    return hashlib.sha256(key).hexdigest()[:KEY_ID_HEX]


def case_ref(cpr: str, key: bytes) -> str:
    """The citizen's pseudonym under `key`: `<key id>.<HMAC-SHA256(key, CPR)[:32]>`."""
    return f"{key_id(key)}.{bare_ref(cpr, key)}"


def key_id_of(ref: str) -> str | None:
    """The key id a case ref was made with; None for a bare ref (made before key ids)."""
    kid, dot, _ = ref.partition(".")
    return kid if dot else None


def unlinked_ref(ref: str, new_key: bytes) -> str:
    """The pseudonym under `new_key` of a ref that has no sealed CPR number to re-key from
    (`rekey --force`): a keyed digest of the old ref. Rows that shared the old ref share
    this one, but it is not the new pseudonym of the citizen's CPR number."""
    digest = hmac.new(new_key, b"unlinked\x00" + ref.encode("ascii"), hashlib.sha256)
    return f"{key_id(new_key)}.{digest.hexdigest()[:32]}"


# --- the CPR number sealed to the gateway's own key ---------------------------------------------


def _info(key_id: str, context: str) -> bytes:
    return b"\x00".join((_SEAL_INFO, key_id.encode("utf-8"), context.encode("utf-8")))


def seal_citizen(cpr: str, recipient: PublicHpkeKey, *, context: str) -> str:
    """The CPR number sealed (HPKE, base mode) to `recipient`, bound to `context` (the row it
    is stored in). JSON text: version, recipient key id, suite, base64 of enc || ciphertext."""
    suite = crypto._SUITES[recipient.suite]
    sealed = suite.encrypt(
        cpr.encode("ascii"), recipient.key, info=_info(recipient.key_id, context)
    )
    return json.dumps(
        {
            "v": 1,
            "key_id": recipient.key_id,
            "suite": recipient.suite,
            "ct": base64.b64encode(sealed).decode("ascii"),
        },
        separators=(",", ":"),
    )


def sealed_key_id(sealed: str) -> str:
    """The HPKE key id a sealed CPR number was sealed to."""
    try:
        return str(json.loads(sealed)["key_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CitizenSealError("the sealed CPR number is not readable") from exc


def open_citizen(sealed: str, keyring: KeyRing, *, context: str) -> str:
    """Open a sealed CPR number with the key ring. Raises CitizenSealError."""
    try:
        data = json.loads(sealed)
        kid, suite_name, blob = str(data["key_id"]), str(data["suite"]), str(data["ct"])
        if data.get("v") != 1:
            raise CitizenSealError("the sealed CPR number has an unknown version")
        ciphertext = base64.b64decode(blob, validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise CitizenSealError("the sealed CPR number is not readable") from exc
    private = keyring.hpke_key(kid)
    if private is None:
        raise CitizenSealError(f"the gateway holds no HPKE key {kid}")
    if private.suite != suite_name or suite_name not in crypto._SUITES:
        raise CitizenSealError("the sealed CPR number's suite is not its key's")
    try:
        plain = crypto._SUITES[suite_name].decrypt(
            ciphertext, private.key, info=_info(kid, context)
        )
    except (InvalidTag, ValueError) as exc:
        raise CitizenSealError(
            "the sealed CPR number does not open (wrong row or damaged)"
        ) from exc
    cpr = plain.decode("ascii", "replace")
    if len(cpr) != 10 or not cpr.isdigit():
        raise CitizenSealError("the sealed CPR number does not hold a CPR number")
    return cpr


def conversation_context(conversation_id: str) -> str:
    return f"conversation:{conversation_id}"


def contact_context(contact_id: str) -> str:
    return f"contact:{contact_id}"


def case_context(case_id: str) -> str:
    return f"case:{case_id}"


def treatment_context(treatment_id: str) -> str:
    return f"treatment:{treatment_id}"
