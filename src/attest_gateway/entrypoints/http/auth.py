"""Who is calling: the API key or the client certificate authenticates an organisation, its
role is checked (before the body is read, for the partner routers), and the request's
container is found.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable, Collection, Coroutine
from typing import Annotated, Any, NoReturn

import structlog
from fastapi import Depends, Header, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import Field
from starlette.datastructures import Headers
from starlette.types import Scope

from attest_gateway.config import Settings
from attest_gateway.core.actors import AUTHORISATION_ID_PATTERN, PERSON_ID_PATTERN, Actor
from attest_gateway.core.bounds import REFERENCE, Checked
from attest_gateway.core.directory import Organisation, Role, hash_api_key
from attest_gateway.core.errors import (
    ErrorCode,
    InvalidInput,
    NotAuthenticated,
    NotPermitted,
    RateLimited,
)
from attest_gateway.core.limits import (
    Admission,
    AuthLockout,
    EndpointClass,
    LimitedTargets,
    RequestLimits,
)
from attest_gateway.entrypoints.http import mtls
from attest_gateway.entrypoints.http.request_checks import (
    JSON,
    declared_query_parameters,
    refuse_other_media_types,
    refuse_unknown_query_parameters,
)
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.engine import autocommit

_SPREAD = random.Random()  # noqa: S311 (spreads refusals over time; nothing secret)
_ORG_KEY = "attest_gateway.org"  # the request's authenticated organisation, in its ASGI scope
_ADMISSION_KEY = "attest_gateway.admission"  # its place in the organisation's limits
UNKNOWN_ADDRESS = "unknown"
ITEMS_PARAMETER = "limit"  # the query parameter of a read that hands out a number of items
MAX_ITEMS_ASKED = 500  # the most any route hands out at once (its `le`)


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def client_address(request: Request) -> str:
    """The client's IP address: the TCP peer, or what a trusted proxy says it is
    (`ForwardedForMiddleware`, the PROXY protocol listener)."""
    return request.client.host if request.client is not None else UNKNOWN_ADDRESS


def credential_of(request: Request) -> str | None:
    """A digest of the credential the request presents (its API key, else its client
    certificate), never the secret itself; None without one."""
    return credential_in(request.scope)


def credential_in(scope: Scope) -> str | None:
    """`credential_of` a request's ASGI scope."""
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "key:" + hash_api_key(token.strip())
    pem = mtls.client_certificate(scope)
    return "cert:" + mtls.fingerprint_of(pem) if pem is not None else None


def handed_out(request: Request, items: int) -> None:
    """The answer to `request` hands out `items` (a mailbox or inbox read, a list): its
    organisation's read budget is charged for them (`Admission.handed_out`)."""
    admission: Admission | None = request.scope.get(_ADMISSION_KEY)
    if admission is not None:
        admission.handed_out(items)


async def refuse_after_a_pause(
    request: Request, over: RateLimited, credential: str | None = None
) -> NoReturn:
    """Raise `over` after about `RATE_LIMIT_REFUSAL_DELAY_SECONDS`, longer when many refusals of
    the same `credential` wait at once (`RequestLimits.pausing`; at most its Retry-After, which is
    shortened by the pause): a client that sends again as soon as it is refused, whatever
    Retry-After says, slows down to one request a pause per connection, and so does the
    gateway's work for its refusals. A client that honours Retry-After waits no longer."""
    settings: Settings | None = getattr(request.app.state, "settings", None)
    pause = settings.rate_limit_refusal_delay_seconds if settings is not None else 0.0
    limits: RequestLimits | None = getattr(request.app.state, "request_limits", None)
    raise await wait_before_refusing(limits, credential, over, pause) from None


async def wait_before_refusing(
    limits: RequestLimits | None, credential: str | None, over: RateLimited, pause: float
) -> RateLimited:
    """Wait out the pause before answering `over` (`paused`, stretched by the refusals of
    `credential` waiting at once: `RequestLimits.pausing`); the refusal to answer then. Both
    the route's refusals and the early ones (early_refusal.py) wait here."""
    with (
        limits.pausing(credential)
        if limits is not None and credential is not None
        else contextlib.nullcontext(1.0)
    ) as stretched:
        delay, refusal = paused(over, pause * stretched)
        if delay > 0:
            await asyncio.sleep(delay)
    return refusal


