"""Housekeeping that makes "accepted means delivered" hold, and keeps the store small.

One periodic job (run by every worker; the steps are safe to run concurrently), each step
in a module of its own:

- **Lost broker state** (`recovery.py`): the broker's epoch on the canary topic; topics
  recreated, recent outbox rows replayed, consumers rewound when the broker lost its state.
- **Re-publish** (`republish.py`): a message published long ago that reached no mailbox.
- **MedCom resend rule** (`resend.py`): a request without acknowledgement is sent again, then
  flagged `undeliverable`.
- **Retention** (`retention.py`): what is past its retention period is deleted in small
  batches, so pruning never blocks ingest; the audit chain gets a signed checkpoint when one
  is due (docs/data-lifecycle.md). It runs in a loop of its own, at the same interval: a
  pass paced to a small share of the machine can take minutes over a backlog, and must not
  hold up the broker's recovery or the resends meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from aiokafka.errors import KafkaError

from attest_gateway.core.errors import Unavailable
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db.engine import STORE_ERRORS
from attest_gateway.infra.housekeeping.recovery import BrokerRecovery
from attest_gateway.infra.housekeeping.republish import republish_undelivered
from attest_gateway.infra.housekeeping.resend import resend_unacknowledged
from attest_gateway.infra.housekeeping.retention import PruneReport, prune_report
from attest_gateway.infra.kafka.consumer import ConsumerLoop
from attest_gateway.infra.kafka.outage import unreachable
from attest_gateway.infra.kafka.reading import KafkaReadTimeout

log = structlog.get_logger(__name__)

_STORE_OR_OS: tuple[type[Exception], ...] = (*STORE_ERRORS, OSError)


@dataclass
class SweepReport:
    topics_recreated: bool = False
    replayed: int = 0
    republished: int = 0
    resent: int = 0
    undeliverable: int = 0


class Sweeper:
    """The periodic jobs of one process: the sweep's steps, each in its own module, run in
    turn; retention in a loop of its own.
    `consumers`: this process's consumers, rewound to the start of their partitions when the
    broker's epoch changes (none: a sweeper alone)."""

    def __init__(self, gw: Gateway, bootstrap: str, consumers: Sequence[ConsumerLoop] = ()) -> None:
        self._gw = gw
        self._recovery = BrokerRecovery(gw, bootstrap, consumers)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="sweeper"),
            asyncio.create_task(self._retention(), name="retention"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _retention(self) -> None:
        while True:
            try:
                pruned = await self.prune_once()
            # KafkaError: an audit checkpoint's anchor; the sweep's canary reports outages
            except (*_STORE_OR_OS, KafkaError) as exc:
                log.warning("sweeper.failed", step="retention", error=type(exc).__name__)
            except Unavailable as exc:
                log.warning("sweeper.failed", step="retention", error=exc.code, detail=exc.detail)
            else:
                if pruned.total:  # what retention removed, by class (docs/data-lifecycle.md)
                    log.info("sweeper.swept", pruned=pruned.total, pruned_classes=pruned.counts)
            await asyncio.sleep(self._gw.settings.sweep_interval_seconds)

    async def prune_once(self, now: dt.datetime | None = None) -> PruneReport:
        """The retention step alone (the sweep leaves it to its own loop)."""
        return await prune_report(self._gw, now or self._gw.clock.now())

    async def _run(self) -> None:
        while True:
            outage = self._gw.outage
            try:
                report = await self.sweep_once()
            except KafkaReadTimeout as exc:  # the broker did not answer: the outage tells it
                outage.failed("sweeper", exc, sweeps=1)
            except KafkaError as exc:
                if outage.down or unreachable(exc):
                    outage.failed("sweeper", exc, sweeps=1)
                else:
                    log.warning("sweeper.failed", error=type(exc).__name__)
            except _STORE_OR_OS as exc:
                log.warning("sweeper.failed", error=type(exc).__name__)
            except Unavailable as exc:  # e.g. a topic is missing
                log.warning("sweeper.failed", error=exc.code, detail=exc.detail)
            else:
                outage.succeeded("sweeper")  # every sweep reads the canary from Kafka
                if any(v for v in vars(report).values()):
                    log.info("sweeper.swept", **vars(report))
            await asyncio.sleep(self._gw.settings.sweep_interval_seconds)

    async def sweep_once(self, now: dt.datetime | None = None) -> SweepReport:
        now = now or self._gw.clock.now()
        report = SweepReport()
        report.topics_recreated, report.replayed = await self._recovery.check(now)
        report.republished = await republish_undelivered(self._gw, now)
        report.resent, report.undeliverable = await resend_unacknowledged(self._gw, now)
        if report.replayed or report.republished or report.resent:
            self._gw.relay.wake()
        return report
