"""`/medcom/v1`: thin routes for psychiatry and GP systems."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from attest_gateway.core.bounds import ID_PATTERN, control_character_in
from attest_gateway.core.directory import HEALTH_ROLES, Organisation
from attest_gateway.core.errors import ErrorCode, InvalidInput, Malformed
from attest_gateway.entrypoints.http.auth import (
    ActingPerson,
    authenticated,
    authenticated_first,
    gateway_of,
    handed_out,
    require_role,
)
from attest_gateway.entrypoints.http.routes.audit import client_source
from attest_gateway.medcom import fhir_xml
from attest_gateway.services import health as service
from attest_gateway.services import waiting
from attest_gateway.services.waiting import MAX_WAIT_SECONDS

WAIT_DESCRIPTION = (
    "Long-poll: when nothing waits, wait up to this many seconds (0–30) and answer as soon as "
    "something arrives; still nothing after that: an empty answer."
)

router = APIRouter(
    prefix="/medcom/v1", tags=["health"], route_class=authenticated_first(*HEALTH_ROLES)
)

# FHIR XML (medcom/fhir_xml.py: parsed without DTDs or entities, read as the same JSON).
_XML_TYPES = (fhir_xml.XML_CONTENT_TYPE, "application/xml", "text/xml")
_JSON_TYPES = (
    "application/json",
    "application/fhir+json",
    "application/vnd.attest-gateway.envelope+json",
)


async def health_org(org: Annotated[Organisation, Depends(authenticated)]) -> Organisation:
    return require_role(org, *HEALTH_ROLES)


HealthOrg = Annotated[Organisation, Depends(health_org)]


@router.get("/mailbox", response_model=dict[str, Any])
async def mailbox(
    request: Request,
    org: HealthOrg,
    actor: ActingPerson,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    wait: Annotated[int, Query(ge=0, le=MAX_WAIT_SECONDS, description=WAIT_DESCRIPTION)] = 0,
) -> Response:
    gw = gateway_of(request)
    answer = await waiting.long_poll(
        gw.store,
        org.id,
        replies=False,
        wait=wait,
        read=lambda: service.read_mailbox_json(
            gw.store,
            gw.clock,
            org,
            limit=limit,
            source=client_source(request),
            actor=actor,
        ),
        empty=lambda found: found.count == 0,
    )
    handed_out(request, answer.count)
    # The JSON written while the rows were read, a batch at a time, the envelopes as stored:
    # a read of 500 of them is short steps of the event loop, not one stretch of tens of
    # milliseconds that holds up every other request.
    return Response(answer.body, media_type="application/json")


@router.post("/mailbox/{message_id}/collected")
async def collected(
    message_id: Annotated[str, Path(pattern=ID_PATTERN)], request: Request, org: HealthOrg
) -> dict[str, Any]:
    gw = gateway_of(request)
    changed = await service.mark_collected(gw.store, gw.clock, org, message_id)
    return {"message_id": message_id, "collected": True, "changed": changed}


@router.post("/messages", status_code=202)
async def submit(
    request: Request, response: Response, org: HealthOrg, actor: ActingPerson
) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: object
    if content_type in _XML_TYPES:
        data = fhir_xml.xml_to_json(await request.body())
    elif content_type in _JSON_TYPES:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise Malformed(ErrorCode.MALFORMED_JSON, "the request body is not valid JSON") from exc
    else:
        raise Malformed(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, "send application/fhir+json or application/fhir+xml"
        )
    gw = gateway_of(request)
    gateway_org_id = gw.settings.gateway_org_id
    bundle = await service.unwrap_submission(
        gw.store, gw.keyring, gw.clock, org, data, gateway_org_id=gateway_org_id
    )
    if control_character_in(bundle):
        raise InvalidInput(
            ErrorCode.CONTROL_CHARACTER,
            "a string of the Bundle holds a control character (FHIR allows none but tab, "
            "line feed and carriage return)",
        )
    answer, created = await service.submit_message(
        gw.store,
        gw.relay,
        gw.keyring,
        gw.clock,
        org,
        bundle,
        gateway_org_id=gateway_org_id,
        pseudonym_key=gw.pseudonym_key,
        source=client_source(request),
        actor=actor,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return answer
