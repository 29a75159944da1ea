"""`GET /metrics`: the Prometheus text, with the store gauges refreshed first in processes
that run the consumers (`app.state.store_gauges`, set by `create_app`)."""

from __future__ import annotations

import hmac

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from attest_gateway.core.errors import ErrorCode, NotAuthenticated
from attest_gateway.infra.db.gauges import StoreGauges

log = structlog.get_logger(__name__)

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    description="Prometheus text format. With `METRICS_TOKEN` set (required in production) "
    "the scraper sends `Authorization: Bearer <token>`.",
)
async def metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise NotAuthenticated(
                ErrorCode.UNAUTHENTICATED, "send Authorization: Bearer <metrics token>"
            )
    gauges: StoreGauges | None = getattr(request.app.state, "store_gauges", None)
    gw = getattr(request.app.state, "gateway", None)
    if gauges is not None and gw is not None:
        try:
            await gauges.refresh(gw.engine, gw.clock)
        except sa.exc.DBAPIError as exc:  # the scrape still answers; /readyz tells the rest
            log.warning("metrics.store_gauges_failed", error=type(exc).__name__)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
