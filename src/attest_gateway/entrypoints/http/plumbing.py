"""HTTP plumbing shared by the routers: authentication, problem+json, body limit, request log,
the `Date` header from the gateway's clock."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from email.utils import format_datetime
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import (
    ErrorCode,
    GatewayError,
    Malformed,
    NotAuthenticated,
    NotPermitted,
    Unavailable,
)
from attest_gateway.entrypoints.http import mtls
from attest_gateway.entrypoints.http.problems import (
    PROBLEM_JSON,
    Problem,
    framework_problem,
    problem_of,
    validation_problem,
)
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.engine import autocommit
from attest_gateway.observability import metrics

log = structlog.get_logger(__name__)

_ORG_KEY = "attest_gateway.org"  # the request's authenticated organisation, in its ASGI scope


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def authenticated(request: Request) -> Organisation:
    """The organisation behind the request: its pinned TLS client certificate (mutual TLS)
    or its `Authorization: Bearer <api key>`. When both are sent they must name the same
    organisation; an unknown or revoked certificate is refused, never silently ignored."""
    known: Organisation | None = request.scope.get(_ORG_KEY)
    if known is not None:  # already authenticated before the body was read
        return known
    gw = gateway_of(request)
    pem = mtls.client_certificate(request.scope)
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if pem is None and (scheme.lower() != "bearer" or not token.strip()):
        raise NotAuthenticated(
            ErrorCode.UNAUTHENTICATED,
            "present a client certificate or send Authorization: Bearer <api key>",
        )
    by_cert: Organisation | None = None
    async with gw.engine.connect() as conn:
        await autocommit(conn)
        if pem is not None:
            by_cert = await directory.org_by_client_certificate(
                conn, mtls.fingerprint_of(pem), gw.clock.now()
            )
            if by_cert is None:
                raise NotAuthenticated(
                    ErrorCode.UNKNOWN_CLIENT_CERTIFICATE,
                    "the client certificate is not registered to an organisation, or is revoked",
                )
        by_key = await directory.org_by_api_key(conn, token.strip()) if token.strip() else None
    if token.strip() and (by_key is None or not by_key.enabled):
        raise NotAuthenticated(ErrorCode.UNAUTHENTICATED, "the API key is not valid")
    if by_cert is not None and by_key is not None and by_cert.id != by_key.id:
        raise NotAuthenticated(
            ErrorCode.CREDENTIALS_DISAGREE,
            "the client certificate and the API key name different organisations",
        )
    org = by_cert or by_key
    assert org is not None
    structlog.contextvars.bind_contextvars(org=org.id)
    request.scope[_ORG_KEY] = org
    return org


def require_role(org: Organisation, *roles: Role) -> Organisation:
    if org.role not in roles:
        raise NotPermitted(
            ErrorCode.FORBIDDEN, "this organisation's role may not use this endpoint"
        )
    return org


def authenticated_first(*roles: Role) -> type[APIRoute]:
    """The route class of a partner router (`APIRouter(route_class=…)`): the caller is
    authenticated, and its role checked when `roles` are given, before the body is read.

    FastAPI reads and parses a declared body before it solves the route's dependencies, so
    a malformed body would otherwise be answered (400 `malformed-json`) before the caller
    is known: anyone could probe how the gateway reads its input. The route's own
    dependencies then find the organisation in the request scope and do not look it up
    again."""

    class AuthenticatedFirstRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            if self.body_field is None:
                return handler

            async def authenticate_then_handle(request: Request) -> Response:
                org = await authenticated(request)
                if roles:
                    require_role(org, *roles)
                return await handler(request)

            return authenticate_then_handle

    return AuthenticatedFirstRoute


def problem_response(
    problem: Problem | GatewayError, request: Request, *, headers: dict[str, str] | None = None
) -> Response:
    """The problem+json answer to an error (by the table in problems.py)."""
    if isinstance(problem, GatewayError):
        problem = problem_of(problem)
    metrics.observe_problem(
        problem.code, problem.status, envelope_rejected=problem.envelope_rejected
    )
    headers = dict(headers or {})
    if problem.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if problem.retry_after is not None:
        headers["Retry-After"] = str(problem.retry_after)
    return Response(
        orjson.dumps(problem.body(instance=request.url.path)),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return problem_response(exc, request)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(validation_problem(exc), request)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        allow = (exc.headers or {}).get("Allow")
        return problem_response(
            framework_problem(exc.status_code),
            request,
            headers={"Allow": allow} if allow is not None else None,
        )

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("http.unhandled_error")
        return problem_response(
            GatewayError(ErrorCode.INTERNAL_ERROR, "an internal error occurred"), request
        )

    async def on_database_busy(request: Request, _exc: Exception) -> Response:
        """The pool's checkout timed out: every connection busy for a while."""
        log.warning("http.database_busy")
        return problem_response(
            Unavailable(
                ErrorCode.DATABASE_BUSY,
                "every database connection of the gateway is in use; retry shortly",
                retry_after=1,
            ),
            request,
        )

    async def on_database_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, sa.exc.DBAPIError) and not (
            exc.connection_invalidated
            or isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
        ):
            return await on_crash(request, exc)  # e.g. a constraint: a bug, not an outage
        log.warning("http.database_unavailable", error=type(exc).__name__)
        return problem_response(
            Unavailable(
                ErrorCode.DATABASE_UNAVAILABLE,
                "the gateway's database cannot be reached right now; retry later",
            ),
            request,
        )

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(sa.exc.DBAPIError, on_database_error)
    app.add_exception_handler(sa.exc.TimeoutError, on_database_busy)  # the pool's, not a driver's
    app.add_exception_handler(ConnectionError, on_database_error)  # connecting failed
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413 before they reach a handler (pure ASGI)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, send)
            return
        seen = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:  # once over the limit, whatever the app answers is replaced
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        problem = problem_of(
            Malformed(ErrorCode.PAYLOAD_TOO_LARGE, f"the body exceeds {self.max_bytes} bytes")
        )
        metrics.observe_problem(problem.code, problem.status)
        body = orjson.dumps(problem.body(instance=scope.get("path")))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


