"""The exception handlers: any gateway error, validation error or framework error becomes
RFC 9457 problem+json through the one table in problems.py; an unexpected exception becomes
a 500 that names nothing of the input.
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException

from attest_gateway.core.errors import (
    ErrorCode,
    GatewayError,
    Unavailable,
)
from attest_gateway.entrypoints.http.problems import (
    PROBLEM_JSON,
    Problem,
    framework_problem,
    problem_of,
    validation_problem,
)
from attest_gateway.observability import metrics

log = structlog.get_logger(__name__)


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


def allowed_methods(request: Request) -> str | None:
    """The methods of the path the request reached, over all its routes: Starlette's 405
    names only the first route's, so a path with a GET and a POST route would say `POST`
    alone. The path is the first route's that matches (the one Starlette refused the method
    for); routes of another template that happen to match too (`/cases/{case_id}` for
    `/cases/close`) are not its methods."""
    path = request.scope["path"]
    template: str | None = None
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        pattern = getattr(route, "path_regex", None)
        if pattern is None or not pattern.match(path):
            continue
        template = template or route.path_format
        if route.path_format == template:
            methods |= set(route.methods or ())
    return ", ".join(sorted(methods)) if methods else None


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
        if exc.status_code == 405:
            allow = allowed_methods(request) or allow
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
