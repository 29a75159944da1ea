"""Mail arrivals: what a long-poll (`GET /medcom/v1/mailbox?wait=`,
`GET /jobcenter/v1/inbox?wait=`) waits on (docs/decisions/0012).

A waiting request is woken at once when mail for its organisation is committed in this process
(the delivery consumer of `serve --role all`), and otherwise finds it by a cheap indexed query
(`mailbox` by receiver and collected time) every `check_seconds`: the delivery may happen in
another process (`serve --role worker`), on SQLite or PostgreSQL alike.

At most `max_waiters` requests wait at once in a process; one more answers at once with what
there is. `release()` ends every wait at once (a signal handler may call it): a
shutting-down server does not wait for its long-polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.contracts.stages import MessageType
from attest_gateway.infra.db.tables import mailbox
from attest_gateway.observability import metrics


class MailArrivals:
    def __init__(self, engine: AsyncEngine, *, max_waiters: int, check_seconds: float) -> None:
        self._engine = engine
        self._max_waiters = max_waiters
        self._check_seconds = check_seconds
        self._events: dict[str, set[asyncio.Event]] = {}
        self._waiting = 0
        self._released = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the waiters' (for release())

    @property
    def waiting(self) -> int:
        """How many requests wait now."""
        return self._waiting

    def notify(self, org_ids: Iterable[str]) -> None:
        """Mail for these organisations was just committed: wake their waiters."""
        for org_id in org_ids:
            for event in self._events.get(org_id, ()):
                event.set()

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """End every wait (shutdown). Safe from a signal handler: it sets a flag and asks the
        event loop (thread-safely) to wake the waiters, which then answer at once."""
        self._released = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    async def _mail_waiting(self, org_id: str, replies: bool) -> bool:
        query = sa.select(mailbox.c.message_id).where(
            mailbox.c.receiver_org_id == org_id, mailbox.c.collected_at.is_(None)
        )
        if replies:
            query = query.where(
                mailbox.c.message_type == MessageType.ATTEST_REPLY.value,
                mailbox.c.unreadable_at.is_(None),
            )
        async with self._engine.connect() as conn:
            return (await conn.execute(query.limit(1))).first() is not None

    async def wait(self, org_id: str, *, replies: bool, seconds: float) -> bool:
        """Wait up to `seconds` until mail waits for `org_id` (attest replies only: `replies`).
        Whether it does; False at once when too many wait already or the store is released."""
        if seconds <= 0 or self._released or self._waiting >= self._max_waiters:
            return False
        loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        event = asyncio.Event()
        self._events.setdefault(org_id, set()).add(event)
        self._waiting += 1
        metrics.LONG_POLLS_WAITING.inc()
        try:
            while True:
                if self.released:
                    return False
                if await self._mail_waiting(org_id, replies):
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(self._check_seconds, left))
                event.clear()
        finally:
            self._waiting -= 1
            metrics.LONG_POLLS_WAITING.dec()
            events = self._events.get(org_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[org_id]
