"""Open a sealed envelope (after checking its signature against the signer's published
keys) and build the MedCom answers a clinic sends: the acknowledgement and the attest reply.
All of it local: no network here (client/http.py fetches the keys)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

import orjson

from attest_gateway.client.errors import NotOpened
from attest_gateway.contracts.directory import OrganisationKeys
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.mailbox import MailboxItem
from attest_gateway.core.errors import GatewayError
from attest_gateway.crypto import sealing
from attest_gateway.crypto.verification import verify_against_directory
from attest_gateway.medcom.build import SegmentAuthor, build_acknowledgement, build_attest_reply
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.fhir_xml import xml_to_json
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle

AckCode = Literal["ok", "transient-error", "fatal-error"]
ReplyKindCode = Literal["attest", "not-in-treatment", "wrong-form", "cannot-answer"]
REPLY_KIND_CODES: tuple[ReplyKindCode, ...] = (
    "attest",
    "not-in-treatment",
    "wrong-form",
    "cannot-answer",
)


Envelope = SealedEnvelope | MailboxItem | dict[str, Any] | bytes | str


def as_envelope(data: Envelope) -> SealedEnvelope:
    """A sealed envelope, from itself, a mailbox item, or the JSON of either."""
    if isinstance(data, SealedEnvelope):
        return data
    if isinstance(data, MailboxItem):
        return data.envelope
    if isinstance(data, bytes | str):
        data = orjson.loads(data)
    if isinstance(data, dict) and "envelope" in data:
        data = data["envelope"]
    return SealedEnvelope.model_validate(data)


def open_envelope(
    envelope: Envelope,
    keys: sealing.OrgKeys,
    signer_keys: OrganisationKeys | None,
    *,
    gateway_org_id: str = "gateway",
) -> dict[str, Any]:
    """The FHIR Bundle (JSON) sealed in `envelope` (sealed as FHIR XML for an organisation
    that takes XML: read into the same JSON). With `signer_keys` (the signer's keys as
    `GET /directory/v1/organisations/{signer}/keys` answers them) the signature is checked
    first: the signer is the sender or the gateway, its key valid then, the signature good.
    `signer_keys=None` opens without that check: only for an envelope checked before.
    Raises `NotOpened`."""
    sealed = as_envelope(envelope)
    try:
        if signer_keys is not None:
            verify_against_directory(sealed, signer_keys, gateway_org_id=gateway_org_id)
        key = next((k for k in keys.hpke_keys if k.key_id == sealed.header.recipient_key_id), None)
        if key is None:
            raise NotOpened(
                "unknown-key", "the envelope is sealed to a key that is not in the key file"
            )
        plaintext = sealing.open_envelope(sealed, key)
        # FHIR XML for an organisation whose directory entry says so (message_format)
        bundle: dict[str, Any] = (
            xml_to_json(plaintext) if plaintext.lstrip()[:1] == b"<" else orjson.loads(plaintext)
        )
    except GatewayError as exc:
        raise NotOpened(str(exc.code), exc.detail) from None
    return bundle


def acknowledgement(
    bundle: dict[str, Any], code: AckCode = "ok", *, at: dt.datetime | None = None
) -> dict[str, Any]:
    """The MedCom acknowledgement of a received Bundle (to `submit`). A code other than ok
    says the message could not be received (MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE)."""
    error = None if code == "ok" else "MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE"
    return build_acknowledgement(
        acked=_parsed(bundle),
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=at or dt.datetime.now(dt.UTC),
        code=code,
        error_code=error,
    )


def attest_reply(
    request: dict[str, Any],
    author: SegmentAuthor,
    *,
    text: str | None = None,
    pdf: bytes | None = None,
    at: dt.datetime | None = None,
    kind: ReplyKindCode = "attest",
    suggest: str | None = None,
) -> dict[str, Any]:
    """The reply to a request Bundle, written by `author` (name, role, autorisations-ID,
    phone) (to `submit`). `kind` says what it is: `attest` (the default: the attest's text, a
    PDF, or both), or an answer without the attest: `not-in-treatment` (the citizen is not
    treated here), `wrong-form` (the wrong attest type was asked for; `suggest` may name the
    right one, e.g. "LÆ 155") or `cannot-answer` (`text` required: why)."""
    if kind == "attest" and text is None and pdf is None:
        raise ValueError("an attest reply holds a text, a PDF or both")
    return build_attest_reply(
        request=_parsed(request),
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=at or dt.datetime.now(dt.UTC),
        author=author,
        text=text,
        pdf=pdf,
        kind=kind,
        suggested_attest_type=(suggest, None) if suggest is not None else None,
    )


def _parsed(bundle: dict[str, Any]) -> Bundle:
    try:
        return parse_bundle(bundle)
    except BundleError as exc:
        raise ValueError(f"not a MedCom message the gateway reads: {exc.detail}") from None
