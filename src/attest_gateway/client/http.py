"""`Client` (blocking) and `AsyncClient` (asyncio): the partner API over httpx, with an API key
or a client certificate (mutual TLS), answers parsed into the wire contracts, errors raised as
`GatewayProblem`. Both build the same calls (`_Calls`); only the sending differs."""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx
import orjson

from attest_gateway.client.envelopes import Envelope, as_envelope, open_envelope
from attest_gateway.client.errors import GatewayProblem
from attest_gateway.contracts.directory import OrganisationKeys
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.jobcenter import AttestRequestAccepted, Inbox
from attest_gateway.contracts.mailbox import Collected, Mailbox, MessageAccepted, ReplyAcknowledged
from attest_gateway.crypto.sealing import OrgKeys

T = TypeVar("T")
MAX_WAIT_SECONDS = 30  # the gateway's limit for `?wait=` (a long-poll)
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    wait: float = 0  # a long-poll: the answer may take this long, on top of the timeout


def _answer(model: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    def parse(response: httpx.Response) -> T:
        return model(orjson.loads(response.content))

    return parse


class _Calls:
    """Each operation as one call: method, path, body and how its answer is read."""

    @staticmethod
    def mailbox(limit: int, wait: float) -> _Call[Mailbox]:
        return _long_poll("/medcom/v1/mailbox", _answer(Mailbox.model_validate), limit, wait)

    @staticmethod
    def collect(message_id: str) -> _Call[Collected]:
        path = f"/medcom/v1/mailbox/{message_id}/collected"
        return _Call("POST", path, _answer(Collected.model_validate))

    @staticmethod
    def submit(bundle: dict[str, Any] | SealedEnvelope) -> _Call[MessageAccepted]:
        if isinstance(bundle, SealedEnvelope):
            content, media = bundle.to_json(), "application/vnd.attest-gateway.envelope+json"
        else:
            content, media = orjson.dumps(bundle), FHIR_JSON
        return _Call(
            "POST",
            "/medcom/v1/messages",
            _answer(MessageAccepted.model_validate),
            headers={"Content-Type": media},
            content=content,
        )

    @staticmethod
    def keys(org_id: str) -> _Call[OrganisationKeys]:
        path = f"/directory/v1/organisations/{org_id}/keys"
        return _Call("GET", path, _answer(OrganisationKeys.model_validate))

    @staticmethod
    def request_attest(
        body: dict[str, Any], idempotency_key: str | None
    ) -> _Call[AttestRequestAccepted]:
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return _Call(
            "POST",
            "/jobcenter/v1/attest-requests",
            _answer(AttestRequestAccepted.model_validate),
            headers=headers,
            content=orjson.dumps(body),
        )

    @staticmethod
    def inbox(limit: int, wait: float) -> _Call[Inbox]:
        return _long_poll("/jobcenter/v1/inbox", _answer(Inbox.model_validate), limit, wait)

    @staticmethod
    def ack(message_id: str) -> _Call[ReplyAcknowledged]:
        path = f"/jobcenter/v1/inbox/{message_id}/ack"
        return _Call("POST", path, _answer(ReplyAcknowledged.model_validate))


def _long_poll(
    path: str, parse: Callable[[httpx.Response], T], limit: int, wait: float
) -> _Call[T]:
    """A read that may wait: `wait` whole seconds, 0 to 30 (the gateway's limit), so a
    caller's mistake is a `ValueError` here rather than a 422 from the gateway."""
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise ValueError(f"wait is 0 to {MAX_WAIT_SECONDS} seconds, not {wait}")
    params: dict[str, Any] = {"limit": limit} | ({"wait": math.ceil(wait)} if wait else {})
    return _Call("GET", path, parse, params, wait=wait)


def _timeout(client: httpx.Client | httpx.AsyncClient, call: _Call[Any]) -> httpx.Timeout:
    """The client's timeout, with the read timeout stretched by the time a long-poll may wait."""
    base = client.timeout
    if not call.wait or base.read is None:
        return base
    return httpx.Timeout(
        connect=base.connect,
        read=base.read + math.ceil(call.wait),
        write=base.write,
        pool=base.pool,
    )


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    raise GatewayProblem(
        response.status_code,
        str(body.get("code", "unknown")),
        str(body.get("detail", response.reason_phrase)),
        retryable=bool(body.get("retryable", response.status_code >= 500)),
        body=body,
    )


def _options(
    base_url: str,
    api_key: str | None,
    cert: tuple[str | Path, str | Path] | None,
    ca: str | Path | None,
    timeout: float,
    actor: str | None = None,
    actor_authorisation: str | None = None,
) -> dict[str, Any]:
    if api_key is None and cert is None:
        raise ValueError("give an API key, a client certificate (cert=(certfile, keyfile)) or both")
    if actor_authorisation is not None and actor is None:
        raise ValueError("an actor_authorisation belongs to an actor: give actor too")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
    if actor is not None:  # the person acting, recorded in the gateway's audit log
        headers["Attest-Actor"] = actor
    if actor_authorisation is not None:
        headers["Attest-Actor-Authorisation"] = actor_authorisation
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return {"base_url": base_url, "headers": headers, "verify": context, "timeout": timeout}


class Client:
    """The partner API, blocking. `Client(base_url, api_key=…)` or, by mutual TLS,
    `Client(base_url, cert=("org.crt", "org.key"), ca="ca.crt")`; `ca` is the CA the
    gateway's certificate is checked against (default: the system's). `actor` names the
    person acting at the organisation (a caseworker's or clinician's user id, sent as
    `Attest-Actor` with every call), `actor_authorisation` a clinician's autorisations-ID.
    Use it as a context manager, or call `close()`. `transport` replaces the network
    (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        cert: tuple[str | Path, str | Path] | None = None,
        ca: str | Path | None = None,
        timeout: float = 30.0,
        gateway_org_id: str = "gateway",
        transport: httpx.BaseTransport | None = None,
        actor: str | None = None,
        actor_authorisation: str | None = None,
    ) -> None:
        self.gateway_org_id = gateway_org_id
        self._http = httpx.Client(
            **_options(base_url, api_key, cert, ca, timeout, actor, actor_authorisation),
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        response = self._http.request(
            call.method,
            call.path,
            params=call.params,
            headers=call.headers,
            content=call.content,
            timeout=_timeout(self._http, call),
        )
        return call.parse(_checked(response))

    # the health side (psychiatry, GP, hospital, specialist)
    def mailbox(self, limit: int = 100, *, wait: float = 0) -> Mailbox:
        """The sealed envelopes waiting for this organisation, oldest first. With `wait` (up
        to 30 s) an empty mailbox is a long-poll: the answer comes as soon as a message
        arrives, or empty when the time is up."""
        return self._send(_Calls.mailbox(limit, wait))

    def collect(self, message_id: str) -> Collected:
        """Take a message out of the mailbox's waiting list (an acknowledgement does too)."""
        return self._send(_Calls.collect(message_id))

    def submit(self, bundle: dict[str, Any] | SealedEnvelope) -> MessageAccepted:
        """Send an acknowledgement or attest reply: a FHIR Bundle, or a sealed envelope."""
        return self._send(_Calls.submit(bundle))

    def organisation_keys(self, org_id: str) -> OrganisationKeys:
        """An organisation's published keys (HPKE and signing), from the directory."""
        return self._send(_Calls.keys(org_id))

    def open(
        self,
        envelope: Envelope,
        keys: OrgKeys,
        *,
        verify: bool = True,
    ) -> dict[str, Any]:
        """The FHIR Bundle in an envelope (or mailbox item), its signature checked first
        against the signer's keys from the directory (`verify=False`: not checked)."""
        sealed = as_envelope(envelope)
        signer = self.organisation_keys(sealed.header.signer) if verify else None
        return open_envelope(sealed, keys, signer, gateway_org_id=self.gateway_org_id)

    # the job centre
    def request_attest(
        self, body: dict[str, Any], *, idempotency_key: str | None = None
    ) -> AttestRequestAccepted:
        """Ask for an attest (`POST /jobcenter/v1/attest-requests`, job-centre JSON)."""
        return self._send(_Calls.request_attest(body, idempotency_key))

    def inbox(self, limit: int = 50, *, wait: float = 0) -> Inbox:
        """The replies waiting for the job centre, opened and translated to JSON; `wait` as
        for `mailbox`."""
        return self._send(_Calls.inbox(limit, wait))

    def ack(self, message_id: str) -> ReplyAcknowledged:
        """Acknowledge a reply of the inbox (the gateway answers the clinic in MedCom)."""
        return self._send(_Calls.ack(message_id))


class AsyncClient:
    """`Client`'s operations for asyncio: the same arguments, each method awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        cert: tuple[str | Path, str | Path] | None = None,
        ca: str | Path | None = None,
        timeout: float = 30.0,
        gateway_org_id: str = "gateway",
        transport: httpx.AsyncBaseTransport | None = None,
        actor: str | None = None,
        actor_authorisation: str | None = None,
    ) -> None:
        self.gateway_org_id = gateway_org_id
        self._http = httpx.AsyncClient(
            **_options(base_url, api_key, cert, ca, timeout, actor, actor_authorisation),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        response = await self._http.request(
            call.method,
            call.path,
            params=call.params,
            headers=call.headers,
            content=call.content,
            timeout=_timeout(self._http, call),
        )
        return call.parse(_checked(response))

    async def mailbox(self, limit: int = 100, *, wait: float = 0) -> Mailbox:
        return await self._send(_Calls.mailbox(limit, wait))

    async def collect(self, message_id: str) -> Collected:
        return await self._send(_Calls.collect(message_id))

    async def submit(self, bundle: dict[str, Any] | SealedEnvelope) -> MessageAccepted:
        return await self._send(_Calls.submit(bundle))

    async def organisation_keys(self, org_id: str) -> OrganisationKeys:
        return await self._send(_Calls.keys(org_id))

    async def open(
        self,
        envelope: Envelope,
        keys: OrgKeys,
        *,
        verify: bool = True,
    ) -> dict[str, Any]:
        sealed = as_envelope(envelope)
        signer = await self.organisation_keys(sealed.header.signer) if verify else None
        return open_envelope(sealed, keys, signer, gateway_org_id=self.gateway_org_id)

    async def request_attest(
        self, body: dict[str, Any], *, idempotency_key: str | None = None
    ) -> AttestRequestAccepted:
        return await self._send(_Calls.request_attest(body, idempotency_key))

    async def inbox(self, limit: int = 50, *, wait: float = 0) -> Inbox:
        return await self._send(_Calls.inbox(limit, wait))

    async def ack(self, message_id: str) -> ReplyAcknowledged:
        return await self._send(_Calls.ack(message_id))
