"""The store behind the use cases' ports (ports/store.py): one SQLAlchemy connection per unit
of work, one repository per table family, each a thin translation between domain values
(ports/records.py) and rows.

The statements are those the use cases ran inline before: set-based where a use case handles
many rows (one statement for a whole mailbox read, a whole delivery batch), built once where
they run per request, and the accepted requests' rows through the group commit
(group_commit.py).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.contracts.contacts import ContactEvent
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.core.audit import AuditEvent
from attest_gateway.infra.db import audit, coverage, messaging
from attest_gateway.infra.db.arrivals import MailArrivals
from attest_gateway.infra.db.coverage import CoverageRules
from attest_gateway.infra.db.directory_view import SqlDirectory
from attest_gateway.infra.db.engine import autocommit, aware, dialect_insert, insert_ignore, one_of
from attest_gateway.infra.db.group_commit import GroupCommit, Write
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
    tracker_contacts,
    tracker_treatments,
)
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.ports.records import (
    AcceptedRequest,
    CaseClosure,
    CaseRecord,
    ContactRecord,
    Conversation,
    IdempotencyRecord,
    InboundRecord,
    MailAddress,
    MailItem,
    RequestAction,
    SeenId,
    StageEntry,
    StageRecord,
    TreatmentRecord,
    WaitingMail,
)
from attest_gateway.ports.store import KeyTaken

log = structlog.get_logger(__name__)


class SqlConversations:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, conversation_id: str) -> Conversation | None:
        return await messaging.load_conversation(self._conn, conversation_id)

    async def lock(self, conversation_id: str) -> None:
        c = conversations.c
        if self._conn.dialect.name == "postgresql":  # a row lock until commit
            query = sa.select(c.id).where(c.id == conversation_id).with_for_update()
            await self._conn.execute(query)
        else:  # SQLite locks the database: a write takes the one writer's lock until commit
            await self._conn.execute(
                conversations.update().where(c.id == conversation_id).values(id=c.id)
            )

    async def by_ids(self, ids: Iterable[str]) -> dict[str, Conversation]:
        return await messaging.conversations_by_id(self._conn, ids)

    async def by_request(self, message_id: str) -> Conversation | None:
        return await messaging.conversation_by_request(self._conn, message_id)

    async def of_jobcenter(
        self,
        jobcenter_org_id: str,
        *,
        attest_type: str | None,
        before: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[Conversation]:
        c = conversations.c
        query = sa.select(conversations).where(c.jobcenter_org_id == jobcenter_org_id)
        if attest_type is not None:
            query = query.where(c.attest_type == attest_type)
        if before is not None:
            at, cid = before
            query = query.where(sa.or_(c.created_at < at, sa.and_(c.created_at == at, c.id < cid)))
        rows = await self._conn.execute(
            query.order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        )
        return [messaging.conversation_from_row(row) for row in rows]

    async def set_deadline(self, conversation_id: str, reply_deadline: dt.date) -> None:
        await self._conn.execute(
            conversations.update()
            .where(conversations.c.id == conversation_id)
            .values(reply_deadline=reply_deadline)
        )


def _maybe_aware(value: dt.datetime | None) -> dt.datetime | None:
    return aware(value) if value is not None else None


def _mail_item(row: Any) -> MailItem:
    return MailItem(
        message_id=row.message_id,
        receiver_org_id=row.receiver_org_id,
        sender_org_id=row.sender_org_id,
        conversation_id=row.conversation_id,
        message_type=row.message_type,
        envelope=row.envelope,
        delivered_at=aware(row.delivered_at),
        fetched_at=_maybe_aware(row.fetched_at),
        collected_at=_maybe_aware(row.collected_at),
        unreadable_at=_maybe_aware(row.unreadable_at),
        unreadable_reason=row.unreadable_reason,
    )


def _mail_row(item: MailItem) -> dict[str, object]:
    return {
        "message_id": item.message_id,
        "receiver_org_id": item.receiver_org_id,
        "sender_org_id": item.sender_org_id,
        "conversation_id": item.conversation_id,
        "message_type": item.message_type,
        "envelope": item.envelope,
        "delivered_at": item.delivered_at,
        "collected_at": item.collected_at,
    }


@functools.cache
def _insert_new_mail(dialect: str) -> Any:
    """Mailbox rows unless their message id is there, returning those inserted. Built once;
    unordered RETURNING lets SQLAlchemy send the rows as one multi-row INSERT."""
    return dialect_insert(dialect, mailbox).on_conflict_do_nothing().returning(mailbox.c.message_id)


_OLDEST_FIRST = (mailbox.c.delivered_at, mailbox.c.message_id)

# A read's columns only (not the routing, collection and unreadable ones a `MailItem` has),
# built once; the receiver, the limit and where the last batch ended go as parameters.
_WAITING_MAIL = (
    sa.select(
        mailbox.c.message_id,
        mailbox.c.conversation_id,
        mailbox.c.message_type,
        mailbox.c.delivered_at,
        mailbox.c.fetched_at.is_(None).label("unfetched"),
        mailbox.c.envelope,
    )
    .where(
        mailbox.c.receiver_org_id == sa.bindparam("receiver"),
        mailbox.c.collected_at.is_(None),
    )
    .order_by(*_OLDEST_FIRST)
    .limit(sa.bindparam("limit"))
)
_WAITING_MAIL_AFTER = _WAITING_MAIL.where(
    sa.tuple_(*_OLDEST_FIRST)
    > sa.tuple_(
        # typed as the columns: SQLite compares the stored text, so the bound time must be
        # written as the column writes it
        sa.bindparam("after_at", type_=mailbox.c.delivered_at.type),
        sa.bindparam("after_id", type_=mailbox.c.message_id.type),
    )
)


class SqlMailbox:
    def __init__(self, conn: AsyncConnection) -> None:
        self.receivers: set[str] = set()  # whom mail was added for (woken after the commit)
        self._conn = conn

    async def get(self, message_id: str) -> MailItem | None:
        row = (
            await self._conn.execute(sa.select(mailbox).where(mailbox.c.message_id == message_id))
        ).first()
        return _mail_item(row) if row is not None else None

    async def address(self, message_id: str) -> MailAddress | None:
        row = (
            await self._conn.execute(
                sa.select(
                    mailbox.c.message_id,
                    mailbox.c.receiver_org_id,
                    mailbox.c.sender_org_id,
                    mailbox.c.conversation_id,
                    mailbox.c.message_type,
                    mailbox.c.collected_at,
                ).where(mailbox.c.message_id == message_id)
            )
        ).first()
        if row is None:
            return None
        return MailAddress(
            message_id=row.message_id,
            receiver_org_id=row.receiver_org_id,
            sender_org_id=row.sender_org_id,
            conversation_id=row.conversation_id,
            message_type=row.message_type,
            collected_at=_maybe_aware(row.collected_at),
        )

    async def waiting(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        rows = await self._conn.execute(
            sa.select(mailbox)
            .where(mailbox.c.receiver_org_id == receiver_org_id, mailbox.c.collected_at.is_(None))
            .order_by(*_OLDEST_FIRST)
            .limit(limit)
        )
        return [_mail_item(row) for row in rows]

    async def waiting_batches(
        self, receiver_org_id: str, limit: int, batch: int
    ) -> AsyncIterator[list[WaitingMail]]:
        # One statement a batch, each after where the last ended (oldest first, ties by
        # message id): an await between batches whatever the driver buffers, and a batch's
        # rows turned into values before the next is read.
        statement, params = _WAITING_MAIL, {"receiver": receiver_org_id}
        left = limit
        while left > 0:
            wanted = min(batch, left)
            rows = (await self._conn.execute(statement, params | {"limit": wanted})).all()
            if rows:
                yield [
                    WaitingMail(message_id, conv_id, message_type, aware(at), unfetched, env)
                    for message_id, conv_id, message_type, at, unfetched, env in rows
                ]
            if len(rows) < wanted:
                return
            left -= wanted
            last = rows[-1]
            statement = _WAITING_MAIL_AFTER
            params = params | {"after_at": last.delivered_at, "after_id": last.message_id}

    async def waiting_replies(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        waiting = sa.select(mailbox).where(
            mailbox.c.receiver_org_id == receiver_org_id,
            mailbox.c.message_type == MessageType.ATTEST_REPLY.value,
            mailbox.c.collected_at.is_(None),
        )
        rows = list(
            await self._conn.execute(
                waiting.where(mailbox.c.unreadable_at.is_(None))
                .order_by(*_OLDEST_FIRST)
                .limit(limit)
            )
        )
        if len(rows) < limit:
            rows += await self._conn.execute(
                waiting.where(mailbox.c.unreadable_at.is_not(None))
                .order_by(*_OLDEST_FIRST)
                .limit(limit - len(rows))
            )
        return [_mail_item(row) for row in rows]

    async def waiting_refusals(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        refused = sa.exists().where(
            stages.c.conversation_id == mailbox.c.conversation_id,
            stages.c.stage == Stage.REFUSED.value,
            stages.c.message_id == mailbox.c.message_id,
        )
        rows = await self._conn.execute(
            sa.select(mailbox)
            .where(
                mailbox.c.receiver_org_id == receiver_org_id,
                mailbox.c.message_type == MessageType.ACKNOWLEDGEMENT.value,
                mailbox.c.collected_at.is_(None),
                refused,
            )
            .order_by(*_OLDEST_FIRST)
            .limit(limit)
        )
        return [_mail_item(row) for row in rows]

    async def known(self, message_ids: Sequence[str]) -> set[str]:
        if not message_ids:
            return set()
        dialect = self._conn.dialect.name
        found = await self._conn.scalars(
            sa.select(mailbox.c.message_id).where(
                one_of(dialect, mailbox.c.message_id, message_ids)
            )
        )
        return set(found)

    async def add(self, item: MailItem) -> bool:
        added = await insert_ignore(self._conn, mailbox, _mail_row(item))
        if added:
            self.receivers.add(item.receiver_org_id)
        return added

    async def add_new(self, items: Sequence[MailItem]) -> set[str]:
        if not items:
            return set()
        statement = _insert_new_mail(self._conn.dialect.name)
        added = set(await self._conn.scalars(statement, [_mail_row(i) for i in items]))
        self.receivers.update(i.receiver_org_id for i in items if i.message_id in added)
        return added

    async def replace_envelope(self, message_id: str, envelope: bytes) -> None:
        await self._conn.execute(
            mailbox.update()
            .where(mailbox.c.message_id == message_id)
            .values(envelope=envelope, fetched_at=None)
        )

    async def mark_fetched(self, message_ids: Iterable[str], at: dt.datetime) -> set[str]:
        return await messaging.mark_fetched(self._conn, message_ids, at)

    async def mark_unreadable(self, message_id: str, at: dt.datetime, reason: str | None) -> None:
        await self._conn.execute(
            mailbox.update()
            .where(mailbox.c.message_id == message_id)
            .values(unreadable_at=at if reason else None, unreadable_reason=reason)
        )

    async def collect(
        self, message_id: str, at: dt.datetime, *, receiver_org_id: str | None = None
    ) -> bool:
        where = [mailbox.c.message_id == message_id, mailbox.c.collected_at.is_(None)]
        if receiver_org_id is not None:
            where.append(mailbox.c.receiver_org_id == receiver_org_id)
        result = await self._conn.execute(mailbox.update().where(*where).values(collected_at=at))
        return bool(result.rowcount == 1)


@functools.cache
def _insert_new_seen(dialect: str) -> Any:
    return dialect_insert(dialect, seen_ids).on_conflict_do_nothing()


class SqlSeenIds:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def find(self, message_ids: Sequence[str], bundle_ids: Sequence[str]) -> list[SeenId]:
        dialect = self._conn.dialect.name
        wanted = []
        if message_ids:
            wanted.append(
                sa.and_(seen_ids.c.kind == "message", one_of(dialect, seen_ids.c.id, message_ids))
            )
        if bundle_ids:
            wanted.append(
                sa.and_(seen_ids.c.kind == "bundle", one_of(dialect, seen_ids.c.id, bundle_ids))
            )
        if not wanted:
            return []
        rows = await self._conn.execute(sa.select(seen_ids).where(sa.or_(*wanted)))
        return [
            SeenId(
                kind=r.kind,
                id=r.id,
                message_id=r.message_id,
                sender_org_id=r.sender_org_id,
                receiver_org_id=r.receiver_org_id,
                conversation_id=r.conversation_id,
                message_type=r.message_type,
                first_seen_at=aware(r.first_seen_at),
            )
            for r in rows
        ]

    async def add(self, items: Sequence[SeenId]) -> None:
        if not items:
            return
        rows = [{f: getattr(i, f) for f in SeenId.__dataclass_fields__} for i in items]
        rows.sort(key=lambda r: (r["kind"], r["id"]))  # one lock order for concurrent writers
        await self._conn.execute(_insert_new_seen(self._conn.dialect.name), rows)


class SqlStages:
    def __init__(self, conn: AsyncConnection, topics: Topics) -> None:
        self._conn = conn
        self._topics = topics
        self.emitted: list[StageEvent] = []  # the stage events this unit of work wrote

    async def timeline(self, conversation_id: str) -> list[StageEntry]:
        rows = await messaging.stages_of(self._conn, conversation_id)
        return [StageEntry(r.stage, r.message_id, aware(r.at), r.detail) for r in rows]

    async def record(
        self,
        conv: Conversation,
        stage: Stage,
        *,
        message_id: str,
        message_type: MessageType,
        at: dt.datetime,
        detail: str | None = None,
        envelope: SealedEnvelope | None = None,
    ) -> bool:
        return await messaging.record_stage(
            self._conn, self._topics, conv, stage, message_id=message_id,
            message_type=message_type, at=at, detail=detail, envelope=envelope,
            emitted=self.emitted,
        )  # fmt: skip

    async def record_many(self, items: Sequence[StageRecord]) -> int:
        return await messaging.record_stages(self._conn, self._topics, items, emitted=self.emitted)

    async def emit(
        self,
        conv: Conversation,
        stage: Stage,
        *,
        message_id: str,
        message_type: MessageType,
        at: dt.datetime,
        detail: str | None = None,
    ) -> None:
        await messaging.emit_stage_event(
            self._conn, self._topics, conv, stage, message_id=message_id,
            message_type=message_type, at=at, detail=detail, emitted=self.emitted,
        )  # fmt: skip

    async def timelines(self, conversation_ids: Sequence[str]) -> dict[str, list[StageEntry]]:
        found: dict[str, list[StageEntry]] = {cid: [] for cid in conversation_ids}
        if not conversation_ids:
            return found
        rows = await self._conn.execute(
            sa.select(stages)
            .where(one_of(self._conn.dialect.name, stages.c.conversation_id, conversation_ids))
            .order_by(stages.c.at)
        )
        for r in rows:
            found[r.conversation_id].append(
                StageEntry(r.stage, r.message_id, aware(r.at), r.detail)
            )
        return found


class SqlRequestActions:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    @staticmethod
    def _record(row: Any) -> RequestAction:
        return RequestAction(
            conversation_id=row.conversation_id,
            action=row.action,
            key=row.key,
            id=row.id,
            at=aware(row.at),
            detail=row.detail,
            idempotency_key=row.idempotency_key,
        )

    async def get(self, conversation_id: str, action: str, key: str) -> RequestAction | None:
        t = request_actions.c
        row = (
            await self._conn.execute(
                sa.select(request_actions).where(
                    t.conversation_id == conversation_id, t.action == action, t.key == key
                )
            )
        ).first()
        return self._record(row) if row is not None else None

    async def of(self, conversation_id: str) -> list[RequestAction]:
        rows = await self._conn.execute(
            sa.select(request_actions)
            .where(request_actions.c.conversation_id == conversation_id)
            .order_by(request_actions.c.at)
        )
        return [self._record(row) for row in rows]

    async def add(self, record: RequestAction) -> bool:
        row = {f: getattr(record, f) for f in RequestAction.__dataclass_fields__}
        return await insert_ignore(self._conn, request_actions, row)


_CONTACT_HEADERS = orjson.dumps(
    sorted(
        {
            "content-type": "application/json",
            "schema-version": "1",
            "message-type": "contact",
        }.items()
    )
).decode()


class SqlOutbox:
    def __init__(self, conn: AsyncConnection, topics: Topics) -> None:
        self._conn = conn
        self._topics = topics
        self._claimed: dict[int, str] = {}  # outbox row id → message id, held by this unit

    async def add_envelope(self, envelope: SealedEnvelope, at: dt.datetime) -> None:
        await messaging.enqueue_envelope(self._conn, self._topics, envelope, at)

    async def add_contact_event(self, event: ContactEvent, at: dt.datetime) -> None:
        await self._conn.execute(
            outbox.insert().values(
                topic=self._topics.tracking,
                key=event.case_ref,
                value=event.model_dump_json().encode(),
                headers=_CONTACT_HEADERS,
                message_id=None,
                created_at=at,
            )
        )

    async def mark_delivered(self, message_id: str, at: dt.datetime) -> None:
        await self._conn.execute(
            outbox.update()
            .where(outbox.c.message_id == message_id, outbox.c.delivered_at.is_(None))
            .values(delivered_at=at)
        )

    async def claim_undelivered(self, message_ids: Sequence[str]) -> set[str]:
        # It never waits for a lock another transaction holds on an outbox row (SKIP LOCKED):
        # a relay marking rows published locks them in its own order, and a wait here could
        # close a cycle with it.
        undelivered = (
            one_of(self._conn.dialect.name, outbox.c.message_id, sorted(message_ids)),
            outbox.c.delivered_at.is_(None),
        )
        rows = sa.select(outbox.c.id, outbox.c.message_id).where(*undelivered)
        locking = rows.order_by(outbox.c.id).with_for_update(skip_locked=True)
        held = {row.id: row.message_id for row in await self._conn.execute(locking)}
        self._claimed.update(held)
        return {row.message_id for row in await self._conn.execute(rows) if row.id not in held}

    async def mark_claimed_delivered(self, message_ids: Iterable[str], at: dt.datetime) -> None:
        wanted = set(message_ids)
        mine = sorted(
            row_id for row_id, message_id in self._claimed.items() if message_id in wanted
        )
        if mine:
            mark = outbox.update().where(one_of(self._conn.dialect.name, outbox.c.id, mine))
            await self._conn.execute(mark.values(delivered_at=at))


class SqlSentCopies:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def copy_of(self, message_id: str) -> bytes | None:
        row = (
            await self._conn.execute(
                sa.select(sent_messages.c.copy).where(sent_messages.c.message_id == message_id)
            )
        ).first()
        return bytes(row.copy) if row is not None else None

    async def acknowledge(self, message_id: str, at: dt.datetime) -> None:
        await self._conn.execute(
            sent_messages.update()
            .where(
                sent_messages.c.message_id == message_id,
                sent_messages.c.acknowledged_at.is_(None),
            )
            .values(acknowledged_at=at)
        )


class SqlInbound:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def seen(self, message_id: str, bundle_id: str) -> list[InboundRecord]:
        rows = await self._conn.execute(
            sa.select(inbound_messages).where(
                sa.or_(
                    inbound_messages.c.message_id == message_id,
                    inbound_messages.c.bundle_id == bundle_id,
                )
            )
        )
        return [
            InboundRecord(
                message_id=r.message_id,
                bundle_id=r.bundle_id,
                sender_org_id=r.sender_org_id,
                conversation_id=r.conversation_id,
                message_type=r.message_type,
                response=r.response,
                created_at=aware(r.created_at),
            )
            for r in rows
        ]

    async def add(self, record: InboundRecord) -> None:
        await self._conn.execute(
            inbound_messages.insert().values(
                message_id=record.message_id,
                bundle_id=record.bundle_id,
                sender_org_id=record.sender_org_id,
                conversation_id=record.conversation_id,
                message_type=record.message_type,
                response=record.response,
                created_at=record.created_at,
            )
        )

    async def carried_before(self, message_id: str, bundle_id: str) -> bool:
        known = sa.union_all(
            *(
                sa.select(sa.literal(1)).where(column == message_id)
                for column in (
                    sent_messages.c.message_id,
                    mailbox.c.message_id,
                    outbox.c.message_id,
                )
            ),
            sa.select(sa.literal(1)).where(
                sa.or_(
                    sa.and_(seen_ids.c.kind == "message", seen_ids.c.id == message_id),
                    sa.and_(seen_ids.c.kind == "bundle", seen_ids.c.id == bundle_id),
                )
            ),
        )
        return bool((await self._conn.execute(sa.select(sa.exists(known)))).scalar_one())


class SqlIdempotencyKeys:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, org_id: str, key: str) -> IdempotencyRecord | None:
        row = (
            await self._conn.execute(
                sa.select(idempotency_keys).where(
                    idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == key
                )
            )
        ).first()
        if row is None:
            return None
        return IdempotencyRecord(
            org_id=row.org_id,
            key=row.key,
            fingerprint=row.fingerprint,
            conversation_id=row.conversation_id,
            response=row.response,
            created_at=aware(row.created_at),
        )


class SqlContacts:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def by_idempotency_key(self, registrar_org: str, key: str) -> ContactRecord | None:
        row = (
            await self._conn.execute(
                sa.select(tracker_contacts).where(
                    tracker_contacts.c.registrar_org == registrar_org,
                    tracker_contacts.c.idempotency_key == key,
                )
            )
        ).first()
        if row is None:
            return None
        fields = {f: getattr(row, f) for f in ContactRecord.__dataclass_fields__}
        return ContactRecord(**fields | {"created_at": aware(row.created_at)})

    async def add(self, record: ContactRecord) -> None:
        fields = {f: getattr(record, f) for f in ContactRecord.__dataclass_fields__}
        await self._conn.execute(tracker_contacts.insert().values(**fields))


class SqlCaseClosures:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def pending(
        self, jobcenter_org_id: str, case_ref: str, case_kind: str
    ) -> CaseClosure | None:
        c = case_closures.c
        row = (
            await self._conn.execute(
                sa.select(case_closures).where(
                    c.jobcenter_org_id == jobcenter_org_id,
                    c.case_ref == case_ref,
                    c.case_kind == case_kind,
                    c.erased_at.is_(None),
                )
            )
        ).first()
        if row is None:
            return None
        return CaseClosure(
            id=row.id,
            jobcenter_org_id=row.jobcenter_org_id,
            case_kind=row.case_kind,
            case_ref=row.case_ref,
            conversations=row.conversations,
            closed_at=aware(row.closed_at),
            erase_after=aware(row.erase_after),
        )

    async def conversations_of(
        self, jobcenter_org_id: str, case_ref: str, case_kind: str, before: dt.datetime
    ) -> int:
        c = conversations.c
        query = (
            sa.select(sa.func.count())
            .select_from(conversations)
            .where(
                c.jobcenter_org_id == jobcenter_org_id,
                c.case_ref == case_ref,
                c.case_kind == case_kind,
                c.created_at <= before,
            )
        )
        return int((await self._conn.execute(query)).scalar_one())

    async def add(self, closure: CaseClosure) -> bool:
        fields = {f: getattr(closure, f) for f in CaseClosure.__dataclass_fields__}
        insert = dialect_insert(self._conn.dialect.name, case_closures).values(**fields)
        result = await self._conn.execute(
            insert.on_conflict_do_nothing().returning(case_closures.c.id)
        )
        return result.first() is not None


def _case(row: Any) -> CaseRecord:
    fields = {f: getattr(row, f) for f in CaseRecord.__dataclass_fields__}
    return CaseRecord(
        **fields | {"created_at": aware(row.created_at), "updated_at": aware(row.updated_at)}
    )


class SqlCases:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def by_jobcenter_case_id(
        self, jobcenter_org: str, jobcenter_case_id: str
    ) -> CaseRecord | None:
        row = (
            await self._conn.execute(
                sa.select(tracker_cases).where(
                    tracker_cases.c.jobcenter_org == jobcenter_org,
                    tracker_cases.c.jobcenter_case_id == jobcenter_case_id,
                )
            )
        ).first()
        if row is None:
            return None
        return _case(row)

    async def of_citizen(self, jobcenter_org: str, case_ref: str) -> list[CaseRecord]:
        rows = await self._conn.execute(
            sa.select(tracker_cases).where(
                tracker_cases.c.jobcenter_org == jobcenter_org,
                tracker_cases.c.case_ref == case_ref,
            )
        )
        return [_case(row) for row in rows]

    async def add(self, record: CaseRecord) -> None:
        fields = {f: getattr(record, f) for f in CaseRecord.__dataclass_fields__}
        await self._conn.execute(tracker_cases.insert().values(**fields))

    async def update(self, record: CaseRecord) -> None:
        await self._conn.execute(
            tracker_cases.update()
            .where(tracker_cases.c.case_id == record.case_id)
            .values(
                psychiatric_course=record.psychiatric_course,
                closed_on=record.closed_on,
                updated_at=record.updated_at,
            )
        )


class SqlTreatments:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def by_idempotency_key(self, psychiatry_org: str, key: str) -> TreatmentRecord | None:
        row = (
            await self._conn.execute(
                sa.select(tracker_treatments).where(
                    tracker_treatments.c.psychiatry_org == psychiatry_org,
                    tracker_treatments.c.idempotency_key == key,
                )
            )
        ).first()
        if row is None:
            return None
        fields = {f: getattr(row, f) for f in TreatmentRecord.__dataclass_fields__}
        return TreatmentRecord(**fields | {"created_at": aware(row.created_at)})

    async def add(self, record: TreatmentRecord) -> None:
        fields = {f: getattr(record, f) for f in TreatmentRecord.__dataclass_fields__}
        await self._conn.execute(tracker_treatments.insert().values(**fields))


class SqlCoverage:
    """Contact over registered cases (infra/db/coverage.py), decided for `rules`."""

    def __init__(self, conn: AsyncConnection, rules: CoverageRules) -> None:
        self._conn = conn
        self._rules = rules

    async def refresh(self, case_refs: Collection[str]) -> None:
        await coverage.refresh(self._conn, self._rules, case_refs)


class SqlAuditLog:
    def __init__(self, conn: AsyncConnection, topics: Topics) -> None:
        self._conn = conn
        self._topics = topics
        self.appended = False  # whether this unit of work appended entries to be chained

    async def record_many(self, events: Sequence[AuditEvent]) -> None:
        await audit.record_many(self._conn, self._topics, events)
        self.appended = self.appended or bool(events)


class SqlUnitOfWork:
    """The repositories of one connection (one transaction, or autocommitted reads)."""

    def __init__(
        self, conn: AsyncConnection, topics: Topics, coverage_rules: CoverageRules | None = None
    ) -> None:
        self.directory = SqlDirectory(conn)
        self.conversations = SqlConversations(conn)
        self.mailbox = SqlMailbox(conn)
        self.seen = SqlSeenIds(conn)
        self.stages = SqlStages(conn, topics)
        self.outbox = SqlOutbox(conn, topics)
        self.sent = SqlSentCopies(conn)
        self.inbound = SqlInbound(conn)
        self.idempotency = SqlIdempotencyKeys(conn)
        self.contacts = SqlContacts(conn)
        self.closures = SqlCaseClosures(conn)
        self.cases = SqlCases(conn)
        self.treatments = SqlTreatments(conn)
        self.coverage = SqlCoverage(conn, coverage_rules or CoverageRules())
        self.audit = SqlAuditLog(conn, topics)
        self.actions = SqlRequestActions(conn)


# The rows of an accepted request go as parameters of statements built once (building one
# per request with `.values()` was a measurable share of the request's CPU), parents first.
_INSERT_CONVERSATION = conversations.insert()
_INSERT_IDEMPOTENCY_KEY = idempotency_keys.insert()
_INSERT_SENT = sent_messages.insert()


def accepted_request_writes(topics: Topics, accepted: AcceptedRequest) -> list[Write]:
    """The writes of an accepted request, parents first, for the group commit."""
    conv = accepted.conv
    h = accepted.envelope.header
    conv_row = {f: getattr(conv, f) for f in Conversation.__dataclass_fields__}
    writes: list[Write] = [
        (_INSERT_CONVERSATION, conv_row | {"citizen_sealed": accepted.citizen_sealed})
    ]
    if (key := accepted.idempotency) is not None:
        writes.append(
            (
                _INSERT_IDEMPOTENCY_KEY,
                {
                    "org_id": key.org_id,
                    "key": key.key,
                    "fingerprint": key.fingerprint,
                    "conversation_id": key.conversation_id,
                    "response": key.response,
                    "created_at": key.created_at,
                },
            )
        )
    writes.append(
        (
            _INSERT_SENT,
            messaging.sent_copy_row(accepted.envelope, accepted.sent_copy, conv.created_at),
        )
    )
    writes += messaging.first_stage_writes(
        topics,
        conv,
        Stage.SUBMITTED,
        message_id=h.message_id,
        message_type=h.message_type,
        at=conv.created_at,
        envelope=accepted.envelope,
    )
    return writes


class SqlStore:
    """The store of the use cases: units of work on `engine`, accepted requests through
    `writes` (the group commit the container owns)."""

    def __init__(
        self,
        engine: AsyncEngine,
        topics: Topics,
        writes: GroupCommit | None = None,
        arrivals: MailArrivals | None = None,
        audit_appended: Callable[[], None] | None = None,
        coverage_rules: CoverageRules | None = None,
    ):
        self._engine = engine
        # the contact rules the coverage rollup is decided with (the tracker's)
        self._coverage_rules = coverage_rules or CoverageRules()
        self._topics = topics
        self._writes = writes
        # what long-polls wait on; without one (tests, tools) they answer at once
        self.arrivals = arrivals
        # told when a transaction committed audit entries to be chained (the chainer's wake)
        self._audit_appended = audit_appended
        # told the stage events a transaction of this process committed (the webhook
        # dispatcher of the same process); each is also on its way through the outbox
        self.stage_listeners: list[Callable[[Sequence[StageEvent]], None]] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlUnitOfWork]:
        async with self._engine.begin() as conn:
            uow = SqlUnitOfWork(conn, self._topics, self._coverage_rules)
            yield uow
        if self.arrivals is not None and uow.mailbox.receivers:
            self.arrivals.notify(uow.mailbox.receivers)  # committed: wake their long-polls
        if self._audit_appended is not None and uow.audit.appended:
            self._audit_appended()
        if uow.stages.emitted:
            for listener in self.stage_listeners:
                try:
                    listener(uow.stages.emitted)
                except Exception:  # committed already: the outbox carries the events anyway
                    log.exception("store.stage_listener_failed")

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[SqlUnitOfWork]:
        async with self._engine.connect() as conn:
            yield SqlUnitOfWork(await autocommit(conn), self._topics, self._coverage_rules)

    async def accept_request(self, accepted: AcceptedRequest) -> None:
        if self._writes is None:
            raise RuntimeError("this store was made without a group commit")
        try:
            await self._writes.run(
                accepted_request_writes(self._topics, accepted),
                audit=() if accepted.audit is None else (accepted.audit,),
                topics=self._topics,
            )
        except sa.exc.IntegrityError as exc:
            if accepted.idempotency is None:
                raise
            raise KeyTaken(exc) from exc

    async def wait_for_mail(self, org_id: str, *, replies: bool, seconds: float) -> bool:
        if self.arrivals is None:
            return False
        return await self.arrivals.wait(org_id, replies=replies, seconds=seconds)
