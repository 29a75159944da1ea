"""Retention: everything the gateway stores is deleted (or, for a sealed CPR number, cleared)
after its retention period, class by class as docs/data-lifecycle.md lists them, in small
batches (one short transaction each, most of them one `DELETE … IN (SELECT … LIMIT n)`), a
pause between two (RETENTION_PAUSE_SECONDS at least, and as long as the batch took times
(1 − RETENTION_DUTY) / RETENTION_DUTY), so pruning never blocks ingest and takes at most its
share of the database and the CPU. Each batch costs
its own rows, not the store's size: the finished conversations are walked from an index with
a cursor carried between batches, and every lookup by conversation or case ref is indexed
(migration 0019).

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
  registered cases with their coverage decisions, and which citizens a closed period's
  cells counted; the aggregates themselves are kept;
- closed cases (`services/closures.py`) after CASE_ERASURE_DAYS: what identifies the citizen;
- the audit log, up to a signed checkpoint (`infra/db/audit.py`), after a checkpoint of the
  chain's head is taken when due; only by a role that may remove audit entries (on PostgreSQL
  the owner role, `attest-gateway prune` with DATABASE_OWNER_URL: infra/db/grants.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Sequence
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
from attest_gateway.infra.db import overdue as overdue_rollup
from attest_gateway.infra.db import rehabilitation as rehab_rollup
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
    tracker_coverage_cases,
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
            batch=audit_prune_batch(s),
            actor=s.gateway_org_id,
            # paced as the store's classes are: busy at most RETENTION_DUTY of the time
            between=_Pace(0, s.retention_pause_seconds, s.retention_duty).between_batches,
        )
        report.add("audit_log", removed)
    return report


def audit_prune_batch(settings: Settings) -> int:
    """Audit entries removed per transaction. A batch ends at a checkpoint (one is signed
    where there is none) and appends its `audit.prune` entry, waiting for the chain's head
    as the API's reads do: five checkpoints' worth of entries (5,000: small rows, removed by
    seq) sign nothing new and wait a tenth as often as PRUNE_BATCH_SIZE's 500."""
    return max(settings.prune_batch_size, 5 * settings.audit_checkpoint_entries)


