"""The webhook use cases' ports: the endpoints and deliveries in the store, and the HTTP
client that posts a delivery.

    WebhookStore ─ endpoints (add, of an organisation, remove, rotate the secret),
                   deliveries (add once per id, log, due, claim, attempt, redeliver)
    Poster ─ post(url, body, headers) → PostResult (status code, or the gateway's error word)

infra/db/webhooks.py implements the store, infra/webhooks/client.py the poster;
tests/support/fakes.py fakes both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from attest_gateway.contracts.webhooks import DeliveryStatus, WebhookEvent


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """An organisation's endpoint. `previous_secret` signs too until `previous_until`."""

    id: str
    org_id: str
    url: str
    events: frozenset[WebhookEvent]
    secret: str
    created_at: dt.datetime
    previous_secret: str | None = None
    previous_until: dt.datetime | None = None
    removed_at: dt.datetime | None = None

    def signing_secrets(self, now: dt.datetime) -> list[str]:
        """The secrets that sign a delivery now: the current one, and the previous one during
        a rotation's overlap."""
        found = [self.secret]
        if self.previous_secret and self.previous_until and now < self.previous_until:
            found.append(self.previous_secret)
        return found


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One event for one endpoint; its id is the `webhook-id`, its payload the exact body
    sent on every attempt."""

    id: str
    endpoint_id: str
    org_id: str
    event_type: WebhookEvent
    conversation_id: str | None
    payload: bytes
    created_at: dt.datetime
    give_up_at: dt.datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    last_attempt_at: dt.datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to, as the store records it."""

    at: dt.datetime
    status: DeliveryStatus  # delivered; pending (tried again at next_attempt_at); failed
    status_code: int | None
    error: str | None
    next_attempt_at: dt.datetime | None


class WebhookStore(Protocol):
    async def add_endpoint(self, endpoint: EndpointRecord) -> None: ...

    async def endpoint(self, endpoint_id: str) -> EndpointRecord | None:
        """The endpoint unless removed."""
        ...

    async def endpoints_of(self, org_ids: Iterable[str]) -> list[EndpointRecord]:
        """The endpoints (not removed) of these organisations, oldest first."""
        ...

    async def remove_endpoint(self, endpoint_id: str, at: dt.datetime) -> bool:
        """Remove it and fail its pending deliveries; whether it was there."""
        ...

    async def rotate_secret(
        self, endpoint_id: str, secret: str, previous_until: dt.datetime
    ) -> bool:
        """The new secret signs from now on, the current one until `previous_until`."""
        ...

    async def add_deliveries(self, deliveries: Sequence[DeliveryRecord]) -> set[str]:
        """Add the deliveries whose ids are new (the same event again adds nothing), in one
        transaction; the ids of those added."""
        ...

    async def delivery(self, delivery_id: str) -> DeliveryRecord | None: ...

    async def deliveries_of(
        self, org_id: str, *, status: DeliveryStatus | None, limit: int
    ) -> list[DeliveryRecord]:
        """The organisation's deliveries, newest first."""
        ...

    async def due(self, now: dt.datetime, limit: int) -> list[DeliveryRecord]:
        """Pending deliveries whose next attempt is due, oldest first."""
        ...

    async def claim(self, delivery: DeliveryRecord, until: dt.datetime) -> bool:
        """Take a due delivery for one attempt (its next attempt moves to `until`, so no other
        process takes it meanwhile); False when another process took it first."""
        ...

    async def record_attempt(self, delivery_id: str, attempt: Attempt) -> None: ...

    async def redeliver(self, delivery_id: str, now: dt.datetime, give_up_at: dt.datetime) -> bool:
        """Queue a delivery again (pending, due now); whether it exists."""
        ...


@dataclass(frozen=True, slots=True)
class PostResult:
    """An attempt's outcome: the status code when the endpoint answered, else a short word
    of the gateway's own (`timeout`, `connect-failed`, `blocked-address`, …). No body."""

    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Poster(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult: ...
