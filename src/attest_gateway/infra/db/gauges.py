"""The store gauges of /metrics (outbox depth, mailbox depth, overdue attests, audit entries not
yet chained): facts about
the shared database, read when Prometheus scrapes (see observability/metrics.py for when and
by which processes). The query lives here, beside the tables it reads; the gauges it sets
are metrics.py's."""

from __future__ import annotations

import datetime as dt
import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.core.clock import Clock
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import audit_pending, conversations, mailbox, outbox, stages
from attest_gateway.observability.metrics import (
    AUDIT_PENDING,
    AUDIT_PENDING_OLDEST,
    MAILBOX_DEPTH,
    OUTBOX_DEPTH,
    OUTBOX_OLDEST,
    OVERDUE,
    STORE_GAUGE_TTL_SECONDS,
)


class StoreGauges:
    """Outbox depth, mailbox depth, overdue attests and the audit entries the chainer has not
    chained yet (a chainer that stopped: readers still chain them, but the chain's anchor in
    `gateway.audit` waits), read from the shared database."""

    def __init__(self, ttl_seconds: float = STORE_GAUGE_TTL_SECONDS) -> None:
        self._ttl = ttl_seconds
        self._at = -float("inf")

    async def refresh(self, engine: AsyncEngine, clock: Clock, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._at < self._ttl:
            return
        self._at = time.monotonic()
        now = clock.now()
        async with engine.connect() as conn:
            pending = (
                await conn.execute(
                    sa.select(outbox.c.topic, sa.func.count(), sa.func.min(outbox.c.created_at))
                    .where(outbox.c.published_at.is_(None))
                    .group_by(outbox.c.topic)
                )
            ).all()
            waiting = (
                await conn.execute(
                    sa.select(mailbox.c.receiver_org_id, mailbox.c.message_type, sa.func.count())
                    .where(mailbox.c.collected_at.is_(None))
                    .group_by(mailbox.c.receiver_org_id, mailbox.c.message_type)
                )
            ).all()
            replied = sa.exists().where(
                stages.c.conversation_id == conversations.c.id, stages.c.stage == "replied"
            )
            overdue = (
                await conn.execute(
                    sa.select(conversations.c.attest_type, sa.func.count())
                    .where(conversations.c.reply_deadline < now.date(), ~replied)
                    .group_by(conversations.c.attest_type)
                )
            ).all()
            unchained, first_unchained = (
                await conn.execute(
                    sa.select(sa.func.count(), sa.func.min(audit_pending.c.at)).where(
                        audit_pending.c.seq.is_(None)
                    )
                )
            ).one()
        AUDIT_PENDING.set(unchained)
        AUDIT_PENDING_OLDEST.set(
            (now - aware(first_unchained)).total_seconds() if first_unchained is not None else 0
        )
        OUTBOX_DEPTH.clear()
        oldest: dt.datetime | None = None
        for topic, count, first in pending:
            OUTBOX_DEPTH.labels(topic).set(count)
            if first is not None and (oldest is None or aware(first) < oldest):
                oldest = aware(first)
        OUTBOX_OLDEST.set((now - oldest).total_seconds() if oldest is not None else 0)
        MAILBOX_DEPTH.clear()
        for receiver, message_type, count in waiting:
            MAILBOX_DEPTH.labels(receiver, message_type).set(count)
        OVERDUE.clear()
        for attest_type, count in overdue:
            OVERDUE.labels(attest_type).set(count)
