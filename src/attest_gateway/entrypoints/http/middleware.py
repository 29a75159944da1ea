"""The ASGI middleware: the body limit, the request log with its correlation id, the
`Date` header from the gateway's clock, the client's address behind trusted proxies, and the
security headers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
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


def http_date(scope: Scope) -> str | None:
    """The `Date` of an answer now, from the running gateway's clock (None before it runs)."""
    gw: Gateway | None = getattr(scope["app"].state, "gateway", None)
    if gw is None:
        return None
    return format_datetime(gw.clock.now().astimezone(dt.UTC), usegmt=True)


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
                date = http_date(scope)
                if date is not None:
                    MutableHeaders(scope=message)["Date"] = date
            await send(message)

        await self.app(scope, receive, send_dated)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address of an `X-Forwarded-For` item (`[v6]` brackets allowed), or None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(host: str, proxies: tuple[Network, ...]) -> bool:
    """Whether `host` (a peer's address) is one of the trusted proxies."""
    address = _address(host)
    return address is not None and any(address in network for network in proxies)


def forwarded_client(header: str, proxies: tuple[Network, ...]) -> str | None:
    """The client an `X-Forwarded-For` names, read from the right (the hop nearest to us):
    the first address that is not a trusted proxy. An item that is not an IP address ends
    the walk (anything left of it is the client's own say), leaving the last address read;
    None when there is none."""
    client: str | None = None
    for item in reversed(header.split(",")):
        address = _address(item)
        if address is None:
            break
        client = str(address)
        if not any(address in network for network in proxies):
            break
    return client


class ForwardedForMiddleware:
    """The client's address behind trusted proxies (TRUSTED_PROXIES): when the TCP peer is
    one of them, its `X-Forwarded-For` names the client (`scope["client"]`, which the audit
    log, the lockout and the request log read); from any other peer the header is ignored.
    uvicorn's own handling (which trusts loopback by default) is off (`serve`)."""

    def __init__(self, app: ASGIApp, proxies: tuple[Network, ...]) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and is_trusted(client[0], self.proxies):
            values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
            forwarded = forwarded_client(",".join(values), self.proxies) if values else None
            if forwarded is not None:
                scope["client"] = (forwarded, 0)
        await self.app(scope, receive, send)


#: The dashboard's page and its assets (routes/ministry.py): its own script and stylesheet,
#: and calls to the API of the same origin; no inline script or style, no frames.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: Everything else answers data, never a page to render.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_DASHBOARD_PATHS = ("/ministry/", "/ministry/static/")
_DOCUMENTATION_PATHS = ("/docs", "/redoc")  # FastAPI's pages load their scripts from a CDN


def security_headers(path: str) -> list[tuple[str, str]]:
    """The security headers of an answer to `path` (see `SecurityHeadersMiddleware`)."""
    if path == _DASHBOARD_PATHS[0] or path.startswith(_DASHBOARD_PATHS[1]):
        csp: str | None = DASHBOARD_CSP
    elif path.startswith(_DOCUMENTATION_PATHS):
        csp = None
    else:
        csp = API_CSP
    headers = [
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
    ]
    return [*headers, ("Content-Security-Policy", csp)] if csp is not None else headers


class SecurityHeadersMiddleware:
    """On every answer: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`
    and a Content-Security-Policy with `frame-ancestors 'none'` (plus `X-Frame-Options: DENY`
    for older browsers): the dashboard's (`DASHBOARD_CSP`) on its page and assets, the API's
    (`API_CSP`) elsewhere; FastAPI's documentation pages keep their own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = security_headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in added:
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
