"""Demo organisations for `make run`: the gateway itself, two job centres, one psychiatry unit,
one GP clinic, the ministry and a region's and a municipality's analysts, with development
keys and API keys. Created once, if absent, through the
same functions (services/admin.py, audited) an operator's `attest-gateway orgs add` uses;
refused in production."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.config import Settings
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.identifiers import gln_check_digit, municipalities
from attest_gateway.devtools.devca import write_private
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.audit import SOURCE_CLI
from attest_gateway.services import admin


def _gln(first12: str) -> str:
    return first12 + str(gln_check_digit(first12))


def _org(
    id: str,
    name: str,
    role: Role,
    *,
    sor: str | None = None,
    gln: str | None = None,
    kommunekode: str | None = None,
    ydernummer: str | None = None,
    region_code: str | None = None,
    custodial: bool = False,
) -> Organisation:
    if kommunekode is not None and region_code is None:
        region_code = municipalities()[kommunekode].region_code
    return Organisation(
        id, name, role, sor, gln, kommunekode, ydernummer, region_code, custodial, True
    )


DEMO_ORGS: tuple[Organisation, ...] = (
    _org("jc-koebenhavn", "Jobcenter København", Role.JOBCENTER, sor="101181000016003",
         gln=_gln("579000101001"), kommunekode="101", custodial=True),
    _org("jc-aarhus", "Jobcenter Aarhus", Role.JOBCENTER, sor="751181000016005",
         gln=_gln("579000751001"), kommunekode="751", custodial=True),
    _org("psyk-kbh", "Psykiatrisk Center København", Role.PSYCHIATRY, sor="715381000016006",
         gln=_gln("579000421001"), region_code="1084"),
    _org("gp-noerrebro", "Lægehuset Nørrebro", Role.GP, sor="486711000016004",
         gln=_gln("579000612001"), ydernummer="012345", region_code="1084"),
    _org("ministry", "Beskæftigelsesministeriet (analyse)", Role.MINISTRY),
    _org("analyse-hovedstaden", "Region Hovedstaden (analyse)", Role.REGION_ANALYST,
         region_code="1084"),
    _org("analyse-koebenhavn", "Københavns Kommune (analyse)", Role.MUNICIPALITY_ANALYST,
         kommunekode="101"),
)  # fmt: skip


SETUP_ACTOR = "setup"  # the audit log's actor for what setup and `serve` create


@dataclass(frozen=True)
class DemoCredentials:
    path: Path
    created: bool


def credentials_path(settings: Settings) -> Path:
    return settings.var_dir / "demo-credentials.json"


async def ensure_gateway_org(engine: AsyncEngine, settings: Settings) -> None:
    """The gateway is an organisation too: it signs what it seals on behalf of others."""
    async with engine.begin() as conn:
        if await directory.org_by_id(conn, settings.gateway_org_id) is not None:
            return
        org = _org(settings.gateway_org_id, "attest gateway", Role.OPERATOR, custodial=True)
        await admin.add_org(
            conn, settings, org, actor=SETUP_ACTOR, source=SOURCE_CLI, with_api_key=False
        )


async def ensure_demo_orgs(engine: AsyncEngine, settings: Settings) -> DemoCredentials:
    """Create the demo organisations, their keys and API keys unless they exist."""
    if settings.environment == "production":
        raise RuntimeError("demo organisations are for development only")
    await ensure_gateway_org(engine, settings)
    path = credentials_path(settings)
    creds: dict[str, dict[str, str]] = {}
    now = SystemClock().now()  # set up before the gateway starts, on the machine's clock
    clients = settings.effective_keys_dir / "clients"
    async with engine.begin() as conn:
        for org in DEMO_ORGS:
            if await directory.org_by_id(conn, org.id) is not None:
                continue
            # In real life a clinic makes its own keys (`keys generate`); here we hand them over.
            out = None if org.custodial else clients / f"{org.id}.json"
            added = await admin.add_org(
                conn, settings, org, actor=SETUP_ACTOR, source=SOURCE_CLI, private_out=out, now=now
            )
            if added.api_key is None:
                raise RuntimeError(f"no API key was issued for {org.id}")
            key_path = added.private_file or admin.custodial_key_file(settings, org.id)
            creds[org.id] = {
                "name": org.name,
                "role": org.role.value,
                "api_key": added.api_key,
                "private_keys": str(key_path),
            }
    if creds:
        existing = json.loads(path.read_text("utf-8")) if path.exists() else {}
        write_private(path, json.dumps(existing | creds, indent=2, ensure_ascii=False).encode())
    return DemoCredentials(path, bool(creds))
