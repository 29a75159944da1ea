"""Webhooks with real parts: the in-process gateway on the real broker and a real database
posts to a real HTTPS receiver (tests/support/webhook_receiver.py: uvicorn, a certificate of
the development CA, mutual TLS with the gateway's client certificate) that verifies every
delivery with `standardwebhooks`; the partner client's `verify_webhook` checks real deliveries
too (the rotation test).

- A whole conversation driven only by webhooks: the clinic learns of the request from a
  `message.waiting` delivery, the job centre of the reply from `reply.arrived` and of a
  refusal from `request.refused`; neither client polls.
- Faults: the receiver down then up, slow (past the read timeout), answering 500, and
  redirecting (not followed): each delivery arrives with the same `webhook-id` on every
  attempt, and the delivery log shows attempts and the last error.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from attest_gateway.client import WebhookInvalid, verify_webhook
from attest_gateway.contracts.contacts import parse_tracking_event
from attest_gateway.contracts.stages import Stage, StageEvent
from attest_gateway.contracts.webhooks import DeliveryStatus
from attest_gateway.devtools.devca import DevCA, ensure_ca, issue_client_certificate
from attest_gateway.infra.db.webhooks import SqlWebhookStore
from attest_gateway.infra.housekeeping.retention import prune
from attest_gateway.infra.kafka.consumer import ConsumerLoop
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.model import Bundle
from tests.integration.conftest import DB_KINDS, Harness, running_gateway
from tests.integration.test_roundtrip import open_item, submit
from tests.support.harness import ATTEST_TEXT, CPR, attest_request_body, wait_for
from tests.support.kafka import TestKafka
from tests.support.people import CLINICIAN
from tests.support.webhook_receiver import Behaviour, Receiver, receiving

JC, PSY = "jc-koebenhavn", "psyk-kbh"


@pytest_asyncio.fixture(scope="module")
async def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return ensure_ca(tmp_path_factory.mktemp("webhook-ca"))


@pytest_asyncio.fixture(scope="module", params=DB_KINDS)
async def gateway(
    request: pytest.FixtureRequest,
    broker: TestKafka,
    ca: DevCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Harness]:
    kind: str = request.param
    client = issue_client_certificate(ca, "gateway")
    async with running_gateway(
        kind,
        tmp_path_factory.mktemp(f"webhooks-{kind}"),
        broker.bootstrap,
        webhook_ca_file=ca.cert,
        webhook_client_cert=client.cert,
        webhook_client_key=client.key,
        webhook_backoff_base_seconds=0.3,
        webhook_backoff_max_seconds=0.6,
        webhook_connect_timeout_seconds=2,
        webhook_read_timeout_seconds=1,
        webhook_poll_seconds=0.1,
        webhook_breaker_open_seconds=1,
    ) as h:
        yield h


@pytest_asyncio.fixture
async def receiver(ca: DevCA) -> AsyncIterator[Receiver]:
    async with receiving(ca) as r:
        yield r


async def register(
    h: Harness, org: str, receiver: Receiver, path: str, events: list[str] | None = None
) -> dict[str, Any]:
    response = await h.client.post(
        "/webhooks/v1/endpoints",
        json={"url": receiver.url(path), **({"events": events} if events else {})},
        headers=h.auth(org),
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    receiver.secrets[path] = [created["secret"]]
    return created


async def remove(h: Harness, org: str, endpoint_id: str) -> None:
    response = await h.client.delete(f"/webhooks/v1/endpoints/{endpoint_id}", headers=h.auth(org))
    assert response.status_code == 204, response.text


async def delivery(h: Harness, org: str, delivery_id: str) -> dict[str, Any]:
    found = await h.get_json("/webhooks/v1/deliveries", org, params={"limit": 500})
    return next(d for d in found["deliveries"] if d["id"] == delivery_id)


async def settled(h: Harness, org: str, delivery_id: str) -> dict[str, Any]:
    """The delivery once it is no longer pending (read from the delivery log)."""

    async def probe() -> dict[str, Any] | None:
        d = await delivery(h, org, delivery_id)
        return d if d["status"] != "pending" else None

    return await wait_for(probe)


async def ping(h: Harness, org: str, endpoint_id: str) -> str:
    response = await h.client.post(
        f"/webhooks/v1/endpoints/{endpoint_id}/ping", headers=h.auth(org)
    )
    assert response.status_code == 202, response.text
    delivery_id: str = response.json()["id"]
    return delivery_id


async def next_of(receiver: Receiver, path: str, kind: str, conversation_id: str) -> Any:
    """The next delivery of `kind` about the conversation (others of the path are skipped)."""
    while True:
        got = await receiver.next(path)
        data = got.payload["data"]
        if got.payload["type"] == kind and data.get("conversation_id") == conversation_id:
            return got


async def the_delivery(receiver: Receiver, path: str, delivery_id: str) -> Any:
    """The delivery `delivery_id` at the path: an endpoint for every event may also get the
    job centre's events of earlier tests' conversations first (a tracking consumer that
    joins its group late reads their stages then), which are skipped."""
    while True:
        got = await receiver.next(path)
        if got.headers["webhook-id"] == delivery_id:
            return got


async def test_a_conversation_driven_only_by_webhooks(gateway: Harness, receiver: Receiver) -> None:
    h = gateway
    jc_hook = await register(h, JC, receiver, "/jc")
    psy_hook = await register(h, PSY, receiver, "/psy")
    try:
        response = await h.client.post(
            "/jobcenter/v1/attest-requests",
            json=attest_request_body(jobcenter_gln=h.gln(JC)),
            headers=h.auth(JC),
        )
        assert response.status_code == 202, response.text
        conversation_id = response.json()["conversation_id"]

        # The clinic hears of the request and reads its mailbox where the event points.
        waiting = await next_of(receiver, "/psy", "message.waiting", conversation_id)
        mailbox = await h.get_json(waiting.payload["data"]["links"]["mailbox"], PSY)
        item = next(i for i in mailbox["items"] if i["conversation_id"] == conversation_id)
        assert item["message_id"] == waiting.payload["data"]["message_id"]
        request_bundle = open_item(item, h.client_keys(PSY))
        now = dt.datetime.now(dt.UTC)
        ack = build_acknowledgement(
            acked=request_bundle,
            message_id=str(uuid.uuid4()),
            bundle_id=str(uuid.uuid4()),
            sent_at=now,
            code="ok",
        )
        await submit(h, PSY, ack)
        reply = reply_of(request_bundle, now)
        await submit(h, PSY, reply)

        # The job centre hears of the reply and reads its inbox where the event points.
        arrived = await next_of(receiver, "/jc", "reply.arrived", conversation_id)
        links = arrived.payload["data"]["links"]
        inbox = await h.get_json(links["inbox"], JC)
        got = next(i for i in inbox["items"] if i["conversation_id"] == conversation_id)
        assert got["attest_text"] == ATTEST_TEXT
        status = await h.get_json(links["status"], JC)
        assert status["conversation_id"] == conversation_id

        # A second request, refused by the clinic: the job centre hears of the refusal.
        second = await h.client.post(
            "/jobcenter/v1/attest-requests",
            json=attest_request_body(jobcenter_gln=h.gln(JC)),
            headers=h.auth(JC),
        )
        refused_id = second.json()["conversation_id"]
        waiting = await next_of(receiver, "/psy", "message.waiting", refused_id)
        mailbox = await h.get_json(waiting.payload["data"]["links"]["mailbox"], PSY)
        item = next(i for i in mailbox["items"] if i["conversation_id"] == refused_id)
        refusal = build_acknowledgement(
            acked=open_item(item, h.client_keys(PSY)),
            message_id=str(uuid.uuid4()),
            bundle_id=str(uuid.uuid4()),
            sent_at=dt.datetime.now(dt.UTC),
            code="fatal-error",
            error_code="MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE",
            error_text="Modtageren kan ikke tage imod denne meddelelsestype.",
        )
        await submit(h, PSY, refusal)
        refused = await next_of(receiver, "/jc", "request.refused", refused_id)
        assert refused.payload["data"]["response_code"] == "fatal-error"
    finally:
        await remove(h, JC, jc_hook["id"])
        await remove(h, PSY, psy_hook["id"])

    # Every delivery verified, carried metadata only, and had an id of its own.
    assert receiver.refused == 0
    assert len(receiver.delivered) >= 5
    for body in (d.body for d in receiver.delivered):
        assert CPR.encode() not in body
        assert ATTEST_TEXT.encode() not in body
        assert b"case_ref" not in body
    ids = [webhook_id for _, webhook_id in receiver.seen]
    assert len(ids) == len(set(ids))
    log = await h.get_json("/webhooks/v1/deliveries", JC, params={"status": "delivered"})
    assert arrived.headers["webhook-id"] in [d["id"] for d in log["deliveries"]]


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_a_delivery_is_made_as_its_stage_commits_and_the_topic_adds_nothing(
    kind: str, broker: TestKafka, ca: DevCA, tmp_path: Path
) -> None:
    """The process that commits a stage makes its deliveries at once (the store's stage
    listener, `WebhookDispatcher.offer`), without waiting for `gateway.tracking`: here the
    topic's consumer is stopped first, and the clinic still hears of its request. When the
    topic then brings the event (a consumer of the same group, started after), nothing is
    made or posted twice."""
    client = issue_client_certificate(ca, "gateway")
    async with (
        running_gateway(
            kind, tmp_path, broker.bootstrap, webhook_ca_file=ca.cert,
            webhook_client_cert=client.cert, webhook_client_key=client.key,
        ) as h,
        receiving(ca) as receiver,
    ):  # fmt: skip
        webhooks = h.running.webhooks
        assert webhooks is not None
        await webhooks.dispatcher.stop()  # the topic's path: not running
        await register(h, PSY, receiver, "/early")
        response = await h.client.post(
            "/jobcenter/v1/attest-requests",
            json=attest_request_body(jobcenter_gln=h.gln(JC)),
            headers=h.auth(JC),
        )
        assert response.status_code == 202, response.text
        conversation_id = response.json()["conversation_id"]
        waiting = await next_of(receiver, "/early", "message.waiting", conversation_id)

        # The topic's path, started now, reads the same event: it adds nothing.
        seen: list[StageEvent] = []

        async def handler(record: Any) -> None:
            event = parse_tracking_event(record.value)
            await webhooks.early(record)
            if isinstance(event, StageEvent):
                seen.append(event)

        late = ConsumerLoop(
            settings=h.settings,
            bootstrap=h.bootstrap,
            topic=h.gw.topics.tracking,
            group=f"{h.settings.kafka_group_prefix}.webhooks",
            handler=handler,
            producer=h.gw.producer,
            dead_letter_topic=h.gw.topics.dead_letter,
        )
        await late.start()
        try:
            await wait_for(
                lambda: _true(
                    any(
                        e.conversation_id == conversation_id and e.stage is Stage.IN_MAILBOX
                        for e in seen
                    )
                )
            )
            await webhooks.sender.settle()
        finally:
            await late.stop()
        store = SqlWebhookStore(h.gw.engine)
        made = [
            d
            for d in await store.deliveries_of(PSY, status=None, limit=100)
            if d.conversation_id == conversation_id
        ]
        assert [d.id for d in made] == [waiting.headers["webhook-id"]]
        assert [i for _, i in receiver.seen if i == waiting.headers["webhook-id"]] == [made[0].id]


async def _true(value: bool) -> bool:
    return value


def reply_of(request_bundle: Bundle, now: dt.datetime) -> dict[str, Any]:
    return build_attest_reply(
        request=request_bundle,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=now,
        author=CLINICIAN,
        text=ATTEST_TEXT,
        pdf=None,
    )


async def test_a_receiver_down_then_up_gets_the_delivery(gateway: Harness, ca: DevCA) -> None:
    h = gateway
    with socket.socket() as s:  # a port where nothing listens, for now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    receiver = Receiver(ca)
    receiver.port = port
    hook = await register(h, JC, receiver, "/down")
    try:
        delivery_id = await ping(h, JC, hook["id"])

        async def failed_twice() -> dict[str, Any] | None:
            d = await delivery(h, JC, delivery_id)
            return d if d["attempts"] >= 2 else None

        down = await wait_for(failed_twice)
        assert down["status"] == "pending"
        assert down["last_error"] == "connect-failed"
        assert down["last_status_code"] is None
        await receiver.start(port)
        try:
            got = await the_delivery(receiver, "/down", delivery_id)
            assert got.payload["type"] == "ping"
            done = await settled(h, JC, delivery_id)
            assert done["status"] == "delivered"
            assert done["attempts"] >= 3
            assert done["delivered_at"] is not None
        finally:
            await receiver.stop()
    finally:
        await remove(h, JC, hook["id"])


@pytest.mark.parametrize(
    "script",
    [[500, 500], [("slow", 2.5)], [("redirect", "https://localhost:9/elsewhere")]],
    ids=["answers-500", "slow", "redirects"],
)
async def test_a_failing_receiver_gets_the_delivery_again_with_the_same_id(
    gateway: Harness, receiver: Receiver, script: list[Any]
) -> None:
    h = gateway
    path = f"/faulty-{uuid.uuid4().hex[:8]}"
    receiver.behaviour[path] = Behaviour(script=list(script))
    hook = await register(h, PSY, receiver, path)
    try:
        delivery_id = await ping(h, PSY, hook["id"])
        got = await receiver.next(path)
        assert got.headers["webhook-id"] == delivery_id
        done = await settled(h, PSY, delivery_id)
        assert done["status"] == "delivered"
        assert done["attempts"] == len(script) + 1
        assert done["last_status_code"] == 204
        # every attempt reached the receiver with the same id
        assert [i for p, i in receiver.seen if p == path] == [delivery_id] * (len(script) + 1)
    finally:
        await remove(h, PSY, hook["id"])


@pytest.mark.parametrize(
    ("behaviour", "error", "status_code"),
    [
        (500, "http-500", 500),
        (("slow", 2.5), "read-timeout", None),
        (("redirect", "https://localhost:9/elsewhere"), "redirect-not-followed", 302),
    ],
    ids=["answers-500", "slow", "redirects"],
)
async def test_the_log_shows_the_last_error_while_a_delivery_is_retried(
    gateway: Harness,
    receiver: Receiver,
    behaviour: Any,
    error: str,
    status_code: int | None,
) -> None:
    h = gateway
    path = f"/failing-{uuid.uuid4().hex[:8]}"
    receiver.behaviour[path] = Behaviour(default=behaviour)
    hook = await register(h, JC, receiver, path)
    try:
        delivery_id = await ping(h, JC, hook["id"])

        async def retried() -> dict[str, Any] | None:
            d = await delivery(h, JC, delivery_id)
            return d if d["attempts"] >= 1 else None

        pending = await wait_for(retried)
        assert pending["status"] == "pending"
        assert (pending["last_error"], pending["last_status_code"]) == (error, status_code)
        assert pending["next_attempt_at"] is not None
        redelivered = await h.client.post(
            f"/webhooks/v1/deliveries/{delivery_id}/redeliver", headers=h.auth(JC)
        )
        assert redelivered.status_code == 202
        assert redelivered.json() == {"id": delivery_id, "status": "pending"}
    finally:
        await remove(h, JC, hook["id"])
    removed = await delivery(h, JC, delivery_id)
    assert removed["status"] == "failed"
    assert removed["last_error"] == "endpoint-removed"


async def test_endpoint_urls_and_events_are_checked(gateway: Harness, receiver: Receiver) -> None:
    h = gateway
    for body, code in [
        ({"url": "http://localhost:9/hook"}, "invalid-webhook-url"),
        ({"url": "https://u:p@localhost:9/hook"}, "invalid-webhook-url"),
        ({"url": receiver.url("/x"), "events": ["reply.arrived"]}, "invalid-webhook-events"),
        ({"url": receiver.url("/x"), "events": ["no.such"]}, "invalid-request"),
    ]:
        response = await h.client.post("/webhooks/v1/endpoints", json=body, headers=h.auth(PSY))
        assert response.status_code == 422, response.text
        assert response.json()["code"] == code
    listed = await h.get_json("/webhooks/v1/endpoints", PSY)
    assert "secret" not in orjson.dumps(listed).decode()


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    gateway: Harness, receiver: Receiver
) -> None:
    h = gateway
    hook = await register(h, JC, receiver, "/rotating")
    stranger = await register(h, JC, receiver, "/stranger", events=["reply.arrived"])
    old = hook["secret"]
    try:
        rotated = await h.client.post(
            f"/webhooks/v1/endpoints/{hook['id']}/rotate", headers=h.auth(JC)
        )
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old
        for only in (old, new):  # a receiver holding either secret verifies
            receiver.secrets["/rotating"] = [only]
            delivery_id = await ping(h, JC, hook["id"])
            got = await the_delivery(receiver, "/rotating", delivery_id)
            assert len(got.headers["webhook-signature"].split(" ")) == 2
            # The partner client's check, on the delivery exactly as it came over the wire.
            assert verify_webhook(got.headers, got.body, only) == got.payload
            with pytest.raises(WebhookInvalid):
                verify_webhook(got.headers, got.body, stranger["secret"])
            with pytest.raises(WebhookInvalid):
                verify_webhook(got.headers, got.body.replace(b"ping", b"pong"), only)
    finally:
        await remove(h, JC, stranger["id"])
        await remove(h, JC, hook["id"])
    assert receiver.refused == 0


async def test_settled_deliveries_leave_the_log_after_the_retention_period(
    gateway: Harness, receiver: Receiver
) -> None:
    h = gateway
    hook = await register(h, JC, receiver, "/retained")
    try:
        delivered = await ping(h, JC, hook["id"])
        await receiver.next("/retained")
        await settled(h, JC, delivered)
        receiver.behaviour["/retained"] = Behaviour(default=500)
        pending = await ping(h, JC, hook["id"])
        later = h.gw.clock.now() + dt.timedelta(
            seconds=h.settings.webhook_log_retention_seconds + 1
        )
        await prune(h.gw, later)
        store = SqlWebhookStore(h.gw.engine)
        assert await store.delivery(delivered) is None
        still = await store.delivery(pending)
        assert still is not None
        assert still.status is DeliveryStatus.PENDING
    finally:
        await remove(h, JC, hook["id"])
