"""HTTP plumbing shared by the routers: authentication, problem+json, body limit, request log."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from http import HTTPStatus
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

from attest_gateway.core.clock import utcnow
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    Unprocessable,
    problem_for,
)
from attest_gateway.entrypoints.http import mtls
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.engine import autocommit
from attest_gateway.observability import metrics

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
_ORG_KEY = "attest_gateway.org"  # the request's authenticated organisation, in its ASGI scope

# Pydantic error types raised by our identifier checks and bounds → stable problem codes.
FIELD_CODES = {
    "invalid_cpr": "invalid-cpr",
    "invalid_gln": "invalid-gln",
    "invalid_sor": "invalid-sor",
    "invalid_ydernummer": "invalid-ydernummer",
    "invalid_kommunekode": "invalid-kommunekode",
    "date_out_of_range": "date-out-of-range",
    "control_character": "control-character",
    "string_unicode": "control-character",  # pydantic's own: a lone surrogate (not UTF-8)
    "cpr_in_reference": "cpr-in-reference",
}


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
        raise Unauthenticated(
            "unauthenticated",
            "present a client certificate or send Authorization: Bearer <api key>",
        )
    by_cert: Organisation | None = None
    async with gw.engine.connect() as conn:
        await autocommit(conn)
        if pem is not None:
            by_cert = await directory.org_by_client_certificate(
                conn, mtls.fingerprint_of(pem), utcnow()
            )
            if by_cert is None:
                raise Unauthenticated(
                    "unknown-client-certificate",
                    "the client certificate is not registered to an organisation, or is revoked",
                )
        by_key = await directory.org_by_api_key(conn, token.strip()) if token.strip() else None
    if token.strip() and (by_key is None or not by_key.enabled):
        raise Unauthenticated("unauthenticated", "the API key is not valid")
    if by_cert is not None and by_key is not None and by_cert.id != by_key.id:
        raise Unauthenticated(
            "credentials-disagree",
            "the client certificate and the API key name different organisations",
        )
    org = by_cert or by_key
    assert org is not None
    structlog.contextvars.bind_contextvars(org=org.id)
    request.scope[_ORG_KEY] = org
    return org


def require_role(org: Organisation, *roles: Role) -> Organisation:
    if org.role not in roles:
        raise Forbidden("forbidden", "this organisation's role may not use this endpoint")
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
    error: GatewayError, request: Request, *, headers: dict[str, str] | None = None
) -> Response:
    metrics.observe_problem(error)
    headers = dict(headers or {})
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(error.retry_after)
    return Response(
        orjson.dumps(problem_for(error, instance=request.url.path)),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def framework_problem(status: int) -> GatewayError:
    """The problem for an HTTP error Starlette or FastAPI raise themselves: no route (404),
    a method the route does not take (405, answered with Starlette's `Allow` header), a body
    that cannot be read as text (400; FastAPI's JSON errors are validation errors)."""
    if status == 400:
        return BadRequest("malformed-json", "the request body is not valid JSON")
    if status == 404:
        return NotFound("not-found", "no such resource")
    if status == 405:
        return MethodNotAllowed("method-not-allowed", "the resource does not take this method")
    # Nothing else is raised by the framework for this app; should a new version start to,
    # the answer still has a title and a code of its own, and the log says so.
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    log.warning("http.unmapped_framework_error", status=status)
    error_class = type("FrameworkError", (GatewayError,), {"status": status, "title": phrase})
    error: GatewayError = error_class(phrase.lower().replace(" ", "-"), phrase.lower())
    return error


def _validation_problem(exc: RequestValidationError) -> GatewayError:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return BadRequest("malformed-json", "the request body is not valid JSON")
    if errors and all(tuple(e.get("loc", ()))[:1] == ("path",) for e in errors):
        # An id in the path that does not have the form of one the gateway hands out.
        return NotFound("not-found", "no such resource")
    codes = [FIELD_CODES[e["type"]] for e in errors if e.get("type") in FIELD_CODES]
    # Only location, type and our own message: never the rejected input (it may be a CPR).
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "type": e.get("type"), "msg": e.get("msg")}
        for e in errors
    ]
    code = codes[0] if codes else "invalid-request"
    return Unprocessable(code, "the request does not match the schema", extra={"errors": details})


def install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return problem_response(exc, request)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(_validation_problem(exc), request)

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
            GatewayError("internal-error", "an internal error occurred"), request
        )

    async def on_database_busy(request: Request, _exc: Exception) -> Response:
        """The pool's checkout timed out: every connection busy for a while."""
        log.warning("http.database_busy")
        return problem_response(
            Unavailable(
                "database-busy",
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
                "database-unavailable",
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
        err = PayloadTooLarge("payload-too-large", f"the body exceeds {self.max_bytes} bytes")
        metrics.observe_problem(err)
        body = orjson.dumps(problem_for(err, instance=scope.get("path")))
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
