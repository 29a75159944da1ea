"""`/psychiatry/v1`: thin routes for the regions' psychiatry: register that a citizen is in
treatment, and a direct contact with a job centre (role `psychiatry` only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from attest_gateway.contracts.cases import TreatmentAccepted, TreatmentIn
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.entrypoints.http.auth import (
    authenticated,
    authenticated_first,
    gateway_of,
    require_role,
)
from attest_gateway.entrypoints.http.routes.jobcenter import IdempotencyKey
from attest_gateway.services import cases, contacts
from attest_gateway.services.contacts import ContactAccepted, PsychiatryContactIn

router = APIRouter(
    prefix="/psychiatry/v1", tags=["psychiatry"], route_class=authenticated_first(Role.PSYCHIATRY)
)


async def psychiatry(org: Annotated[Organisation, Depends(authenticated)]) -> Organisation:
    return require_role(org, Role.PSYCHIATRY)


Psychiatry = Annotated[Organisation, Depends(psychiatry)]


@router.post("/treatments", status_code=201, response_model=TreatmentAccepted)
async def register_treatment(
    body: TreatmentIn,
    request: Request,
    response: Response,
    org: Psychiatry,
    idempotency_key: IdempotencyKey,
) -> TreatmentAccepted:
    """Register that a citizen (by CPR number or by the case ref the gateway gave the job
    centre) is in this unit's treatment: the citizen's cases then count as with a psychiatric
    course."""
    gw = gateway_of(request)
    accepted, created = await cases.register_treatment(
        gw.store,
        gw.keyring,
        gw.clock,
        org,
        body,
        idempotency_key=idempotency_key,
        gateway_org_id=gw.settings.gateway_org_id,
        pseudonym_key=gw.pseudonym_key,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted


@router.post("/contacts", status_code=201, response_model=ContactAccepted)
async def register_contact(
    body: PsychiatryContactIn,
    request: Request,
    response: Response,
    org: Psychiatry,
    idempotency_key: IdempotencyKey,
) -> ContactAccepted:
    """Register a direct contact with a municipality's job centre about a citizen (counts for
    contact coverage as one the job centre registers does)."""
    gw = gateway_of(request)
    accepted, created = await contacts.register_psychiatry_contact(
        gw.store,
        gw.relay,
        gw.keyring,
        gw.clock,
        org,
        body,
        idempotency_key=idempotency_key,
        gateway_org_id=gw.settings.gateway_org_id,
        pseudonym_key=gw.pseudonym_key,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted
