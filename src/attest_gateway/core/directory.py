"""The directory's model: organisations, their roles and verification keys, API keys.

The directory itself lives in the database (infra/db/directory.py); these are the values it
answers with.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    JOBCENTER = "jobcenter"
    PSYCHIATRY = "psychiatry"
    GP = "gp"
    HOSPITAL = "hospital"
    SPECIALIST = "specialist"
    MINISTRY = "ministry"
    REGION_ANALYST = "region-analyst"
    MUNICIPALITY_ANALYST = "municipality-analyst"
    OPERATOR = "operator"


HEALTH_ROLES = frozenset({Role.PSYCHIATRY, Role.GP, Role.HOSPITAL, Role.SPECIALIST})
# Who reads the tracker's figures (`/ministry/v1`): the ministry everything; a region's analysts
# their region's (the organisation's `region_code`), a municipality's its own (`kommunekode`).
ANALYST_ROLES = frozenset({Role.MINISTRY, Role.REGION_ANALYST, Role.MUNICIPALITY_ANALYST})


class MessageFormat(StrEnum):
    """The FHIR format an organisation's systems take MedCom messages in: what the gateway
    seals into its envelopes (MedCom-certified systems take JSON or XML, as each was built)."""

    JSON = "json"
    XML = "xml"


@dataclass(frozen=True, slots=True)
class Organisation:
    id: str
    name: str
    role: Role
    sor: str | None
    gln: str | None
    kommunekode: str | None
    ydernummer: str | None
    region_code: str | None
    custodial: bool
    enabled: bool
    webhook_url: str | None = None
    message_format: MessageFormat = MessageFormat.JSON

    @classmethod
    def from_row(cls, row: Any) -> Organisation:
        return cls(
            id=row.id,
            name=row.name,
            role=Role(row.role),
            sor=row.sor,
            gln=row.gln,
            kommunekode=row.kommunekode,
            ydernummer=row.ydernummer,
            region_code=row.region_code,
            custodial=row.custodial,
            enabled=row.enabled,
            webhook_url=row.webhook_url,
            message_format=MessageFormat(row.message_format),
        )


@dataclass(frozen=True, slots=True)
class VerifyKey:
    key_id: str
    org_id: str
    public_key: str
    revoked_at: dt.datetime | None
    not_after: dt.datetime | None

    def usable(self, at: dt.datetime) -> bool:
        if self.revoked_at is not None and _aware(self.revoked_at) <= at:
            return False
        return self.not_after is None or at < _aware(self.not_after)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def hash_api_key(api_key: str) -> str:
    """API keys are 256-bit random tokens, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_api_key(org_id: str) -> str:
    return f"agw_{org_id}_{secrets.token_urlsafe(32)}"


CLIENT_CERT_PURPOSE = "tls-client"


def client_cert_key_id(fingerprint: str) -> str:
    return f"tls-{fingerprint[:24]}"
