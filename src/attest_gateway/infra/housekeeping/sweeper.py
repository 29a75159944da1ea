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
  is due (docs/data-lifecycle.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from aiokafka.errors import KafkaError

from attest_gateway.core.errors import Unavailable
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db.engine import STORE_ERRORS
from attest_gateway.infra.housekeeping.recovery import BrokerRecovery
from attest_gateway.infra.housekeeping.republish import republish_undelivered
from attest_gateway.infra.housekeeping.resend import resend_unacknowledged
from attest_gateway.infra.housekeeping.retention import prune_report
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
    pruned: int = 0
    #: what retention removed, by class (docs/data-lifecycle.md)
    pruned_classes: dict[str, int] = field(default_factory=dict)


class Sweeper:
    """The periodic job of one process: each step in its own module, run in turn.
    `consumers`: this process's consumers, rewound to the start of their partitions when the
    broker's epoch changes (none: a sweeper alone)."""

    def __init__(self, gw: Gateway, bootstrap: str, consumers: Sequence[ConsumerLoop] = ()) -> None:
        self._gw = gw
        self._recovery = BrokerRecovery(gw, bootstrap, consumers)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
        pruned = await prune_report(self._gw, now)
        report.pruned, report.pruned_classes = pruned.total, pruned.counts
        if report.replayed or report.republished or report.resent:
            self._gw.relay.wake()
        return report
