"""Re-publish: a `medcom.messages` row published more than `republish_after_seconds` ago
whose message is in no mailbox is published again (at most `max_publish_attempts` times; a
record that keeps failing is in the dead-letter topic by then).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db.tables import outbox


async def republish_undelivered(gw: Gateway, now: dt.datetime) -> int:
    """Hand back to the relay the `medcom.messages` rows published more than
    `republish_after_seconds` ago whose message is in no mailbox (at most
    `max_publish_attempts` times). Returns how many."""
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