def paused(over: RateLimited, pause: float) -> tuple[float, RateLimited]:
    """How long to wait before answering `over`, and the refusal to answer then, its
    Retry-After shortened by the wait. The wait is drawn between half of `pause` and one and
    a half times it (`pause` on average; at most the Retry-After): a flood's connections,
    refused together, would otherwise all come back together, and their next refusals be
    made in one burst that holds up every other request in the process for its length."""
    delay = min(pause * _SPREAD.uniform(0.5, 1.5), over.retry_after)
    if delay <= 0:
        return 0.0, over
    shortened = max(1, math.ceil(over.retry_after - delay))
    return delay, RateLimited(over.code, over.detail, retry_after=shortened)


def default_items(route: APIRoute) -> int | None:
    """The `limit` a route hands out at most when none is asked for; None: it takes none."""
    for param in route.dependant.query_params:
        if param.alias == ITEMS_PARAMETER:
            default = param.field_info.default
            return default if isinstance(default, int) else MAX_ITEMS_ASKED
    return None


def asked_items(request: Request, default: int | None) -> int:
    """The items the request asks for at most (its `?limit=`, else the route's default;
    within 1–MAX_ITEMS_ASKED: the route refuses others); 0 for a route without a limit."""
    if default is None:
        return 0
    raw = request.query_params.get(ITEMS_PARAMETER)
    asked = int(raw) if raw is not None and raw.isdecimal() and len(raw) < 6 else default
    return min(max(asked, 1), MAX_ITEMS_ASKED)


def endpoint_class(path: str, methods: Collection[str]) -> EndpointClass:
    """A route's class for its limits: the ministry's figures, else reads (GET) or writes."""
    if path.startswith("/ministry/"):
        return EndpointClass.REPORTS
    if set(methods) <= {"GET", "HEAD"}:
        return EndpointClass.READS
    return EndpointClass.WRITES


async def authenticated(request: Request) -> Organisation:
    """The organisation behind the request: its pinned TLS client certificate (mutual TLS)
    or its `Authorization: Bearer <api key>`. When both are sent they must name the same
    organisation; an unknown or revoked certificate is refused, never silently ignored."""
    known: Organisation | None = request.scope.get(_ORG_KEY)
    if known is not None:  # already authenticated before the body was read
        return known
    lockout: AuthLockout | None = getattr(request.app.state, "auth_lockout", None)
    address = client_address(request)
    if lockout is not None:
        lockout.check(address)  # a locked-out address: 429 before its credential is looked at
    pem = mtls.client_certificate(request.scope)
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if pem is None and (scheme.lower() != "bearer" or not token.strip()):
        raise NotAuthenticated(
            ErrorCode.UNAUTHENTICATED,
            "present a client certificate or send Authorization: Bearer <api key>",
        )
    try:
        org = await _organisation_of(request, pem, token.strip())
    except NotAuthenticated:
        if lockout is not None:  # a credential was presented and refused
            lockout.failed(address)
        raise
    structlog.contextvars.bind_contextvars(org=org.id)
    request.scope[_ORG_KEY] = org
    return org


async def _organisation_of(request: Request, pem: str | None, token: str) -> Organisation:
    """The organisation the certificate and the API key name, or `NotAuthenticated`."""
    gw = gateway_of(request)
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
        by_key = await directory.org_by_api_key(conn, token) if token else None
    if token and (by_key is None or not by_key.enabled):
        raise NotAuthenticated(ErrorCode.UNAUTHENTICATED, "the API key is not valid")
    if by_cert is not None and by_key is not None and by_cert.id != by_key.id:
        raise NotAuthenticated(
            ErrorCode.CREDENTIALS_DISAGREE,
            "the client certificate and the API key name different organisations",
        )
    org = by_cert or by_key
    assert org is not None
    return org


def require_role(org: Organisation, *roles: Role) -> Organisation:
    if org.role not in roles:
        raise NotPermitted(
            ErrorCode.FORBIDDEN, "this organisation's role may not use this endpoint"
        )
    return org


