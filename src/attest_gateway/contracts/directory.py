"""The directory's public keys, as partners fetch them (`GET /directory/v1/organisations/{id}/
keys`): what a receiver checks a sealed envelope's signature against, and what a sender may
seal to. Public keys only; never an API key hash or a client certificate."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PublicKey(BaseModel):
    """One key of an organisation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(description="as named in an envelope's header")
    purpose: Literal["hpke", "signing"] = Field(
        description="hpke: envelopes are sealed to it; signing: the organisation's envelopes "
        "are signed with it (Ed25519)"
    )
    algorithm: str = Field(description="the HPKE suite, or Ed25519")
    public_key: str = Field(description="base64 of the raw public key")
    valid_from: dt.datetime = Field(description="when it was added to the directory (UTC)")
    valid_until: dt.datetime | None = Field(
        default=None, description="when it stops being valid (UTC); none: until revoked"
    )
    revoked_at: dt.datetime | None = Field(
        default=None, description="when it was revoked (UTC): nothing it signed is trusted"
    )
    usable: bool = Field(description="neither revoked nor past valid_until now")


class OrganisationKeys(BaseModel):
    """`GET /directory/v1/organisations/{org_id}/keys`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    org_id: str
    message_format: Literal["json", "xml"] = Field(
        default="json",
        description="the FHIR format its envelopes hold: json (application/fhir+json) or xml "
        "(application/fhir+xml), as its systems take MedCom messages",
    )
    keys: list[PublicKey] = Field(description="HPKE keys, then signing keys; newest first")
