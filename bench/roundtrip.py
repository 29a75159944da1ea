"""The whole conversation: request → receiver's mailbox → acknowledgement and attest reply →
the job centre's inbox → the job centre's acknowledgement of the reply.

Per database (SQLite, PostgreSQL) one gateway process (``attest-gateway serve``, started as
in bench/gateway_ingest.py: fresh VAR_DIR and database, the run's shared broker, primed) serves
every run of that database, so the warm-up run warms the gateway itself. The clients are
tasks of the benchmark process (a separate OS process from the gateway), speaking HTTP/1.1
keep-alive to the real API (bench/loadgen.py's raw connection) with the demo organisations'
API keys (VAR_DIR/demo-credentials.json):

- Jobcenter København submits attest requests at a fixed mix (seeded): 60 % LÆ 265
  ("Lægeattest til rehabiliteringsteam") to the GP clinic Lægehuset Nørrebro (addressed by
  ydernummer; jobafklarings- or ressourceforløb, no psychiatric course) and 40 % LÆ 155
  ("Speciallægeattest") to Psykiatrisk Center København (by SOR; sygedagpenge, psychiatric
  course), each for a distinct citizen.
- Each receiver (the psychiatry unit and the GP clinic) has a task that polls its mailbox
  (``GET /medcom/v1/mailbox``), opens each request with its own private key (its demo key
  file), sends a MedCom acknowledgement and the attest reply (text and a small PDF) as FHIR
  JSON (``POST /medcom/v1/messages``; the gateway seals the reply for the job centre), and
  marks the request collected: up to 8 requests at a time, then it polls again.
- A job-centre task polls its inbox (``GET /jobcenter/v1/inbox``) and acknowledges each reply
  (``POST /jobcenter/v1/inbox/{id}/ack``).

An idle poll (nothing waiting) sleeps 0.1 s before the next; a poll that found something is
followed by the next poll at once. The push-driven variant (``roundtrip.push.``) has the same
clients read with the long-poll instead (``?wait=20``): a read that finds nothing waits in the
gateway and answers as soon as something arrives, and the next read follows at once; nothing
sleeps. The webhook-driven variant (``roundtrip.hook.``) registers a webhook endpoint per
organisation for the run (``POST /webhooks/v1/endpoints``: ``message.waiting`` for the two
clinics, ``reply.arrived`` for the job centre) on a real HTTPS receiver in the benchmark
process (uvicorn, a certificate of the development CA, which the gateway trusts through
``WEBHOOK_CA_FILE``); the receiver verifies each delivery's signature with
``standardwebhooks`` and wakes that organisation's client, which reads its mailbox or inbox
(no wait); a read that finds nothing waits for the next delivery (at most 30 s, then reads
anyway). The variants' runs are interleaved on the same gateway process (a warm-up round,
then each round runs every variant once), so a change of the machine's load falls on all.

Closed loop: C = 16 conversation slots; a slot submits a request, waits until the job centre
has acknowledged its reply, and submits the next, for the window (15 s; 3 s with --quick);
then the conversations in flight drain.

The clock: one monotonic clock (``time.perf_counter``) of the benchmark process.

- ``roundtrip.max``: round trips per second: conversations whose reply the job centre read
  and acknowledged / (the last such acknowledgement's answer − the first request's send).
  Baseline ``ingest.max`` (request → mailbox alone), so the ratio shows what the rest of the
  conversation costs.
- ``roundtrip.p50``, ``roundtrip.p99``: ms from the request's 202 answer to the answer of the
  inbox read that returned its reply (the nearest-rank percentile over the run's completed
  conversations). It includes both hops' polling (up to 0.1 s idle sleep each, plus a
  receiver's batch) and the clients' own work, as a real deployment's would.
- ``roundtrip.cpu_ms``: the gateway process's user + system CPU from a settled gateway before
  the load to a settled one after it (every accepted request and reply handled, every record
  of medcom.messages and gateway.tracking consumed: bench/gateway_ingest.py ``settle``), per
  completed round trip; the embedded broker is not counted.
- ``roundtrip.rss``: MiB, the gateway process's peak RSS (VmHWM) after the run; one process
  serves every run of its database, so this is its peak so far.

The same with ``roundtrip.pg.`` on PostgreSQL, ``roundtrip.push.``, ``roundtrip.pg.push.``
for the long-polling clients and ``roundtrip.hook.``, ``roundtrip.pg.hook.`` for the
webhook-driven ones (whose extras add, per leg, the time from the stage a delivery reports to
its arrival at the receiver). The figures' extras add the gateway-side
segments of each conversation (from its ``stages`` table, the gateway's clock), SQL statements
per round trip, non-202 answers, client errors and the clients' CPU seconds.
``BENCH_ROUNDTRIP_DBS=sqlite`` (default ``sqlite,postgres``) chooses the databases.

Timed: the window and the drain. Not timed: starting the gateway, settling before and after
a run, reading the database and /metrics afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import orjson
import sqlalchemy as sa
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.directory import Organisation
from attest_gateway.crypto.sealing import OrgKeys, open_envelope
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.devtools.devca import DevCA, ensure_ca, issue_server_certificate
from attest_gateway.devtools.simulate import SIMULATED_CLINICIAN
from attest_gateway.infra.db.engine import aware, make_engine
from attest_gateway.infra.db.tables import stages
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.parse import parse_bundle
from bench.common import (
    SEED,
    BenchContext,
    Figure,
    console,
    cpu_seconds,
    peak_rss_mib,
    percentile,
)
from bench.gateway_ingest import (
    ATTEST_PATH,
    JOBCENTER,
    SETTLE_S,
    STATEMENTS,
    RunningGateway,
    gateway,
    settle,
)
from bench.loadgen import DAYS, QUESTIONS, Answer, RawConnection, cpr_for

CONCURRENCY = 16  # conversations in flight
HANDLERS = 8  # requests a receiver handles at a time (and replies the job centre acks)
POLL_IDLE_S = 0.1  # a poll that found nothing waits this long before the next
POLL_LIMIT = 200  # items per mailbox or inbox read
LONG_POLL_S = 20  # the push-driven clients' `?wait=`
NOTICE_FALLBACK_S = 30.0  # a webhook-driven client reads anyway after this long unnotified
KEEP_ALIVE_S = 2.0  # a connection idle longer is reopened (uvicorn closes idle ones after 5 s)
DRAIN_S = 120.0  # at most, after the window, for the conversations in flight (plus 4 windows)
REPLY_TEXT = "Borgeren er i behandling; attesten er udfærdiget til benchmark."
REPLY_PDF = b"%PDF-1.4\n% attest benchmark document\n"


def _org(org_id: str) -> Organisation:
    return next(o for o in DEMO_ORGS if o.id == org_id)


# --- what the job centre asks for ------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One kind of request of the mix: to whom, which attest, its share."""

    receiver: Organisation
    attest_type: str
    case_kinds: tuple[str, ...]
    psychiatric_course: bool
    share: float

    def receiver_ref(self) -> dict[str, str]:
        """A GP practice by its ydernummer, a hospital unit by its SOR code."""
        if self.receiver.ydernummer:
            return {"ydernummer": self.receiver.ydernummer}
        return {"sor": self.receiver.sor or ""}


