"""Fault test with real processes: a broker, the API and two workers, under load, while a
worker is killed (-9) and restarted, a third worker joins and later leaves (SIGTERM), the API
is killed (-9) and restarted, and the embedded broker restarts (losing everything it held).
Afterwards every accepted request is in exactly one mailbox exactly once, every reply in
exactly one inbox exactly once, every conversation's timeline is complete, and the
dead-letter topic holds only the records poisoned on purpose.

600 requests per database, or `FAULT_TEST_REQUESTS` (e.g. 10000).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from attest_gateway.config import load_settings
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.crypto.sealing import OrgKeys, open_envelope
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.infra.db import tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.kafka.embedded import free_port
from attest_gateway.infra.kafka.reading import read_epoch
from attest_gateway.medcom.build import build_attest_reply
from attest_gateway.medcom.parse import parse_bundle
from tests.support.harness import (
    PDF,
    attest_request_body,
    committed_offsets,
    fresh_database,
    read_topic,
)
from tests.support.kafka import EXTERNAL, RESTART_COMMAND, client_args, run_command, settings_for
from tests.support.people import CLINICIAN
from tests.support.processes import Proc, base_env, wait_until_healthy, wait_until_listening

# The issue asks for 10,000; on this 2-core machine the round trips run at a few per second in
# this test (three gateway processes, the clients and the broker share two cores; SQLite
# serialises every writer), which would take over an hour per database: more than CI's budget.
# CI runs 600 per database; `FAULT_TEST_REQUESTS=10000` runs the full size.
REQUESTS = int(os.environ.get("FAULT_TEST_REQUESTS", "600"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600 + 2 * REQUESTS)]
POISON = 5
DLQ = "gateway.dead-letter"
JC, PSY = "jc-koebenhavn", "psyk-kbh"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class Stack:
    kind: str
    url: str
    var_dir: Path
    bootstrap: str
    api_url: str
    broker: Proc | None  # None: the external broker (TEST_KAFKA_BOOTSTRAP_SERVERS)
    api: Proc
    workers: list[Proc]
    api_port: int
    broker_port: int
    prefix: str  # of the topics; "" on a broker of the test's own
    group_prefix: str
    faults: dict[str, float] = field(default_factory=dict)

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def restart_broker(self) -> None:
        if self.broker is not None:
            self.broker.terminate()
            self.broker.start()
            await wait_until_listening(self.broker_port, self.broker)
            return
        assert EXTERNAL is not None
        assert EXTERNAL.restart_command is not None
        await asyncio.to_thread(run_command, EXTERNAL.restart_command)
        await asyncio.to_thread(EXTERNAL.wait_reachable)


@pytest_asyncio.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    if EXTERNAL is not None and EXTERNAL.restart_command is None:
        pytest.skip(f"restarts the broker: on an external broker it needs {RESTART_COMMAND}")
    async with fresh_database(request.param, tmp_path) as url:
        broker_port, api_port = free_port(), free_port()
        # A broker of the test's own, or the external one (base_env: with a topic prefix).
        bootstrap = EXTERNAL.bootstrap if EXTERNAL else f"127.0.0.1:{broker_port}"
        env = base_env(
            VAR_DIR=str(tmp_path / "var"),
            **({} if EXTERNAL else {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}),
            API_PORT=str(api_port),
            LOG_LEVEL="WARNING",
            RELAY_POLL_SECONDS="0.2",
            SWEEP_INTERVAL_SECONDS="1",
            # The broker restart is recovered by the replay of the outbox; re-publishing what
            # merely waits in a lagging consumer's queue would only add load.
            REPUBLISH_AFTER_SECONDS="300",
            SHUTDOWN_GRACE_SECONDS="5",
            # The job centre submits from 12 connections at once as fast as the API takes it.
            CONCURRENT_REQUESTS_PER_ORG="16",
            CONCURRENT_REQUESTS_PER_ORG_TOTAL="32",  # the 12 writers and the test's own reads
        )
        if request.param == "postgres":
            env["DATABASE_URL"] = url
        else:
            url = f"sqlite+aiosqlite:///{(tmp_path / 'var' / 'gateway.db').as_posix()}"

        def proc(name: str, *args: str) -> Proc:
            return Proc(name, list(args), env, tmp_path, tmp_path / f"{name}.log")

        broker = None if EXTERNAL else proc("broker", "broker", "--port", str(broker_port))
        api = proc("api", "serve", "--role", "api")
        workers = [
            proc(f"worker-{n}", "serve", "--role", "worker", "--port", str(free_port()))
            for n in "abc"
        ]
        try:
            if broker is not None:
                await wait_until_listening(broker_port, broker.start())
            api.start()
            await wait_until_healthy(f"http://127.0.0.1:{api_port}", api)
            for w in workers[:2]:  # the third joins under load
                w.start()
            yield Stack(
                request.param, url, tmp_path / "var", bootstrap,
                f"http://127.0.0.1:{api_port}", broker, api, workers, api_port, broker_port,
                env.get("KAFKA_TOPIC_PREFIX", ""),
                env.get("KAFKA_GROUP_PREFIX", "attest-gateway"),
            )  # fmt: skip
        finally:
            for p in [*workers, api, *([broker] if broker else [])]:
                with contextlib.suppress(Exception):
                    p.terminate(timeout=30)


async def send(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    """Retry through a restarting API (connection errors, 503) until it answers."""
    for _ in range(600):
        try:
            response = await client.request(method, url, **kw)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code == 503:
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        return response
    raise AssertionError(f"{method} {url} never answered")


@dataclass
class Load:
    accepted: dict[str, str] = field(default_factory=dict)  # idempotency key → conversation
    replied: set[str] = field(default_factory=set)  # request message ids answered
    inbox_seen: dict[str, int] = field(default_factory=dict)  # reply message id → times


async def job_centre(stack: Stack, load: Load, creds: dict[str, Any]) -> None:
    gln = next(o.gln for o in DEMO_ORGS if o.id == JC)
    assert gln is not None
    headers = {"Authorization": f"Bearer {creds[JC]['api_key']}"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REQUESTS):
        queue.put_nowait(i)

    async def submitter() -> None:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
            while not queue.empty():
                i = queue.get_nowait()
                key = f"fault-{i}"
                body = attest_request_body(jobcenter_gln=gln, caseworker_ref=f"sag-{i}")
                response = await send(
                    client, "POST", "/jobcenter/v1/attest-requests",
                    json=body, headers={**headers, "Idempotency-Key": key},
                )  # fmt: skip
                assert response.status_code == 202, response.text
                load.accepted[key] = response.json()["conversation_id"]

    await asyncio.gather(*(submitter() for _ in range(12)))


async def psychiatry(stack: Stack, load: Load, creds: dict[str, Any], done: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {creds[PSY]['api_key']}"}
    keys = OrgKeys.load(Path(creds[PSY]["private_keys"]))
    limit = asyncio.Semaphore(8)

    async def handle(client: httpx.AsyncClient, item: dict[str, Any]) -> None:
        async with limit:
            if item["message_type"] == "attest-request":
                envelope = SealedEnvelope.model_validate(item["envelope"])
                key = next(
                    k for k in keys.hpke_keys if k.key_id == envelope.header.recipient_key_id
                )
                request = parse_bundle(orjson.loads(open_envelope(envelope, key)))
                mid = item["message_id"]
                reply = build_attest_reply(
                    author=CLINICIAN,
                    request=request,
                    # Deterministic ids: a retried reply is a MedCom duplicate, not a new one.
                    message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"reply:{mid}")),
                    bundle_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"reply-bundle:{mid}")),
                    sent_at=dt.datetime.now(dt.UTC),
                    text="Attest til fejltest.",
                    pdf=PDF,
                )
                answer = await send(
                    client, "POST", "/medcom/v1/messages", content=orjson.dumps(reply),
                    headers={**headers, "Content-Type": "application/fhir+json"},
                )  # fmt: skip
                assert answer.status_code == 202, answer.text
                load.replied.add(mid)
            await send(
                client, "POST", f"/medcom/v1/mailbox/{item['message_id']}/collected",
                headers=headers,
            )  # fmt: skip

    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        while not done.is_set():
            response = await send(client, "GET", "/medcom/v1/mailbox?limit=200", headers=headers)
            items = response.json()["items"]
            if not items:
                await asyncio.sleep(0.2)
                continue
            await asyncio.gather(*(handle(client, item) for item in items))


async def job_centre_inbox(
    stack: Stack, load: Load, creds: dict[str, Any], done: asyncio.Event
) -> None:
    headers = {"Authorization": f"Bearer {creds[JC]['api_key']}"}
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        while not done.is_set():
            response = await send(client, "GET", "/jobcenter/v1/inbox?limit=200", headers=headers)
            items = response.json()["items"]
            if not items:
                await asyncio.sleep(0.2)
                continue
            for item in items:
                load.inbox_seen[item["message_id"]] = load.inbox_seen.get(item["message_id"], 0) + 1
                await send(
                    client, "POST", f"/jobcenter/v1/inbox/{item['message_id']}/ack", headers=headers
                )


async def count_stage(stack: Stack, stage: str) -> int:
    engine = make_engine(stack.url)
    try:
        async with engine.connect() as conn:
            n: int = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(tables.stages)
                    .where(tables.stages.c.stage == stage)
                )
            ).scalar_one()
            return n
    finally:
        await engine.dispose()


async def faults(stack: Stack, load: Load) -> None:
    """Inject the faults as the load passes 25 %, 50 % and 75 % of the requests."""

    async def at(fraction: float) -> None:
        while len(load.accepted) < REQUESTS * fraction:  # noqa: ASYNC110 - polled counter
            await asyncio.sleep(0.05)

    await at(0.25)
    stack.faults["worker killed"] = time.time()
    stack.workers[0].kill9()
    stack.workers[0].start()
    await at(0.35)
    stack.faults["third worker joined"] = time.time()
    stack.workers[2].start()
    await at(0.5)
    stack.faults["api killed"] = time.time()
    stack.api.kill9()
    stack.api.start()
    await wait_until_healthy(stack.api_url, stack.api)
    await at(0.65)
    stack.faults["third worker left (SIGTERM)"] = time.time()
    assert stack.workers[2].terminate(timeout=60) == 0  # graceful: finishes, commits, leaves
    await at(0.75)
    stack.faults["broker restarted"] = time.time()
    await stack.restart_broker()


@dataclass
class Poison:
    """The records poisoned on purpose: each key's value, where the broker last acknowledged
    it, how many produces it took (a retried produce may leave it there twice), and how often
    the broker lost it and it was produced again, and for each loss whether a fetch at the
    offset it was acknowledged at still returned it (hidden behind an overlapping batch)."""

    values: dict[str, bytes]
    placed: dict[str, tuple[int, int]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    fetched_at_offset: dict[str, list[bool]] = field(default_factory=dict)

    async def produce(self, stack: Stack, keys: set[str]) -> None:
        producer = AIOKafkaProducer(**client_args(stack.bootstrap), acks="all")
        await producer.start()
        try:
            for key in sorted(keys):
                attempts, self.placed[key] = await _send_retrying(
                    producer,
                    stack.topic("medcom.messages"),
                    value=self.values[key],
                    key=key.encode(),
                )
                self.attempts[key] = self.attempts.get(key, 0) + attempts
        finally:
            await producer.stop()


async def poison(stack: Stack) -> Poison:
    """After the broker restart (which empties every topic): records that must be dead-lettered."""
    # Produced once the gateway has recovered: the sweeper that recreates the lost topics
    # writes the broker's new epoch last. Before that a relay's produce may already have
    # auto-created a topic, and records written to such a topic in its first seconds have
    # been seen to vanish from the embedded broker (acknowledged at partition 0 offset 2, not
    # on the broker a minute later, under CPU contention): a loss of the broker's, which no
    # consumer could dead-letter. The gateway's own records are replayed from the outbox.
    settings = load_settings(**settings_for(stack.bootstrap))
    canary = stack.topic("gateway.canary")
    while not await read_epoch(settings, stack.bootstrap, canary):  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    poisoned = Poison(
        {
            f"poison-{i}": os.urandom(40 + i)
            if i % 2
            else b'{"header": {"v": 1}, "ciphertext": "AA=="}'
            for i in range(POISON)
        }
    )
    await poisoned.produce(stack, set(poisoned.values))
    return poisoned


async def replace_lost(stack: Stack, poisoned: Poison, missing: set[str]) -> None:
    """Produce again the poisoned records that no reader in offset order can read any more.

    The embedded broker can acknowledge two produces to one partition with overlapping
    offsets: both batches are stored, a fetch at the hidden record's own offset still returns
    it, but a reader going forward through the partition (every consumer, the gateway's too)
    gets the other batch and skips past it (bench/broker_probe.py reproduces it; most often
    in the first seconds of an auto-created topic, seen in CI at offsets 129 and 141 under
    CPU contention). No consumer can dead-letter such a record, so the test counts the loss,
    notes whether the fetch at its offset still returns it, and places it again (at most
    three times). It takes a record as lost only when a read of the whole topic in offset
    order, made after the record was acknowledged, does not hold its key; a record that read
    holds is left alone: if the gateway skipped it, the test fails.
    """
    held = _keys(await read_topic(stack.bootstrap, stack.topic("medcom.messages")))
    gone = {key for key in missing - held if poisoned.lost.get(key, 0) < 3}
    for key in sorted(gone):
        poisoned.lost[key] = poisoned.lost.get(key, 0) + 1
        at = poisoned.placed[key]
        poisoned.fetched_at_offset.setdefault(key, []).append(await _key_at(stack, at) == key)
    if gone:
        print(f"the broker lost poisoned records {sorted(gone)}: producing them again")
        await poisoned.produce(stack, gone)


async def _key_at(stack: Stack, placed: tuple[int, int]) -> str | None:
    """The key of the record that a fetch at exactly `placed` (partition, offset) of
    `medcom.messages` returns first, and None when it returns nothing in five seconds."""
    tp = TopicPartition(stack.topic("medcom.messages"), placed[0])
    consumer = AIOKafkaConsumer(**client_args(stack.bootstrap), enable_auto_commit=False)
    try:
        await consumer.start()
        consumer.assign([tp])
        consumer.seek(tp, placed[1])
        records = (await consumer.getmany(tp, timeout_ms=5000, max_records=1)).get(tp, [])
    finally:
        await consumer.stop()
    return (records[0].key or b"").decode() if records and records[0].offset == placed[1] else None


async def _send_retrying(
    producer: AIOKafkaProducer, topic: str, *, value: bytes, key: bytes
) -> tuple[int, tuple[int, int]]:
    """Right after its restart the embedded broker may answer a produce with an unknown error
    while it sets the recreated topic up; a producer retries that (the gateway's relay does).
    Returns the number of attempts and where the record was acknowledged."""
    attempts = 0
    placed = (-1, -1)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(KafkaError),
        wait=wait_exponential(multiplier=0.2, max=2),
        stop=stop_after_attempt(10),
        reraise=True,
    ):
        with attempt:
            attempts += 1
            metadata = await producer.send_and_wait(topic, value=value, key=key)
            placed = (metadata.partition, metadata.offset)
    return attempts, placed


def _keys(records: list[ConsumerRecord[bytes, bytes]]) -> set[str]:
    return {(r.key or b"").decode() for r in records}


async def _where_are(stack: Stack, missing: dict[str, tuple[int, int]]) -> str:
    """For a failure message: whether each missing poisoned record is still on the broker
    where it was acknowledged (read in order, and by a fetch at its offset), and what the
    delivery group has committed there."""
    topic = stack.topic("medcom.messages")
    records = await read_topic(stack.bootstrap, topic)
    on_broker = {
        (r.key or b"").decode(): (r.partition, r.offset)
        for r in records
        if (r.key or b"").startswith(b"poison-")
    }
    there_now = {(r.partition, r.offset): (r.key or b"").decode() for r in records}
    ends: dict[int, int] = {}
    for r in records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    committed = await committed_offsets(
        stack.bootstrap,
        f"{stack.group_prefix}.delivery",
        [TopicPartition(topic, partition) for partition, _ in missing.values()],
    )
    fetched = {key: await _key_at(stack, at) for key, at in missing.items()}
    return "\n".join(
        f"{key}: acknowledged at partition {partition} offset {offset}; on the broker now at "
        f"{on_broker.get(key)}; delivery group committed "
        f"{committed[TopicPartition(topic, partition)]} there; read in order, that "
        f"offset now holds {there_now.get((partition, offset))!r}, a fetch at it returns "
        f"{fetched[key]!r}; the partition ends at {ends.get(partition)}"
        for key, (partition, offset) in sorted(missing.items())
    )


async def test_accepted_means_delivered_exactly_once_through_faults(stack: Stack) -> None:
    creds = json.loads((stack.var_dir / "demo-credentials.json").read_text("utf-8"))
    load = Load()
    done = asyncio.Event()
    started = time.time()
    consumers = [
        asyncio.create_task(psychiatry(stack, load, creds, done)),
        asyncio.create_task(job_centre_inbox(stack, load, creds, done)),
    ]
    injector = asyncio.create_task(faults(stack, load))
    await job_centre(stack, load, creds)
    await injector
    poisoned = await poison(stack)

    deadline = time.monotonic() + 600 + REQUESTS  # generous: a bound against a hang, not a speed
    while await count_stage(stack, "reply_acknowledged") < REQUESTS:
        assert time.monotonic() < deadline, "the round trips did not complete"
        for p in [stack.api, *stack.workers[:2]]:
            assert p.alive(), p.log()[-3000:]
        for task in consumers:
            if task.done():
                task.result()  # a client loop that died: show why
        await asyncio.sleep(1)
    done.set()
    await asyncio.gather(*consumers)
    elapsed = time.time() - started

    # Exactly once, from the store.
    engine = make_engine(stack.url)
    try:
        async with engine.connect() as conn:
            conversations = {
                r.id: r.request_message_id
                for r in await conn.execute(sa.select(tables.conversations))
            }
            mailbox = list(
                await conn.execute(
                    sa.select(
                        tables.mailbox.c.conversation_id,
                        tables.mailbox.c.message_type,
                        tables.mailbox.c.receiver_org_id,
                    )
                )
            )
            stages = list(
                await conn.execute(
                    sa.select(
                        tables.stages.c.conversation_id, tables.stages.c.stage, tables.stages.c.at
                    )
                )
            )
    finally:
        await engine.dispose()
    accepted = set(load.accepted.values())
    assert len(accepted) == REQUESTS
    assert set(conversations) == accepted  # no conversation without a 202, none lost
    requests_in_mailbox = [m for m in mailbox if m.message_type == "attest-request"]
    replies_in_inbox = [m for m in mailbox if m.message_type == "attest-reply"]
    per_request = dict.fromkeys(accepted, 0)
    for m in requests_in_mailbox:
        per_request[m.conversation_id] += 1
        assert m.receiver_org_id == PSY
    per_reply = dict.fromkeys(accepted, 0)
    for m in replies_in_inbox:
        per_reply[m.conversation_id] += 1
        assert m.receiver_org_id == JC
    assert set(per_request.values()) == {1}
    assert set(per_reply.values()) == {1}
    assert set(load.inbox_seen.values()) <= {1, 2}  # an ack lost in a restart shows it again
    expected_stages = {
        "submitted",
        "published",
        "in_mailbox",
        "fetched",
        "acknowledged",
        "replied",
        "reply_in_inbox",
        "reply_fetched",
        "reply_acknowledged",
    } - {"acknowledged"}  # this load sends replies without a separate acknowledgement
    timeline: dict[str, set[str]] = {c: set() for c in accepted}
    for s in stages:
        timeline[s.conversation_id].add(s.stage)
    incomplete = [c for c, st in timeline.items() if not expected_stages <= st]
    assert incomplete == []

    # A bound against a hang, not a speed: after the broker restart the consumers rewind and
    # rejoin, which on the embedded broker has taken longer than two minutes under this load.
    deadline = time.monotonic() + 420
    next_check = time.monotonic() + 20
    while missing := set(poisoned.values) - _keys(
        dead := await read_topic(stack.bootstrap, stack.topic(DLQ))
    ):
        if time.monotonic() > deadline:
            pytest.fail(
                "the poisoned records were not dead-lettered:\n"
                + await _where_are(stack, {k: poisoned.placed[k] for k in missing})
            )
        if time.monotonic() > next_check:
            next_check = time.monotonic() + 20
            await replace_lost(stack, poisoned, missing)
        await asyncio.sleep(0.5)
    assert _keys(dead) == set(poisoned.values)  # only the poisoned records, every one of them
    # Each poisoned record is one source record, dead-lettered at least once: a consumer that
    # dead-letters a record and loses its partition in a rebalance before the offset commit
    # is redone by the next owner (at-least-once, as for every handler; replay is idempotent).
    # A second *source* record per key only where the test produced it again: a produce
    # retried, or a record the broker lost and the test placed again.
    sources: dict[str, set[tuple[str, str]]] = {}
    for r in dead:
        headers = {name: value.decode() for name, value in r.headers or ()}
        where = (headers["dlq-source-partition"], headers["dlq-source-offset"])
        sources.setdefault((r.key or b"").decode(), set()).add(where)
    # (one source per produce that may have placed the record)
    assert all(1 <= len(sources[k]) <= poisoned.attempts[k] for k in poisoned.values)

    # Time to recover: from each fault to the first request submitted after it reaching a mailbox.
    by_conv: dict[str, dict[str, dt.datetime]] = {}
    for s in stages:
        at = s.at if s.at.tzinfo else s.at.replace(tzinfo=dt.UTC)
        by_conv.setdefault(s.conversation_id, {})[s.stage] = at
    recovery = {}
    for name, t in stack.faults.items():
        fault_at = dt.datetime.fromtimestamp(t, dt.UTC)
        after = [
            v["in_mailbox"]
            for v in by_conv.values()
            if v["submitted"] > fault_at and "in_mailbox" in v
        ]
        recovery[name] = round((min(after) - fault_at).total_seconds(), 2) if after else None
    report = {
        "database": stack.kind,
        "requests": REQUESTS,
        "accepted": len(accepted),
        "requests_delivered": len(requests_in_mailbox),
        "replies_delivered": len(replies_in_inbox),
        "duplicates": sum(n - 1 for n in per_request.values() if n > 1)
        + sum(n - 1 for n in per_reply.values() if n > 1),
        "lost": sum(1 for n in per_request.values() if n == 0)
        + sum(1 for n in per_reply.values() if n == 0),
        "dead_letters": len(dead),
        "poisoned_records_lost_by_broker": poisoned.lost,
        "lost_but_returned_by_a_fetch_at_their_offset": poisoned.fetched_at_offset,
        "seconds_to_first_delivery_after_fault": recovery,
        "elapsed_seconds": round(elapsed, 1),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"reliability-{stack.kind}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    assert all(v is not None for v in recovery.values())
