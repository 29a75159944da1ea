"""The ASGI middleware: the body limit, the request log with its correlation id, and the
`Date` header from the gateway's clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import uuid
from email.utils import format_datetime
from typing import Any

import orjson
import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attest_gateway.core.errors import (
    ErrorCode,
    Malformed,
)
from attest_gateway.entrypoints.http.problems import (
    PROBLEM_JSON,
    problem_of,
)
from attest_gateway.infra.container import Gateway
from attest_gateway.observability import metrics

log = structlog.get_logger(__name__)


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
