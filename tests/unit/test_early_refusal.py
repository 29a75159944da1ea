"""The early refusal (entrypoints/http/early_refusal.py): a request to a target a limited
route has answered, with a credential that authenticated recently, whose organisation is over
its limit, is answered 429 by the middleware itself, with the route's answer and headers; the
app behind it is never called. Anything else reaches the app. And the pause before a refusal
is spread, so that a flood's connections do not come back in step, and stretched when many
refusals of one credential wait at once."""

from __future__ import annotations

import contextlib
import types
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from attest_gateway.core.directory import hash_api_key
from attest_gateway.core.errors import ErrorCode, RateLimited
from attest_gateway.core.limits import (
    CROWD_FROM,
    MAX_REMEMBERED_TARGETS,
    MAX_STRETCH,
    EndpointClass,
    Limit,
    LimitedTargets,
    RequestLimits,
    stretch,
)
from attest_gateway.entrypoints.http.auth import paused
from attest_gateway.entrypoints.http.early_refusal import EarlyRefusalMiddleware
from attest_gateway.entrypoints.http.middleware import API_CSP

READS = EndpointClass.READS
KEY = "agw_psyk_secret"
MAILBOX = "/medcom/v1/mailbox"


class App:
    """The rest of the stack: counts what reaches it, answers 200."""

    def __init__(self) -> None:
        self.calls = 0
        self.state = types.SimpleNamespace()  # no running gateway: no Date

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _setup(tokens: float) -> tuple[App, RequestLimits, LimitedTargets, httpx.AsyncClient]:
    app = App()
    limits = RequestLimits(  # the clock frozen: no token comes back
        {READS: Limit(1.0, tokens, at_once=8, items_per_token=1)}, lambda: 0.0
    )
    targets = LimitedTargets()
    middleware = EarlyRefusalMiddleware(app, limits, targets, pause=0.0)

    async def with_app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app  # as Starlette sets it
        await middleware(scope, receive, send)

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=with_app), base_url="http://gw")
    return app, limits, targets, client


def _empty(limits: RequestLimits, org: str) -> None:
    with limits.admit(org, READS) as admission:
        admission.handed_out(5)  # more than the bucket held: the organisation is in debt


async def test_a_learned_target_over_the_limit_is_answered_without_the_app() -> None:
    app, limits, targets, client = _setup(tokens=2)
    limits.remember("key:" + hash_api_key(KEY), "psyk")
    targets.learn("GET", MAILBOX, READS, types.SimpleNamespace(path=MAILBOX))
    _empty(limits, "psyk")
    async with client:
        answer = await client.get(
            MAILBOX + "?limit=500",
            headers={"Authorization": f"Bearer {KEY}", "X-Correlation-Id": "flood-1"},
        )
    assert app.calls == 0
    assert answer.status_code == 429
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["code"] == "rate-limited"
    assert body["status"] == 429
    assert body["instance"] == MAILBOX
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.headers["x-correlation-id"] == "flood-1"
    assert answer.headers["content-security-policy"] == API_CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert int(answer.headers["content-length"]) == len(answer.content)


@pytest.mark.parametrize("case", ["not learned", "no credential", "not remembered", "within"])
async def test_anything_else_reaches_the_app(case: str) -> None:
    app, limits, targets, client = _setup(tokens=2)
    if case != "not remembered":
        limits.remember("key:" + hash_api_key(KEY), "psyk")
    if case != "not learned":
        targets.learn("GET", MAILBOX, READS, None)
    if case != "within":
        _empty(limits, "psyk")
    headers = {} if case == "no credential" else {"Authorization": f"Bearer {KEY}"}
    async with client:
        answer = await client.get(MAILBOX, headers=headers)
    assert (answer.status_code, app.calls) == (200, 1)


async def test_another_method_or_path_is_not_the_learned_target() -> None:
    app, limits, targets, client = _setup(tokens=2)
    limits.remember("key:" + hash_api_key(KEY), "psyk")
    targets.learn("GET", MAILBOX, READS, None)
    _empty(limits, "psyk")
    async with client:
        for answer in (
            await client.post(MAILBOX, headers={"Authorization": f"Bearer {KEY}"}),
            await client.get("/healthz", headers={"Authorization": f"Bearer {KEY}"}),
        ):
            assert answer.status_code == 200
    assert app.calls == 2


def test_learned_targets_are_bounded_oldest_first() -> None:
    targets = LimitedTargets()
    targets.learn("GET", "/first", READS, None)
    for i in range(MAX_REMEMBERED_TARGETS):
        targets.learn("GET", f"/t/{i}", READS, None)
    assert targets.get("GET", "/first") is None
    assert targets.get("GET", "/t/0") is not None
    targets.learn("GET", "/t/0", READS, None)  # used again: now the newest
    targets.learn("GET", "/one-more", READS, None)
    assert targets.get("GET", "/t/0") is not None
    assert targets.get("GET", "/t/1") is None


@pytest.mark.parametrize("retry_after", [1, 3, 6, 100])
def test_a_refusal_waits_half_to_one_and_a_half_times_the_pause(retry_after: int) -> None:
    over = RateLimited(ErrorCode.RATE_LIMITED, "over", retry_after=retry_after)
    delays = []
    for _ in range(200):
        delay, refusal = paused(over, 2.0)
        assert min(1.0, retry_after) <= delay <= min(3.0, retry_after)
        assert refusal.retry_after is not None
        assert refusal.retry_after >= 1
        # a client that waits what Retry-After says does not come back before its token
        assert delay + refusal.retry_after >= retry_after
        delays.append(delay)
    if retry_after > 1:  # spread: a flood refused together does not come back together
        assert len(set(delays)) > 100


def test_no_pause_answers_at_once() -> None:
    over = RateLimited(ErrorCode.RATE_LIMITED, "over", retry_after=4)
    assert paused(over, 0.0) == (0.0, over)


def test_the_pause_stretches_with_a_credentials_refusals_waiting_at_once() -> None:
    assert [stretch(n) for n in (1, CROWD_FROM, 2 * CROWD_FROM, 1000)] == [1, 1, 2, MAX_STRETCH]
    limits = RequestLimits({READS: Limit(1.0, 1.0, at_once=8)}, lambda: 0.0)
    with contextlib.ExitStack() as held:
        found = [held.enter_context(limits.pausing("key:a")) for _ in range(3 * CROWD_FROM)]
        assert found[CROWD_FROM - 1] == 1  # a client's few connections: the pause as set
        assert found[-1] == 3  # the 24th waiting at once: three times as long
        with limits.pausing("key:b") as other:  # another credential is not crowded
            assert other == 1
    with limits.pausing("key:a") as alone:  # the others have been answered
        assert alone == 1