def authenticated_first(*roles: Role, media_types: Collection[str] = (JSON,)) -> type[APIRoute]:
    """The route class of a partner router (`APIRouter(route_class=…)`): the caller is
    authenticated, and its role checked when `roles` are given, before anything of the request
    is looked at; then the organisation's limits for the route's endpoint class are applied
    (429 `rate-limited` or `too-many-concurrent-requests`, core/limits.py) and a place held
    while the handler runs (a read is charged what it asks for, then what its answer hands
    out: `handed_out`); a credential that authenticated recently is refused over its
    organisation's limits before it is looked up again (`RequestLimits.refuse_early`), and
    every such refusal is answered after a pause (`refuse_after_a_pause`); then a query
    parameter the route does not declare is refused (422 `unknown-parameter`), and a body of
    a media type not in `media_types` (415 `unsupported-media-type`; request_checks.py).

    FastAPI reads and parses a declared body before it solves the route's dependencies, so
    a malformed body would otherwise be answered (400 `malformed-json`) before the caller
    is known: anyone could probe how the gateway reads its input. The route's own
    dependencies then find the organisation in the request scope and do not look it up
    again."""

    class AuthenticatedFirstRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            declared = declared_query_parameters(self)
            takes_body = self.body_field is not None
            endpoint = endpoint_class(self.path, self.methods or {"GET"})
            items = default_items(self)

            async def authenticate_then_handle(request: Request) -> Response:
                limits: RequestLimits | None = getattr(request.app.state, "request_limits", None)
                targets: LimitedTargets | None = getattr(request.app.state, "limited_targets", None)
                if limits is not None and targets is not None:  # for early_refusal.py
                    scope = request.scope
                    targets.learn(scope["method"], scope["path"], endpoint, scope.get("route"))
                credential = credential_of(request) if limits is not None else None
                if limits is not None and credential is not None:
                    try:
                        limits.refuse_early(credential, endpoint)  # before the store is asked
                    except RateLimited as over:
                        await refuse_after_a_pause(request, over, credential)
                try:
                    org = await authenticated(request)
                except NotAuthenticated:
                    if limits is not None and credential is not None:
                        limits.forget(credential)
                    raise
                if limits is not None and credential is not None:
                    limits.remember(credential, org.id)
                if roles:
                    require_role(org, *roles)
                if limits is None:
                    return await handle(request)
                with contextlib.ExitStack() as held:
                    try:
                        admission = held.enter_context(
                            limits.admit(org.id, endpoint, asked_items(request, items))
                        )
                    except RateLimited as over:
                        await refuse_after_a_pause(request, over, credential)
                    request.scope[_ADMISSION_KEY] = admission
                    return await handle(request)

            async def handle(request: Request) -> Response:
                refuse_unknown_query_parameters(request, declared)
                if takes_body:
                    refuse_other_media_types(request, media_types)
                return await handler(request)

            return authenticate_then_handle

    return AuthenticatedFirstRoute


ACTOR_DESCRIPTION = (
    "the person acting for the calling organisation, as its system names them (a "
    "caseworker's or a clinician's user id; never a CPR number): recorded in the audit log "
    "with the request, reply or read. Taken on the strength of the organisation's credentials; "
    "required when the gateway sets REQUIRE_ACTING_PERSON"
)
AUTHORISATION_DESCRIPTION = (
    "the acting health professional's autorisations-ID (five characters); a reply's author "
    "must carry the same one. Without Attest-Actor it names the person on its own"
)


def _or_empty(pattern: str) -> str:
    """`pattern` (anchored) or the empty string: an empty header is taken as no header, as
    clients that always send the header write "nobody named"."""
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})?$"


#: The person's id, or empty; with REFERENCE's check (no CPR number), in the OpenAPI as this.
PERSON_HEADER = _or_empty(PERSON_ID_PATTERN)


async def acting_person(
    request: Request,
    org: Annotated[Organisation, Depends(authenticated)],
    attest_actor: Annotated[
        Annotated[str, Field(pattern=PERSON_HEADER), Checked(REFERENCE.check, PERSON_HEADER)]
        | None,
        Header(description=ACTOR_DESCRIPTION, examples=["sagsbeh-4711"]),
    ] = None,
    attest_actor_authorisation: Annotated[
        str | None,
        Header(
            description=AUTHORISATION_DESCRIPTION,
            pattern=_or_empty(AUTHORISATION_ID_PATTERN),
            examples=["0C3K7"],
        ),
    ] = None,
) -> Actor | None:
    """The person acting (core/actors.py), from the request's `Attest-Actor` headers."""
    attest_actor, attest_actor_authorisation = (
        attest_actor or None,
        attest_actor_authorisation or None,
    )
    if attest_actor is None:
        if attest_actor_authorisation is not None:
            # An autorisations-ID names one health professional in the Danish register: it
            # is the person's id too (the headers are independent in the OpenAPI, as here).
            return Actor(attest_actor_authorisation, attest_actor_authorisation)
        if gateway_of(request).settings.require_acting_person:
            raise InvalidInput(
                ErrorCode.ACTOR_REQUIRED,
                "send Attest-Actor: the gateway records which of your people acts",
            )
        return None
    return Actor(attest_actor, attest_actor_authorisation)


#: A route's person acting (None when the caller named nobody and none is required).
ActingPerson = Annotated[Actor | None, Depends(acting_person)]