#: A caller's `X-Correlation-Id` is kept when it is 1 to 128 letters, digits and `._:-` (a
#: UUID, a W3C trace id, `case-42:retry.1`). Anything else (a 70 KB header, spaces, control or
#: non-ASCII characters) is replaced by a new UUID: the id is copied into every log line of
#: the request and into the answer.
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def correlation_id(given: str | None) -> str:
    """The caller's correlation id when it is sane (`_CORRELATION_ID`), else a new UUID."""
    if given is not None and _CORRELATION_ID.fullmatch(given):
        return given
    return str(uuid.uuid4())


class RequestLogMiddleware:
    """Per request: a correlation id (the caller's `X-Correlation-Id` if sane, else a new one)
    bound to every log line and echoed in the answer, one directory generation for the whole
    request (`DirectoryCache.request_view`), the request metrics and one `http.request` log line
    (pure ASGI: no extra task and stream per request, as `BaseHTTPMiddleware` would)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = correlation_id(Headers(scope=scope).get("x-correlation-id"))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Correlation-Id"] = request_id
            await send(message)

        # The running gateway's directory cache (none before the lifespan has built it).
        gw: Gateway | None = getattr(scope["app"].state, "gateway", None)
        with gw.directory.request_view() if gw is not None else contextlib.nullcontext():
            await self.app(scope, receive, send_with_id)
        elapsed = time.perf_counter() - started
        route: Any = scope.get("route")
        metrics.observe_request(scope["method"], route, status, elapsed)
        log.info(
            "http.request",
            method=scope["method"],
            route=getattr(route, "path", scope["path"]),
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )


class DateHeaderMiddleware:
    """The `Date` of every answer (RFC 9110, section 6.6.1) from the gateway's clock: a client
    learns the gateway's time from it, the simulator among them when that clock is simulated.
    `attest-gateway serve` turns uvicorn's own `Date` (the machine's clock) off. Before the
    gateway has started (no lifespan) there is no clock, and no `Date`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                gw: Gateway | None = getattr(scope["app"].state, "gateway", None)
                if gw is not None:
                    date = format_datetime(gw.clock.now().astimezone(dt.UTC), usegmt=True)
                    MutableHeaders(scope=message)["Date"] = date
            await send(message)

        await self.app(scope, receive, send_dated)
