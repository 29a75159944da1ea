"""The organisations: identifiers, roles, public keys; API key hashing; demo organisations.

The directory lives in the database (`organisations`, `org_keys`). Private keys never do:
an organisation keeps its own, and the gateway keeps only its own and those of custodial
organisations (job centres, whose case systems cannot open envelopes) in its key directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.gateway.crypto import OrgKeys, PublicHpkeKey, decode_verify_key
from attest_gateway.gateway.store.tables import org_keys, organisations
from attest_gateway.schemas.envelope import Suite


class Role(StrEnum):
    JOBCENTER = "jobcenter"
    PSYCHIATRY = "psychiatry"
    GP = "gp"
    HOSPITAL = "hospital"
    SPECIALIST = "specialist"
    MINISTRY = "ministry"
    OPERATOR = "operator"


HEALTH_ROLES = frozenset({Role.PSYCHIATRY, Role.GP, Role.HOSPITAL, Role.SPECIALIST})


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

    def key(self) -> Any:
        return decode_verify_key(self.public_key)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def hash_api_key(api_key: str) -> str:
    """API keys are 256-bit random tokens, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_api_key(org_id: str) -> str:
    return f"agw_{org_id}_{secrets.token_urlsafe(32)}"


async def add_organisation(
    conn: AsyncConnection,
    org: Organisation,
    keys: OrgKeys,
    *,
    api_key: str | None,
    now: dt.datetime,
) -> None:
    """Register an organisation with the public halves of its keys."""
    await conn.execute(
        organisations.insert().values(
            id=org.id,
            name=org.name,
            role=org.role.value,
            sor=org.sor,
            gln=org.gln,
            kommunekode=org.kommunekode,
            ydernummer=org.ydernummer,
            region_code=org.region_code,
            api_key_hash=hash_api_key(api_key) if api_key else None,
            custodial=org.custodial,
            enabled=org.enabled,
            webhook_url=org.webhook_url,
            created_at=now,
        )
    )
    for h in keys.hpke_keys:
        await conn.execute(
            org_keys.insert().values(
                key_id=h.key_id,
                org_id=org.id,
                purpose="hpke",
                algorithm=h.suite,
                public_key=h.public_encoded,
                created_at=now,
            )
        )
    for s in keys.signing_keys:
        await conn.execute(
            org_keys.insert().values(
                key_id=s.key_id,
                org_id=org.id,
                purpose="signing",
                algorithm="Ed25519",
                public_key=s.public_encoded,
                created_at=now,
            )
        )


async def _one_org(conn: AsyncConnection, where: sa.ColumnElement[bool]) -> Organisation | None:
    row = (await conn.execute(sa.select(organisations).where(where))).first()
    return Organisation.from_row(row) if row is not None else None


async def org_by_id(conn: AsyncConnection, org_id: str) -> Organisation | None:
    return await _one_org(conn, organisations.c.id == org_id)


async def org_by_api_key(conn: AsyncConnection, api_key: str) -> Organisation | None:
    return await _one_org(conn, organisations.c.api_key_hash == hash_api_key(api_key))


async def org_by_sor(conn: AsyncConnection, sor: str) -> Organisation | None:
    return await _one_org(conn, organisations.c.sor == sor)


async def org_by_ydernummer(conn: AsyncConnection, ydernummer: str) -> Organisation | None:
    return await _one_org(conn, organisations.c.ydernummer == ydernummer)


async def org_by_identifiers(
    conn: AsyncConnection, *, sor: str | None, gln: str | None
) -> Organisation | None:
    """The organisation a MedCom Organization resource names (SOR first, then GLN)."""
    if sor:
        found = await org_by_sor(conn, sor)
        if found is not None:
            return found
    if gln:
        return await _one_org(conn, organisations.c.gln == gln)
    return None


