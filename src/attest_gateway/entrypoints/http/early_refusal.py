"""A flood refused at the door: a request its organisation's limits would refuse anyway is
answered before the rest of the app's work.

A limited route (`auth.authenticated_first`) refuses a request over its organisation's limit
before it looks at anything else (`RequestLimits.refuse_early`). But by then the request has
gone through the middleware, the router's matching and the framework's wrappers, and its
answer goes back through all of them: most of the work a refused request costs the gateway.
Under a flood of refused requests that work is taken from other organisations' requests.

So the limited routes remember the targets (method and path) they answer, with their endpoint
class (`LimitedTargets.learn`), and this middleware, outside the others, asks the same
question for a request to a target already learned: when its credential authenticated
recently and its organisation is over the limit, it answers here. The answer is the one the
route gives: the 429 problem+json after the same pause (`RATE_LIMIT_REFUSAL_DELAY_SECONDS`,
stretched when many refusals of the credential wait at once: `RequestLimits.pausing`), with
the headers the other middleware adds (`X-Correlation-Id`, `Date`, the security headers),
counted in the same metrics and logged as one `http.request` line. Any other request (a
target not learned yet, no credential, an organisation within its limits) goes on as before,
and is refused by its route if it must be.
"""

from __future__ import annotations

import time

import orjson
import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from attest_gateway.core.errors import RateLimited
from attest_gateway.core.limits import LimitedTargets, RequestLimits
from attest_gateway.entrypoints.http.auth import credential_in, wait_before_refusing
from attest_gateway.entrypoints.http.middleware import (
    correlation_id,
    http_date,
    security_headers,
)
from attest_gateway.entrypoints.http.problems import PROBLEM_JSON, problem_of
from attest_gateway.observability import metrics

log = structlog.get_logger(__name__)


class EarlyRefusalMiddleware:
    """Refuse a request over its organisation's limits before the rest of the stack (pure
    ASGI; see the module's docstring)."""

    def __init__(
        self, app: ASGIApp, limits: RequestLimits, targets: LimitedTargets, pause: float
    ) -> None:
        self.app = app
        self.limits = limits
        self.targets = targets
        self.pause = pause

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = self.targets.get(scope["method"], scope["path"])
            credential = credential_in(scope) if target is not None else None
            if target is not None and credential is not None:
                try:
                    self.limits.refuse_early(credential, target.endpoint)
                except RateLimited as over:
                    await self._refuse(scope, send, over, target.route, credential)
                    return
        await self.app(scope, receive, send)

    async def _refuse(
        self, scope: Scope, send: Send, over: RateLimited, route: object, credential: str
    ) -> None:
        started = time.perf_counter()
        request_id = correlation_id(Headers(scope=scope).get("x-correlation-id"))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=request_id)
        refusal = await wait_before_refusing(self.limits, credential, over, self.pause)
        problem = problem_of(refusal)
        metrics.observe_problem(problem.code, problem.status)
        body = orjson.dumps(problem.body(instance=scope["path"]))
        headers = [
            ("content-type", PROBLEM_JSON),
            ("content-length", str(len(body))),
            ("retry-after", str(problem.retry_after)),
            ("x-correlation-id", request_id),
            *security_headers(scope["path"]),
        ]
        date = http_date(scope)
        if date is not None:
            headers.append(("date", date))
        await send(
            {
                "type": "http.response.start",
                "status": problem.status,
                "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - started
        metrics.observe_request(scope["method"], route, problem.status, elapsed)
        log.info(
            "http.request",
            method=scope["method"],
            route=getattr(route, "path", scope["path"]),
            status=problem.status,
            duration_ms=round(elapsed * 1000, 2),
        )
