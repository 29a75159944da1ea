"""Webhooks without I/O: which stage becomes which event for whom, the payload (metadata
only), the endpoint URL rule (SSRF), signatures a Standard Webhooks receiver verifies, the
retry schedule, the circuit breaker, and the sender on in-memory fakes: retries, giving up,
a per-endpoint limit and an open circuit that hold back only their own endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import Iterable, Mapping

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.contracts.webhooks import DeliveryStatus, WebhookEvent
from attest_gateway.core.clock import ManualClock
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import ErrorCode, InvalidInput, Unknown
from attest_gateway.core.webhooks import (
    CircuitBreaker,
    RetryPolicy,
    check_url,
    delivery_id,
    new_secret,
)
from attest_gateway.crypto.webhooks import signed_headers
from attest_gateway.infra.webhooks.client import HttpxPoster, tls_context
from attest_gateway.ports.webhooks import EndpointRecord, PostResult
from attest_gateway.services import webhooks as service
from attest_gateway.services.webhooks import (
    WebhookConfig,
    WebhookDispatcher,
    WebhookSender,
    deliveries_for,
    notices,
)
from tests.support.events import contact_event, stage_event
from tests.support.fakes import FakeWebhookStore

T0 = dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC)
REF = "k1.c2FtcGxlLXBzZXVkb255bQ"
CPR = "0101901234"
JC = Organisation("jc", "Jobcenter", Role.JOBCENTER, None, None, "101", None, "1084", True, True)
PSY = Organisation("psy", "Psykiatri", Role.PSYCHIATRY, "1", "1", None, None, None, False, True)
DAY = dt.timedelta(days=1)


def endpoint(org: str, *events: WebhookEvent, id_: str = "ep_1") -> EndpointRecord:
    url = f"https://{org}.example/hook"
    return EndpointRecord(id_, org, url, frozenset(events), new_secret(), T0)


# --- which events, for whom ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "detail", "expected"),
    [
        (Stage.SUBMITTED, None, []),
        (Stage.REPLY_FETCHED, None, []),
        (
            Stage.IN_MAILBOX,
            None,
            [
                ("psy", (WebhookEvent.MESSAGE_WAITING,)),
                ("jc", (WebhookEvent.STATUS_CHANGED,)),
            ],
        ),
        (
            Stage.REPLY_IN_INBOX,
            None,
            [("jc", (WebhookEvent.REPLY_ARRIVED, WebhookEvent.STATUS_CHANGED))],
        ),
        (
            Stage.ACKNOWLEDGED,
            "fatal-error",
            [("jc", (WebhookEvent.REQUEST_REFUSED, WebhookEvent.STATUS_CHANGED))],
        ),
        (Stage.ACKNOWLEDGED, "ok", [("jc", (WebhookEvent.STATUS_CHANGED,))]),
        (
            Stage.OVERDUE,
            "due 2026-05-01",
            [("jc", (WebhookEvent.REQUEST_OVERDUE, WebhookEvent.STATUS_CHANGED))],
        ),
        (Stage.CANCELLED, None, [("jc", (WebhookEvent.STATUS_CHANGED,))]),
        (Stage.DEADLINE_EXTENDED, "2026-06-01", []),
    ],
)
def test_a_stage_concerns_the_job_centre_and_the_receiver(
    stage: Stage, detail: str | None, expected: list[tuple[str, tuple[WebhookEvent, ...]]]
) -> None:
    e = stage_event(REF).model_copy(update={"stage": stage, "detail": detail})
    assert [(n.org_id, n.events) for n in notices(e)] == expected


def test_an_endpoint_gets_the_most_specific_event_it_subscribes_to_once() -> None:
    e = stage_event(REF).model_copy(update={"stage": Stage.REPLY_IN_INBOX})
    specific = endpoint("jc", *service.JOBCENTER_EVENTS, id_="ep_a")
    general = endpoint("jc", WebhookEvent.STATUS_CHANGED, id_="ep_b")
    overdue_only = endpoint("jc", WebhookEvent.REQUEST_OVERDUE, id_="ep_c")
    other_org = endpoint("jc2", *service.JOBCENTER_EVENTS, id_="ep_d")
    made = deliveries_for(e, [specific, general, overdue_only, other_org], T0, DAY)
    assert [(d.endpoint_id, d.event_type) for d in made] == [
        ("ep_a", WebhookEvent.REPLY_ARRIVED),
        ("ep_b", WebhookEvent.STATUS_CHANGED),
    ]
    again = deliveries_for(e, [specific, general], T0 + DAY, DAY)
    assert [d.id for d in again] == [d.id for d in made]  # stable: derived from the event
    assert made[0].id == delivery_id(e.event_id, "ep_a") != made[1].id


def test_an_endpoint_registered_after_a_stage_is_not_told_of_it() -> None:
    """A stage read late from `gateway.tracking` (a consumer joining its group, a partition
    read again) is not delivered to an endpoint registered after the stage was reached."""
    e = stage_event(REF).model_copy(update={"stage": Stage.REPLY_IN_INBOX})
    before = dataclasses.replace(
        endpoint("jc", WebhookEvent.REPLY_ARRIVED, id_="ep_before"),
        created_at=e.at - dt.timedelta(hours=1),
    )
    same_moment = dataclasses.replace(before, id="ep_same", created_at=e.at)
    after = dataclasses.replace(before, id="ep_after", created_at=e.at + dt.timedelta(seconds=1))
    made = deliveries_for(e, [before, same_moment, after], T0 + DAY, DAY)
    assert [d.endpoint_id for d in made] == ["ep_before", "ep_same"]


def test_the_payload_is_metadata_and_links_only() -> None:
    e = stage_event(REF).model_copy(update={"stage": Stage.REPLY_IN_INBOX})
    (made,) = deliveries_for(e, [endpoint("jc", WebhookEvent.REPLY_ARRIVED)], T0, DAY)
    body = orjson.loads(made.payload)
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "reply.arrived"
    assert body["data"]["links"] == {
        "status": "/jobcenter/v1/attest-requests/conv-1",
        "inbox": "/jobcenter/v1/inbox",
    }
    assert set(body["data"]) == {
        "conversation_id",
        "message_id",
        "message_type",
        "stage",
        "at",
        "attest_type",
        "response_code",
        "links",
    }
    assert REF not in made.payload.decode()
    assert CPR not in made.payload.decode()


@pytest.mark.parametrize(
    ("org", "wanted", "expected"),
    [
        (JC, None, service.JOBCENTER_EVENTS),
        (PSY, None, frozenset({WebhookEvent.MESSAGE_WAITING})),
        (JC, [WebhookEvent.REPLY_ARRIVED], frozenset({WebhookEvent.REPLY_ARRIVED})),
    ],
)
def test_the_events_of_a_role(
    org: Organisation, wanted: list[WebhookEvent] | None, expected: frozenset[WebhookEvent]
) -> None:
    assert service.check_events(org.role, wanted) == expected


@pytest.mark.parametrize(
    ("role", "wanted"),
    [
        (Role.PSYCHIATRY, [WebhookEvent.REPLY_ARRIVED]),
        (Role.JOBCENTER, [WebhookEvent.MESSAGE_WAITING]),
        (Role.MINISTRY, None),
    ],
)
def test_an_event_the_role_never_gets_is_refused(
    role: Role, wanted: list[WebhookEvent] | None
) -> None:
    with pytest.raises(InvalidInput) as refused:
        service.check_events(role, wanted)
    assert refused.value.code is ErrorCode.INVALID_WEBHOOK_EVENTS


# --- the endpoint URL (SSRF) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example/x",
        "ftp://hooks.example/x",
        "https:///x",
        "https://user:pw@hooks.example/x",
        "https://hooks.example/x#frag",
        "https://hooks.example:99999/x",
        "https://hooks.example/" + "a" * 500,
    ],
)
def test_only_plain_https_urls_are_endpoints(url: str) -> None:
    for production in (False, True):
        with pytest.raises(InvalidInput) as refused:
            check_url(url, production=production)
        assert refused.value.code is ErrorCode.INVALID_WEBHOOK_URL


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443/hook",
        "https://localhost/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://0.0.0.0/hook",
        "https://gateway.internal/hook",
    ],
)
def test_production_refuses_private_loopback_and_link_local_endpoints(url: str) -> None:
    assert check_url(url, production=False) == url  # development: a local receiver is fine
    with pytest.raises(InvalidInput) as refused:
        check_url(url, production=True)
    assert refused.value.code is ErrorCode.INVALID_WEBHOOK_URL


def test_production_takes_public_endpoints() -> None:
    for url in ("https://hooks.kk.example/attest", "https://93.184.216.34:8443/x"):
        assert check_url(url, production=True) == url


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:9/hook", "https://localhost:9/hook", "https://[::1]:9/hook"]
)
async def test_the_production_client_never_connects_to_a_blocked_address(url: str) -> None:
    """The names are resolved and checked at every delivery, whatever was registered."""
    poster = HttpxPoster(
        connect_timeout=1, read_timeout=1, tls=tls_context(None, None, None),
        allow_private_addresses=False,
    )  # fmt: skip
    try:
        assert await poster.post(url, b"{}", {}) == PostResult(None, "blocked-address")
    finally:
        await poster.close()


# --- signatures ------------------------------------------------------------------------------


def test_a_standard_webhooks_receiver_verifies_the_signature() -> None:
    secret, body = new_secret(), b'{"type":"ping","timestamp":"2026-03-02T10:00:00Z","data":{}}'
    assert secret.startswith("whsec_")
    headers = signed_headers("msg_1", dt.datetime.now(dt.UTC), body, [secret])
    assert Webhook(secret).verify(body, headers)["type"] == "ping"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"ping", b"pong"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_2"})


def test_during_a_rotation_both_secrets_sign() -> None:
    old, new = new_secret(), new_secret()
    rotating = EndpointRecord("ep_1", "jc", "https://x.ex", frozenset(), new, T0, old, T0 + DAY)
    assert rotating.signing_secrets(T0) == [new, old]
    assert rotating.signing_secrets(T0 + DAY) == [new]
    body = b"{}"
    headers = signed_headers("msg_1", dt.datetime.now(dt.UTC), body, rotating.signing_secrets(T0))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers, json_parse=False)


# --- retries and the breaker -----------------------------------------------------------------


def test_backoff_grows_with_jitter_within_its_cap_and_stops_at_the_period() -> None:
    policy = RetryPolicy(dt.timedelta(seconds=10), dt.timedelta(minutes=10), DAY)
    rng = random.Random(7)
    give_up = T0 + DAY
    for attempts in range(1, 12):
        ceiling = min(600, 10 * 2 ** (attempts - 1))
        waits = {
            (policy.next_attempt(attempts, T0, give_up, rng) or give_up) - T0 for _ in range(20)
        }
        assert all(ceiling / 10 <= w.total_seconds() <= ceiling for w in waits)
        assert len(waits) > 1  # jitter
    assert policy.next_attempt(3, give_up - dt.timedelta(seconds=1), give_up, rng) is None


def test_the_breaker_opens_after_failures_lets_one_probe_through_and_closes() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=60)
    for now in (0.0, 1.0):
        assert breaker.allow(now)
        breaker.failed(now)
    assert breaker.allow(2.0)
    breaker.failed(2.0)
    assert breaker.is_open(3.0)
    assert not breaker.allow(61.0)
    assert breaker.allow(62.5)  # half-open: one probe
    assert not breaker.allow(62.6)
    breaker.failed(63.0)
    assert not breaker.allow(100.0)  # open again
    assert breaker.allow(123.5)
    breaker.succeeded()
    assert breaker.allow(124.0)
    assert breaker.allow(124.0)
    assert breaker.failures == 0


# --- use cases and the sender on fakes ---------------------------------------------------------


class ScriptedPoster:
    """Answers per URL: a status code, or blocks until released."""

    def __init__(self) -> None:
        self.answers: dict[str, int] = {}
        self.blocked: set[str] = set()
        self.release = asyncio.Event()
        self.posted: list[tuple[str, dict[str, str]]] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        self.posted.append((url, dict(headers)))
        if url in self.blocked:
            await self.release.wait()
        code = self.answers.get(url, 204)
        return PostResult(code, None if code < 300 else f"http-{code}")


def config(**kw: object) -> WebhookConfig:
    base: dict[str, object] = {
        "retry": RetryPolicy(dt.timedelta(seconds=10), dt.timedelta(minutes=5), DAY),
        "production": False,
        "max_in_flight": 2,
        "breaker_threshold": 100,
    }
    return WebhookConfig(**{**base, **kw})  # type: ignore[arg-type]


async def add(store: FakeWebhookStore, org: Organisation, url: str) -> EndpointRecord:
    return await service.add_endpoint(store, ManualClock(T0), org, url, None, production=True)


async def test_endpoints_are_the_organisations_own() -> None:
    store, clock = FakeWebhookStore(), ManualClock(T0)
    mine = await add(store, JC, "https://a.example/h")
    assert mine.secret.startswith("whsec_")
    assert mine.events == service.JOBCENTER_EVENTS
    for call in (
        service.remove_endpoint(store, clock, "psy", mine.id),
        service.rotate_secret(store, clock, "psy", mine.id, DAY),
        service.ping(store, clock, "psy", mine.id, DAY),
    ):
        with pytest.raises(Unknown):
            await call
    secret, until = await service.rotate_secret(store, clock, "jc", mine.id, DAY)
    rotated = await store.endpoint(mine.id)
    assert rotated is not None
    assert rotated.signing_secrets(T0) == [secret, mine.secret]
    assert until == T0 + DAY
    await service.remove_endpoint(store, clock, "jc", mine.id)
    assert await service.list_endpoints(store, "jc") == []


class Rec:
    def __init__(self, value: bytes | None) -> None:
        self.value = value


WAITING = stage_event(REF).model_copy(update={"stage": Stage.IN_MAILBOX})


async def test_the_dispatcher_makes_each_delivery_once_and_skips_other_records() -> None:
    store, clock = FakeWebhookStore(), ManualClock(T0)
    ep = await add(store, PSY, "https://p.example/h")
    dispatcher = WebhookDispatcher(store, clock, DAY, transient=())

    e = stage_event(REF).model_copy(update={"stage": Stage.IN_MAILBOX})
    for value in (e.model_dump_json().encode(), e.model_dump_json().encode(), b"{", None):
        await dispatcher(Rec(value))
    await dispatcher(Rec(contact_event(REF).model_dump_json().encode()))
    (made,) = store.deliveries.values()
    assert (made.endpoint_id, made.event_type) == (ep.id, WebhookEvent.MESSAGE_WAITING)
    assert orjson.loads(made.payload)["data"]["message_type"] == MessageType.ATTEST_REQUEST


async def test_the_dispatcher_posts_a_new_delivery_at_once_and_each_once() -> None:
    store, clock, poster = FakeWebhookStore(), ManualClock(T0), ScriptedPoster()
    sender = WebhookSender(store, poster, clock, config())
    dispatcher = WebhookDispatcher(store, clock, DAY, transient=(), sender=sender)
    await dispatcher(Rec(WAITING.model_dump_json().encode()))
    assert store.deliveries == {}  # no endpoint: nothing made, nothing posted
    ep = await add(store, PSY, "https://p.example/h")
    poster.blocked.add(ep.url)
    await dispatcher(Rec(WAITING.model_dump_json().encode()))
    await asyncio.sleep(0)
    (made,) = store.deliveries.values()
    # posted with no look at the due deliveries: stored claimed by this sender, so no other
    # process takes it while the attempt runs, and any does once the lease has run out
    assert [(url, h["webhook-id"]) for url, h in poster.posted] == [(ep.url, made.id)]
    assert made.next_attempt_at == T0 + config().lease
    assert await store.due(T0 + config().lease - dt.timedelta(seconds=1), 10) == []
    await dispatcher(Rec(WAITING.model_dump_json().encode()))  # the same event again
    poster.release.set()
    await sender.settle()
    assert len(poster.posted) == 1
    assert store.deliveries[made.id].status is DeliveryStatus.DELIVERED
    assert store.deliveries[made.id].attempts == 1


async def test_an_offered_event_is_posted_at_once_and_the_topics_copy_adds_nothing() -> None:
    store, clock, poster = FakeWebhookStore(), ManualClock(T0), ScriptedPoster()
    sender = WebhookSender(store, poster, clock, config())
    dispatcher = WebhookDispatcher(store, clock, DAY, transient=(), sender=sender)
    ep = await add(store, PSY, "https://p.example/h")
    dispatcher.offer([stage_event(REF), WAITING])  # `submitted` concerns nobody
    await dispatcher.close()
    await sender.settle()
    (made,) = store.deliveries.values()
    assert [(url, h["webhook-id"]) for url, h in poster.posted] == [(ep.url, made.id)]
    await dispatcher(Rec(WAITING.model_dump_json().encode()))  # the topic brings it later
    await sender.settle()
    assert len(poster.posted) == 1
    assert list(store.deliveries) == [made.id]
    later = stage_event(REF).model_copy(update={"stage": Stage.IN_MAILBOX})
    dispatcher.offer([later])  # closed: left to the topic
    await asyncio.sleep(0)
    assert len(store.deliveries) == 1


async def test_the_topics_copy_of_an_event_dispatched_early_is_skipped() -> None:
    class Counting(FakeWebhookStore):
        looks = 0

        async def endpoints_of(self, org_ids: Iterable[str]) -> list[EndpointRecord]:
            self.looks += 1
            return await super().endpoints_of(org_ids)

    store, clock = Counting(), ManualClock(T0)
    dispatcher = WebhookDispatcher(store, clock, DAY, transient=())
    await add(store, PSY, "https://p.example/h")
    store.looks = 0
    dispatcher.offer([WAITING])
    await asyncio.sleep(0.01)
    assert (store.looks, len(store.deliveries)) == (1, 1)
    await dispatcher(Rec(WAITING.model_dump_json().encode()))  # the topic's copy: no look-up
    assert store.looks == 1
    await dispatcher(Rec(WAITING.model_dump_json().encode()))  # once more: forgotten, so looked
    await dispatcher.close()
    assert (store.looks, len(store.deliveries)) == (2, 1)


async def test_a_failed_early_dispatch_is_left_to_the_topic() -> None:
    class Failing(FakeWebhookStore):
        failures = 0

        async def endpoints_of(self, org_ids: Iterable[str]) -> list[EndpointRecord]:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("database away")
            return await super().endpoints_of(org_ids)

    store, clock = Failing(), ManualClock(T0)
    dispatcher = WebhookDispatcher(store, clock, DAY, transient=(ConnectionError,))
    await add(store, PSY, "https://p.example/h")
    store.failures = 1
    dispatcher.offer([WAITING])  # fails in its task: logged, nothing raised, nothing made
    await dispatcher.close()
    assert store.deliveries == {}
    await dispatcher(Rec(WAITING.model_dump_json().encode()))
    assert len(store.deliveries) == 1


async def test_an_offer_is_declined_while_the_store_has_no_connection_to_spare() -> None:
    store, clock = FakeWebhookStore(), ManualClock(T0)
    spare = False
    dispatcher = WebhookDispatcher(store, clock, DAY, transient=(), spare=lambda: spare)
    await add(store, PSY, "https://p.example/h")
    dispatcher.offer([WAITING])  # the pool is taken: left to the topic
    await asyncio.sleep(0)
    assert store.deliveries == {}
    spare = True
    dispatcher.offer([WAITING])
    await dispatcher.close()
    assert len(store.deliveries) == 1


async def test_a_busy_or_open_endpoint_leaves_the_dispatchers_delivery_to_the_loop() -> None:
    store, clock, poster = FakeWebhookStore(), ManualClock(T0), ScriptedPoster()
    ep = await add(store, PSY, "https://p.example/h")
    sender = WebhookSender(store, poster, clock, config(max_in_flight=1, breaker_threshold=1))
    dispatcher = WebhookDispatcher(store, clock, DAY, transient=(), sender=sender)
    poster.blocked.add(ep.url)
    await service.ping(store, clock, "psy", ep.id, DAY)
    assert await sender.send_due() == 1  # the endpoint's one slot taken
    await dispatcher(Rec(WAITING.model_dump_json().encode()))
    await asyncio.sleep(0)
    (waiting,) = [d for d in store.deliveries.values() if d.event_type is not WebhookEvent.PING]
    assert len(poster.posted) == 1
    assert store.deliveries[waiting.id].next_attempt_at == T0  # due: the loop's to send
    poster.release.set()
    await sender.settle()
    assert await sender.send_due() == 1
    await sender.settle()
    assert store.deliveries[waiting.id].status is DeliveryStatus.DELIVERED
    # an open circuit: stored due, not posted, whatever slots are free
    poster.answers[ep.url] = 500
    await service.ping(store, clock, "psy", ep.id, DAY)
    assert await sender.send_due() == 1
    await sender.settle()
    later = stage_event(REF).model_copy(update={"stage": Stage.IN_MAILBOX})  # a new event id
    await dispatcher(Rec(later.model_dump_json().encode()))
    await asyncio.sleep(0)
    assert len(poster.posted) == 3
    (held,) = [
        d
        for d in store.deliveries.values()
        if d.event_type is not WebhookEvent.PING and d.id != waiting.id
    ]
    assert (held.status, held.attempts, held.next_attempt_at) == (DeliveryStatus.PENDING, 0, T0)


async def test_a_failing_endpoint_is_retried_then_marked_failed() -> None:
    store, clock, poster = FakeWebhookStore(), ManualClock(T0), ScriptedPoster()
    ep = await add(store, JC, "https://a.example/h")
    poster.answers[ep.url] = 500
    delivery = await service.ping(store, clock, "jc", ep.id, dt.timedelta(hours=1))
    sender = WebhookSender(store, poster, clock, config(), rng=random.Random(1))
    attempts = 0
    while store.deliveries[delivery.id].status is DeliveryStatus.PENDING:
        started = await sender.send_due()
        await sender.settle()
        attempts += started
        current = store.deliveries[delivery.id]
        if current.next_attempt_at is not None:
            clock.set(current.next_attempt_at)
    final = store.deliveries[delivery.id]
    assert final.status is DeliveryStatus.FAILED
    assert final.attempts == attempts > 3
    assert (final.last_status_code, final.last_error) == (500, "http-500")
    assert final.last_attempt_at is not None
    assert final.last_attempt_at < final.give_up_at
    # every attempt carried the same webhook-id
    assert {h["webhook-id"] for _, h in poster.posted} == {delivery.id}
    # a manual redelivery queues it again, same id, and a healthy endpoint takes it
    poster.answers[ep.url] = 200
    await service.redeliver(store, clock, "jc", delivery.id, DAY)
    await sender.send_due()
    await sender.settle()
    assert store.deliveries[delivery.id].status is DeliveryStatus.DELIVERED


async def test_a_stuck_endpoint_holds_only_its_own_slots() -> None:
    store, clock, poster = FakeWebhookStore(), ManualClock(T0), ScriptedPoster()
    stuck = await add(store, JC, "https://stuck.example/h")
    fine = await add(store, PSY, "https://fine.example/h")
    poster.blocked.add(stuck.url)
    for _ in range(5):
        await service.ping(store, clock, "jc", stuck.id, DAY)
    sender = WebhookSender(store, poster, clock, config(max_in_flight=2))
    assert await sender.send_due() == 2  # the limit per endpoint
    for _ in range(2):
        await service.ping(store, clock, "psy", fine.id, DAY)
    assert await sender.send_due() == 2  # the other endpoint is not held back
    await asyncio.sleep(0)
    delivered = [d for d in store.deliveries.values() if d.status is DeliveryStatus.DELIVERED]
    assert {d.endpoint_id for d in delivered} == {fine.id}
    assert len(delivered) == 2
    poster.release.set()
    await sender.settle()
    clock.advance(dt.timedelta(seconds=1))  # the ones put off while the slots were taken
    assert await sender.send_due() == 2


async def test_an_open_circuit_puts_off_its_deliveries_without_attempts() -> None:
    store, clock, poster = FakeWebhookStore(), ManualClock(T0), ScriptedPoster()
    dead = await add(store, JC, "https://dead.example/h")
    poster.answers[dead.url] = 503
    first = await service.ping(store, clock, "jc", dead.id, DAY)
    sender = WebhookSender(
        store, poster, clock, config(breaker_threshold=1, breaker_cooldown_seconds=3600)
    )
    assert await sender.send_due() == 1
    await sender.settle()
    assert sender.breaker(dead.id).is_open(asyncio.get_running_loop().time())
    later = [await service.ping(store, clock, "jc", dead.id, DAY) for _ in range(3)]
    clock.advance(dt.timedelta(hours=1))  # the first one's retry is due too
    assert await sender.send_due() == 0
    for d in [first, *later]:
        held = store.deliveries[d.id]
        assert held.status is DeliveryStatus.PENDING
        assert held.next_attempt_at is not None
        assert held.next_attempt_at > clock.now()
    assert len(poster.posted) == 1