async def prune_store(
    engine: AsyncEngine, settings: Settings, topics: Topics, now: dt.datetime
) -> PruneReport:
    """Every class of the store but the audit log, each after its retention period, and the
    closed cases due for erasure."""
    s = settings
    medcom_topic = topics.medcom_messages
    pace = _Pace(s.prune_batch_size, s.retention_pause_seconds, s.retention_duty)
    report = PruneReport()

    def ago(seconds: float) -> dt.datetime:
        return now - dt.timedelta(seconds=seconds)

    async def delete(name: str, table: sa.Table, where: Any, keys: list[Any]) -> None:
        report.add(name, await _prune_table(engine, table, where, keys, pace))

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
    st = stages.c
    await delete(
        "sent_messages",
        sent_messages,
        sa.and_(
            sa.or_(
                sent_messages.c.acknowledged_at < settled,
                sent_messages.c.undeliverable_at < settled,
            ),
            # a request's copy stays while its conversation is open: a reminder copies the
            # Patient and the caseworker from it (tracker/sweep.py). Asked per row, through
            # the stages' key, not as a list of every finished conversation per batch.
            sa.or_(
                sent_messages.c.message_type != MessageType.ATTEST_REQUEST.value,
                sa.exists().where(
                    st.conversation_id == sent_messages.c.conversation_id,
                    st.stage.in_(_FINAL),
                    st.at < now,
                ),
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
    # The conversations first: the sealed CPR numbers are then cleared only in those finished
    # since their cutoff (by default none: both periods are 180 days).
    conversation_cutoff = ago(s.conversation_retention_days * DAY)
    report.add("conversations", await _prune_conversations(engine, conversation_cutoff, pace))
    report.add(
        "sealed_cpr_cleared",
        await _clear_sealed_cpr(
            engine, ago(s.sealed_cpr_retention_days * DAY), conversation_cutoff, pace
        ),
    )
    await _prune_tracker(
        engine, report, ago(s.tracker_timeline_retention_days * DAY), pace, s.tracker_timezone
    )
    report.add(
        "cases_erased",
        await erase_closed_cases(
            engine,
            topics,
            now,
            pace.batch,
            s.gateway_org_id,
            pause=pace.pause,
            duty=pace.duty,
            timezone=s.tracker_timezone,
        ),
    )
    return report


class _Pace:
    """How the pass goes: rows per batch, and the pause after each batch (in which the API's
    transactions get the database and the CPU): `pause` at least, and long enough that the
    pass is busy at most `duty` of its time (a batch that took t seconds is followed by
    t × (1 − duty) / duty), so a slower store or a busier machine slows the pass, not the API.
    """

    def __init__(self, batch: int, pause: float = 0.0, duty: float = 1.0) -> None:
        if not 0 < duty <= 1:
            raise ValueError("duty is a share of the time: 0 < duty <= 1")
        self.batch = batch
        self.pause = pause
        self.duty = duty
        self._resumed = time.monotonic()

    def after(self, busy: float) -> float:
        """The pause after a batch that took `busy` seconds."""
        return max(self.pause, busy * (1 - self.duty) / self.duty)

    async def between_batches(self) -> None:
        await asyncio.sleep(self.after(time.monotonic() - self._resumed))
        self._resumed = time.monotonic()


# Closed cases erased per transaction: a hundred (PRUNE_BATCH_SIZE 500), each table's rows of
# all of them in one statement by an index, are about as many rows as a batch of 500
# conversations. (When each erasure's audit entry waited for the chain's head, one
# transaction per case queued the pass behind the API's audited reads: bench/RESULTS.md,
# "Retention at national volume"; appends no longer take the head.)
def cases_per_transaction(batch: int) -> int:
    return max(1, batch // 5)


async def erase_closed_cases(
    engine: AsyncEngine,
    topics: Topics,
    now: dt.datetime,
    batch: int,
    actor: str,
    *,
    pause: float = 0.0,
    duty: float = 1.0,
    timezone: str = "Europe/Copenhagen",
) -> int:
    """Erase the closed cases whose time has come, `cases_per_transaction(batch)` cases per
    transaction (each statement set-based over all of them), their audit entries appended
    together at its end. Returns how many."""
    c = case_closures.c
    per = cases_per_transaction(batch)
    pace = _Pace(batch, pause, duty)
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
                events = await _erase_cases(conn, ids[start : start + per], now, actor, timezone)
                await audit.record_many(conn, topics, events)
            erased += len(events)
            await pace.between_batches()
        if len(ids) < batch:
            return erased


# A case: (case ref, job centre, case kind).
_Case = tuple[str, str, str]


async def _erase_cases(
    conn: AsyncConnection,
    closure_ids: Sequence[str],
    now: dt.datetime,
    actor: str,
    timezone: str,
) -> list[AuditEvent]:
    """What identifies the citizen in each of these closed cases, with one statement per
    table for all of them: its conversations made up to the closure with everything of
    theirs (sealed CPR number, sent copies, stages, mailbox and outbox rows), the tracker's
    timelines, episodes and contacts of the case, the job centre's registered sickness case
    of that kind; and, for each citizen of whom nothing else remains, the case ref in the
    cells' citizen lists (replaced by a random one of the same key, so the cells still count
    the citizen once) and in the outbox. The counts and histograms stay as they are. Returns
    the erasures' audit events for the caller to append, in the order of `closure_ids`
    (those erased meanwhile by another process, or locked by one now, are left out).

    Every lookup is by case ref (indexed, migration 0019), the finer conditions (job centre,
    case kind, made before the closure) applied here to the citizen's few rows."""
    cc = case_closures.c
    order = {closure_id: i for i, closure_id in enumerate(closure_ids)}
    closures = sorted(
        (
            await conn.execute(
                sa.select(case_closures)
                .where(cc.id.in_(list(closure_ids)), cc.erased_at.is_(None))
                .with_for_update(skip_locked=True)  # another process erases it: leave it
            )
        ).all(),
        key=lambda closure: order[closure.id],
    )
    if not closures:
        return []
    closed_at: dict[_Case, dt.datetime] = {
        (c.case_ref, c.jobcenter_org_id, c.case_kind): aware(c.closed_at) for c in closures
    }
    refs = sorted({case[0] for case in closed_at})

    def made_before_closure(case: _Case, at: dt.datetime | None) -> bool:
        return case in closed_at and at is not None and aware(at) <= closed_at[case]

    conv = conversations.c
    of_case: dict[_Case, list[str]] = {case: [] for case in closed_at}
    for r in await conn.execute(
        sa.select(
            conv.id, conv.case_ref, conv.jobcenter_org_id, conv.case_kind, conv.created_at
        ).where(conv.case_ref.in_(refs))
    ):
        case = (r.case_ref, r.jobcenter_org_id, r.case_kind)
        if made_before_closure(case, r.created_at):
            of_case[case].append(r.id)
    conv_ids = [cid for ids in of_case.values() for cid in ids]
    known = set(conv_ids)
    tc = tracker_conversations.c
    timelines = await conn.execute(
        sa.select(
            tc.conversation_id, tc.case_ref, tc.jobcenter_org, tc.case_kind, tc.submitted_at
        ).where(tc.case_ref.in_(refs))
    )
    tracked = [
        r.conversation_id
        for r in timelines
        if (case := (r.case_ref, r.jobcenter_org, r.case_kind)) in closed_at
        and (r.conversation_id in known or made_before_closure(case, r.submitted_at))
    ]
    if conv_ids:
        for table, column in _WITH_CONVERSATION:
            await conn.execute(table.delete().where(column.in_(conv_ids)))
        await conn.execute(outbox.delete().where(outbox.c.key.in_(conv_ids)))
    if tracked:
        await overdue_rollup.forget(conn, timezone, tracked)  # open overdue no more
        rehab_cases = await rehab_rollup.cases_of(conn, tracked)
        await conn.execute(
            tracker_reminders.delete().where(tracker_reminders.c.conversation_id.in_(tracked))
        )
        await conn.execute(tracker_conversations.delete().where(tc.conversation_id.in_(tracked)))
        await rehab_rollup.drop_gone(conn, rehab_cases)  # their decisions (the counts stay)
    te, tk, ks = tracker_episodes.c, tracker_contacts.c, tracker_cases.c
    cases = list(closed_at)
    await conn.execute(
        tracker_episodes.delete().where(
            te.case_ref.in_(refs), sa.tuple_(te.case_ref, te.jobcenter_org, te.case_kind).in_(cases)
        )
    )
    contacts = [
        r.contact_id
        for r in await conn.execute(
            sa.select(
                tk.contact_id, tk.case_ref, tk.jobcenter_org, tk.case_kind, tk.created_at
            ).where(tk.case_ref.in_(refs))
        )
        if made_before_closure((r.case_ref, r.jobcenter_org, r.case_kind), r.created_at)
    ]
    if contacts:
        await conn.execute(tracker_contacts.delete().where(tk.contact_id.in_(contacts)))
    erased_cases = sa.tuple_(ks.case_ref, ks.jobcenter_org, ks.case_kind).in_(cases)
    await conn.execute(  # their coverage decisions (the rollup's counts stay)
        tracker_coverage_cases.delete().where(
            tracker_coverage_cases.c.case_id.in_(
                sa.select(ks.case_id).where(ks.case_ref.in_(refs), erased_cases).scalar_subquery()
            )
        )
    )
    await conn.execute(tracker_cases.delete().where(ks.case_ref.in_(refs), erased_cases))
    tt = tracker_treatments.c
    remaining = sa.union(
        *(
            sa.select(column).where(column.in_(refs))
            for column in (conv.case_ref, tc.case_ref, te.case_ref, tk.case_ref, ks.case_ref,
                           tt.case_ref)
        )
    )  # fmt: skip
    left = set(await conn.scalars(remaining))
    gone = [ref for ref in refs if ref not in left]
    if gone:
        # Shaped like a case ref of the same key, linked to no CPR number (a re-key maps it
        # with --force, as any ref without a sealed CPR number).
        erased_ref = {ref: f"{key_id_of(ref) or 'erased'}.{uuid.uuid4().hex}" for ref in gone}
        tcc = tracker_cell_citizens.c
        await conn.execute(
            tracker_cell_citizens.update()
            .where(tcc.case_ref.in_(gone))
            .values(case_ref=sa.case(erased_ref, value=tcc.case_ref))
        )
        await conn.execute(outbox.delete().where(outbox.c.key.in_(gone)))
    await conn.execute(
        case_closures.update()
        .where(cc.id.in_([c.id for c in closures]))
        .values(case_ref=None, erased_at=now)
    )
    return [
        AuditEvent(
            actor=actor,
            action=CASE_ERASE,
            source=SOURCE_GATEWAY,
            at=now,
            subject_org=c.jobcenter_org_id,
            detail={
                "closure_id": c.id,
                "conversations": str(len(of_case[(c.case_ref, c.jobcenter_org_id, c.case_kind)])),
            },
        )
        for c in closures
    ]


_FINAL = [s.value for s in FINAL_STAGES]


async def _finished(
    engine: AsyncEngine, before: dt.datetime, pace: _Pace, *, since: dt.datetime | None = None
) -> AsyncIterator[list[str]]:
    """The ids of the conversations that reached a final stage before `before` (and not
    before `since`), a batch at a time, for the caller to act on between two batches.

    A walk of the stages' index (final stage, time, conversation id), one final stage after
    the other: each batch starts right after the last row of the one before (a cursor on
    time and id, so rows of equal time are neither skipped nor repeated), so that a batch
    reads its own rows only, whatever the pass has removed before it. A conversation with
    two final stages comes twice; what the callers do to it is idempotent."""
    st = stages.c
    for stage in _FINAL:
        after: tuple[dt.datetime, str] | None = None
        while True:
            query = sa.select(st.at, st.conversation_id).where(st.stage == stage, st.at < before)
            if since is not None:
                query = query.where(st.at >= since)
            if after is not None:
                query = query.where(sa.tuple_(st.at, st.conversation_id) > sa.tuple_(*after))
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(query.order_by(st.at, st.conversation_id).limit(pace.batch))
                ).all()
            if rows:
                yield [r.conversation_id for r in rows]
            if len(rows) < pace.batch:
                break
            after = (rows[-1].at, rows[-1].conversation_id)


async def _clear_sealed_cpr(
    engine: AsyncEngine, cutoff: dt.datetime, since: dt.datetime, pace: _Pace
) -> int:
    """NULL the sealed CPR numbers of conversations finished before `cutoff` (those finished
    before `since` are gone already) and of contacts registered before it."""
    conv = conversations.c
    total = 0
    async for ids in _finished(engine, cutoff, pace, since=since):
        async with engine.begin() as conn:
            done = await conn.execute(
                conversations.update()
                .where(conv.id.in_(ids), conv.citizen_sealed.is_not(None))
                .values(citizen_sealed=None)
            )
        total += max(0, done.rowcount)
        await pace.between_batches()
    tk = tracker_contacts.c
    after: str | None = None
    while True:
        async with engine.begin() as conn:
            query = sa.select(tk.contact_id).where(
                tk.created_at < cutoff, tk.citizen_sealed.is_not(None)
            )
            if after is not None:
                query = query.where(tk.contact_id > after)
            ids = list(await conn.scalars(query.order_by(tk.contact_id).limit(pace.batch)))
            if ids:
                await conn.execute(
                    tracker_contacts.update()
                    .where(tk.contact_id.in_(ids))
                    .values(citizen_sealed=None)
                )
        total += len(ids)
        if len(ids) < pace.batch:
            return total
        after = ids[-1]
        await pace.between_batches()


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


async def _prune_conversations(engine: AsyncEngine, cutoff: dt.datetime, pace: _Pace) -> int:
    """Delete the conversations finished before `cutoff`, with what belongs to them, a batch
    of conversations per transaction."""
    total = 0
    async for ids in _finished(engine, cutoff, pace):
        async with engine.begin() as conn:
            for table, column in _WITH_CONVERSATION:
                done = await conn.execute(table.delete().where(column.in_(ids)))
        total += max(0, done.rowcount)  # the conversations' own rows (the last table)
        await pace.between_batches()
    return total


async def _prune_tracker(
    engine: AsyncEngine, report: PruneReport, cutoff: dt.datetime, pace: _Pace, timezone: str
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
                    .limit(pace.batch)
                )
            )
            if ids:
                # a request open and overdue that long leaves the open overdue rollup with it
                await overdue_rollup.forget(conn, timezone, ids)
                rehab_cases = await rehab_rollup.cases_of(conn, ids)
                await conn.execute(
                    tracker_reminders.delete().where(tracker_reminders.c.conversation_id.in_(ids))
                )
                await conn.execute(tc.delete().where(tc.c.conversation_id.in_(ids)))
                # a ressourceforløb case's decision once none of its requests is left (the
                # rollup's counts stay)
                await rehab_rollup.drop_gone(conn, rehab_cases)
        total += len(ids)
        if len(ids) < pace.batch:
            break
        await pace.between_batches()
    report.add("tracker_conversations", total)
    te = tracker_episodes
    report.add(
        "tracker_episodes",
        await _prune_table(
            engine,
            te,
            sa.and_(te.c.outcome.is_not(None), te.c.window_end < day),
            [te.c.case_ref, te.c.jobcenter_org, te.c.first_day_of_absence],
            pace,
        ),
    )
    report.add(
        "tracker_contacts",
        await _prune_table(
            engine,
            tracker_contacts,
            tracker_contacts.c.created_at < cutoff,
            [tracker_contacts.c.contact_id],
            pace,
        ),
    )
    # a pruned case's coverage decision first (the case id is its only link; the rollup's
    # counts stay): nothing refreshes it once its case is gone
    report.add(
        "tracker_coverage_cases",
        await _prune_table(
            engine,
            tracker_coverage_cases,
            tracker_coverage_cases.c.case_id.in_(
                sa.select(tracker_cases.c.case_id)
                .where(tracker_cases.c.closed_on < day)
                .scalar_subquery()
            ),
            [tracker_coverage_cases.c.case_id],
            pace,
        ),
    )
    report.add(
        "tracker_cases",
        await _prune_table(
            engine,
            tracker_cases,
            tracker_cases.c.closed_on < day,
            [tracker_cases.c.case_id],
            pace,
        ),
    )
    report.add(
        "tracker_treatments",
        await _prune_table(
            engine,
            tracker_treatments,
            tracker_treatments.c.end_date < day,
            [tracker_treatments.c.treatment_id],
            pace,
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
            pace,
        ),
    )


async def _prune_table(
    engine: AsyncEngine,
    table: sa.Table,
    condition: Any,
    key_columns: Sequence[sa.Column[Any]],
    pace: _Pace,
) -> int:
    """Delete in batches of `pace.batch`, each one statement in a transaction of its own (the
    keys of a batch selected inside the delete; no connection held during the pause)."""
    keys: Any = key_columns[0] if len(key_columns) == 1 else sa.tuple_(*key_columns)
    # its own FROM: not correlated to the DELETE's table (which would make it per row)
    batch = sa.select(*key_columns).where(condition).limit(pace.batch).correlate(None)
    total = 0
    while True:
        # a transaction per batch, not a connection switched to AUTOCOMMIT: a task cancelled
        # during that switch left a pooled SQLite connection in autocommit (infra/db/engine.py)
        async with engine.begin() as conn:
            done = max(0, (await conn.execute(table.delete().where(keys.in_(batch)))).rowcount)
        total += done
        if done < pace.batch:
            return total
        await pace.between_batches()  # let ingest in between batches (no connection held)
