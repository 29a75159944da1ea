"""The sealed envelope: a clear routing header plus an HPKE ciphertext, signed by the sender.

Wire format (JSON, version 1)::

    {
      "header": {                      # clear routing metadata, never health data
        "v": 1,
        "message_id": "<MessageHeader.id>",
        "bundle_id": "<Bundle.id>",
        "conversation_id": "<uuid>",
        "message_type": "attest-request" | "attest-reply" | "acknowledgement",
        "sender": "<organisation id>",
        "receiver": "<organisation id>",
        "suite": "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM" | "X25519/HKDF_SHA256/AES_256_GCM",
        "recipient_key_id": "<the receiver's HPKE key id>",
        "signer": "<organisation id that signed>",
        "signer_key_id": "<the signer's Ed25519 key id>",
        "created_at": "<RFC 3339 UTC>"
      },
      "ciphertext": "<base64: HPKE enc || AEAD ciphertext of the FHIR Bundle JSON>",
      "signature": "<base64: Ed25519 over SIGNING_CONTEXT || len(info) || info || ciphertext>"
    }

`info` is the canonical JSON of the header (keys sorted, no whitespace, UTF-8). It is the
HPKE ``info`` parameter, so changing any header field makes opening fail; it is also
covered by the signature. The ciphertext is the single-shot HPKE output of RFC 9180
(`enc` followed by the AEAD ciphertext), as `cryptography.hazmat.primitives.hpke.Suite`
produces it.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Annotated, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_serializer,
    field_validator,
)

from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.bounds import DATE_MAX, DATE_MIN, LINE

SIGNING_CONTEXT = b"attest-gateway/envelope/v1\x00"
CONTENT_TYPE = "application/vnd.attest-gateway.envelope+json"

# Ids, organisation ids and key ids: one line of text (no control characters).
Id = Annotated[str, Field(min_length=1, max_length=64), LINE]

Suite = Literal["MLKEM768_X25519/HKDF_SHA256/AES_256_GCM", "X25519/HKDF_SHA256/AES_256_GCM"]


class EnvelopeHeader(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    message_id: Id
    bundle_id: Id
    conversation_id: Id
    message_type: MessageType
    sender: Id
    receiver: Id
    suite: Suite
    recipient_key_id: Id
    signer: Id
    signer_key_id: Id
    created_at: dt.datetime = Field(json_schema_extra={"pattern": r"^20[0-9]{2}-"})

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a time zone")
        # In range, as every date a client sends (and UTC would overflow in years 1 and 9999).
        if not DATE_MIN.year <= value.year <= DATE_MAX.year:
            raise ValueError(f"created_at lies in the years {DATE_MIN.year} to {DATE_MAX.year}")
        return value.astimezone(dt.UTC)

    def info(self) -> bytes:
        """Canonical bytes: the HPKE info and the signed part of the header."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


# Standard base64 (RFC 4648 section 4) with its padding and nothing else, as the envelope's
# schema states it; `_b64` accepts exactly this.
_BASE64 = re.compile("(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
BASE64_PATTERN = f"^{_BASE64.pattern}$"
_BASE64_SCHEMA: dict[str, JsonValue] = {"pattern": BASE64_PATTERN, "contentEncoding": "base64"}


class SealedEnvelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    header: EnvelopeHeader
    ciphertext: bytes = Field(json_schema_extra=_BASE64_SCHEMA)
    signature: bytes = Field(json_schema_extra=_BASE64_SCHEMA)

    @field_validator("ciphertext", "signature", mode="before")
    @classmethod
    def _b64(cls, value: object) -> object:
        if isinstance(value, str):
            if _BASE64.fullmatch(value) is None:
                raise ValueError("not valid base64")
            return base64.b64decode(value, validate=True)
        return value

    @field_serializer("ciphertext", "signature")
    def _ser_b64(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    def signed_bytes(self) -> bytes:
        return signed_bytes(self.header, self.ciphertext)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> SealedEnvelope:
        return cls.model_validate_json(raw)


def signed_bytes(header: EnvelopeHeader, ciphertext: bytes) -> bytes:
    info = header.info()
    return SIGNING_CONTEXT + len(info).to_bytes(4, "big") + info + ciphertext
