"""The outbox relay: publishes stored outbox rows to Kafka (acks=all) and marks them published.

The API writes an accepted message and its outbox rows in one transaction before it answers
202; the relay is the only path from the store to Kafka. It is woken after each commit in
this process and also polls, so rows written by another replica or left by a crash are
published too. Publishing twice is harmless: every consumer writes idempotently.

What publishing means for a conversation (its `published` stage) is not the relay's to know:
it calls the `on_published` hook it is given (bootstrap.py wires the use case's) in the
transaction that marks the rows published, with the message ids of the requests among them
and the time the batch was handed to the producer: a consumer may deliver a record before
the broker's acknowledgement reaches the relay, so a later time could put `published` after
the `in_mailbox` it caused.

While Kafka is unreachable the relay's failures go to the gateway's `KafkaOutage` (one
warning for the outage, not one per batch), and while nothing waits to be sent it asks the
brokers for metadata at each poll, so the outage ends when they answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.core.clock import Clock
from attest_gateway.core.errors import ErrorCode, Unavailable
from attest_gateway.infra.db.engine import STORE_ERRORS, autocommit, one_of
from attest_gateway.infra.db.tables import outbox
from attest_gateway.infra.kafka.outage import KafkaOutage, unreachable
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.observability import metrics

log = structlog.get_logger(__name__)

#: Called in the transaction that marks rows published, with the message ids of the attest
#: requests (`medcom.messages` rows) among them and the time the relay handed them to the
#: producer (the attempt Kafka acknowledged).
PublishedHook = Callable[[AsyncConnection, list[str], dt.datetime], Awaitable[None]]


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        producer: AIOKafkaProducer,
        topics: Topics,
        *,
        batch_size: int,
        poll_seconds: float,
        max_pending: int,
        clock: Clock,
        on_published: PublishedHook,
        outage: KafkaOutage,
    ) -> None:
        self._engine = engine
        self._producer = producer
        self._topics = topics
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._max_pending = max_pending
        self._clock = clock
        self._on_published = on_published
        self.outage = outage
        self._reported: BaseException | None = None  # the last failure told to the outage
        self._lease = dt.timedelta(seconds=60)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.pending = 0  # unpublished outbox rows at the last look (all replicas' rows)

    def admit(self) -> None:
        """Back-pressure: while Kafka is unreachable the outbox fills; past the bound, 503."""
        if self.pending >= self._max_pending:
            raise Unavailable(
                ErrorCode.OUTBOX_FULL, "the gateway cannot forward messages right now; retry later"
            )

    def wake(self) -> None:
        """A transaction just added outbox rows: publish them now."""
        self.pending += 1
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                published = await self.publish_pending()
            except (KafkaError, *STORE_ERRORS, OSError) as exc:
                if exc is not self._reported:  # a Kafka outage is the outage's to tell
                    log.warning("relay.failed", error=type(exc).__name__)
                published = 0
                await asyncio.sleep(self._poll_seconds)
            with contextlib.suppress(*STORE_ERRORS, OSError):
                await self.count_pending()
            if published == 0 and self.outage.down:
                await self._probe()
            # A batch that was not full took what there was: rather than look again at once
            # (a claim that finds nothing, and a count), wait for the next wake or poll. A
            # wake during the pass is still set, so its rows go at once.
            if published < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll_seconds)
                self._wake.clear()

    async def _probe(self) -> None:
        """Kafka is known to be unreachable and nothing was sent: ask the brokers for
        metadata, so that the outage ends when they answer rather than at the next message."""
        answered = False
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            answered = bool(
                await asyncio.wait_for(
                    self._producer.client.force_metadata_update(), max(1.0, self._poll_seconds)
                )
            )
        if answered:
            self.outage.succeeded("relay")

    async def count_pending(self) -> int:
        async with self._engine.connect() as conn:
            await autocommit(conn)
            self.pending = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(outbox)
                    .where(outbox.c.published_at.is_(None))
                )
            ).scalar_one()
        return self.pending

    async def claim(self, now: dt.datetime) -> list[sa.Row[Any]]:
        """Lease a batch of unpublished rows to this relay, so that several relays (API
        replicas, workers) do not all publish the same rows. A lease that runs out (the relay
        died) makes the rows claimable again."""
        token = secrets.token_hex(8)
        free = sa.or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now)
        async with self._engine.begin() as conn:
            candidates = (
                sa.select(outbox.c.id)
                .where(outbox.c.published_at.is_(None), free)
                .order_by(outbox.c.id)
                .limit(self._batch_size)
                .scalar_subquery()
            )
            claimed = await conn.execute(
                outbox.update()
                # `free` again: PostgreSQL re-checks it on rows another relay just claimed.
                .where(outbox.c.id.in_(candidates), outbox.c.published_at.is_(None), free)
                .values(claim_token=token, claimed_until=now + self._lease)
                .returning(*outbox.c)
            )
            # RETURNING has no order: publish in the outbox's order (per key, Kafka keeps it).
            return sorted(claimed.all(), key=lambda row: row.id)

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows; returns how many were published."""
        rows = await self.claim(self._clock.now())
        if not rows:
            return 0
        # The `published` time: before the first record is sent, so never after a consumer
        # has put one in a mailbox (`in_mailbox`), however late the acknowledgement comes.
        handed = self._clock.now()
        try:
            futures = []
            for row in rows:
                headers = [(k, v.encode()) for k, v in orjson.loads(row.headers)]
                futures.append(
                    await self._producer.send(
                        row.topic, value=row.value, key=row.key.encode(), headers=headers
                    )
                )
            await asyncio.gather(*futures)
        except BaseException as exc:
            # Give the rows back at once, so the next attempt (this relay's or another's) does
            # not wait for the lease to run out. Some may have been sent: consumers are
            # idempotent, so sending them again is safe.
            with contextlib.suppress(*STORE_ERRORS, OSError):
                await asyncio.shield(self._release(rows[0].claim_token))
            if isinstance(exc, Exception) and (
                unreachable(exc) or (self.outage.down and isinstance(exc, KafkaError))
            ):
                self.outage.failed("relay", exc, relay_batches=1, relay_records=len(rows))
                self._reported = exc
            raise
        self.outage.succeeded("relay")
        metrics.produced(row.topic for row in rows)
        await self._mark_published(rows, rows[0].claim_token, self._clock.now(), handed)
        return len(rows)

    async def _release(self, token: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.claim_token == token, outbox.c.published_at.is_(None))
                .values(claimed_until=None)
            )

    async def _mark_published(
        self, rows: Sequence[sa.Row[Any]], token: str, now: dt.datetime, handed: dt.datetime
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                outbox.update()
                # Only rows still leased to this relay: if the sweeper took a row back meanwhile
                # (the broker lost its state), what was just sent may be lost: publish it again.
                .where(one_of(conn.dialect.name, outbox.c.id, [r.id for r in rows]))
                .where(outbox.c.claim_token == token)
                .values(published_at=now, attempts=outbox.c.attempts + 1, claimed_until=None)
            )
            # The requests among them reached Kafka (their conversations' `published` stage).
            requests = [
                row.message_id
                for row in rows
                if row.topic == self._topics.medcom_messages and row.message_id is not None
            ]
            await self._on_published(conn, requests, handed)