GP = _org("gp-noerrebro")
PSYCHIATRY = _org("psyk-kbh")
MIX: tuple[Route, ...] = (
    Route(GP, "LÆ 265", ("jobafklaringsforloeb", "ressourceforloeb"), False, 0.6),
    Route(PSYCHIATRY, "LÆ 155", ("sygedagpenge",), True, 0.4),
)
MIX_NOTE = (
    "Jobcenter København → 60 % LÆ 265 to the GP clinic (gp-noerrebro), 40 % LÆ 155 to "
    "psychiatry (psyk-kbh), seeded; each receiver opens the request with its own key, sends "
    "a MedCom acknowledgement and the attest reply (FHIR JSON, text + PDF) and marks it "
    "collected; the job centre reads its inbox and acknowledges each reply"
)


class Requests:
    """Valid attest requests of the mix, each for a distinct citizen, from one seeded
    random stream; the index goes on over the runs on one gateway."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.day_offset = random.Random(seed).randrange(DAYS)
        self.first_day_of_absence = (dt.date.today() - dt.timedelta(days=30)).isoformat()
        self.index = 0
        self.weights = [r.share for r in MIX]

    def next(self) -> tuple[Route, bytes]:
        route = self.rng.choices(MIX, self.weights)[0]
        index, self.index = self.index, self.index + 1
        body = {
            "municipality": JOBCENTER.kommunekode,
            "jobcenter_gln": JOBCENTER.gln,
            "caseworker_ref": f"rt-{index:07d}",
            "citizen_cpr": cpr_for(index, self.day_offset),
            "citizen_name": {"given": ["Anne"], "family": "Jensen"},
            "caseworker": {"given": ["Lars"], "family": "Nielsen", "phone": "+4587131313"},
            "attest_type": route.attest_type,
            "receiver": route.receiver_ref(),
            "case_kind": self.rng.choice(route.case_kinds),
            "first_day_of_absence": self.first_day_of_absence,
            "psychiatric_course": route.psychiatric_course,
            "questions": QUESTIONS,
            "consent": {"given": True, "date": "2026-01-02"},
        }
        return route, orjson.dumps(body)


# --- HTTP as one organisation ----------------------------------------------------------------


class Api:
    """The gateway's API as one organisation (its API key), over HTTP/1.1 keep-alive
    connections (bench/loadgen.py's RawConnection): one per concurrent call, kept for reuse."""

    def __init__(self, base_url: str, api_key: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._fixed = f"Host: {self.host}:{self.port}\r\nAuthorization: Bearer {api_key}\r\n"
        self._idle: list[tuple[RawConnection, float]] = []  # with when it was last used
        self._all: list[RawConnection] = []

    async def call(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> Answer:
        if self._idle:
            conn, used = self._idle.pop()
            if time.perf_counter() - used > KEEP_ALIVE_S:
                await conn.close()  # the server may have closed it: the request reconnects
        else:
            conn = RawConnection(self.host, self.port)
            self._all.append(conn)
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}"
        if method != "GET":
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        try:
            return await conn.request((head + "\r\n").encode("latin-1"), body)
        finally:
            self._idle.append((conn, time.perf_counter()))

    async def get_items(self, path: str) -> list[dict[str, Any]]:
        answer = await self.call("GET", path)
        if answer.status != 200:
            raise RuntimeError(f"GET {path} answered {answer.status}: {answer.body[:200]!r}")
        items: list[dict[str, Any]] = orjson.loads(answer.body)["items"]
        return items

    async def aclose(self) -> None:
        for conn in self._all:
            await conn.close()


# --- webhooks: a real HTTPS receiver in the benchmark process ---------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# The events each organisation's endpoint asks for: a clinic is told a request waits in its
# mailbox, the job centre that a reply arrived in its inbox.
HOOK_EVENTS = {
    JOBCENTER.id: ["reply.arrived"],
    GP.id: ["message.waiting"],
    PSYCHIATRY.id: ["message.waiting"],
}


class WebhookReceiver:
    """The organisations' webhook endpoints: uvicorn over HTTPS on 127.0.0.1 with a
    certificate of the development CA (the gateway trusts it through WEBHOOK_CA_FILE), one
    path per organisation. Each delivery's signature is verified with `standardwebhooks`, as
    the README shows a receiver doing; a verified one wakes that organisation's client and is
    recorded (type, conversation, wall-clock time of arrival)."""

    def __init__(self, ca: DevCA) -> None:
        self._ca = ca
        self.secrets: dict[str, str] = {}  # org id → its endpoint's secret
        self._notices: dict[str, asyncio.Event] = {}
        self.received: list[tuple[str, str | None, float]] = []  # (type, conversation, time)
        self.connections: list[int] = []  # the gateway's client port of each verified delivery
        self.refused = 0
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def notice(self, org_id: str) -> asyncio.Event:
        return self._notices.setdefault(org_id, asyncio.Event())

    def url(self, org_id: str) -> str:
        return f"https://localhost:{self.port}/{org_id}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        org_id = str(scope["path"]).strip("/")
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        status = 204
        try:
            payload = Webhook(self.secrets[org_id]).verify(body, headers)
        except (KeyError, WebhookVerificationError):
            self.refused += 1
            status = 400
        else:
            data = payload.get("data") or {}
            self.received.append((payload["type"], data.get("conversation_id"), time.time()))
            self.connections.append(scope["client"][1] if scope.get("client") else 0)
            self.notice(org_id).set()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def start(self) -> None:
        pair = issue_server_certificate(self._ca, "bench-webhooks")
        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=0,
            ssl_certfile=str(pair.cert),
            ssl_keyfile=str(pair.key),
            log_level="warning",
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the webhook receiver did not start")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # not 30 s for the gateway's idle kept-alive TLS
            await self._task

    async def register(self, gw: RunningGateway, creds: dict[str, Any]) -> list[tuple[Api, str]]:
        """An endpoint per organisation (`POST /webhooks/v1/endpoints`, its own API key)."""
        made: list[tuple[Api, str]] = []
        for org_id, events in HOOK_EVENTS.items():
            key = gw.api_key if org_id == JOBCENTER.id else creds[org_id]["api_key"]
            api = Api(gw.base_url, key)
            body = orjson.dumps({"url": self.url(org_id), "events": events})
            answer = await api.call("POST", "/webhooks/v1/endpoints", body)
            if answer.status != 201:
                raise RuntimeError(f"endpoint of {org_id}: {answer.status} {answer.body[:200]!r}")
            created = orjson.loads(answer.body)
            self.secrets[org_id] = created["secret"]
            made.append((api, created["id"]))
        return made

    @staticmethod
    async def remove(made: list[tuple[Api, str]]) -> None:
        for api, endpoint_id in made:
            answer = await api.call("DELETE", f"/webhooks/v1/endpoints/{endpoint_id}")
            if answer.status != 204:
                console.print(f"  [yellow]endpoint {endpoint_id} not removed: {answer.status}")
            await api.aclose()


@contextlib.asynccontextmanager
async def webhook_receiver(ca: DevCA) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(ca)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


# --- one run ---------------------------------------------------------------------------------


@dataclass
class Trip:
    """One conversation, on the benchmark process's clock (perf_counter seconds)."""

    conversation_id: str
    receiver: str
    sent: float  # the request was sent
    accepted: float  # its 202 answered
    in_inbox: float | None = None  # the inbox read that returned the reply answered
    acked: float | None = None  # the job centre's acknowledgement of the reply answered
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def latency_ms(self) -> float:
        assert self.in_inbox is not None
        return (self.in_inbox - self.accepted) * 1000


@dataclass
class Run:
    """What one run did and measured."""

    window_s: float
    concurrency: int = CONCURRENCY
    trips: list[Trip] = field(default_factory=list)
    first_sent: float | None = None
    window_end: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)  # of the job centre's submits
    errors: dict[str, int] = field(default_factory=dict)  # of the clients, by what failed
    pending: dict[str, Trip] = field(default_factory=dict)  # conversation id → trip in flight
    early: dict[str, tuple[float, float]] = field(default_factory=dict)  # reply before its 202
    other_replies: int = 0  # replies to conversations of no trip (the priming request)
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, where: dict[str, int], key: str) -> None:
        where[key] = where.get(key, 0) + 1

    def completed(self) -> list[Trip]:
        return [t for t in self.trips if t.acked is not None]

    def missing(self) -> int:
        return len(self.trips) - len(self.completed())

    def throughput(self) -> float:
        done = self.completed()
        if not done or self.first_sent is None:
            return 0.0
        span = max(t.acked or 0.0 for t in done) - self.first_sent
        return len(done) / span if span > 0 else 0.0

    def latency(self, q: float) -> float:
        return percentile([t.latency_ms() for t in self.completed()] or [float("nan")], q)

    def drain_s(self) -> float:
        done = self.completed()
        return max(t.acked or 0.0 for t in done) - self.window_end if done else float("nan")


