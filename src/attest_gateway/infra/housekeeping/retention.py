"""Retention: collected mailbox rows, published outbox rows whose message arrived, old
seen-ids and idempotency keys, settled sent messages and settled webhook deliveries are
deleted after their retention periods, in small batches (one short transaction each), so
pruning never blocks ingest.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import sqlalchemy as sa

from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db.tables import (
    idempotency_keys,
    inbound_messages,
    mailbox,
    outbox,
    sent_messages,
    webhook_deliveries,
)


async def prune(gw: Gateway, now: dt.datetime) -> int:
    """Delete what is past its retention period, table by table. Returns how many rows."""
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
        (
            webhook_deliveries,
            sa.and_(
                webhook_deliveries.c.status != "pending",
                webhook_deliveries.c.created_at < ago(s.webhook_log_retention_seconds),
            ),
            [webhook_deliveries.c.id],
        ),
    ]
    total = 0
    for table, condition, key_columns in jobs:
        total += await _prune_table(gw, table, condition, key_columns)
    return total


async def _prune_table(
    gw: Gateway,
    table: sa.Table,
    condition: sa.ColumnElement[bool],
    key_columns: list[sa.Column[object]],
) -> int:
    """Delete in batches of `prune_batch_size`, one short transaction per batch."""
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
                await conn.execute(table.delete().where(key_columns[0].in_([k[0] for k in keys])))
            else:
                await conn.execute(
                    table.delete().where(sa.tuple_(*key_columns).in_([tuple(k) for k in keys]))
                )
        total += len(keys)
        if len(keys) < gw.settings.prune_batch_size:
            return total
        await asyncio.sleep(0)  # let ingest in between batches
