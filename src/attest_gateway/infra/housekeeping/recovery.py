"""Lost broker state: the embedded broker keeps everything in memory, and after it restarts
the gateway's topics and offsets are gone.

`BrokerRecovery` watches the broker's epoch (a record it writes on the canary topic, which
nothing else touches); when it is missing, the one process that takes the recovery lease
recreates the topics, writes a new epoch and hands every outbox row published within
`replay_window_seconds` back to the relay (consumers are idempotent, so a replay changes
nothing that was already done). Every process that sees the epoch change rewinds its
consumers to the start of their partitions, so none skips the new log. The database
remembers the last epoch it saw: with none (a first start, or a new database on a running
broker) a missing canary means a new broker, and nothing is replayed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
import structlog

from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db.engine import STORE_ERRORS, insert_ignore
from attest_gateway.infra.db.tables import leases, outbox
from attest_gateway.infra.kafka.consumer import ConsumerLoop
from attest_gateway.infra.kafka.reading import EPOCH_EXPIRED, read_epoch
from attest_gateway.infra.kafka.topics import ensure_topics

log = structlog.get_logger(__name__)

# The row of `leases` whose holder is the last broker epoch this database saw: no canary and
# no such row means a first start (nothing to replay), no canary but a row means a lost broker.
EPOCH_ROW = "broker-epoch"


class BrokerRecovery:
    """The broker-state watch of one process. `consumers`: this process's consumers, rewound
    to the start of their partitions when the broker's epoch changes (none: a sweeper alone)."""

    def __init__(self, gw: Gateway, bootstrap: str, consumers: Sequence[ConsumerLoop] = ()) -> None:
        self._gw = gw
        self._bootstrap = bootstrap
        self._consumers = tuple(consumers)
        self._epoch: str | None = None
        self._id = uuid.uuid4().hex[:16]
        self._second_replay: tuple[dt.datetime, dt.datetime] | None = None

    async def check(self, now: dt.datetime) -> tuple[bool, int]:
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
