"""`/audit/v1`: an organisation reads its own audit trail (any authenticated organisation).

An organisation sees the entries where it is the actor (its own reads) or the subject (the
gateway opening its mail, an administrative change to it); never anyone else's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from attest_gateway.contracts.audit import AuditEntries
from attest_gateway.core.directory import Organisation
from attest_gateway.entrypoints.http.auth import (
    authenticated,
    authenticated_first,
    client_address,
    gateway_of,
    handed_out,
)
from attest_gateway.infra.db import audit

router = APIRouter(prefix="/audit/v1", tags=["audit"], route_class=authenticated_first())

MAX_SEQ = 2**63 - 1  # a seq is a 64-bit signed integer in both databases


def client_source(request: Request) -> str:
    """Where a request came from, for the audit log: the client's IP address as the server
    saw it, or as a trusted proxy (TRUSTED_PROXIES) names it."""
    return client_address(request)


@router.get("/entries", response_model=AuditEntries)
async def entries(
    request: Request,
    org: Annotated[Organisation, Depends(authenticated)],
    after_seq: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="only entries after this seq")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditEntries:
    """The caller's audit entries after `after_seq`, oldest first: its reads, and what the
    gateway or an operator did to its mail, keys or record. Ids and addresses only."""
    gw = gateway_of(request)
    await audit.chain_all(gw.engine, gw.topics)  # those still pending too, in chain order
    async with gw.engine.connect() as conn:
        found = await audit.entries_of(conn, org.id, after_seq=after_seq, limit=limit)
    handed_out(request, len(found))
    return AuditEntries(entries=found, next_after_seq=found[-1].seq if found else after_seq)
