"""`/webhooks/v1`: an organisation's own webhook endpoints and its delivery log (job centres
and healthcare organisations). Thin: parse, authorise, call one use case."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from attest_gateway.bootstrap import webhook_config
from attest_gateway.contracts.webhooks import (
    Deliveries,
    Delivery,
    DeliveryQueued,
    DeliveryStatus,
    Endpoint,
    EndpointCreated,
    EndpointIn,
    EndpointRotated,
    Endpoints,
)
from attest_gateway.core.directory import HEALTH_ROLES, Organisation, Role
from attest_gateway.entrypoints.http.auth import (
    authenticated,
    authenticated_first,
    gateway_of,
    handed_out,
    require_role,
)
from attest_gateway.infra.db.webhooks import SqlWebhookStore
from attest_gateway.ports.webhooks import DeliveryRecord, EndpointRecord
from attest_gateway.services import webhooks as service

ROLES = (Role.JOBCENTER, *sorted(HEALTH_ROLES))
router = APIRouter(
    prefix="/webhooks/v1", tags=["webhooks"], route_class=authenticated_first(*ROLES)
)

ID = r"^[a-z]{2,3}_[0-9a-f]{24,32}$"
EndpointId = Annotated[str, Path(pattern=ID)]
DeliveryId = Annotated[str, Path(pattern=ID)]


async def partner(org: Annotated[Organisation, Depends(authenticated)]) -> Organisation:
    return require_role(org, *ROLES)


Partner = Annotated[Organisation, Depends(partner)]

_AT = "2026-10-29T09:30:00Z"
_ENDPOINT = {
    "id": "ep_5f0c3b2a9d8e7f6a5b4c3d2e",
    "url": "https://sag.koebenhavn.example/attest-webhooks",
    "events": ["reply.arrived", "request.overdue", "request.refused", "request.status-changed"],
    "created_at": _AT,
    "rotating_until": None,
}
_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the documentation's example
_DELIVERY = {
    "id": "msg_2c6f0d9e1b7a4c3d8e5f6a7b8c9d0e1f",
    "endpoint_id": _ENDPOINT["id"],
    "event_type": "reply.arrived",
    "conversation_id": "6f1c2d9e-3b7a-4c61-9d2e-0a4b8c7d5e31",
    "status": "pending",
    "attempts": 3,
    "created_at": _AT,
    "next_attempt_at": "2026-10-29T09:31:10Z",
    "last_attempt_at": "2026-10-29T09:30:40Z",
    "last_status_code": 503,
    "last_error": "http-503",
    "delivered_at": None,
}


def _example(value: Any, status: int = 200) -> dict[int | str, dict[str, Any]]:
    return {status: {"content": {"application/json": {"example": value}}}}


def store_of(request: Request) -> SqlWebhookStore:
    return SqlWebhookStore(gateway_of(request).engine)


def _endpoint(e: EndpointRecord) -> Endpoint:
    return Endpoint(
        id=e.id,
        url=e.url,
        events=sorted(e.events),
        created_at=e.created_at,
        rotating_until=e.previous_until,
    )


def _delivery(d: DeliveryRecord) -> Delivery:
    return Delivery(
        id=d.id,
        endpoint_id=d.endpoint_id,
        event_type=d.event_type,
        conversation_id=d.conversation_id,
        status=d.status,
        attempts=d.attempts,
        created_at=d.created_at,
        next_attempt_at=d.next_attempt_at,
        last_attempt_at=d.last_attempt_at,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        delivered_at=d.delivered_at,
    )


@router.post(
    "/endpoints",
    status_code=201,
    response_model=EndpointCreated,
    responses=_example({**_ENDPOINT, "secret": _SECRET}, 201),
)
async def add_endpoint(
    request: Request,
    org: Partner,
    body: Annotated[
        EndpointIn,
        Body(
            openapi_examples={
                "a job centre's endpoint": {
                    "value": {
                        "url": "https://sag.koebenhavn.example/attest-webhooks",
                        "events": ["reply.arrived", "request.overdue"],
                    }
                }
            }
        ),
    ],
) -> EndpointCreated:
    """Register an https endpoint for the organisation's events (all its role gets when
    `events` is left out). The answer holds the signing secret: it is shown this once."""
    gw = gateway_of(request)
    endpoint = await service.add_endpoint(
        store_of(request),
        gw.clock,
        org,
        body.url,
        body.events,
        production=gw.settings.environment == "production",
    )
    return EndpointCreated(**_endpoint(endpoint).model_dump(), secret=endpoint.secret)


@router.get("/endpoints", response_model=Endpoints, responses=_example({"endpoints": [_ENDPOINT]}))
async def list_endpoints(request: Request, org: Partner) -> Endpoints:
    """The organisation's endpoints (never their secrets)."""
    found = await service.list_endpoints(store_of(request), org.id)
    return Endpoints(endpoints=[_endpoint(e) for e in found])


