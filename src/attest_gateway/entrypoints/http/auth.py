"""Who is calling: the API key or the client certificate authenticates an organisation, its
role is checked (before the body is read, for the partner routers), and the request's
container is found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import Depends, Header, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import Field

from attest_gateway.core.actors import AUTHORISATION_ID_PATTERN, PERSON_ID_PATTERN, Actor
from attest_gateway.core.bounds import REFERENCE
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import (
    ErrorCode,
    InvalidInput,
    NotAuthenticated,
    NotPermitted,
)
from attest_gateway.core.limits import AuthLockout, EndpointClass, RequestLimits
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

_ORG_KEY = "attest_gateway.org"  # the request's authenticated organisation, in its ASGI scope
UNKNOWN_ADDRESS = "unknown"


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def client_address(request: Request) -> str:
    """The client's IP address: the TCP peer, or what a trusted proxy says it is
    (`ForwardedForMiddleware`, the PROXY protocol listener)."""
    return request.client.host if request.client is not None else UNKNOWN_ADDRESS


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
    while the handler runs; then a query parameter the route does not declare is refused (422
    `unknown-parameter`), and a body of a media type not in `media_types` (415
    `unsupported-media-type`; request_checks.py).

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

            async def authenticate_then_handle(request: Request) -> Response:
                org = await authenticated(request)
                if roles:
                    require_role(org, *roles)
                limits: RequestLimits | None = getattr(request.app.state, "request_limits", None)
                with limits.admit(org.id, endpoint) if limits else contextlib.nullcontext():
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
    "the acting health professional's autorisations-ID (five characters), with "
    "Attest-Actor; a reply's author must carry the same one"
)


async def acting_person(
    request: Request,
    org: Annotated[Organisation, Depends(authenticated)],
    attest_actor: Annotated[
        Annotated[str, Field(pattern=PERSON_ID_PATTERN), REFERENCE] | None,
        Header(description=ACTOR_DESCRIPTION, examples=["sagsbeh-4711"]),
    ] = None,
    attest_actor_authorisation: Annotated[
        str | None,
        Header(
            description=AUTHORISATION_DESCRIPTION,
            pattern=AUTHORISATION_ID_PATTERN,
            examples=["0C3K7"],
        ),
    ] = None,
) -> Actor | None:
    """The person acting (core/actors.py), from the request's `Attest-Actor` headers."""
    if attest_actor is None:
        if attest_actor_authorisation is not None:
            raise InvalidInput(
                ErrorCode.ACTOR_REQUIRED,
                "Attest-Actor-Authorisation came without Attest-Actor: name the person too",
            )
        if gateway_of(request).settings.require_acting_person:
            raise InvalidInput(
                ErrorCode.ACTOR_REQUIRED,
                "send Attest-Actor: the gateway records which of your people acts",
            )
        return None
    return Actor(attest_actor, attest_actor_authorisation)


#: A route's person acting (None when the caller named nobody and none is required).
ActingPerson = Annotated[Actor | None, Depends(acting_person)]
