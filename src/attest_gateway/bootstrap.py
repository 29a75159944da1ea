"""The composition root: the one place that builds the gateway from its settings.

Every entry point builds through it: the HTTP lifespan (`create_app`), the CLI commands, the
simulator, the benchmarks and the tests. Nothing connects at import time.

- `database(settings)`: the configured database alone (operator commands that touch only
  the store). The only caller of `settings_engine`.
- `build_gateway(settings, bootstrap)`: the immutable container (`infra/container.py`
  `Gateway`): store, key ring, pseudonym key (checked against the store), topics (made
  where missing, their settings checked), a started producer, the outbox relay (not
  started), group commit, directory cache and clock. The clock, the engine and the producer
  may be handed in (tests, benchmarks); what is handed in is the caller's to close.
- `running_gateway(settings, bootstrap)`: the container plus what runs in this process:
  the relay, the delivery consumer, the tracker (consumers and sweep), the webhooks
  (dispatcher and sender) and the sweeper, yielded as `Running`; stopped in order, each
  step bounded, when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import os
import secrets
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.config import Settings, custodial_keys_dir, pseudonym_key_file
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.clock import Clock, SimulatedClock, SystemClock
from attest_gateway.core.webhooks import RetryPolicy
from attest_gateway.crypto.pseudonyms import KEY_FILE_CONTEXT
from attest_gateway.crypto.sealing import KeyRing, KeyStore, read_secret_file, secret_file_text
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db.arrivals import MailArrivals
from attest_gateway.infra.db.audit_chainer import AuditChainer
from attest_gateway.infra.db.coverage import CoverageRules
from attest_gateway.infra.db.directory import DirectoryCache
from attest_gateway.infra.db.engine import STORE_ERRORS, has_idle_connection, settings_engine
from attest_gateway.infra.db.grants import rewrite_privileges
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.messaging import conversations_by_request, record_stages
from attest_gateway.infra.db.pseudonyms import check_store_key
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.db.webhooks import SqlWebhookStore
from attest_gateway.infra.housekeeping.sweeper import Sweeper
from attest_gateway.infra.kafka.connection import make_producer
from attest_gateway.infra.kafka.consumer import ConsumerLoop
from attest_gateway.infra.kafka.outage import KafkaOutage, quiet_aiokafka
from attest_gateway.infra.kafka.relay import OutboxRelay, PublishedHook
from attest_gateway.infra.kafka.topic_check import topic_settings_check
from attest_gateway.infra.kafka.topics import Topics, ensure_topics
from attest_gateway.infra.keys import open_key_store
from attest_gateway.infra.webhooks.client import HttpxPoster, tls_context
from attest_gateway.observability import metrics
from attest_gateway.ports.records import StageRecord
from attest_gateway.production import UnsafeSettings
from attest_gateway.services.delivery import DeliveryHandler
from attest_gateway.services.webhooks import WebhookConfig, WebhookDispatcher, WebhookSender
from attest_gateway.tracker.consumer import TrackerHandler, TrackerState
from attest_gateway.tracker.rules import TrackerRules
from attest_gateway.tracker.sweep import TrackerSweep

log = structlog.get_logger(__name__)


# --- what the container is built from ---------------------------------------------------------


def load_pseudonym_key(settings: Settings, store: KeyStore | None = None) -> bytes:
    """The HMAC key for case refs: from the setting, else a file made once under keys_dir
    (wrapped by the token's key-encryption key when PKCS11_MODULE is set)."""
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key.get_secret_value().encode("utf-8")
    store = store if store is not None else open_key_store(settings)
    path = pseudonym_key_file(settings)
    if not path.exists():
        if settings.environment == "production" and store.in_clear:
            raise RuntimeError("PSEUDONYM_KEY must be set in production")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = secret_file_text(
            secrets.token_hex(32).encode("ascii"), store, context=KEY_FILE_CONTEXT
        )
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:  # complete or absent, never half written; of processes starting at once one wins
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return read_secret_file(path, store, context=KEY_FILE_CONTEXT)


def audit_rewrite_problem(privileges: list[str]) -> str:
    """The sentence production refuses to start with when the runtime role holds
    `privileges` on the audit tables (infra/db/grants.py)."""
    return (
        f"DATABASE_URL's role may {', '.join(privileges)}: the gateway must run as a role "
        "that can only read and append the audit log (attest-gateway db grant --runtime-role "
        "NAME, run with DATABASE_OWNER_URL; the owner of the tables holds every privilege)."
    )


async def refuse_audit_rewrites(settings: Settings, engine: AsyncEngine) -> None:
    """Production: refuse to start when the runtime role could rewrite or cut the audit log
    (`UnsafeSettings`, one sentence). Development runs as whichever role it is given."""
    if settings.environment != "production":
        return
    async with engine.connect() as conn:
        privileges = await rewrite_privileges(conn)
    if privileges:
        raise UnsafeSettings([audit_rewrite_problem(privileges)])


@asynccontextmanager
async def database(settings: Settings, *, owner: bool = False) -> AsyncIterator[AsyncEngine]:
    """The configured database, with the configured pool, disposed when the block ends (for
    commands that need the store and nothing else: no keys, no Kafka, no directory cache);
    `owner`: as the owner role (DATABASE_OWNER_URL)."""
    engine = settings_engine(settings, owner=owner)
    try:
        yield engine
    finally:
        await engine.dispose()


def published_stages(topics: Topics) -> PublishedHook:
    """The relay's hook: the attest requests it published reached Kafka, so their
    conversations reach the `published` stage (for a whole batch in three statements)."""

    async def record(conn: AsyncConnection, message_ids: list[str], at: dt.datetime) -> None:
        await record_stages(
            conn,
            topics,
            [
                StageRecord(
                    conv, Stage.PUBLISHED, conv.request_message_id, MessageType.ATTEST_REQUEST, at
                )
                for conv in await conversations_by_request(conn, message_ids)
            ],
        )

    return record


def make_relay(
    settings: Settings,
    engine: AsyncEngine,
    producer: AIOKafkaProducer,
    clock: Clock,
    outage: KafkaOutage,
) -> OutboxRelay:
    """The outbox relay (not started) as the gateway runs it."""
    topics = Topics.from_settings(settings)
    return OutboxRelay(
        engine,
        producer,
        topics,
        batch_size=settings.relay_batch_size,
        poll_seconds=settings.relay_poll_seconds,
        max_pending=settings.outbox_max_pending,
        on_published=published_stages(topics),
        clock=clock,
        outage=outage,
    )


def clock_from_settings(settings: Settings) -> Clock:
    """The machine's clock, or the simulator's when `SIMULATED_CLOCK_START` is set
    (development only: production refuses it)."""
    if settings.simulated_clock_start is None:
        return SystemClock()
    return SimulatedClock(settings.simulated_clock_start, settings.simulated_clock_speed)


# --- the container ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Owned:
    """What `_open` opened itself, and so closes."""

    engine: bool
    producer: bool


async def _open(
    settings: Settings,
    bootstrap: str,
    *,
    clock: Clock,
    engine: AsyncEngine | None,
    producer: AIOKafkaProducer | None,
) -> tuple[Gateway, _Owned]:
    topics = Topics.from_settings(settings)
    store = open_key_store(settings)
    keyring = KeyRing.load_dir(custodial_keys_dir(settings), store)
    if settings.gateway_org_id not in keyring.orgs:
        raise RuntimeError(f"no keys for the gateway organisation {settings.gateway_org_id!r}")
    pseudonym_key = load_pseudonym_key(settings, store)
    owned = _Owned(engine=engine is None, producer=producer is None)
    # One view of the brokers' reachability for all of this gateway's Kafka clients, which
    # also takes aiokafka's own per-attempt connection errors (infra/kafka/outage.py).
    outage = KafkaOutage(bootstrap)
    quiet_aiokafka(outage)
    cache = DirectoryCache()
    base = engine if engine is not None else settings_engine(settings)
    try:
        bound = cache.bind(base)
        # refuses to start when the store's pseudonyms were made with another key
        store_key = await check_store_key(
            bound, pseudonym_key, tracking_topic=topics.tracking, now=clock.now()
        )
        await refuse_audit_rewrites(settings, bound)
        await ensure_topics(settings, bootstrap, topics.all())
        # existing topics keep what they have: mismatches are logged (and fail /readyz in
        # production), never altered
        topic_check = topic_settings_check(settings, bootstrap, topics)
        await topic_check.at_start(settings.kafka_read_timeout_seconds)
        if producer is None:
            producer = make_producer(settings, bootstrap)
            await producer.start()
    except BaseException:
        if owned.engine:
            await base.dispose()
        raise
    chainer = AuditChainer(bound, topics)

    def flushed(requests: int, failed: bool) -> None:
        metrics.observe_group_commit(requests, failed)
        chainer.wake()  # the flush's audit events are committed: chain them

    writes = GroupCommit(
        bound,
        max_units=settings.group_commit_max_requests,
        max_flushes=settings.group_commit_flushes,
        on_flush=flushed,
    )
    gw = Gateway(
        settings=settings,
        engine=bound,
        keyring=keyring,
        pseudonym_key=pseudonym_key,
        topics=topics,
        topic_check=topic_check,
        producer=producer,
        relay=make_relay(settings, bound, producer, clock, outage),
        writes=writes,
        store=SqlStore(
            bound,
            topics,
            writes,
            MailArrivals(
                bound,
                max_waiters=settings.long_poll_max_waiters,
                check_seconds=settings.long_poll_check_seconds,
            ),
            audit_appended=chainer.wake,
            coverage_rules=CoverageRules.of(tracker_rules(settings)),
        ),
        directory=cache,
        store_key=store_key,
        clock=clock,
        outage=outage,
        chainer=chainer,
    )
    return gw, owned


async def _close(gw: Gateway, owned: _Owned, left: _Deadline) -> None:
    await _bounded("group commit", gw.writes.drain(), left())
    await _bounded("audit chainer", gw.chainer.stop(), left())
    await _bounded("relay", gw.relay.stop(), left())
    if owned.producer:
        await _bounded("producer", gw.producer.stop(), left())
    if owned.engine:
        await _bounded("database", gw.engine.dispose(), left())


@asynccontextmanager
async def build_gateway(
    settings: Settings,
    bootstrap: str,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    producer: AIOKafkaProducer | None = None,
) -> AsyncIterator[Gateway]:
    """The gateway's container, with nothing running: the relay is built but not started
    (a caller may drive it, `gw.relay.publish_pending()`), and no consumer exists.

    `clock` (default: the one the settings choose), `engine` and `producer` (a started one)
    replace the ones the settings describe; the caller closes what it handed in."""
    gw, owned = await _open(
        settings,
        bootstrap,
        clock=clock or clock_from_settings(settings),
        engine=engine,
        producer=producer,
    )
    try:
        yield gw
    finally:
        await _close(gw, owned, _deadline(settings))


# --- what runs --------------------------------------------------------------------------------


def tracker_rules(settings: Settings) -> TrackerRules:
    """The tracker's rules from the settings (the HTTP app builds them once, in `create_app`;
    the running tracker once, in `make_tracker`)."""
    return TrackerRules.build(
        settings.tracker_deadlines,
        next_working_day=settings.tracker_deadline_next_working_day,
        late_request_weeks=dict(settings.tracker_late_request_weeks),
        contact_window_weeks=settings.tracker_contact_window_weeks,
        contact_case_kinds=frozenset(settings.tracker_contact_case_kinds),
        contact_baseline=settings.tracker_contact_baseline,
        contact_counts=frozenset(settings.tracker_contact_counts),
        no_contact_baseline=settings.tracker_no_contact_baseline,
        no_contact_target=settings.tracker_no_contact_target,
        rehab_health_information=settings.tracker_rehab_health_information,
        reminder_max=settings.tracker_reminder_max,
        reminder_interval_days=settings.tracker_reminder_interval_days,
        min_cell_citizens=settings.tracker_min_cell_citizens,
        timezone=settings.tracker_timezone,
    )


@dataclass(frozen=True, eq=False)
class Tracker:
    """The tracker's parts in a running gateway: the `gateway.tracking` consumers and the
    sweep, sharing one state."""

    state: TrackerState
    consumers: tuple[ConsumerLoop, ...]  # one group: each holds some of the topic's partitions
    sweep: TrackerSweep

    async def stop(self) -> None:
        await self.sweep.stop()


def make_tracker(gw: Gateway, bootstrap: str) -> Tracker:
    """The consumers (not started) and the sweep (not started) for a running gateway.

    `TRACKER_CONSUMERS` consumers (one by default) share one state (rules, the cells known to
    exist) and join one group, so each applies the polls of its own partitions in its own
    transaction on its own connection: one consumer's Python runs while another's statements
    are in the database. Their transactions take the rows they share (rollup rows, contact
    episodes and memberships of a citizen whose conversations sit in two partitions) in one
    order, as separate tracker processes do, so they wait for each other instead of
    deadlocking."""
    settings = gw.settings
    state = TrackerState(tracker_rules(settings), gw.catalogue)
    consumers = tuple(
        ConsumerLoop(
            settings=settings,
            bootstrap=bootstrap,
            topic=gw.topics.tracking,
            group=f"{settings.kafka_group_prefix}.tracker",
            handler=TrackerHandler(gw.engine, state, store_key=gw.store_key),
            producer=gw.producer,
            dead_letter_topic=gw.topics.dead_letter,
            batch_spans_partitions=settings.tracker_poll_in_one_transaction,
            max_poll_records=settings.tracker_max_poll_records,
            outage=gw.outage,
            linger_seconds=settings.tracker_linger_seconds,
        )
        for _ in range(settings.tracker_consumers)
    )
    sweep = TrackerSweep(gw, state, interval=settings.tracker_sweep_seconds)
    return Tracker(state, consumers, sweep)


def make_delivery(gw: Gateway, bootstrap: str) -> ConsumerLoop:
    """The delivery consumer (`medcom.messages` → mailboxes), not yet started."""
    settings = gw.settings
    return ConsumerLoop(
        settings=settings,
        bootstrap=bootstrap,
        topic=gw.topics.medcom_messages,
        group=f"{settings.kafka_group_prefix}.delivery",
        handler=DeliveryHandler(
            gw.store, settings.gateway_org_id, gw.clock, transient=STORE_ERRORS, wake=gw.relay.wake
        ),
        producer=gw.producer,
        dead_letter_topic=gw.topics.dead_letter,
        partitions_at_once=settings.delivery_partitions_at_once,
        batches=settings.delivery_poll_in_one_transaction,
        batch_spans_partitions=True,
        outage=gw.outage,
    )


def release_long_polls(gw: Gateway) -> None:
    """End the waits of long-polls at once (shutdown); only sets a flag, so a signal handler
    may call it."""
    if gw.store.arrivals is not None:
        gw.store.arrivals.release()


def webhook_config(settings: Settings) -> WebhookConfig:
    """The webhook use cases' settings (the API's and the sender's alike)."""
    timeouts = settings.webhook_connect_timeout_seconds + settings.webhook_read_timeout_seconds
    return WebhookConfig(
        retry=RetryPolicy(
            base=dt.timedelta(seconds=settings.webhook_backoff_base_seconds),
            cap=dt.timedelta(seconds=settings.webhook_backoff_max_seconds),
            period=dt.timedelta(hours=settings.webhook_retry_hours),
        ),
        production=settings.environment == "production",
        rotation_overlap=dt.timedelta(hours=settings.webhook_rotation_overlap_hours),
        max_in_flight=settings.webhook_max_in_flight,
        breaker_threshold=settings.webhook_breaker_failures,
        breaker_cooldown_seconds=settings.webhook_breaker_open_seconds,
        poll_seconds=settings.webhook_poll_seconds,
        # an attempt's claim outlives the attempt: another process takes it only when lost
        lease=dt.timedelta(seconds=2 * timeouts + 30),
    )


@dataclass(frozen=True, eq=False)
class Webhooks:
    """The webhooks' parts in a running gateway: the dispatcher (a `gateway.tracking`
    consumer of its own group, and a listener of the store's committed stage events) and the
    sender with its HTTP client."""

    dispatcher: ConsumerLoop
    sender: WebhookSender
    poster: HttpxPoster
    early: WebhookDispatcher
    store: SqlStore

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.store.stage_listeners.remove(self.early.offer)
        await self.early.close()
        await self.sender.stop()
        await self.poster.close()


def make_webhooks(gw: Gateway, bootstrap: str) -> Webhooks:
    """The dispatcher (not started) and the sender (not started); the stage events this
    process commits are offered to the dispatcher at once (`WebhookDispatcher.offer`,
    docs/decisions/0013)."""
    settings = gw.settings
    config = webhook_config(settings)
    store = SqlWebhookStore(gw.engine)
    poster = HttpxPoster(
        connect_timeout=settings.webhook_connect_timeout_seconds,
        read_timeout=settings.webhook_read_timeout_seconds,
        tls=tls_context(
            settings.webhook_ca_file, settings.webhook_client_cert, settings.webhook_client_key
        ),
        allow_private_addresses=not config.production,
    )
    sender = WebhookSender(store, poster, gw.clock, config, transient=STORE_ERRORS)
    handler = WebhookDispatcher(
        store,
        gw.clock,
        config.retry.period,
        transient=STORE_ERRORS,
        sender=sender,
        spare=functools.partial(has_idle_connection, gw.engine),
    )
    dispatcher = ConsumerLoop(
        settings=settings,
        bootstrap=bootstrap,
        topic=gw.topics.tracking,
        group=f"{settings.kafka_group_prefix}.webhooks",
        handler=handler,
        producer=gw.producer,
        dead_letter_topic=gw.topics.dead_letter,
    )
    gw.store.stage_listeners.append(handler.offer)
    return Webhooks(dispatcher, sender, poster, handler, gw.store)


@dataclass(frozen=True, eq=False)
class Running:
    """A gateway and what runs in this process: its consumers (delivery, tracker, webhook
    dispatcher), the tracker, the webhooks and the sweeper (None where this process does
    not run them)."""

    gateway: Gateway
    consumers: tuple[ConsumerLoop, ...] = ()
    tracker: Tracker | None = None
    sweeper: Sweeper | None = None
    webhooks: Webhooks | None = None


@asynccontextmanager
async def running_gateway(
    settings: Settings,
    bootstrap: str,
    *,
    run_relay: bool = True,
    run_consumers: bool = True,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    producer: AIOKafkaProducer | None = None,
) -> AsyncIterator[Running]:
    """The gateway with the relay (`run_relay`) and the consumers, tracker and sweeper
    (`run_consumers`) running; overrides as `build_gateway` takes them."""
    gw, owned = await _open(
        settings,
        bootstrap,
        clock=clock or clock_from_settings(settings),
        engine=engine,
        producer=producer,
    )
    consumers: list[ConsumerLoop] = []
    tracker: Tracker | None = None
    sweeper: Sweeper | None = None
    webhooks: Webhooks | None = None
    try:
        if run_relay:
            gw.relay.start()
        if run_consumers:
            delivery = make_delivery(gw, bootstrap)
            await delivery.start()
            consumers.append(delivery)
            if settings.tracker_enabled:
                tracker = make_tracker(gw, bootstrap)
                for consumer in tracker.consumers:
                    await consumer.start()
                    consumers.append(consumer)
                tracker.sweep.start()
            if settings.webhooks_enabled:
                webhooks = make_webhooks(gw, bootstrap)
                await webhooks.dispatcher.start()
                consumers.append(webhooks.dispatcher)
                webhooks.sender.start()
            sweeper = Sweeper(gw, bootstrap, consumers)
            sweeper.start()
            gw.chainer.start()
        log.info("gateway.started", bootstrap=bootstrap, consumers=len(consumers))
        yield Running(gw, tuple(consumers), tracker, sweeper, webhooks)
    finally:
        # Every step is bounded: a hung component must not keep the process from exiting.
        # Work cut off here was not committed, so it is redone by whoever takes over.
        left = _deadline(settings)
        release_long_polls(gw)
        if tracker is not None:
            await _bounded("tracker", tracker.stop(), left())
        if sweeper is not None:
            await _bounded("sweeper", sweeper.stop(), left())
        if webhooks is not None:
            await _bounded("webhooks", webhooks.stop(), left())
        await asyncio.gather(
            *(_bounded(f"consumer:{c.topic}", c.stop(), left()) for c in consumers)
        )
        await _close(gw, owned, left)
        log.info("gateway.stopped")


# --- stopping ---------------------------------------------------------------------------------


class _Deadline:
    """The seconds left to stop in: at least half a second per step, whatever is left."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._at = self._loop.time() + seconds

    def __call__(self) -> float:
        return max(0.5, self._at - self._loop.time())


def _deadline(settings: Settings) -> _Deadline:
    return _Deadline(settings.shutdown_grace_seconds + 10)


async def _bounded(name: str, stopping: Coroutine[Any, Any, None], seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping, seconds)
    except TimeoutError:
        log.warning("gateway.stop_timed_out", component=name, seconds=seconds)
    except Exception:  # stopping must go on with the next component
        log.exception("gateway.stop_failed", component=name)


def freeze_startup_heap() -> int:
    """Move every object alive after startup (modules, the app, SQLAlchemy's tables and
    compiled statements, pydantic's schemas, the directory snapshot) out of the garbage
    collector's reach, after one full collection of startup's garbage. Returns how many.

    A full (oldest-generation) collection walks every such object with every coroutine
    stopped; frozen, they are no longer walked. They are still freed by reference counting
    when dropped; only a cycle among them would stay (startup objects live as long as the
    process). Called once per process, when it starts serving (`create_app(freeze_heap=True)`,
    which `attest-gateway serve` uses); not in tests, which start many gateways per process."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("gateway.heap_frozen", objects=frozen)
    return frozen