class Conversations:
    """The clients of one run: C job-centre slots, the receivers and the job centre's inbox."""

    def __init__(
        self,
        gw: RunningGateway,
        creds: dict[str, Any],
        requests: Requests,
        run: Run,
        *,
        wait_s: int = 0,
        hooks: WebhookReceiver | None = None,
    ) -> None:
        self.run = run
        self.wait = f"&wait={wait_s}" if wait_s else ""  # the long-poll, or polling
        self.hooks = hooks  # told by webhook deliveries: read when notified
        self.requests = requests
        self.jobcenter = Api(gw.base_url, gw.api_key)
        self.receivers = {
            r.receiver.id: (
                Api(gw.base_url, creds[r.receiver.id]["api_key"]),
                OrgKeys.load(Path(creds[r.receiver.id]["private_keys"])),
            )
            for r in MIX
        }
        self.stop = asyncio.Event()

    async def aclose(self) -> None:
        await self.jobcenter.aclose()
        for api, _ in self.receivers.values():
            await api.aclose()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), POLL_IDLE_S)

    def _forget_notices(self, org_id: str) -> None:
        """Before a read: a notice from now on means the read may have missed something."""
        if self.hooks is not None:
            self.hooks.notice(org_id).clear()

    async def _nothing_read(self, org_id: str) -> None:
        """After a read that found nothing: wait for a webhook notice (webhook-driven), come
        again at once (long-poll: it waited in the gateway) or sleep (polling)."""
        if self.hooks is not None:
            waits = [
                asyncio.ensure_future(e.wait()) for e in (self.hooks.notice(org_id), self.stop)
            ]
            await asyncio.wait(waits, timeout=NOTICE_FALLBACK_S, return_when=FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        elif not self.wait:
            await self._idle()

    # the job centre's case system: submit, then wait for the acknowledged reply

    async def slot(self, end: float) -> None:
        run = self.run
        while time.perf_counter() < end:
            route, body = self.requests.next()
            sent = time.perf_counter()
            if run.first_sent is None:
                run.first_sent = sent
            try:
                answer = await self.jobcenter.call("POST", ATTEST_PATH, body)
            except (OSError, asyncio.IncompleteReadError) as exc:
                run.count(run.statuses, type(exc).__name__)
                await asyncio.sleep(POLL_IDLE_S)
                continue
            accepted = time.perf_counter()
            run.count(run.statuses, str(answer.status))
            if answer.status != 202:
                await asyncio.sleep(POLL_IDLE_S)
                continue
            try:
                cid = str(orjson.loads(answer.body)["conversation_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                run.count(run.errors, f"202 without a conversation id: {type(exc).__name__}")
                continue
            trip = Trip(cid, route.receiver.id, sent, accepted)
            run.trips.append(trip)
            if cid in run.early:  # the reply was read before the 202 was (never seen so far)
                trip.in_inbox, trip.acked = run.early.pop(cid)
                continue
            run.pending[cid] = trip
            await trip.done.wait()

    async def inbox(self) -> None:
        run = self.run
        limit = asyncio.Semaphore(HANDLERS)

        async def acknowledge(item: dict[str, Any], read_at: float) -> None:
            async with limit:
                try:
                    answer = await self.jobcenter.call(
                        "POST", f"/jobcenter/v1/inbox/{item['message_id']}/ack"
                    )
                except (OSError, asyncio.IncompleteReadError) as exc:
                    run.count(run.errors, f"inbox ack: {type(exc).__name__}")
                    return
            if answer.status != 200:
                run.count(run.errors, f"inbox ack: {answer.status}")
                return
            acked = time.perf_counter()
            trip = run.pending.pop(item["conversation_id"], None)
            if trip is None:
                if any(t.conversation_id == item["conversation_id"] for t in run.trips):
                    return  # a reply shown again (its ack crossed the read): counted once
                run.other_replies += 1
                run.early[item["conversation_id"]] = (read_at, acked)
                return
            trip.in_inbox, trip.acked = read_at, acked
            trip.done.set()

        while not self.stop.is_set():
            self._forget_notices(JOBCENTER.id)
            try:
                items = await self.jobcenter.get_items(
                    f"/jobcenter/v1/inbox?limit={POLL_LIMIT}{self.wait}"
                )
            except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                run.count(run.errors, f"inbox read: {str(exc)[:60]}")
                await self._idle()
                continue
            read_at = time.perf_counter()
            if not items:
                await self._nothing_read(JOBCENTER.id)
                continue
            failed = sum(run.errors.values())
            await asyncio.gather(*(acknowledge(i, read_at) for i in items))
            if sum(run.errors.values()) > failed:
                await self._idle()  # an unacknowledged reply is shown again: not in a tight loop

    # a clinic's system: open, acknowledge, reply, collected

    async def receiver(self, org_id: str) -> None:
        run = self.run
        api, keys = self.receivers[org_id]
        limit = asyncio.Semaphore(HANDLERS)
        fhir = "application/fhir+json"

        async def post(what: str, path: str, body: bytes = b"", ok: int = 202) -> None:
            answer = await api.call("POST", path, body, fhir)
            if answer.status != ok:
                run.count(run.errors, f"{org_id} {what}: {answer.status}")

        async def handle(item: dict[str, Any]) -> None:
            async with limit:
                try:
                    if item["message_type"] == MessageType.ATTEST_REQUEST.value:
                        envelope = SealedEnvelope.model_validate(item["envelope"])
                        key = next(
                            k
                            for k in keys.hpke_keys
                            if k.key_id == envelope.header.recipient_key_id
                        )
                        request = parse_bundle(orjson.loads(open_envelope(envelope, key)))
                        now = dt.datetime.now(dt.UTC)
                        ack = build_acknowledgement(
                            acked=request, message_id=str(uuid.uuid4()),
                            bundle_id=str(uuid.uuid4()), sent_at=now, code="ok",
                        )  # fmt: skip
                        await post("acknowledgement", "/medcom/v1/messages", orjson.dumps(ack))
                        reply = build_attest_reply(
                            request=request, message_id=str(uuid.uuid4()),
                            bundle_id=str(uuid.uuid4()), sent_at=now, text=REPLY_TEXT,
                            pdf=REPLY_PDF, author=SIMULATED_CLINICIAN,
                        )  # fmt: skip
                        await post("reply", "/medcom/v1/messages", orjson.dumps(reply))
                except Exception as exc:  # counted and reported: the run goes on
                    run.count(run.errors, f"{org_id}: {type(exc).__name__}: {str(exc)[:80]}")
                try:  # collected even when answering failed: it is not handed out again
                    path = f"/medcom/v1/mailbox/{item['message_id']}/collected"
                    await post("collected", path, ok=200)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    run.count(run.errors, f"{org_id} collected: {type(exc).__name__}")

        while not self.stop.is_set():
            self._forget_notices(org_id)
            try:
                items = await api.get_items(f"/medcom/v1/mailbox?limit={POLL_LIMIT}{self.wait}")
            except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                run.count(run.errors, f"{org_id} mailbox read: {str(exc)[:60]}")
                await self._idle()
                continue
            if not items:
                await self._nothing_read(org_id)
                continue
            failed = sum(run.errors.values())
            await asyncio.gather(*(handle(i) for i in items))
            if sum(run.errors.values()) > failed:
                await self._idle()  # what failed may be handed out again: not in a tight loop


async def one_run(
    gw: RunningGateway,
    creds: dict[str, Any],
    requests: Requests,
    window_s: float,
    *,
    wait_s: int = 0,
    concurrency: int = CONCURRENCY,
    hooks: WebhookReceiver | None = None,
) -> Run:
    """Settle, run the closed loop for `window_s` and drain, settle again; account.
    `wait_s`: the clients long-poll (push-driven) instead of polling; `hooks`: the clients
    read when a webhook delivery tells them (webhook-driven; the organisations' endpoints
    are registered for the run and removed after it); `concurrency`: the conversations in
    flight."""
    run = Run(window_s, concurrency)
    before, _ = await settle(gw, SETTLE_S)
    endpoints = await hooks.register(gw, creds) if hooks is not None else []
    received_from = len(hooks.received) if hooks is not None else 0
    connections_from = len(hooks.connections) if hooks is not None else 0
    cpu0, client_cpu0 = cpu_seconds(gw.proc.pid), time.process_time()
    clients = Conversations(gw, creds, requests, run, wait_s=wait_s, hooks=hooks)
    pollers = [asyncio.create_task(clients.inbox())] + [
        asyncio.create_task(clients.receiver(org_id)) for org_id in clients.receivers
    ]
    end = time.perf_counter() + window_s
    slots = [asyncio.create_task(clients.slot(end)) for _ in range(concurrency)]
    run.window_end = end
    deadline = end + DRAIN_S + 4 * window_s
    try:
        while not all(t.done() for t in slots):
            running = [t for t in [*slots, *pollers] if not t.done()]
            await asyncio.wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for task in [*slots, *pollers]:
                if task.done() and not task.cancelled():
                    task.result()  # a client task that failed: show why
            if gw.exited():
                raise RuntimeError("the gateway exited during the run")
            if time.perf_counter() > deadline:
                break  # the conversations still in flight count as missing
    finally:
        clients.stop.set()
        for task in slots:
            task.cancel()
        if wait_s or hooks is not None:  # a long-poll or a wait for a notice is in flight
            for task in pollers:
                task.cancel()
        await asyncio.gather(*pollers, *slots, return_exceptions=True)
        await clients.aclose()
    run.extra["clients_cpu_s"] = time.process_time() - client_cpu0
    after, settled = await settle(gw, SETTLE_S)
    cpu1 = cpu_seconds(gw.proc.pid)
    notices: dict[tuple[str, str], float] = {}
    if hooks is not None:
        await hooks.remove(endpoints)
        for kind, cid, at in hooks.received[received_from:]:
            if cid is not None:
                notices.setdefault((kind, cid), at)
        run.extra["webhook_refused"] = hooks.refused
        ports = hooks.connections[connections_from:]
        run.extra["webhook_deliveries"] = len(ports)
        run.extra["webhook_connections"] = len(set(ports))
    completed = max(1, len(run.completed()))
    run.extra["gateway_cpu_ms"] = (cpu1 - cpu0) * 1000 / completed
    run.extra["statements_per_round_trip"] = (
        after.total(STATEMENTS) - before.total(STATEMENTS)
    ) / completed
    run.extra["settled"] = settled
    run.extra["rss_mib"] = peak_rss_mib(gw.proc.pid)
    run.extra["segments_ms"] = await segments(gw, run, notices)
    console.print(
        f"  {len(run.completed())} round trips, 202 → inbox p50 {run.latency(50):,.1f} ms, "
        f"p99 {run.latency(99):,.1f} ms; gateway {run.extra['gateway_cpu_ms']:.1f} CPU "
        f"ms/round trip, peak RSS {run.extra['rss_mib']:.0f} MiB, "
        f"{run.extra['statements_per_round_trip']:.1f} SQL statements/round trip"
    )
    console.print(f"  gateway's legs (ms): {run.extra['segments_ms']}")
    if hooks is not None:
        console.print(
            f"  webhook deliveries: {run.extra['webhook_deliveries']} over "
            f"{run.extra['webhook_connections']} connection(s); benchmark process CPU "
            f"{run.extra['clients_cpu_s']:.1f} s in the {window_s:.0f} s window and the drain"
        )
    if run.missing():
        console.print(
            f"  [red]{run.missing()} accepted request(s) got no acknowledged reply within "
            f"{DRAIN_S + 4 * window_s:.0f} s after the window[/red]"
        )
    if run.errors:
        console.print(f"  [yellow]client errors: {run.errors}[/yellow]")
    return run


# --- where the time goes, from the gateway's own records -------------------------------------

SEGMENTS: tuple[tuple[str, Stage, Stage], ...] = (
    ("submitted→in_mailbox", Stage.SUBMITTED, Stage.IN_MAILBOX),
    ("in_mailbox→replied", Stage.IN_MAILBOX, Stage.REPLIED),
    ("replied→reply_in_inbox", Stage.REPLIED, Stage.REPLY_IN_INBOX),
    ("reply_in_inbox→reply_fetched", Stage.REPLY_IN_INBOX, Stage.REPLY_FETCHED),
)


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


# The webhook legs: from the stage an event reports to its delivery's arrival at the receiver.
NOTICE_SEGMENTS: tuple[tuple[str, Stage, str], ...] = (
    ("in_mailbox→message.waiting delivered", Stage.IN_MAILBOX, "message.waiting"),
    ("reply_in_inbox→reply.arrived delivered", Stage.REPLY_IN_INBOX, "reply.arrived"),
)


async def segments(
    gw: RunningGateway, run: Run, notices: dict[tuple[str, str], float] | None = None
) -> dict[str, dict[str, float]]:
    """p50 and p99 ms of each leg of the completed conversations, from the `stages` table
    (the gateway's wall clock): delivery of the request, the receiver's turn (its poll,
    opening, acknowledgement and reply), delivery of the reply, the job centre's poll; and,
    webhook-driven, from a stage to the arrival of the delivery that reports it (the
    receiver's wall clock, the same machine's)."""
    notices = notices or {}
    ids = [t.conversation_id for t in run.completed()]
    at: dict[str, dict[str, float]] = {}
    engine = make_engine(gw.database_url)
    try:
        async with engine.connect() as conn:
            for chunk in _chunks(ids):
                rows = await conn.execute(
                    sa.select(stages.c.conversation_id, stages.c.stage, stages.c.at).where(
                        stages.c.conversation_id.in_(chunk)
                    )
                )
                for r in rows:
                    at.setdefault(r.conversation_id, {})[r.stage] = aware(r.at).timestamp()
    finally:
        await engine.dispose()
    out: dict[str, dict[str, float]] = {}
    for name, start, stop in SEGMENTS:
        ms = [
            (s[stop.value] - s[start.value]) * 1000
            for s in at.values()
            if start.value in s and stop.value in s
        ]
        if ms:
            out[name] = {"p50": round(percentile(ms, 50), 1), "p99": round(percentile(ms, 99), 1)}
    for name, stage, kind in NOTICE_SEGMENTS:
        ms = [
            (notices[(kind, cid)] - s[stage.value]) * 1000
            for cid, s in at.items()
            if stage.value in s and (kind, cid) in notices
        ]
        if ms:
            out[name] = {"p50": round(percentile(ms, 50), 1), "p99": round(percentile(ms, 99), 1)}
    return out


# --- the suite -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    kind: str
    prefix: str  # of the figures' names
    label: str
    ingest: str  # the prefix of the ingest figures it is compared with


DATABASES = {
    "sqlite": Database("sqlite", "roundtrip.", "SQLite", "ingest."),
    "postgres": Database("postgres", "roundtrip.pg.", "PostgreSQL", "ingest.pg."),
}


def _extra(runs: list[Run]) -> dict[str, Any]:
    return {
        "concurrency": runs[0].concurrency if runs else None,
        "window_s": runs[0].window_s if runs else None,
        "poll_idle_s": POLL_IDLE_S,
        "long_poll_s": LONG_POLL_S,
        "round_trips": [len(r.completed()) for r in runs],
        "by_receiver": [
            {
                org: sum(1 for t in r.completed() if t.receiver == org)
                for org in (GP.id, PSYCHIATRY.id)
            }
            for r in runs
        ],
        "submit_statuses": [r.statuses for r in runs],
        "missing": [r.missing() for r in runs],
        "client_errors": [r.errors for r in runs],
        "other_replies": [r.other_replies for r in runs],
        "drain_s": [round(r.drain_s(), 2) for r in runs],
        "latency_ms_mean": [
            round(statistics.fmean(t.latency_ms() for t in r.completed()), 1)
            if r.completed()
            else None
            for r in runs
        ],
        "gateway_cpu_ms_per_round_trip": [round(r.extra["gateway_cpu_ms"], 2) for r in runs],
        "statements_per_round_trip": [round(r.extra["statements_per_round_trip"], 1) for r in runs],
        "settled": [r.extra["settled"] for r in runs],
        "clients_cpu_s": [round(r.extra["clients_cpu_s"], 2) for r in runs],
        "gateway_segments_ms": [r.extra["segments_ms"] for r in runs],
        "webhook_connections": [
            [r.extra.get("webhook_deliveries"), r.extra.get("webhook_connections")] for r in runs
        ],
    }


def _notes(runs: list[Run]) -> list[str]:
    notes: list[str] = []
    bad = {k: v for r in runs for k, v in r.statuses.items() if k != "202"}
    if bad:
        notes.append(f"non-202 answers to the job centre's requests: {bad}")
    missing = sum(r.missing() for r in runs)
    if missing:
        notes.append(f"{missing} accepted request(s) got no acknowledged reply in time")
    errors = sum(sum(r.errors.values()) for r in runs)
    if errors:
        notes.append(f"{errors} client error(s) (see extra.client_errors)")
    return notes


@dataclass(frozen=True)
class Variant:
    """How the clients learn that something waits, and how many conversations are in
    flight."""

    infix: str  # of the figures' names
    wait_s: int = 0  # the long-poll's `?wait=`; 0: polling
    concurrency: int = CONCURRENCY
    hooks: bool = False  # told by webhook deliveries

    def how(self) -> str:
        if self.hooks:
            return "webhook-driven (read when a delivery tells)"
        if self.wait_s:
            return f"long-poll ?wait={self.wait_s}"
        return f"polling, idle {POLL_IDLE_S} s"


# Today's polling clients, the long-polling ones and the webhook-driven ones, under load and
# one conversation at a time (what a single request sees). `BENCH_ROUNDTRIP_VARIANTS`
# (comma-separated infixes, "-" for plain polling) chooses some.
VARIANTS: tuple[Variant, ...] = (
    Variant(""),
    Variant("push.", LONG_POLL_S),
    Variant("hook.", hooks=True),
    Variant("single.", concurrency=1),
    Variant("push.single.", LONG_POLL_S, concurrency=1),
    Variant("hook.single.", concurrency=1, hooks=True),
)


def _chosen() -> tuple[Variant, ...]:
    wanted = os.environ.get("BENCH_ROUNDTRIP_VARIANTS")
    if not wanted:
        return VARIANTS
    names = {"" if w == "-" else w for w in wanted.split(",")}
    return tuple(v for v in VARIANTS if v.infix in names)


async def run_database(ctx: BenchContext, db: Database) -> list[Figure]:
    """Every variant's runs on one gateway process, interleaved: warm-up round, then each
    recorded round runs every variant once, so that a change in the machine's load falls on
    all of them alike."""
    window = 3.0 if ctx.quick else 15.0
    figures: list[Figure] = []
    variants = _chosen()
    ca = await asyncio.to_thread(ensure_ca, ctx.workdir / "webhook-ca")
    settings = {"WEBHOOK_CA_FILE": str(ca.cert)}
    async with (
        gateway(ctx, db.kind, "roundtrip", settings=settings) as gw,
        webhook_receiver(ca) as hooks,
    ):
        creds = json.loads(
            await asyncio.to_thread((gw.var_dir / "demo-credentials.json").read_text)
        )
        requests = Requests(SEED)
        done: dict[str, list[Run]] = {v.infix: [] for v in variants}
        for i in range(ctx.warmup + ctx.runs):
            for v in variants:
                tag = "" if i >= ctx.warmup else " (warm-up)"
                console.print(
                    f"  round {i + 1}/{ctx.warmup + ctx.runs}{tag}: {v.how()}, "
                    f"{v.concurrency} conversation(s) in flight"
                )
                run = await one_run(
                    gw, creds, requests, window, wait_s=v.wait_s, concurrency=v.concurrency,
                    hooks=hooks if v.hooks else None,
                )  # fmt: skip
                if i >= ctx.warmup:
                    done[v.infix].append(run)
        for v in variants:
            runs = done[v.infix]
            figures += _figures(db, window, runs, [r.throughput() for r in runs], v)
    return figures


def _figures(
    db: Database, window: float, runs: list[Run], values: list[float], variant: Variant
) -> list[Figure]:
    """The figures of one client variant (`VARIANTS`)."""
    extra = _extra(runs)
    notes = _notes(runs)
    concurrency = runs[0].concurrency if runs else CONCURRENCY
    clock = (
        f"closed loop, {concurrency} conversation(s) in flight for {window:.0f} s, then "
        "drained; one gateway process serves every run of the database, the variants' runs "
        "interleaved"
    )
    if variant.hooks:
        how = (
            "the clients read when a signed webhook delivery (HTTPS, verified) tells them, "
            f"after a read that found nothing (fallback read after {NOTICE_FALLBACK_S:.0f} s)"
        )
        kind = " (webhook-driven"
    elif variant.wait_s:
        how = f"the clients long-poll (?wait={LONG_POLL_S}: answered as soon as something arrives)"
        kind = " (push-driven: long-poll"
    else:
        how = f"both polls (idle sleep {POLL_IDLE_S} s)"
        kind = " (polling"
    kind += ", one at a time)" if concurrency == 1 else ")"
    latency_note = (
        "the benchmark process's monotonic clock, from the 202 answer to the request to the "
        f"answer of the job centre's inbox read that returned its reply; includes {how} and "
        "the receiver's work"
    )
    polling = f"{db.prefix}{variant.infix.replace('push.', '').replace('hook.', '')}max"
    baseline = polling if variant.hooks or variant.wait_s else f"{db.ingest}max"
    variant_infix = variant.infix

    def figure(
        name: str, label: str, unit: str, runs_: list[float], note: str, **kw: Any
    ) -> Figure:
        return Figure(
            name=f"{db.prefix}{variant_infix}{name}",
            label=f"{label}{kind} ({db.label})",
            unit=unit,
            runs=runs_,
            notes="; ".join([note, *notes]),
            extra=extra,
            **kw,
        )

    return [
        figure(
            "max", "full round trip, request → reply acknowledged, max", "round trips/s", values,
            f"{MIX_NOTE}; {clock}; round trips whose reply the job centre read and acknowledged "
            "/ (last acknowledgement − first request sent), on the benchmark process's "
            "monotonic clock", baseline=baseline,
        ),
        figure(
            "p50", "full round trip, 202 → reply read from the inbox, p50", "ms",
            [r.latency(50) for r in runs], f"{latency_note}; {clock}", higher_is_better=False,
        ),
        figure(
            "p99", "full round trip, 202 → reply read from the inbox, p99", "ms",
            [r.latency(99) for r in runs], f"{latency_note}; {clock}", higher_is_better=False,
        ),
        figure(
            "cpu_ms", "gateway CPU per full round trip", "CPU ms/round trip",
            [r.extra["gateway_cpu_ms"] for r in runs],
            "user + system CPU of the gateway process from a settled state before the load "
            "to a settled one after it (every record of medcom.messages and gateway.tracking "
            "consumed), divided by the completed round trips; the broker is not counted",
            higher_is_better=False,
        ),
        figure(
            "rss", "gateway peak RSS, full round trips", "MiB",
            [r.extra["rss_mib"] for r in runs],
            "VmHWM of the one gateway process after each run (its peak so far)",
            higher_is_better=False,
        ),
    ]  # fmt: skip


async def run(ctx: BenchContext) -> list[Figure]:
    figures: list[Figure] = []
    for key in os.environ.get("BENCH_ROUNDTRIP_DBS", ",".join(DATABASES)).split(","):
        db = DATABASES[key]
        try:
            figures += await run_database(ctx, db)
        except (OSError, asyncpg.PostgresError) as exc:
            if db.kind != "postgres":
                raise
            console.print(f"  [yellow]{db.label} skipped: {type(exc).__name__}: {exc}[/yellow]")
    return figures
