"""Webhooks: an organisation's endpoints, the dispatcher that turns stage events into
deliveries, and the sender that posts them.

    stage written with its change (outbox) ─▶ relay ─▶ `gateway.tracking`
      ─▶ WebhookDispatcher (group `<prefix>.webhooks`): the events the stage means for the
         job centre and the receiver (`notices`) ─▶ one delivery per subscribed endpoint,
         id derived from the stage event and the endpoint (a record read twice adds nothing);
         in a process that runs it, the stage events its store commits are offered at once
         (`WebhookDispatcher.offer`), so a delivery does not wait for the topic
      ─▶ WebhookSender: signed (Standard Webhooks), posted with at most
         WEBHOOK_MAX_IN_FLIGHT per endpoint and a circuit breaker per endpoint. A new
         delivery whose endpoint has a free slot and a closed circuit is stored already
         claimed and posted as soon as its row is committed (`WebhookSender.add`); the
         others, retries, pings and redeliveries are the sender's loop's (due deliveries,
         claimed, posted). A failure is retried with exponential backoff and jitter until
         WEBHOOK_RETRY_HOURS after the delivery was made, then marked failed.

The event reported is written in the same transaction as the change it reports: it is the
stage event, an outbox row of that transaction, carried through Kafka at least once.
A payload is metadata only (ids, types, the stage, API paths): never content, never a CPR
number or case ref.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from attest_gateway.contracts.contacts import NotATrackingEvent, parse_tracking_event
from attest_gateway.contracts.stages import Stage, StageEvent
from attest_gateway.contracts.webhooks import (
    DeliveryStatus,
    EventData,
    PingData,
    WebhookEvent,
    WebhookPayload,
)
from attest_gateway.core.clock import Clock
from attest_gateway.core.directory import HEALTH_ROLES, Organisation, Role
from attest_gateway.core.errors import ErrorCode, InvalidInput, Unavailable, Unknown
from attest_gateway.core.webhooks import (
    CircuitBreaker,
    RetryPolicy,
    check_url,
    delivery_id,
    new_endpoint_id,
    new_secret,
)
from attest_gateway.crypto.webhooks import signed_headers
from attest_gateway.ports.webhooks import (
    Attempt,
    DeliveryRecord,
    EndpointRecord,
    Poster,
    WebhookStore,
)

log = structlog.get_logger(__name__)

MAX_ENDPOINTS = 10  # per organisation

JOBCENTER_EVENTS = frozenset(
    {
        WebhookEvent.REPLY_ARRIVED,
        WebhookEvent.REQUEST_REFUSED,
        WebhookEvent.REQUEST_OVERDUE,
        WebhookEvent.STATUS_CHANGED,
    }
)
HEALTH_EVENTS = frozenset({WebhookEvent.MESSAGE_WAITING})

# The stages a job centre hears of as `request.status-changed`: not the ones it caused itself
# (submitted, reply_fetched, reply_acknowledged).
STATUS_STAGES = frozenset(
    {
        Stage.PUBLISHED,
        Stage.IN_MAILBOX,
        Stage.FETCHED,
        Stage.ACKNOWLEDGED,
        Stage.REPLIED,
        Stage.REPLY_IN_INBOX,
        Stage.RESENT,
        Stage.UNDELIVERABLE,
        Stage.OVERDUE,
        Stage.REMINDED,
        Stage.CANCELLED,  # also when another system of the job centre cancelled it
    }
)
REFUSED_CODE = "fatal-error"  # the MedCom acknowledgement code that refuses a request


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """The settings the use cases need (bootstrap builds it from the Settings)."""

    retry: RetryPolicy
    production: bool
    rotation_overlap: dt.timedelta = dt.timedelta(hours=24)
    max_in_flight: int = 4
    breaker_threshold: int = 5
    breaker_cooldown_seconds: float = 60.0
    batch: int = 100
    poll_seconds: float = 1.0
    lease: dt.timedelta = dt.timedelta(seconds=60)


# --- which events, for whom ---------------------------------------------------------------


def events_for_role(role: Role) -> frozenset[WebhookEvent]:
    """The events an organisation of this role may subscribe to (a ping is always sent)."""
    if role is Role.JOBCENTER:
        return JOBCENTER_EVENTS
    if role in HEALTH_ROLES:
        return HEALTH_EVENTS
    return frozenset()


def check_events(role: Role, wanted: Iterable[WebhookEvent] | None) -> frozenset[WebhookEvent]:
    """The events subscribed: all of the role's when none are named. Raises InvalidInput
    (`invalid-webhook-events`) for an event the role never gets."""
    allowed = events_for_role(role)
    if not allowed:
        raise InvalidInput(
            ErrorCode.INVALID_WEBHOOK_EVENTS, "this organisation's role receives no events"
        )
    chosen = frozenset(wanted or ()) - {WebhookEvent.PING} or allowed
    if not chosen <= allowed:
        raise InvalidInput(
            ErrorCode.INVALID_WEBHOOK_EVENTS,
            f"this organisation's role may subscribe to {', '.join(sorted(allowed))} only",
        )
    return chosen


@dataclass(frozen=True, slots=True)
class Notice:
    """An organisation to notify of a stage event, with the events that fit it, the most
    specific first: an endpoint gets the first it subscribes to, once per stage event."""

    org_id: str
    events: tuple[WebhookEvent, ...]


def notices(event: StageEvent) -> list[Notice]:
    """Whom a stage event concerns, and as which events."""
    found: list[Notice] = []
    if event.stage is Stage.IN_MAILBOX:
        found.append(Notice(event.receiver_org, (WebhookEvent.MESSAGE_WAITING,)))
    specific: tuple[WebhookEvent, ...] = ()
    if event.stage is Stage.REPLY_IN_INBOX:
        specific = (WebhookEvent.REPLY_ARRIVED,)
    elif event.stage is Stage.ACKNOWLEDGED and event.detail == REFUSED_CODE:
        specific = (WebhookEvent.REQUEST_REFUSED,)
    elif event.stage is Stage.OVERDUE:
        specific = (WebhookEvent.REQUEST_OVERDUE,)
    if event.stage in STATUS_STAGES:
        found.append(Notice(event.jobcenter_org, (*specific, WebhookEvent.STATUS_CHANGED)))
    return found


def _links(kind: WebhookEvent, event: StageEvent) -> dict[str, str]:
    if kind is WebhookEvent.MESSAGE_WAITING:
        return {"mailbox": "/medcom/v1/mailbox"}
    links = {"status": f"/jobcenter/v1/attest-requests/{event.conversation_id}"}
    if kind is WebhookEvent.REPLY_ARRIVED:
        links["inbox"] = "/jobcenter/v1/inbox"
    return links


def event_payload(kind: WebhookEvent, event: StageEvent) -> bytes:
    """The body of a delivery of a stage event: metadata and links, nothing else."""
    data = EventData(
        conversation_id=event.conversation_id,
        message_id=event.message_id,
        message_type=event.message_type,
        stage=event.stage,
        at=event.at,
        attest_type=event.attest_type,
        response_code=event.detail if event.stage is Stage.ACKNOWLEDGED else None,
        links=_links(kind, event),
    )
    return WebhookPayload(type=kind, timestamp=event.at, data=data).model_dump_json().encode()


def deliveries_for(
    event: StageEvent,
    endpoints: Sequence[EndpointRecord],
    now: dt.datetime,
    period: dt.timedelta,
) -> list[DeliveryRecord]:
    """The deliveries a stage event makes for these endpoints (of any organisations). An
    endpoint is told only of stages reached since it was registered: `gateway.tracking` is
    read at least once, and a consumer that joins late, or reads a partition again, brings
    older stages, which an endpoint registered after them never asked for."""
    by_org: dict[str, list[EndpointRecord]] = {}
    for endpoint in endpoints:
        if endpoint.created_at > event.at:
            continue
        by_org.setdefault(endpoint.org_id, []).append(endpoint)
    made: list[DeliveryRecord] = []
    for notice in notices(event):
        for endpoint in by_org.get(notice.org_id, []):
            kind = next((e for e in notice.events if e in endpoint.events), None)
            if kind is None:
                continue
            made.append(
                DeliveryRecord(
                    id=delivery_id(event.event_id, endpoint.id),
                    endpoint_id=endpoint.id,
                    org_id=endpoint.org_id,
                    event_type=kind,
                    conversation_id=event.conversation_id,
                    payload=event_payload(kind, event),
                    created_at=now,
                    give_up_at=now + period,
                    next_attempt_at=now,
                )
            )
    return made


# --- an organisation's endpoints and deliveries (API and CLI) -------------------------------


async def _own_endpoint(store: WebhookStore, org_id: str, endpoint_id: str) -> EndpointRecord:
    endpoint = await store.endpoint(endpoint_id)
    if endpoint is None or endpoint.org_id != org_id:
        raise Unknown(ErrorCode.NOT_FOUND, "no such webhook endpoint")
    return endpoint


async def add_endpoint(
    store: WebhookStore,
    clock: Clock,
    org: Organisation,
    url: str,
    events: Iterable[WebhookEvent] | None,
    *,
    production: bool,
) -> EndpointRecord:
    """Register an endpoint with a new secret (returned once, in the record)."""
    checked = check_url(url, production=production)
    chosen = check_events(org.role, events)
    if len(await store.endpoints_of([org.id])) >= MAX_ENDPOINTS:
        raise InvalidInput(
            ErrorCode.INVALID_WEBHOOK_URL,
            f"an organisation has at most {MAX_ENDPOINTS} webhook endpoints",
        )
    endpoint = EndpointRecord(
        id=new_endpoint_id(),
        org_id=org.id,
        url=checked,
        events=chosen,
        secret=new_secret(),
        created_at=clock.now(),
    )
    await store.add_endpoint(endpoint)
    log.info("webhook.endpoint_added", org=org.id, endpoint=endpoint.id)
    return endpoint


async def list_endpoints(store: WebhookStore, org_id: str) -> list[EndpointRecord]:
    return await store.endpoints_of([org_id])


async def remove_endpoint(store: WebhookStore, clock: Clock, org_id: str, endpoint_id: str) -> None:
    await _own_endpoint(store, org_id, endpoint_id)
    await store.remove_endpoint(endpoint_id, clock.now())
    log.info("webhook.endpoint_removed", org=org_id, endpoint=endpoint_id)


async def rotate_secret(
    store: WebhookStore, clock: Clock, org_id: str, endpoint_id: str, overlap: dt.timedelta
) -> tuple[str, dt.datetime]:
    """A new secret; the current one signs too until the overlap ends. The new secret and
    that end."""
    await _own_endpoint(store, org_id, endpoint_id)
    secret, until = new_secret(), clock.now() + overlap
    if not await store.rotate_secret(endpoint_id, secret, until):
        raise Unknown(ErrorCode.NOT_FOUND, "no such webhook endpoint")
    log.info("webhook.secret_rotated", org=org_id, endpoint=endpoint_id)
    return secret, until


async def list_deliveries(
    store: WebhookStore, org_id: str, *, status: DeliveryStatus | None, limit: int
) -> list[DeliveryRecord]:
    return await store.deliveries_of(org_id, status=status, limit=limit)


async def redeliver(
    store: WebhookStore, clock: Clock, org_id: str, delivery: str, period: dt.timedelta
) -> DeliveryRecord:
    """Send a delivery again, with its id and body, from now for another retry period."""
    found = await store.delivery(delivery)
    if found is None or found.org_id != org_id:
        raise Unknown(ErrorCode.NOT_FOUND, "no such webhook delivery")
    await _own_endpoint(store, org_id, found.endpoint_id)
    now = clock.now()
    await store.redeliver(found.id, now, now + period)
    log.info("webhook.redeliver", org=org_id, delivery=found.id)
    return found


async def ping(
    store: WebhookStore, clock: Clock, org_id: str, endpoint_id: str, period: dt.timedelta
) -> DeliveryRecord:
    """Queue a `ping` for an endpoint, to test it; the delivery is in the log like any."""
    endpoint = await _own_endpoint(store, org_id, endpoint_id)
    now = clock.now()
    body = WebhookPayload(
        type=WebhookEvent.PING,
        timestamp=now,
        data=PingData(endpoint_id=endpoint.id, links={"deliveries": "/webhooks/v1/deliveries"}),
    )
    delivery = DeliveryRecord(
        id=delivery_id(f"ping:{uuid.uuid4()}", endpoint.id),
        endpoint_id=endpoint.id,
        org_id=org_id,
        event_type=WebhookEvent.PING,
        conversation_id=None,
        payload=body.model_dump_json().encode(),
        created_at=now,
        give_up_at=now + period,
        next_attempt_at=now,
    )
    await store.add_deliveries([delivery])
    return delivery


# --- the dispatcher: stage events → deliveries --------------------------------------------


class _Record(Protocol):
    @property
    def value(self) -> bytes | None: ...


R = TypeVar("R", bound=_Record)


EARLY_TASKS_MAX = 64  # early dispatches under way at once in a process (WebhookDispatcher.offer)
EARLY_DONE_KEPT = 4096  # event ids dispatched early whose topic copy is then skipped


class WebhookDispatcher:
    """The `gateway.tracking` consumer's handler (its own group). A record it cannot read is
    skipped: the tracker reads the same topic and dead-letters it. `transient`: the store's
    errors worth a retry (they become `Unavailable`). `sender`: the sender of the same
    process, which stores the deliveries and posts them at once (`WebhookSender.add`);
    without one they are only stored, for a sender's next look.

    `offer`: stage events a transaction of this process has just committed (the store's
    listener). Their deliveries are made at once, in a task of their own, rather than when
    the events come back from `gateway.tracking` two Kafka crossings later; the topic still
    brings each of them, and a delivery made twice is stored once (its id is derived from
    the event and the endpoint), so the topic stays the at-least-once path and a failure of
    the early one is only logged (docs/decisions/0013). `spare`: whether the store can spare
    a connection now; when it cannot, an offer is declined, so that the early path never
    makes the API's requests wait for the pool (the topic brings the events). The ids of the
    last `EARLY_DONE_KEPT` events dispatched early are kept, so that their copies from the
    topic (in this process, usually moments later) are skipped without a look-up; a copy
    arriving after its id was forgotten is dispatched again and adds nothing."""

    def __init__(
        self,
        store: WebhookStore,
        clock: Clock,
        period: dt.timedelta,
        *,
        transient: tuple[type[Exception], ...],
        sender: WebhookSender | None = None,
        spare: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._clock = clock
        self._period = period
        self._transient = transient
        self._sender = sender
        self._spare = spare
        self._early: set[asyncio.Task[None]] = set()
        self._done_early: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    async def __call__(self, record: _Record) -> None:
        try:
            event = parse_tracking_event(record.value)
        except NotATrackingEvent:
            return
        if not isinstance(event, StageEvent):
            return
        if event.event_id in self._done_early:
            del self._done_early[event.event_id]
            return  # its deliveries were made as its stage committed
        try:
            await self._dispatch(event)
        except self._transient as exc:
            raise Unavailable(ErrorCode.DATABASE_UNAVAILABLE, type(exc).__name__) from exc

    def offer(self, events: Sequence[StageEvent]) -> None:
        """Make the deliveries of stage events just committed in this process now (see the
        class). Never waits and never raises: it only starts a task, unless `EARLY_TASKS_MAX`
        are under way already or the store has no connection to spare (a busy store: the
        topic brings them)."""
        wanted = [event for event in events if notices(event)]
        if not wanted or self._closed or len(self._early) >= EARLY_TASKS_MAX:
            return
        if not self._spare():
            return
        task = asyncio.create_task(self._dispatch_early(wanted), name="webhook-early")
        self._early.add(task)
        task.add_done_callback(self._early.discard)

    async def close(self) -> None:
        """Take no more offers and let those under way finish."""
        self._closed = True
        if self._early:
            await asyncio.wait(self._early)

    async def _dispatch_early(self, events: Sequence[StageEvent]) -> None:
        try:
            await self._dispatch(*events)
        except Exception as exc:  # gateway.tracking brings them again
            log.warning("webhook.early_dispatch_failed", events=len(events), error=exc)
            return
        for event in events:
            self._done_early[event.event_id] = None
        while len(self._done_early) > EARLY_DONE_KEPT:
            self._done_early.popitem(last=False)

    async def _dispatch(self, *events: StageEvent) -> None:
        """The deliveries of these events: one look-up of the endpoints, one insert."""
        wanted = {n.org_id for event in events for n in notices(event)}
        if not wanted:
            return
        endpoints = await self._store.endpoints_of(wanted)
        if not endpoints:
            return
        now = self._clock.now()
        made = [d for event in events for d in deliveries_for(event, endpoints, now, self._period)]
        if self._sender is not None:
            added = await self._sender.add(made, endpoints)
        else:
            added = len(await self._store.add_deliveries(made))
        if added:
            log.info("webhook.deliveries_made", stages=[e.stage for e in events], deliveries=added)


# --- the sender -------------------------------------------------------------------------------


class WebhookSender:
    """Posts new deliveries at once (`add`) and due ones from its loop (`send_due`). Each
    endpoint has at most `max_in_flight` attempts running and its own circuit breaker, so a
    slow or dead endpoint holds only its own slots: neither path waits for an attempt. While
    an endpoint's circuit is open its due deliveries are put off until it closes (no attempt
    counted)."""

    def __init__(
        self,
        store: WebhookStore,
        poster: Poster,
        clock: Clock,
        config: WebhookConfig,
        *,
        transient: tuple[type[Exception], ...] = (),
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._poster = poster
        self._clock = clock
        self._config = config
        self._transient = transient
        self._rng = rng or random.SystemRandom()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._in_flight: dict[str, int] = {}
        self._sending: set[str] = set()
        self._attempts: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._put_off = dt.timedelta(seconds=config.poll_seconds)

    def breaker(self, endpoint_id: str) -> CircuitBreaker:
        found = self._breakers.get(endpoint_id)
        if found is None:
            found = CircuitBreaker(
                self._config.breaker_threshold, self._config.breaker_cooldown_seconds
            )
            self._breakers[endpoint_id] = found
        return found

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    def wake(self) -> None:
        self._wake.set()

    async def add(
        self, deliveries: Sequence[DeliveryRecord], endpoints: Iterable[EndpointRecord]
    ) -> int:
        """Store new deliveries and post at once each whose endpoint has a free slot and a
        closed circuit. Such a delivery is stored claimed by this sender (its next attempt
        at the lease's end, as `claim` sets it) in the transaction that adds it, so nothing
        comes between the row's commit and the post, and another process takes it only if
        this one never records the attempt (at least once). The others are stored due, for
        the loop, which is woken. A delivery already stored (the stage event read again) is
        neither stored nor posted again. How many were added."""
        by_id = {endpoint.id: endpoint for endpoint in endpoints}
        lease_end = self._clock.now() + self._config.lease
        taken: dict[str, EndpointRecord] = {}  # delivery id → its endpoint, a slot reserved
        rows: list[DeliveryRecord] = []
        for delivery in deliveries:
            endpoint = by_id.get(delivery.endpoint_id)
            if endpoint is not None and self._reserve(endpoint.id):
                taken[delivery.id] = endpoint
                delivery = dataclasses.replace(delivery, next_attempt_at=lease_end)
            rows.append(delivery)
        try:
            added = await self._store.add_deliveries(rows)
        except BaseException:
            for endpoint in taken.values():
                self._release(endpoint.id)
            raise
        left_due = False
        for delivery in rows:
            endpoint = taken.get(delivery.id)
            if endpoint is None:
                left_due = left_due or delivery.id in added
            elif delivery.id in added:
                self._start(delivery, endpoint)
            else:
                self._release(endpoint.id)
        if left_due:
            self.wake()
        return len(added)

    def _reserve(self, endpoint_id: str) -> bool:
        """Take one of the endpoint's slots for an attempt now, if it has a free one and its
        circuit is closed (a half-open circuit's one probe is the loop's to send)."""
        if self._stopping.is_set():
            return False
        if self._in_flight.get(endpoint_id, 0) >= self._config.max_in_flight:
            return False
        breaker = self._breakers.get(endpoint_id)
        if breaker is not None and breaker.reopens_at() is not None:
            return False
        self._in_flight[endpoint_id] = self._in_flight.get(endpoint_id, 0) + 1
        return True

    def _release(self, endpoint_id: str) -> None:
        self._in_flight[endpoint_id] -= 1
        if self._in_flight[endpoint_id] == 0:
            del self._in_flight[endpoint_id]

    def _start(self, delivery: DeliveryRecord, endpoint: EndpointRecord) -> None:
        """Start an attempt in a slot already taken for it."""
        self._sending.add(delivery.id)
        task = asyncio.create_task(self._attempt(delivery, endpoint))
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._attempts:  # each attempt is bounded by the client's timeouts
            await asyncio.wait(self._attempts)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.send_due()
            except Exception as exc:  # the database away: try again at the next tick
                log.warning("webhook.sender_failed", error=exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.poll_seconds)

    async def settle(self) -> None:
        """Wait for the attempts running now (tests, and `stop`)."""
        if self._attempts:
            await asyncio.wait(set(self._attempts))

    async def send_due(self) -> int:
        """Start an attempt for every due delivery whose endpoint has a free slot and a
        closed circuit; how many were started."""
        now = self._clock.now()
        loop = asyncio.get_running_loop()
        started = 0
        endpoints: dict[str, EndpointRecord | None] = {}
        for delivery in await self._store.due(now, self._config.batch):
            if delivery.id in self._sending:
                continue
            if delivery.endpoint_id not in endpoints:
                endpoints[delivery.endpoint_id] = await self._store.endpoint(delivery.endpoint_id)
            endpoint = endpoints[delivery.endpoint_id]
            if endpoint is None:  # removed meanwhile: its pending deliveries were failed
                continue
            if self._in_flight.get(endpoint.id, 0) >= self._config.max_in_flight:
                # put off a little: behind the other endpoints' due deliveries, so that a busy
                # endpoint's backlog never fills the batch
                await self._store.claim(delivery, now + self._put_off)
                continue
            breaker = self.breaker(endpoint.id)
            if not breaker.allow(loop.time()):
                reopens = breaker.reopens_at()
                if breaker.is_open(loop.time()) and reopens is not None:
                    later = now + dt.timedelta(seconds=reopens - loop.time())
                    await self._store.claim(delivery, later)
                continue
            if not await self._store.claim(delivery, now + self._config.lease):
                continue  # another process took it
            self._in_flight[endpoint.id] = self._in_flight.get(endpoint.id, 0) + 1
            self._start(delivery, endpoint)
            started += 1
        return started

    async def _attempt(self, delivery: DeliveryRecord, endpoint: EndpointRecord) -> None:
        loop = asyncio.get_running_loop()
        breaker = self.breaker(endpoint.id)
        try:
            sent_at = self._clock.now()
            headers = signed_headers(
                delivery.id, sent_at, delivery.payload, endpoint.signing_secrets(sent_at)
            )
            result = await self._poster.post(endpoint.url, delivery.payload, headers)
            now = self._clock.now()
            attempts = delivery.attempts + 1
            if result.ok:
                breaker.succeeded()
                attempt = Attempt(now, DeliveryStatus.DELIVERED, result.status_code, None, None)
            else:
                breaker.failed(loop.time())
                again = self._config.retry.next_attempt(
                    attempts, now, delivery.give_up_at, self._rng
                )
                status = DeliveryStatus.PENDING if again is not None else DeliveryStatus.FAILED
                attempt = Attempt(now, status, result.status_code, result.error, again)
            await self._store.record_attempt(delivery.id, attempt)
            log.info(
                "webhook.attempt",
                delivery=delivery.id,
                endpoint=endpoint.id,
                org=endpoint.org_id,
                attempt=attempts,
                status_code=result.status_code,
                error=result.error,
                outcome=attempt.status.value,
            )
        except Exception:  # not recorded: the lease runs out and it is tried again
            log.exception("webhook.attempt_failed", delivery=delivery.id)
        finally:
            self._sending.discard(delivery.id)
            self._release(endpoint.id)
