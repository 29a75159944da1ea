"""Retention: everything the gateway stores is deleted (or, for a sealed CPR number, cleared)
after its retention period, class by class as docs/data-lifecycle.md lists them, in small
batches (one short transaction each: a bounded select of keys, then a delete of those keys),
so pruning never blocks ingest.

- outbox records once published (and a message delivered); collected mailbox entries;
- seen MessageHeader and Bundle ids and the submissions' first answers (replay detection,
  kept longer than the mailbox entries); job centres' Idempotency-Keys;
- the sealed copies of sent messages once acknowledged or given up;
- webhook deliveries once delivered or failed (the organisation's delivery log);
- sealed CPR numbers of finished conversations and of registered contacts;
- finished conversations (a final stage, `contracts.stages.FINAL_STAGES`) with their stages,
  sent copies, idempotency records, submissions and mailbox entries; an open conversation is
  never touched;
- the tracker's per-conversation timelines, episodes and registered contacts once decided,
  and which citizens a closed period's cells counted; the aggregates themselves are kept;
- closed cases (`services/closures.py`) after CASE_ERASURE_DAYS: what identifies the citizen;
- the audit log, up to a signed checkpoint (`infra/db/audit.py`), after a checkpoint of the
  chain's head is taken when due; only by a role that may remove audit entries (on PostgreSQL
  the owner role, `attest-gateway prune` with DATABASE_OWNER_URL: infra/db/grants.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.config import DAY, Settings
from attest_gateway.contracts.stages import FINAL_STAGES, MessageType
from attest_gateway.core.audit import CASE_ERASE, SOURCE_GATEWAY, AuditEvent
from attest_gateway.crypto.pseudonyms import key_id_of
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.directory_view import SqlDirectory
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.grants import may_prune_audit
from attest_gateway.infra.db.tables import (
    case_closures,
    conversations,
    idempotency_keys,
    inbound_messages,
    mailbox,
    outbox,
    request_actions,
    seen_ids,
    sent_messages,
    stages,
    tracker_cases,
    tracker_cell_citizens,
    tracker_cells,
    tracker_contacts,
    tracker_conversations,
    tracker_episodes,
    tracker_reminders,
    tracker_treatments,
    webhook_deliveries,
)
from attest_gateway.infra.kafka.topics import Topics

# A cell's period (a week or a month) has ended this long after it started.
_LONGEST_PERIOD = dt.timedelta(days=31)


@dataclass
class PruneReport:
    """What one pass removed, by class (rows; `sealed_cpr_cleared`: values set to NULL)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int) -> None:
        if n:
            self.counts[name] = self.counts.get(name, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def prune(gw: Gateway, now: dt.datetime) -> int:
    """Delete what is past its retention period. Returns how many rows it touched."""
    return (await prune_report(gw, now)).total


async def prune_report(gw: Gateway, now: dt.datetime) -> PruneReport:
    """`prune`, with what it removed by class."""
    return await prune_all(gw.engine, gw.settings, gw.topics, gw.keyring, now)


async def prune_all(
    engine: AsyncEngine, settings: Settings, topics: Topics, keyring: KeyRing, now: dt.datetime
) -> PruneReport:
    """Every class of data after its retention period, with a checkpoint of the audit chain
    first if one is due (signed with the gateway's signing key from `keyring`)."""
    s = settings
    report = await prune_store(engine, s, topics, now)
    async with engine.begin() as conn:
        usable = await SqlDirectory(conn).usable_signing_key_ids(s.gateway_org_id, now)
        signer = keyring.signing_among(s.gateway_org_id, usable) if usable else None
        if signer is not None:
            made = await audit.checkpoint_if_due(
                conn,
                signer,
                now,
                every=s.audit_checkpoint_entries,
                interval=dt.timedelta(seconds=s.audit_checkpoint_seconds),
                topics=topics,
                actor=s.gateway_org_id,
            )
            report.add("audit_checkpoints", int(made is not None))
        # The runtime role may not remove audit entries (infra/db/grants.py): then the
        # operator's `attest-gateway prune`, as the owner role, does.
        prunable = await may_prune_audit(conn)
    if prunable:
        removed = await audit.prune(
            engine,
            topics,
            signer,
            before=now - dt.timedelta(days=s.audit_retention_days),
            now=now,
            batch=s.prune_batch_size,
            actor=s.gateway_org_id,
        )
        report.add("audit_log", removed)
    return report


async def prune_store(
    engine: AsyncEngine, settings: Settings, topics: Topics, now: dt.datetime
) -> PruneReport:
    """Every class of the store but the audit log, each after its retention period, and the
    closed cases due for erasure."""
    s = settings
    medcom_topic = topics.medcom_messages
    batch = s.prune_batch_size
    report = PruneReport()

    def ago(seconds: float) -> dt.datetime:
        return now - dt.timedelta(seconds=seconds)

    async def delete(name: str, table: sa.Table, where: Any, keys: list[Any]) -> None:
        report.add(name, await _prune_table(engine, table, where, keys, batch))

    await delete(
        "outbox",
        outbox,
        sa.and_(
            outbox.c.published_at < ago(s.outbox_retention_seconds),
            sa.or_(
                outbox.c.topic != medcom_topic,
                outbox.c.delivered_at.is_not(None),
                outbox.c.attempts >= s.max_publish_attempts,
            ),
        ),
        [outbox.c.id],
    )
    await delete(
        "mailbox",
        mailbox,
        mailbox.c.collected_at < ago(s.mailbox_retention_seconds),
        [mailbox.c.message_id],
    )
    seen_cutoff = ago(s.seen_ids_retention_seconds)
    await delete(
        "inbound_messages",
        inbound_messages,
        inbound_messages.c.created_at < seen_cutoff,
        [inbound_messages.c.message_id],
    )
    await delete(
        "seen_ids",
        seen_ids,
        seen_ids.c.first_seen_at < seen_cutoff,
        [seen_ids.c.kind, seen_ids.c.id],
    )
    await delete(
        "idempotency_keys",
        idempotency_keys,
        idempotency_keys.c.created_at < ago(s.idempotency_retention_days * DAY),
        [idempotency_keys.c.org_id, idempotency_keys.c.key],
    )
    settled = ago(s.sent_copy_retention_days * DAY)
    await delete(
        "sent_messages",
        sent_messages,
        sa.and_(
            sa.or_(
                sent_messages.c.acknowledged_at < settled,
                sent_messages.c.undeliverable_at < settled,
            ),
            # a request's copy stays while its conversation is open: a reminder copies the
            # Patient and the caseworker from it (tracker/sweep.py)
            sa.or_(
                sent_messages.c.message_type != MessageType.ATTEST_REQUEST.value,
                sent_messages.c.conversation_id.in_(_finished_before(now).scalar_subquery()),
            ),
        ),
        [sent_messages.c.message_id],
    )
    await delete(
        "webhook_deliveries",
        webhook_deliveries,
        sa.and_(
            webhook_deliveries.c.status != "pending",
            webhook_deliveries.c.created_at < ago(s.webhook_log_retention_seconds),
        ),
        [webhook_deliveries.c.id],
    )
    report.add(
        "sealed_cpr_cleared",
        await _clear_sealed_cpr(engine, ago(s.sealed_cpr_retention_days * DAY), batch),
    )
    report.add(
        "conversations",
        await _prune_conversations(engine, ago(s.conversation_retention_days * DAY), batch),
    )
    await _prune_tracker(engine, report, ago(s.tracker_timeline_retention_days * DAY), batch)
    report.add(
        "cases_erased", await erase_closed_cases(engine, topics, now, batch, s.gateway_org_id)
    )
    return report


# Closed cases erased per transaction. Each erasure appends an audit entry; when every append
# waited for the audit chain's head, one transaction per case made a pass over many closed
# cases queue behind the API's reads, and the API behind the pass (bench/RESULTS.md,
# "Retention at national volume"); appends no longer take the head, and a case is some tens
# of rows, so this many cases are about a batch's rows.
def cases_per_transaction(batch: int) -> int:
    return max(1, batch // 20)


async def erase_closed_cases(
    engine: AsyncEngine, topics: Topics, now: dt.datetime, batch: int, actor: str
) -> int:
    """Erase the closed cases whose time has come, `cases_per_transaction(batch)` cases per
    transaction, their audit entries appended together at its end. Returns how many."""
    c = case_closures.c
    per = cases_per_transaction(batch)
    erased = 0
    while True:
        async with engine.connect() as conn:
            ids = list(
                await conn.scalars(
                    sa.select(c.id)
                    .where(c.erased_at.is_(None), c.erase_after < now)
                    .order_by(c.erase_after, c.id)
                    .limit(batch)
                )
            )
        for start in range(0, len(ids), per):
            async with engine.begin() as conn:
                events = [
                    event
                    for closure_id in ids[start : start + per]
                    if (event := await _erase_case(conn, closure_id, now, actor)) is not None
                ]
                await audit.record_many(conn, topics, events)
            erased += len(events)
            await asyncio.sleep(0)
        if len(ids) < batch:
            return erased


async def _erase_case(
    conn: AsyncConnection, closure_id: str, now: dt.datetime, actor: str
) -> AuditEvent | None:
    """What identifies the citizen in one closed case: its conversations made up to the
    closure with everything of theirs (sealed CPR number, sent copies, stages, mailbox and
    outbox rows), the tracker's timelines, episodes and contacts of the case, the job centre's
    registered sickness case of that kind; and, when
    nothing else of the citizen remains, the case ref in the cells' citizen lists (replaced by
    a random one of the same key, so the cells still count the citizen once) and in the
    outbox. The counts and histograms stay as they are. Returns the erasure's audit event for
    the caller to append (None: erased meanwhile by another process)."""
    cc = case_closures.c
    closure = (
        await conn.execute(
            sa.select(case_closures).where(cc.id == closure_id, cc.erased_at.is_(None))
        )
    ).first()
    if closure is None:
        return None  # erased meanwhile by another process
    ref, org, kind = closure.case_ref, closure.jobcenter_org_id, closure.case_kind
    closed_at = aware(closure.closed_at)
    conv = conversations.c
    conv_ids = list(
        await conn.scalars(
            sa.select(conv.id).where(
                conv.jobcenter_org_id == org,
                conv.case_ref == ref,
                conv.case_kind == kind,
                conv.created_at <= closed_at,
            )
        )
    )
    tc = tracker_conversations.c
    of_case = sa.and_(tc.case_ref == ref, tc.jobcenter_org == org, tc.case_kind == kind)
    tracked = list(
        await conn.scalars(
            sa.select(tc.conversation_id).where(
                of_case, sa.or_(tc.conversation_id.in_(conv_ids), tc.submitted_at <= closed_at)
            )
        )
    )
    for table, column in _WITH_CONVERSATION:
        if conv_ids:
            await conn.execute(table.delete().where(column.in_(conv_ids)))
    if conv_ids:
        await conn.execute(outbox.delete().where(outbox.c.key.in_(conv_ids)))
    if tracked:
        await conn.execute(
            tracker_reminders.delete().where(tracker_reminders.c.conversation_id.in_(tracked))
        )
        await conn.execute(tracker_conversations.delete().where(tc.conversation_id.in_(tracked)))
    te, tk = tracker_episodes.c, tracker_contacts.c
    await conn.execute(
        tracker_episodes.delete().where(
            te.case_ref == ref, te.jobcenter_org == org, te.case_kind == kind
        )
    )
    await conn.execute(
        tracker_contacts.delete().where(
            tk.case_ref == ref,
            tk.jobcenter_org == org,
            tk.case_kind == kind,
            tk.created_at <= closed_at,
        )
    )
    ks = tracker_cases.c
    await conn.execute(
        tracker_cases.delete().where(
            ks.case_ref == ref, ks.jobcenter_org == org, ks.case_kind == kind
        )
    )
    remaining = sa.union_all(
        sa.select(sa.literal(1)).where(conv.case_ref == ref),
        sa.select(sa.literal(1)).where(tc.case_ref == ref),
        sa.select(sa.literal(1)).where(te.case_ref == ref),
        sa.select(sa.literal(1)).where(tk.case_ref == ref),
        sa.select(sa.literal(1)).where(ks.case_ref == ref),
        sa.select(sa.literal(1)).where(tracker_treatments.c.case_ref == ref),
    )
    if not (await conn.execute(sa.select(sa.exists(remaining)))).scalar_one():
        # Shaped like a case ref of the same key, linked to no CPR number (a re-key maps it
        # with --force, as any ref without a sealed CPR number).
        erased_ref = f"{key_id_of(ref) or 'erased'}.{uuid.uuid4().hex}"
        await conn.execute(
            tracker_cell_citizens.update()
            .where(tracker_cell_citizens.c.case_ref == ref)
            .values(case_ref=erased_ref)
        )
        await conn.execute(outbox.delete().where(outbox.c.key == ref))
    await conn.execute(
        case_closures.update().where(cc.id == closure_id).values(case_ref=None, erased_at=now)
    )
    return AuditEvent(
        actor=actor,
        action=CASE_ERASE,
        source=SOURCE_GATEWAY,
        at=now,
        subject_org=org,
        detail={"closure_id": closure_id, "conversations": str(len(conv_ids))},
    )


def _finished_before(cutoff: dt.datetime) -> sa.Select[Any]:
    """The ids of the conversations that reached a final stage before `cutoff`."""
    return (
        sa.select(stages.c.conversation_id)
        .where(stages.c.stage.in_([s.value for s in FINAL_STAGES]), stages.c.at < cutoff)
        .distinct()
    )


async def _clear_sealed_cpr(engine: AsyncEngine, cutoff: dt.datetime, batch: int) -> int:
    """NULL the sealed CPR numbers of conversations finished before `cutoff` and of contacts
    registered before it."""
    jobs: list[tuple[sa.Table, sa.Column[Any], Any]] = [
        (
            conversations,
            conversations.c.id,
            conversations.c.id.in_(_finished_before(cutoff).scalar_subquery()),
        ),
        (tracker_contacts, tracker_contacts.c.contact_id, tracker_contacts.c.created_at < cutoff),
    ]
    total = 0
    for table, key, where in jobs:
        while True:
            async with engine.begin() as conn:
                ids = list(
                    await conn.scalars(
                        sa.select(key)
                        .where(where, table.c.citizen_sealed.is_not(None))
                        .order_by(key)
                        .limit(batch)
                    )
                )
                if ids:
                    await conn.execute(
                        table.update().where(key.in_(ids)).values(citizen_sealed=None)
                    )
            total += len(ids)
            if len(ids) < batch:
                break
            await asyncio.sleep(0)
    return total


# What goes with a conversation, children first.
_WITH_CONVERSATION: tuple[tuple[sa.Table, sa.Column[Any]], ...] = (
    (stages, stages.c.conversation_id),
    (request_actions, request_actions.c.conversation_id),
    (sent_messages, sent_messages.c.conversation_id),
    (idempotency_keys, idempotency_keys.c.conversation_id),
    (inbound_messages, inbound_messages.c.conversation_id),
    (mailbox, mailbox.c.conversation_id),
    (conversations, conversations.c.id),
)


async def _prune_conversations(engine: AsyncEngine, cutoff: dt.datetime, batch: int) -> int:
    """Delete the conversations finished before `cutoff`, with what belongs to them, a batch
    of conversations per transaction."""
    total = 0
    while True:
        async with engine.begin() as conn:
            ids = list(
                await conn.scalars(
                    sa.select(conversations.c.id)
                    .where(conversations.c.id.in_(_finished_before(cutoff).scalar_subquery()))
                    .order_by(conversations.c.id)
                    .limit(batch)
                )
            )
            for table, column in _WITH_CONVERSATION:
                if ids:
                    await conn.execute(table.delete().where(column.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            return total
        await asyncio.sleep(0)


async def _prune_tracker(
    engine: AsyncEngine, report: PruneReport, cutoff: dt.datetime, batch: int
) -> None:
    """The tracker's rows about single conversations, episodes and contacts, once decided and
    past the retention period, and registered sickness cases and treatments once closed or
    ended that long ago; the rollups (counts, durations, cells) stay."""
    day = cutoff.date()
    tc = tracker_conversations
    decided = sa.and_(tc.c.outcome.is_not(None), tc.c.due_date < day)
    total = 0
    while True:
        async with engine.begin() as conn:
            ids = list(
                await conn.scalars(
                    sa.select(tc.c.conversation_id)
                    .where(decided)
                    .order_by(tc.c.conversation_id)
                    .limit(batch)
                )
            )
            if ids:
                await conn.execute(
                    tracker_reminders.delete().where(tracker_reminders.c.conversation_id.in_(ids))
                )
                await conn.execute(tc.delete().where(tc.c.conversation_id.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            break
        await asyncio.sleep(0)
    report.add("tracker_conversations", total)
    te = tracker_episodes
    report.add(
        "tracker_episodes",
        await _prune_table(
            engine,
            te,
            sa.and_(te.c.outcome.is_not(None), te.c.window_end < day),
            [te.c.case_ref, te.c.jobcenter_org, te.c.first_day_of_absence],
            batch,
        ),
    )
    report.add(
        "tracker_contacts",
        await _prune_table(
            engine,
            tracker_contacts,
            tracker_contacts.c.created_at < cutoff,
            [tracker_contacts.c.contact_id],
            batch,
        ),
    )
    report.add(
        "tracker_cases",
        await _prune_table(
            engine,
            tracker_cases,
            tracker_cases.c.closed_on < day,
            [tracker_cases.c.case_id],
            batch,
        ),
    )
    report.add(
        "tracker_treatments",
        await _prune_table(
            engine,
            tracker_treatments,
            tracker_treatments.c.end_date < day,
            [tracker_treatments.c.treatment_id],
            batch,
        ),
    )
    closed_cells = sa.select(tracker_cells.c.id).where(
        tracker_cells.c.period_start < day - _LONGEST_PERIOD
    )
    report.add(
        "tracker_cell_citizens",
        await _prune_table(
            engine,
            tracker_cell_citizens,
            tracker_cell_citizens.c.cell_id.in_(closed_cells.scalar_subquery()),
            [tracker_cell_citizens.c.cell_id, tracker_cell_citizens.c.case_ref],
            batch,
        ),
    )


async def _prune_table(
    engine: AsyncEngine,
    table: sa.Table,
    condition: Any,
    key_columns: Sequence[sa.Column[Any]],
    batch: int,
) -> int:
    """Delete in batches of `batch`, one short transaction per batch."""
    total = 0
    key: Callable[[Any], Any] = (lambda k: k[0]) if len(key_columns) == 1 else (lambda k: tuple(k))
    while True:
        async with engine.begin() as conn:
            keys = [
                key(k)
                for k in (
                    await conn.execute(sa.select(*key_columns).where(condition).limit(batch))
                ).all()
            ]
            if not keys:
                return total
            if len(key_columns) == 1:
                await conn.execute(table.delete().where(key_columns[0].in_(keys)))
            else:
                await conn.execute(table.delete().where(sa.tuple_(*key_columns).in_(keys)))
        total += len(keys)
        if len(keys) < batch:
            return total
        await asyncio.sleep(0)  # let ingest in between batches
