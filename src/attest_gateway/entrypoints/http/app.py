"""`create_app()`: the HTTP side. Wires routers, errors and middleware; its lifespan builds the
running gateway through the composition root (`bootstrap.running_gateway`) and keeps it in
`app.state.gateway` (the container) and `app.state.running` (consumers, tracker, sweeper)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from attest_gateway import __version__
from attest_gateway.bootstrap import freeze_startup_heap, running_gateway, tracker_rules
from attest_gateway.config import Settings
from attest_gateway.core.clock import Clock
from attest_gateway.core.limits import (
    AuthLockout,
    EndpointClass,
    Limit,
    LimitedTargets,
    RequestLimits,
)
from attest_gateway.entrypoints.http.asyncapi import router as asyncapi_router
from attest_gateway.entrypoints.http.early_refusal import EarlyRefusalMiddleware
from attest_gateway.entrypoints.http.error_handlers import install_error_handlers
from attest_gateway.entrypoints.http.middleware import (
    BodyLimitMiddleware,
    DateHeaderMiddleware,
    ForwardedForMiddleware,
    RequestLogMiddleware,
    SecurityHeadersMiddleware,
)
from attest_gateway.entrypoints.http.openapi import install_openapi
from attest_gateway.entrypoints.http.routes.audit import router as audit_router
from attest_gateway.entrypoints.http.routes.directory import router as directory_router
from attest_gateway.entrypoints.http.routes.health import router as health_router
from attest_gateway.entrypoints.http.routes.jobcenter import router as jobcenter_router
from attest_gateway.entrypoints.http.routes.medcom import router as medcom_router
from attest_gateway.entrypoints.http.routes.metrics import router as metrics_router
from attest_gateway.entrypoints.http.routes.ministry import (
    dashboard_router as ministry_dashboard_router,
)
from attest_gateway.entrypoints.http.routes.ministry import router as ministry_router
from attest_gateway.entrypoints.http.routes.psychiatry import router as psychiatry_router
from attest_gateway.entrypoints.http.routes.webhooks import router as webhooks_router
from attest_gateway.infra.db.gauges import StoreGauges
from attest_gateway.production import refuse_unsafe_settings


def create_app(
    settings: Settings,
    bootstrap: str,
    *,
    run_relay: bool = True,
    run_consumers: bool = True,
    api_routes: bool = True,
    freeze_heap: bool = False,
    clock: Clock | None = None,
) -> FastAPI:
    """The HTTP app. `api_routes=False` serves only the operations routes (health, metrics,
    contracts): a worker process runs the consumers and is watched through those.
    `freeze_heap`: once started, take startup's objects out of the garbage collector's walks
    (`bootstrap.freeze_startup_heap`; the serving process, not tests). `clock` replaces the
    one the settings choose (tests)."""
    refuse_unsafe_settings(settings)  # production mode: a clear error naming the setting

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_gateway(
            settings, bootstrap, run_relay=run_relay, run_consumers=run_consumers, clock=clock
        ) as running:
            app.state.gateway = running.gateway
            app.state.running = running
            if freeze_heap:
                freeze_startup_heap()
            yield

    app = FastAPI(
        title="attest gateway",
        version=__version__,
        summary="Medical attest requests and replies between job centres and the health sector.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestLogMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(DateHeaderMiddleware)  # the 413 above is dated too
    limits, targets = request_limits(settings), LimitedTargets()
    app.add_middleware(  # a flood's refusals answered before the rest (early_refusal.py)
        EarlyRefusalMiddleware,
        limits=limits,
        targets=targets,
        pause=settings.rate_limit_refusal_delay_seconds,
    )
    if settings.trusted_proxy_networks:  # outermost: everything below sees the client
        app.add_middleware(ForwardedForMiddleware, proxies=settings.trusted_proxy_networks)
    app.state.settings = settings
    app.state.request_limits = limits
    app.state.limited_targets = targets
    app.state.auth_lockout = AuthLockout(
        failures=settings.auth_lockout_failures,
        window=settings.auth_lockout_window_seconds,
        lockout=settings.auth_lockout_seconds,
    )
    app.state.tracker_rules = tracker_rules(settings)  # the ministry routes', built once
    app.state.store_gauges = StoreGauges() if run_consumers else None
    if api_routes:
        app.include_router(jobcenter_router)
        app.include_router(medcom_router)
        app.include_router(psychiatry_router)
        app.include_router(ministry_router)
        app.include_router(ministry_dashboard_router)
        app.include_router(audit_router)
        app.include_router(directory_router)
        app.include_router(webhooks_router)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(asyncapi_router)
    install_openapi(app)

    return app


def request_limits(settings: Settings) -> RequestLimits:
    """Each endpoint class's rate and requests at once per organisation (in this process)."""
    rates = {
        EndpointClass.READS: settings.rate_limit_reads_per_second,
        EndpointClass.WRITES: settings.rate_limit_writes_per_second,
        EndpointClass.REPORTS: settings.rate_limit_reports_per_second,
    }
    return RequestLimits(
        {
            endpoint: Limit(
                per_second=rate,
                burst_seconds=settings.rate_limit_burst_seconds,
                at_once=settings.concurrent_requests_per_org,
                items_per_token=(
                    settings.rate_limit_items_per_read if endpoint is EndpointClass.READS else 0
                ),
            )
            for endpoint, rate in rates.items()
        },
        org_at_once=settings.concurrent_requests_per_org_total,
    )
