"""The audit chainer: chains the pending audit entries shortly after they are committed.

Reads, requests and replies append their audit entries unchained (`audit_pending`, see
infra/db/audit.py); `AuditChainer` gives them their place in the hash chain, a bounded batch
per transaction, holding the chain head's row lock only while it chains (so one chainer at a
time, whichever process it runs in). It runs where the sweeper runs (`serve --role worker`
or `all`), chains what is pending as soon as it starts (a crash between an append and its
chaining loses nothing), and then whenever it is woken (`wake`: the group commit or a unit
of work of this process committed audit events) or `poll_seconds` passed, whichever first: an
indexed look finds entries appended by other processes. A wake is answered after
`linger_seconds`, so that the entries of the next few commits (a conversation's request,
reads and acknowledgements follow one another within milliseconds) are chained in one pass:
each pass takes the head's lock, writes the head and an outbox record of the audit topic
that the relay then publishes, and on SQLite holds the one write lock meanwhile. A failed
pass is logged and tried again at the next poll; until then the entries wait, committed,
in `audit_pending`.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.infra.db import audit
from attest_gateway.infra.db.engine import STORE_ERRORS
from attest_gateway.infra.kafka.topics import Topics

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.25
LINGER_SECONDS = 0.2  # a wake gathers what the next commits append for this long
_FAILURES: tuple[type[Exception], ...] = (*STORE_ERRORS, OSError)


class AuditChainer:
    def __init__(
        self,
        engine: AsyncEngine,
        topics: Topics,
        *,
        batch: int = audit.CHAIN_BATCH,
        poll_seconds: float = POLL_SECONDS,
        linger_seconds: float = LINGER_SECONDS,
    ) -> None:
        self._engine = engine
        self._topics = topics
        self._batch = batch
        self._poll = poll_seconds
        self._linger = linger_seconds
        self._woken: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Entries were appended in this process: chain them now rather than at the poll."""
        if self._woken is not None:
            self._woken.set()

    def start(self) -> None:
        self._woken = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="audit-chainer")

    async def stop(self) -> None:
        """Stop, after one last pass (what this process appended is then in the chain)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(*_FAILURES):
            await self.chain_now()

    async def chain_now(self) -> int:
        """One pass: chain everything pending now. Returns how many entries it chained."""
        return await audit.chain_all(self._engine, self._topics, batch=self._batch)

    async def _run(self) -> None:
        assert self._woken is not None
        while True:
            self._woken.clear()
            try:
                await self.chain_now()
            except _FAILURES as exc:
                log.warning("audit.chain_failed", error=type(exc).__name__)
            except Exception as exc:  # e.g. the head row missing: told, tried again, not fatal
                log.error("audit.chain_failed", error=type(exc).__name__, detail=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._poll)
                await asyncio.sleep(self._linger)  # woken: let the next commits' entries join