@router.delete("/endpoints/{endpoint_id}", status_code=204)
async def remove_endpoint(request: Request, org: Partner, endpoint_id: EndpointId) -> None:
    """Remove an endpoint; its pending deliveries are marked failed and stay in the log."""
    await service.remove_endpoint(store_of(request), gateway_of(request).clock, org.id, endpoint_id)


@router.post(
    "/endpoints/{endpoint_id}/rotate",
    response_model=EndpointRotated,
    responses=_example(
        {"id": _ENDPOINT["id"], "secret": _SECRET, "rotating_until": "2026-10-30T09:30:00Z"}
    ),
)
async def rotate_secret(request: Request, org: Partner, endpoint_id: EndpointId) -> EndpointRotated:
    """A new signing secret, shown once; until `rotating_until` the previous one signs
    too (two signatures in `webhook-signature`), so receivers can switch without a gap."""
    gw = gateway_of(request)
    secret, until = await service.rotate_secret(
        store_of(request),
        gw.clock,
        org.id,
        endpoint_id,
        webhook_config(gw.settings).rotation_overlap,
    )
    return EndpointRotated(id=endpoint_id, secret=secret, rotating_until=until)


@router.post(
    "/endpoints/{endpoint_id}/ping",
    status_code=202,
    response_model=DeliveryQueued,
    responses=_example({"id": _DELIVERY["id"], "status": "pending"}, 202),
)
async def ping(request: Request, org: Partner, endpoint_id: EndpointId) -> DeliveryQueued:
    """Send a `ping` event to the endpoint, to test it; follow it in the delivery log."""
    gw = gateway_of(request)
    delivery = await service.ping(
        store_of(request), gw.clock, org.id, endpoint_id, webhook_config(gw.settings).retry.period
    )
    return DeliveryQueued(id=delivery.id)


@router.get(
    "/deliveries", response_model=Deliveries, responses=_example({"deliveries": [_DELIVERY]})
)
async def deliveries(
    request: Request,
    org: Partner,
    status: Annotated[DeliveryStatus | None, Query(description="only these")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Deliveries:
    """The organisation's deliveries, newest first: status, attempts, the last status code
    or error (the endpoints' answers are not stored)."""
    found = await service.list_deliveries(store_of(request), org.id, status=status, limit=limit)
    handed_out(request, len(found))
    return Deliveries(deliveries=[_delivery(d) for d in found])


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryQueued,
    responses=_example({"id": _DELIVERY["id"], "status": "pending"}, 202),
)
async def redeliver(request: Request, org: Partner, delivery_id: DeliveryId) -> DeliveryQueued:
    """Send a delivery again (same `webhook-id`, same body), retried for another period."""
    gw = gateway_of(request)
    found = await service.redeliver(
        store_of(request), gw.clock, org.id, delivery_id, webhook_config(gw.settings).retry.period
    )
    return DeliveryQueued(id=found.id)
