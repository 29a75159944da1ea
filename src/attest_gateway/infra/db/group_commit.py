"""Group commit: the writes of concurrent requests in one transaction.

An accepted attest request writes five rows or so (conversation, idempotency key, sent copy,
stage, outbox). Written in a transaction of its own, each request pays BEGIN, one statement
per table and COMMIT; under load that is most of the API's database time, and on SQLite one
commit at a time is the ceiling. `GroupCommit.run(writes)` queues a request's writes (each a
statement built once, with its row or rows) and returns when they are committed. A flush
takes everything queued (up to `max_units`), sends each statement once with the rows of all
those requests (executemany) and commits once; up to `max_flushes` run at a time. While they
commit, new requests queue for the next flush: there is no timer, so a request alone is
written at once.

A flush that fails (a unique key two requests of the flush both use, a constraint one of them
breaks, a lost connection) is rolled back as a whole and each request's writes are then tried
in a transaction of their own, so only the request at fault gets the error, with what it
raised alone; the others commit as they would have without company.

A request may bring audit events too (`run(…, audit=…)`): a flush appends those of all its
requests in one statement, unchained (infra/db/audit.py: no lock shared with other flushes),
and `on_flush` is told after the commit (the composition root wakes the audit chainer).

Writes must not depend on each other's results (no RETURNING) and every unit must list its
statements in one order of the tables' dependencies (parents first): the flush sends the
statements in the order they first appear, each new one after the statement it follows in
its unit; units that order the same two statements differently are written one by one.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.core.audit import AuditEvent
from attest_gateway.infra.db import audit
from attest_gateway.infra.kafka.topics import Topics

log = structlog.get_logger(__name__)

Rows = dict[str, Any] | list[dict[str, Any]]
Write = tuple[Any, Rows]  # a statement built once, and its row or rows


@dataclass(frozen=True, slots=True)
class _Unit:
    writes: Sequence[Write]
    done: asyncio.Future[None]
    audit: Sequence[AuditEvent] = ()
    topics: Topics | None = None


async def _append_audit(conn: AsyncConnection, units: Sequence[_Unit]) -> None:
    events = [event for unit in units for event in unit.audit]
    topics = next((unit.topics for unit in units if unit.topics is not None), None)
    if events and topics is not None:
        await audit.record_many(conn, topics, events)


class GroupCommit:
    """`max_units`: requests in one flush at most. `max_flushes`: flushes under way at once;
    a request that arrives while fewer run starts one, else it waits for the next flush of
    a running one. One flush at a time batches most, but then every request waits for the
    round trips of the one transaction under way. `on_flush(units, failed)` is called after
    each transaction with how many requests it wrote and whether it failed (metrics)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_units: int = 64,
        max_flushes: int = 4,
        on_flush: Callable[[int, bool], None] | None = None,
    ) -> None:
        if max_units < 1 or max_flushes < 1:
            raise ValueError("max_units and max_flushes must be at least 1")
        self._on_flush = on_flush or (lambda _units, _failed: None)
        self._engine = engine
        self._max_units = max_units
        self._max_flushes = max_flushes
        self._queue: list[_Unit] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self.flushes = 0  # transactions committed or tried, for tests and gauges
        self.fallbacks = 0  # flushes of several units that failed and were redone one by one

    async def run(
        self,
        writes: Sequence[Write],
        *,
        audit: Sequence[AuditEvent] = (),
        topics: Topics | None = None,
    ) -> None:
        """Commit `writes` (in their order) together with those of other requests waiting now,
        and append `audit` to the audit chain (and its `topics.audit` outbox) in the same
        transaction. Returns once they are committed; raises what writing them alone raised.
        A caller cancelled while it waits does not take its writes back: they may still
        commit."""
        if not writes:
            return
        if audit and topics is None:
            raise ValueError("audit events need the topics of their outbox rows")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Unit(writes, done, audit, topics))
        if len(self._flushers) < self._max_flushes:
            # A context of its own: the flush is no one request's (log lines, correlation id).
            flusher = asyncio.create_task(
                self._flush_queued(), name="group-commit", context=contextvars.Context()
            )
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        await asyncio.shield(done)

    async def drain(self) -> None:
        """Wait for the flushes under way and what is queued (at shutdown)."""
        while self._flushers:
            await asyncio.shield(asyncio.gather(*self._flushers, return_exceptions=True))

    async def _flush_queued(self) -> None:
        while self._queue:
            units = self._queue[: self._max_units]
            del self._queue[: len(units)]
            try:
                await self._flush(units)
            except BaseException as exc:  # cancelled: nothing may wait for ever
                others = [f for f in self._flushers if f is not asyncio.current_task()]
                pending = units + ([] if others else self._queue)
                if not others:
                    self._queue.clear()
                for unit in pending:
                    if not unit.done.done():
                        unit.done.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError("writer stopped")
                        )
                raise

    async def _flush(self, units: list[_Unit]) -> None:
        merged = _merge(units) if len(units) > 1 else None
        if merged is not None:
            self.flushes += 1
            try:
                async with self._engine.begin() as conn:
                    for statement, rows in merged:
                        await conn.execute(statement, rows)
                    await _append_audit(conn, units)
            except Exception as exc:  # the units, one by one, find the one at fault
                self.fallbacks += 1
                self._on_flush(len(units), True)
                log.info("group_commit.flush_failed", units=len(units), error=type(exc).__name__)
            else:
                self._on_flush(len(units), False)
                for unit in units:
                    unit.done.set_result(None)
                return
        for unit in units:
            self.flushes += 1
            try:
                async with self._engine.begin() as conn:
                    for statement, values in unit.writes:
                        await conn.execute(statement, values)
                    await _append_audit(conn, [unit])
            except Exception as exc:
                self._on_flush(1, True)
                unit.done.set_exception(exc)
            else:
                self._on_flush(1, False)
                unit.done.set_result(None)


def _merge(units: Sequence[_Unit]) -> list[tuple[Any, list[dict[str, Any]]]] | None:
    """Each statement once with the rows of every unit, in an order that keeps every unit's
    order; None when the units order two statements differently."""
    order: list[Any] = []
    rows: dict[int, list[dict[str, Any]]] = {}
    for unit in units:
        before = -1  # position in `order` of the unit's previous statement
        for statement, values in unit.writes:
            if id(statement) not in rows:
                order.insert(before + 1, statement)
                rows[id(statement)] = []
            position = next(i for i, s in enumerate(order) if s is statement)
            if position <= before:
                return None
            before = position
            rows[id(statement)].extend(values if isinstance(values, list) else [values])
    return [(statement, rows[id(statement)]) for statement in order]
