"""`/directory/v1`: the directory's public keys, for any authenticated organisation.

A receiver checks the signature of what it gets against the sender's signing key from here
(the reference client, `client open`, does by default); a key's id is the one an envelope's
header names. Revoked and expired keys are listed with their state.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from attest_gateway.contracts.directory import OrganisationKeys
from attest_gateway.core.bounds import ID_PATTERN
from attest_gateway.core.directory import Organisation
from attest_gateway.core.errors import ErrorCode, Unknown
from attest_gateway.entrypoints.http.auth import authenticated, authenticated_first, gateway_of
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.engine import autocommit

router = APIRouter(prefix="/directory/v1", tags=["directory"], route_class=authenticated_first())


@router.get("/organisations/{org_id}/keys", response_model=OrganisationKeys)
async def organisation_keys(
    org_id: Annotated[str, Path(pattern=ID_PATTERN)],
    request: Request,
    _caller: Annotated[Organisation, Depends(authenticated)],
) -> OrganisationKeys:
    """An organisation's public keys: HPKE (sealed to) and signing (Ed25519), each with its
    key id, validity and revocation; and the FHIR format its envelopes hold."""
    gw = gateway_of(request)
    async with gw.engine.connect() as conn:
        await autocommit(conn)
        keys = await directory.public_keys(conn, org_id, gw.clock.now())
        org = await directory.org_by_id(conn, org_id) if keys is not None else None
    if keys is None or org is None:
        raise Unknown(ErrorCode.NOT_FOUND, "no such organisation")
    return OrganisationKeys(org_id=org_id, message_format=org.message_format.value, keys=keys)