async def current_hpke_key(
    conn: AsyncConnection, org_id: str, at: dt.datetime
) -> PublicHpkeKey | None:
    """The newest usable HPKE key of an organisation: new mail is sealed to it."""
    rows = await conn.execute(
        sa.select(org_keys)
        .where(org_keys.c.org_id == org_id, org_keys.c.purpose == "hpke")
        .order_by(org_keys.c.created_at.desc(), org_keys.c.key_id.desc())
    )
    for row in rows:
        candidate = VerifyKey(row.key_id, row.org_id, row.public_key, row.revoked_at, row.not_after)
        if candidate.usable(at):
            suite: Suite = row.algorithm
            return PublicHpkeKey.decode(row.key_id, suite, row.public_key)
    return None


async def usable_signing_key_ids(conn: AsyncConnection, org_id: str, at: dt.datetime) -> list[str]:
    """The organisation's usable signing keys, newest first: the gateway signs with the first
    of them it holds."""
    rows = await conn.execute(
        sa.select(org_keys)
        .where(org_keys.c.org_id == org_id, org_keys.c.purpose == "signing")
        .order_by(org_keys.c.created_at.desc(), org_keys.c.key_id.desc())
    )
    keys = (VerifyKey(r.key_id, r.org_id, r.public_key, r.revoked_at, r.not_after) for r in rows)
    return [key.key_id for key in keys if key.usable(at)]


async def hpke_key_owner(conn: AsyncConnection, key_id: str) -> str | None:
    row = (
        await conn.execute(
            sa.select(org_keys.c.org_id).where(
                org_keys.c.key_id == key_id, org_keys.c.purpose == "hpke"
            )
        )
    ).first()
    return row.org_id if row is not None else None


async def signing_key(conn: AsyncConnection, key_id: str) -> VerifyKey | None:
    row = (
        await conn.execute(
            sa.select(org_keys).where(org_keys.c.key_id == key_id, org_keys.c.purpose == "signing")
        )
    ).first()
    if row is None:
        return None
    return VerifyKey(row.key_id, row.org_id, row.public_key, row.revoked_at, row.not_after)


async def list_organisations(conn: AsyncConnection) -> list[Organisation]:
    rows = await conn.execute(sa.select(organisations).order_by(organisations.c.id))
    return [Organisation.from_row(r) for r in rows]


# --- client certificates (mutual TLS) --------------------------------------------------------
# A client certificate is pinned by its SHA-256 fingerprint in `org_keys` (purpose
# `tls-client`), with its expiry as `not_after`, so that it is revoked like any other key.
CLIENT_CERT_PURPOSE = "tls-client"


def client_cert_key_id(fingerprint: str) -> str:
    return f"tls-{fingerprint[:24]}"


async def register_client_certificate(
    conn: AsyncConnection,
    org_id: str,
    fingerprint: str,
    *,
    not_after: dt.datetime,
    now: dt.datetime,
) -> str:
    """Pin a client certificate to an organisation; returns its key id (idempotent)."""
    key_id = client_cert_key_id(fingerprint)
    existing = (
        await conn.execute(sa.select(org_keys.c.org_id).where(org_keys.c.key_id == key_id))
    ).first()
    if existing is not None:
        if existing.org_id != org_id:
            raise ValueError("this certificate is already registered to another organisation")
        return key_id
    await conn.execute(
        org_keys.insert().values(
            key_id=key_id,
            org_id=org_id,
            purpose=CLIENT_CERT_PURPOSE,
            algorithm="x509-sha256",
            public_key=fingerprint,
            created_at=now,
            not_after=not_after,
        )
    )
    return key_id


async def org_by_client_certificate(
    conn: AsyncConnection, fingerprint: str, at: dt.datetime
) -> Organisation | None:
    """The enabled organisation a usable (not revoked, not expired) certificate is pinned to."""
    row = (
        await conn.execute(
            sa.select(org_keys).where(
                org_keys.c.key_id == client_cert_key_id(fingerprint),
                org_keys.c.purpose == CLIENT_CERT_PURPOSE,
            )
        )
    ).first()
    if row is None or row.public_key != fingerprint:
        return None
    pinned = VerifyKey(row.key_id, row.org_id, row.public_key, row.revoked_at, row.not_after)
    if not pinned.usable(at):
        return None
    org = await org_by_id(conn, row.org_id)
    return org if org is not None and org.enabled else None
