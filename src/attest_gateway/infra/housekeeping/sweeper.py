"""Housekeeping that makes "accepted means delivered" hold, and keeps the store small.

One periodic job (run by every worker; the steps are safe to run concurrently):

- **Lost broker state.** The embedded broker keeps everything in memory; after it restarts
  the gateway's topics and offsets are gone. The sweeper watches the broker's epoch (a record
  it writes on the canary topic, which nothing else touches); when it is missing, it
  recreates the topics, writes a new epoch and hands every outbox row
  published within `replay_window_seconds` back to the relay (consumers are idempotent, so a
  replay changes nothing that was already done). Every process whose sweeper sees the epoch
  change rewinds its consumers to the start of their partitions, so none skips the new log.
  The database remembers the last epoch it saw: with none (a first start, or a new database
  on a running broker) a missing canary means a new broker, and nothing is replayed.
- **Re-publish.** A `medcom.messages` row published more than `republish_after_seconds` ago
  whose message is in no mailbox is published again (at most `max_publish_attempts` times; a
  record that keeps failing is in the dead-letter topic by then).
- **MedCom resend rule.** A request without acknowledgement after `resend_after_seconds` (30
  minutes) is sent again with a new Bundle.id and the same MessageHeader.id, at most
  `max_resends` (2) times; after that the conversation is flagged `undeliverable`.
- **Retention.** Collected mailbox rows, published outbox rows whose message arrived, old
  seen-ids and idempotency keys, and settled sent messages are deleted after their retention
  periods, in small batches (one short transaction each), so pruning never blocks ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.errors import Unavailable
from attest_gateway.crypto.sealing import open_envelope
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.engine import STORE_ERRORS, insert_ignore
from attest_gateway.infra.db.messaging import (
    enqueue_envelope,
    load_conversation,
    record_stage,
    seal_for,
)
from attest_gateway.infra.db.tables import (
    idempotency_keys,
    inbound_messages,
    leases,
    mailbox,
    outbox,
    sent_messages,
)
from attest_gateway.infra.kafka.consumer import ConsumerLoop
from attest_gateway.infra.kafka.reading import EPOCH_EXPIRED, read_epoch
from attest_gateway.infra.kafka.topics import ensure_topics

log = structlog.get_logger(__name__)


@dataclass
class SweepReport:
    topics_recreated: bool = False
    replayed: int = 0
    republished: int = 0
    resent: int = 0
    undeliverable: int = 0
    pruned: int = 0


# The row of `leases` whose holder is the last broker epoch this database saw: no canary and
# no such row means a first start (nothing to replay), no canary but a row means a lost broker.
EPOCH_ROW = "broker-epoch"


class Sweeper:
    """The periodic job of one process. `consumers`: this process's consumers, rewound to the
    start of their partitions when the broker's epoch changes (none: a sweeper alone)."""

    def __init__(self, gw: Gateway, bootstrap: str, consumers: Sequence[ConsumerLoop] = ()) -> None:
        self._gw = gw
        self._bootstrap = bootstrap
        self._consumers = tuple(consumers)
        self._task: asyncio.Task[None] | None = None
        self._epoch: str | None = None
        self._id = uuid.uuid4().hex[:16]
        self._second_replay: tuple[dt.datetime, dt.datetime] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                report = await self.sweep_once()
            except (KafkaError, *STORE_ERRORS, OSError) as exc:
                log.warning("sweeper.failed", error=type(exc).__name__)
            except Unavailable as exc:  # e.g. a read of the canary ran out of time
                log.warning("sweeper.failed", error=exc.code, detail=exc.detail)
            else:
                if any(v for v in vars(report).values()):
                    log.info("sweeper.swept", **vars(report))
            await asyncio.sleep(self._gw.settings.sweep_interval_seconds)

    async def sweep_once(self, now: dt.datetime | None = None) -> SweepReport:
        now = now or self._gw.clock.now()
        report = SweepReport()
        report.topics_recreated, report.replayed = await self.recreate_lost_topics(now)
        report.republished = await self.republish_undelivered(now)
        report.resent, report.undeliverable = await self.resend_unacknowledged(now)
        report.pruned = await self.prune(now)
        if report.replayed or report.republished or report.resent:
            self._gw.relay.wake()
        return report

    async def recreate_lost_topics(self, now: dt.datetime) -> tuple[bool, int]:
        """Watch the broker's epoch (a record on the canary topic). No canary: the broker is
        new or lost its state; the one sweeper that takes the recovery lease recreates the
        topics, replays the recent outbox and writes a new epoch. A different epoch than last
        time: this process's consumers read their partitions from the beginning again."""
        gw = self._gw
        replayed = await self._second_replay_if_due()
        epoch = await read_epoch(gw.settings, self._bootstrap, gw.topics.canary)
        if epoch == EPOCH_EXPIRED:
            await self._restore_expired_epoch()
            return False, replayed
        if not epoch:  # no canary, or one without an epoch (a recovery that died half-way)
            if not await self._lease("broker-recovery", seconds=30):
                return False, 0  # another process is recovering
            try:
                again = await read_epoch(gw.settings, self._bootstrap, gw.topics.canary)
                if again:  # another process recovered meanwhile and gave the lease back
                    await self._adopt(again)
                    return False, replayed
                if await self._known_epoch() is None:
                    # This database has never seen a broker: a first start, nothing to recover.
                    await self._initialise()
                else:
                    replayed += await self._recover(now)
                await self._adopt(await read_epoch(gw.settings, self._bootstrap, gw.topics.canary))
            finally:
                await self._release("broker-recovery")
            return True, replayed
        await self._adopt(epoch)
        return False, replayed

    async def _restore_expired_epoch(self) -> None:
        """Retention removed the epoch record (a canary created before it was kept forever).
        The broker did not lose its state (its offsets went on), so the epoch this database
        last saw is written again: nothing is replayed and no consumer rewinds."""
        gw = self._gw
        if not await self._lease("broker-recovery", seconds=30):
            return  # another process is at it
        try:
            epoch = await self._known_epoch() or self._epoch or uuid.uuid4().hex
            log.warning("sweeper.epoch_expired", canary=gw.topics.canary)
            await gw.producer.send_and_wait(gw.topics.canary, epoch.encode(), partition=0)
            await self._adopt(epoch)
        finally:
            await self._release("broker-recovery")

    async def _known_epoch(self) -> str | None:
        """The last broker epoch this database saw (kept as a row of `leases`)."""
        async with self._gw.engine.connect() as conn:
            holder = (
                await conn.execute(sa.select(leases.c.holder).where(leases.c.name == EPOCH_ROW))
            ).scalar_one_or_none()
        return holder or None

    async def _remember_epoch(self, epoch: str) -> None:
        now = self._gw.clock.now()
        async with self._gw.engine.begin() as conn:
            await insert_ignore(conn, leases, {"name": EPOCH_ROW, "holder": epoch, "until": now})
            await conn.execute(
                leases.update().where(leases.c.name == EPOCH_ROW).values(holder=epoch, until=now)
            )

    async def _initialise(self) -> None:
        gw = self._gw
        log.info("sweeper.broker_initialised")
        await ensure_topics(gw.settings, self._bootstrap, [*gw.topics.all(), gw.topics.canary])
        await gw.producer.send_and_wait(gw.topics.canary, uuid.uuid4().hex.encode(), partition=0)

    async def _second_replay_if_due(self) -> int:
        """Producers elsewhere may have written to the new broker with partition maps of the
        old one in the seconds after it came back (it auto-creates topics with its own
        partition count). Once their metadata is fresh, publish again what they sent then and
        what has not arrived: medcom messages not delivered, all stage events (idempotent)."""
        if self._second_replay is None or self._gw.clock.now() < self._second_replay[0]:
            return 0
        since = self._second_replay[1]
        self._second_replay = None
        gw = self._gw
        async with gw.engine.begin() as conn:
            result = await conn.execute(
                outbox.update()
                .where(
                    outbox.c.published_at >= since,
                    sa.or_(
                        outbox.c.topic != gw.topics.medcom_messages,
                        outbox.c.delivered_at.is_(None),
                    ),
                )
                .values(published_at=None, claimed_until=None, claim_token=None)
            )
        return int(result.rowcount or 0)

    async def _lease(self, name: str, *, seconds: float) -> bool:
        """Take the named lease if it is free (wall clock). Only one process holds it at a time:
        the broker's own create-topic answer cannot be trusted for that (the embedded broker
        accepts creating a topic twice)."""
        now = self._gw.clock.now()
        async with self._gw.engine.begin() as conn:
            await insert_ignore(
                conn, leases, {"name": name, "holder": "", "until": now - dt.timedelta(days=1)}
            )
            taken = await conn.execute(
                leases.update()
                .where(leases.c.name == name, leases.c.until < now)
                .values(holder=self._id, until=now + dt.timedelta(seconds=seconds))
            )
        return taken.rowcount == 1

    async def _release(self, name: str) -> None:
        """Give a lease back early (its holder is done); if this fails, it runs out anyway."""
        with contextlib.suppress(*STORE_ERRORS, OSError):
            async with self._gw.engine.begin() as conn:
                await conn.execute(
                    leases.update()
                    .where(leases.c.name == name, leases.c.holder == self._id)
                    .values(until=self._gw.clock.now() - dt.timedelta(seconds=1))
                )

    async def _recover(self, now: dt.datetime) -> int:
        gw = self._gw
        log.warning("sweeper.broker_state_lost")
        await ensure_topics(gw.settings, self._bootstrap, [*gw.topics.all(), gw.topics.canary])
        since = now - dt.timedelta(seconds=gw.settings.replay_window_seconds)
        async with gw.engine.begin() as conn:
            result = await conn.execute(
                outbox.update()
                .where(
                    sa.or_(
                        outbox.c.published_at >= since,
                        # in a relay's hands right now: it may have gone to the lost broker
                        sa.and_(outbox.c.published_at.is_(None), outbox.c.claim_token.is_not(None)),
                    )
                )
                .values(published_at=None, claimed_until=None, claim_token=None)
            )
        await gw.producer.send_and_wait(gw.topics.canary, uuid.uuid4().hex.encode(), partition=0)
        self._second_replay = (
            self._gw.clock.now() + dt.timedelta(seconds=20),
            self._gw.clock.now() - dt.timedelta(seconds=5),
        )
        return int(result.rowcount or 0)

    async def _adopt(self, epoch: str | None) -> None:
        if not epoch or epoch == EPOCH_EXPIRED:
            return
        if self._epoch is not None and epoch != self._epoch:
            for consumer in self._consumers:
                await consumer.rewind()
        if epoch != self._epoch:
            await self._remember_epoch(epoch)
        self._epoch = epoch

    async def republish_undelivered(self, now: dt.datetime) -> int:
        gw = self._gw
        cutoff = now - dt.timedelta(seconds=gw.settings.republish_after_seconds)
        async with gw.engine.begin() as conn:
            ids = (
                (
                    await conn.execute(
                        sa.select(outbox.c.id)
                        .where(
                            outbox.c.topic == gw.topics.medcom_messages,
                            outbox.c.published_at.is_not(None),
                            outbox.c.published_at < cutoff,
                            outbox.c.attempts < gw.settings.max_publish_attempts,
                            outbox.c.delivered_at.is_(None),
                        )
                        .limit(gw.settings.prune_batch_size)
                    )
                )
                .scalars()
                .all()
            )
            if ids:
                await conn.execute(
                    outbox.update()
                    .where(outbox.c.id.in_(ids))
                    .values(published_at=None, claimed_until=None, claim_token=None)
                )
        return len(ids)

    async def resend_unacknowledged(self, now: dt.datetime) -> tuple[int, int]:
        gw = self._gw
        cutoff = now - dt.timedelta(seconds=gw.settings.resend_after_seconds)
        resent = undeliverable = 0
        async with gw.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(sent_messages)
                    .where(
                        sent_messages.c.acknowledged_at.is_(None),
                        sent_messages.c.undeliverable_at.is_(None),
                        sent_messages.c.last_sent_at < cutoff,
                    )
                    .limit(gw.settings.prune_batch_size)
                )
            ).all()
        for row in rows:
            async with gw.engine.begin() as conn:
                # Claim the row (another worker may be sweeping too).
                claimed = await conn.execute(
                    sent_messages.update()
                    .where(
                        sent_messages.c.message_id == row.message_id,
                        sent_messages.c.resend_count == row.resend_count,
                        sent_messages.c.acknowledged_at.is_(None),
                        sent_messages.c.undeliverable_at.is_(None),
                    )
                    .values(
                        last_sent_at=now,
                        resend_count=row.resend_count + 1,
                        undeliverable_at=now
                        if row.resend_count >= gw.settings.max_resends
                        else None,
                    )
                )
                if claimed.rowcount != 1:
                    continue
                conv = await load_conversation(conn, row.conversation_id)
                assert conv is not None
                if row.resend_count >= gw.settings.max_resends:
                    undeliverable += 1
                    await record_stage(
                        conn, gw.topics, conv, Stage.UNDELIVERABLE,
                        message_id=row.message_id, message_type=MessageType(row.message_type),
                        at=now, detail=f"no acknowledgement after {row.resend_count} resends",
                    )  # fmt: skip
                    continue
                await self._resend(conn, row, now)
                resent += 1
                await record_stage(
                    conn, gw.topics, conv, Stage.RESENT,
                    message_id=row.message_id, message_type=MessageType(row.message_type),
                    at=now, detail=f"resend {row.resend_count + 1}",
                )  # fmt: skip
        return resent, undeliverable

    async def _resend(self, conn: AsyncConnection, row: sa.Row[Any], now: dt.datetime) -> None:
        gw = self._gw
        copy = SealedEnvelope.from_json(row.copy)
        key = gw.keyring.hpke_key(copy.header.recipient_key_id)
        if key is None:
            raise RuntimeError("the gateway no longer holds the key of its sent-message copy")
        bundle = orjson.loads(open_envelope(copy, key))
        bundle["id"] = new_bundle_id = str(uuid.uuid4())  # MedCom: new Bundle.id on every send
        bundle["timestamp"] = now.isoformat()
        envelope = await seal_for(
            conn,
            gw.keyring,
            signer_org_id=gw.settings.gateway_org_id,
            sender_org_id=copy.header.sender,
            receiver_org_id=str(row.receiver_org_id),
            message_type=copy.header.message_type,
            message_id=copy.header.message_id,
            bundle_id=new_bundle_id,
            conversation_id=copy.header.conversation_id,
            plaintext=orjson.dumps(bundle),
            now=now,
        )
        await enqueue_envelope(conn, gw.topics, envelope, now)
        await audit.record(  # the gateway opened its own copy: an opening, audited
            conn,
            gw.topics,
            actor=gw.settings.gateway_org_id,
            action=audit.ENVELOPE_OPEN,
            source=audit.SOURCE_GATEWAY,
            at=now,
            subject_org=copy.header.sender,
            message_id=copy.header.message_id,
            conversation_id=copy.header.conversation_id,
            detail={"key_id": key.key_id, "purpose": "resend"},
        )

    async def prune(self, now: dt.datetime) -> int:
        gw = self._gw
        s = gw.settings

        def ago(seconds: float) -> dt.datetime:
            return now - dt.timedelta(seconds=seconds)

        jobs: list[tuple[sa.Table, sa.ColumnElement[bool], list[sa.Column[object]]]] = [
            (
                outbox,
                sa.and_(
                    outbox.c.published_at < ago(s.outbox_retention_seconds),
                    sa.or_(
                        outbox.c.topic != gw.topics.medcom_messages,
                        outbox.c.delivered_at.is_not(None),
                        outbox.c.attempts >= s.max_publish_attempts,
                    ),
                ),
                [outbox.c.id],
            ),
            (
                mailbox,
                mailbox.c.collected_at < ago(s.mailbox_retention_seconds),
                [mailbox.c.message_id],
            ),
            (
                inbound_messages,
                inbound_messages.c.created_at < ago(s.seen_ids_retention_seconds),
                [inbound_messages.c.message_id],
            ),
            (
                idempotency_keys,
                idempotency_keys.c.created_at < ago(s.seen_ids_retention_seconds),
                [idempotency_keys.c.org_id, idempotency_keys.c.key],
            ),
            (
                sent_messages,
                sa.and_(
                    sa.or_(
                        sent_messages.c.acknowledged_at.is_not(None),
                        sent_messages.c.undeliverable_at.is_not(None),
                    ),
                    sent_messages.c.last_sent_at < ago(s.seen_ids_retention_seconds),
                ),
                [sent_messages.c.message_id],
            ),
        ]
        total = 0
        for table, condition, key_columns in jobs:
            total += await self._prune_table(table, condition, key_columns)
        return total

    async def _prune_table(
        self,
        table: sa.Table,
        condition: sa.ColumnElement[bool],
        key_columns: list[sa.Column[object]],
    ) -> int:
        """Delete in batches of `prune_batch_size`, one short transaction per batch."""
        gw = self._gw
        total = 0
        while True:
            async with gw.engine.begin() as conn:
                keys = (
                    await conn.execute(
                        sa.select(*key_columns).where(condition).limit(gw.settings.prune_batch_size)
                    )
                ).all()
                if not keys:
                    return total
                if len(key_columns) == 1:
                    await conn.execute(
                        table.delete().where(key_columns[0].in_([k[0] for k in keys]))
                    )
                else:
                    await conn.execute(
                        table.delete().where(sa.tuple_(*key_columns).in_([tuple(k) for k in keys]))
                    )
            total += len(keys)
            if len(keys) < gw.settings.prune_batch_size:
                return total
            await asyncio.sleep(0)  # let ingest in between batches
