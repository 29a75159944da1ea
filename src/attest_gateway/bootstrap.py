"""The running gateway: the one place that wires store, keys, Kafka, relay and consumers.

`running_gateway()` is an async context manager; the FastAPI lifespan enters it, and so do
the integration tests. Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.config import Settings
from attest_gateway.core.attests import DEFAULT_CATALOGUE, AttestKind
from attest_gateway.core.clock import Clock, SystemClock
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.infra.db.engine import STORE_ERRORS, settings_engine
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.pseudonyms import StoreKey, check_store_key, pseudonym_key_file
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.kafka.bus import ConsumerLoop, Topics, ensure_topics, make_producer
from attest_gateway.infra.kafka.relay import OutboxRelay
from attest_gateway.observability import metrics
from attest_gateway.services.delivery import DeliveryHandler

if TYPE_CHECKING:
    from attest_gateway.infra.housekeeping.sweeper import Sweeper
    from attest_gateway.tracker.wiring import Tracker

log = structlog.get_logger(__name__)


@dataclass
class Gateway:
    settings: Settings
    engine: AsyncEngine
    keyring: KeyRing
    pseudonym_key: bytes
    topics: Topics
    producer: AIOKafkaProducer
    relay: OutboxRelay
    catalogue: dict[str, AttestKind] = field(default_factory=lambda: dict(DEFAULT_CATALOGUE))
    consumers: list[ConsumerLoop] = field(default_factory=list)
    sweeper: Sweeper | None = None
    tracker: Tracker | None = None
    # the key id the store's pseudonyms are made with (checked at start, see pseudonyms.py)
    store_key: StoreKey | None = None
    # accepted requests' rows, written together with those of concurrent requests
    writes: GroupCommit = field(init=False)
    # what the use cases are handed (core/ports.py): the clock, and the store's units of work
    clock: Clock = field(default_factory=SystemClock)
    store: SqlStore = field(init=False)

    def __post_init__(self) -> None:
        self.writes = GroupCommit(
            self.engine,
            max_units=self.settings.group_commit_max_requests,
            max_flushes=self.settings.group_commit_flushes,
            on_flush=metrics.observe_group_commit,
        )
        self.store = SqlStore(self.engine, self.topics, self.writes)


def custodial_keys_dir(settings: Settings) -> Path:
    return settings.effective_keys_dir / "custodial"


def load_pseudonym_key(settings: Settings) -> bytes:
    """The HMAC key for case refs: from the setting, else a file made once under keys_dir."""
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key.get_secret_value().encode("utf-8")
    path = pseudonym_key_file(settings)
    if not path.exists():
        if settings.environment == "production":
            raise RuntimeError("PSEUDONYM_KEY must be set in production")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32), encoding="ascii")
        path.chmod(0o600)
    return path.read_text(encoding="ascii").strip().encode("ascii")


def freeze_startup_heap() -> int:
    """Move every object alive after startup (modules, the app, SQLAlchemy's tables and
    compiled statements, pydantic's schemas, the directory snapshot) out of the garbage
    collector's reach, after one full collection of startup's garbage. Returns how many.

    A serving process holds ~160,000 such objects, and each full (oldest-generation)
    collection walks them all: ~0.1 s with every coroutine stopped (three such collections
    in a 7-second run of the tracker benchmark). Frozen, they are no longer walked; they are
    still freed by reference counting when dropped, only a cycle among them would stay
    (startup objects live as long as the process). Called once per process, when it starts
    serving (`create_app(freeze_heap=True)`, which `attest-gateway serve` uses); not in
    tests, which start many gateways per process."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("gateway.heap_frozen", objects=frozen)
    return frozen


def make_delivery(gw: Gateway, bootstrap: str) -> ConsumerLoop:
    """The delivery consumer (`medcom.messages` → mailboxes), not yet started."""
    settings = gw.settings
    return ConsumerLoop(
        settings=settings,
        bootstrap=bootstrap,
        topic=gw.topics.medcom_messages,
        group=f"{settings.kafka_group_prefix}.delivery",
        handler=DeliveryHandler(
            gw.store, settings.gateway_org_id, gw.clock, transient=STORE_ERRORS
        ),
        producer=gw.producer,
        dead_letter_topic=gw.topics.dead_letter,
        partitions_at_once=settings.delivery_partitions_at_once,
        batches=settings.delivery_poll_in_one_transaction,
        batch_spans_partitions=True,
    )


@asynccontextmanager
async def running_gateway(
    settings: Settings,
    bootstrap: str,
    *,
    run_relay: bool = True,
    run_consumers: bool = True,
) -> AsyncIterator[Gateway]:
    topics = Topics.from_settings(settings)
    engine = settings_engine(settings)
    keyring = KeyRing.load_dir(custodial_keys_dir(settings))
    if settings.gateway_org_id not in keyring.orgs:
        raise RuntimeError(f"no keys for the gateway organisation {settings.gateway_org_id!r}")
    pseudonym_key = load_pseudonym_key(settings)
    try:  # refuses to start when the store's pseudonyms were made with another key
        store_key = await check_store_key(engine, pseudonym_key, tracking_topic=topics.tracking)
    except BaseException:
        await engine.dispose()
        raise
    await ensure_topics(settings, bootstrap, topics.all())
    producer = make_producer(settings, bootstrap)
    await producer.start()
    relay = OutboxRelay(
        engine,
        producer,
        topics,
        batch_size=settings.relay_batch_size,
        poll_seconds=settings.relay_poll_seconds,
        max_pending=settings.outbox_max_pending,
    )
    gw = Gateway(settings, engine, keyring, pseudonym_key, topics, producer, relay)
    gw.store_key = store_key
    try:
        if run_relay:
            relay.start()
        if run_consumers:
            delivery = make_delivery(gw, bootstrap)
            await delivery.start()
            gw.consumers.append(delivery)
            if settings.tracker_enabled:
                from attest_gateway.tracker.wiring import make_tracker

                gw.tracker = make_tracker(gw, bootstrap)
                for consumer in gw.tracker.consumers:
                    await consumer.start()
                    gw.consumers.append(consumer)
                gw.tracker.sweep.start()
            from attest_gateway.infra.housekeeping.sweeper import Sweeper

            gw.sweeper = Sweeper(gw, bootstrap)
            gw.sweeper.start()
        log.info("gateway.started", bootstrap=bootstrap, consumers=len(gw.consumers))
        yield gw
    finally:
        # Every step is bounded: a hung component must not keep the process from exiting.
        # Work cut off here was not committed, so it is redone by whoever takes over.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.shutdown_grace_seconds + 10

        def left() -> float:
            return max(0.5, deadline - loop.time())

        if gw.tracker is not None:
            await _bounded("tracker", gw.tracker.stop(), left())
        if gw.sweeper is not None:
            await _bounded("sweeper", gw.sweeper.stop(), left())
        await asyncio.gather(
            *(_bounded(f"consumer:{c.topic}", c.stop(), left()) for c in gw.consumers)
        )
        await _bounded("group commit", gw.writes.drain(), left())
        await _bounded("relay", relay.stop(), left())
        await _bounded("producer", producer.stop(), left())
        await _bounded("database", engine.dispose(), left())
        log.info("gateway.stopped")


async def _bounded(name: str, stopping: Coroutine[Any, Any, None], seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping, seconds)
    except TimeoutError:
        log.warning("gateway.stop_timed_out", component=name, seconds=seconds)
    except Exception:  # stopping must go on with the next component
        log.exception("gateway.stop_failed", component=name)
