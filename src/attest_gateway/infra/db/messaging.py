"""The store's side of every hand-off: sealing a Bundle for its receiver into an outbox
row, and recording a conversation stage (store row + stage event in the outbox, in the caller's
transaction, so a stage is never recorded without its event or the other way round)."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.contracts.envelope import CONTENT_TYPE, SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.infra.db.directory_view import SqlDirectory
from attest_gateway.infra.db.engine import aware, dialect_insert, insert_ignore, one_of
from attest_gateway.infra.db.group_commit import Write
from attest_gateway.infra.db.tables import conversations, mailbox, outbox, stages
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.ports import sealing
from attest_gateway.ports.records import Conversation, StageRecord


def conversation_from_row(row: Any) -> Conversation:
    """The conversation of a `conversations` row."""
    fields = {f: getattr(row, f) for f in Conversation.__dataclass_fields__}
    return Conversation(**fields | {"created_at": aware(row.created_at)})


_BY_ID = sa.select(conversations).where(conversations.c.id == sa.bindparam("b_id"))
_BY_REQUEST = sa.select(conversations).where(
    conversations.c.request_message_id == sa.bindparam("b_message_id")
)


async def load_conversation(conn: AsyncConnection, conversation_id: str) -> Conversation | None:
    row = (await conn.execute(_BY_ID, {"b_id": conversation_id})).first()
    return conversation_from_row(row) if row is not None else None


async def conversations_by_id(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, Conversation]:
    """The conversations with these ids, by id (one statement)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = await conn.execute(
        sa.select(conversations).where(one_of(conn.dialect.name, conversations.c.id, wanted))
    )
    return {row.id: conversation_from_row(row) for row in rows}


async def mark_fetched(
    conn: AsyncConnection, message_ids: Iterable[str], at: dt.datetime
) -> set[str]:
    """Mark these mailbox rows fetched; the ids of those fetched for the first time, by this
    transaction (one statement, whatever their number)."""
    wanted = sorted(set(message_ids))
    if not wanted:
        return set()
    result = await conn.execute(
        mailbox.update()
        .where(one_of(conn.dialect.name, mailbox.c.message_id, wanted))
        .where(mailbox.c.fetched_at.is_(None))
        .values(fetched_at=at)
        .returning(mailbox.c.message_id)
    )
    return {row.message_id for row in result}


async def conversations_by_request(
    conn: AsyncConnection, message_ids: Sequence[str]
) -> list[Conversation]:
    """The conversations whose request has one of these message ids (one statement)."""
    if not message_ids:
        return []
    by_request = one_of(conn.dialect.name, conversations.c.request_message_id, message_ids)
    rows = await conn.execute(sa.select(conversations).where(by_request))
    return [conversation_from_row(row) for row in rows]


async def conversation_by_request(conn: AsyncConnection, message_id: str) -> Conversation | None:
    row = (await conn.execute(_BY_REQUEST, {"b_message_id": message_id})).first()
    return conversation_from_row(row) if row is not None else None


# Built once; each row goes as parameters (building the statement per row cost more CPU).
_OUTBOX_INSERT = outbox.insert()
_STAGE_INSERT = stages.insert()


def _headers(pairs: dict[str, str]) -> str:
    return orjson.dumps(sorted(pairs.items())).decode()


async def seal_for(
    conn: AsyncConnection,
    keyring: KeyRing,
    *,
    signer_org_id: str,
    sender_org_id: str,
    receiver_org_id: str,
    message_type: MessageType,
    message_id: str,
    bundle_id: str,
    conversation_id: str,
    plaintext: bytes,
    now: dt.datetime,
) -> SealedEnvelope:
    """`ports.sealing.seal_for` with the directory as this connection reads it."""
    return await sealing.seal_for(
        SqlDirectory(conn), keyring, signer_org_id=signer_org_id, sender_org_id=sender_org_id,
        receiver_org_id=receiver_org_id, message_type=message_type, message_id=message_id,
        bundle_id=bundle_id, conversation_id=conversation_id, plaintext=plaintext, now=now,
    )  # fmt: skip


def sent_copy_row(
    envelope: SealedEnvelope, copy: SealedEnvelope, now: dt.datetime
) -> dict[str, Any]:
    """The `sent_messages` row of `envelope`, a message that awaits a MedCom acknowledgement:
    its routing, and `copy` (the same message sealed for the gateway itself), so the resend
    rule can send it again with a new Bundle.id."""
    h = envelope.header
    return {
        "message_id": h.message_id,
        "conversation_id": h.conversation_id,
        "sender_org_id": h.sender,
        "receiver_org_id": h.receiver,
        "message_type": h.message_type.value,
        "copy": copy.to_json(),
        "sent_at": now,
        "last_sent_at": now,
        "resend_count": 0,
    }


async def enqueue_envelope(
    conn: AsyncConnection, topics: Topics, envelope: SealedEnvelope, now: dt.datetime
) -> None:
    """Put a sealed envelope in the outbox for `medcom.messages` (key: the conversation)."""
    await conn.execute(_OUTBOX_INSERT, _envelope_row(topics, envelope, now))


def _envelope_row(topics: Topics, envelope: SealedEnvelope, now: dt.datetime) -> dict[str, Any]:
    h = envelope.header
    return {
        "topic": topics.medcom_messages,
        "key": h.conversation_id,
        "value": envelope.to_json(),
        "headers": _headers(
            {
                "content-type": CONTENT_TYPE,
                "schema-version": "1",
                "message-type": h.message_type.value,
                "message-id": h.message_id,
                "conversation-id": h.conversation_id,
                "sender": h.sender,
                "receiver": h.receiver,
                "key-id": h.recipient_key_id,
            }
        ),
        "message_id": h.message_id,
        "created_at": now,
    }


async def record_stage(
    conn: AsyncConnection,
    topics: Topics,
    conv: Conversation,
    stage: Stage,
    *,
    message_id: str,
    message_type: MessageType,
    at: dt.datetime,
    detail: str | None = None,
    envelope: SealedEnvelope | None = None,
    emitted: list[StageEvent] | None = None,
) -> bool:
    """Record the first time a conversation reaches a stage, with its stage event.

    Idempotent: a stage already recorded is left alone and no second event is emitted.
    `envelope`: also put this envelope in the outbox (as `enqueue_envelope`), in the same
    statement as the stage event (one round trip less). `emitted`: the stage event written is
    appended to it (what the transaction's caller hands to this process's listeners once it
    commits).
    """
    is_new = await insert_ignore(
        conn,
        stages,
        {
            "conversation_id": conv.id,
            "stage": stage.value,
            "message_id": message_id,
            "at": at,
            "detail": detail,
        },
    )
    rows = [] if envelope is None else [_envelope_row(topics, envelope, at)]
    if is_new:
        event = _stage_event_row(
            topics, conv, stage, message_id=message_id, message_type=message_type, at=at,
            detail=detail, emitted=emitted,
        )  # fmt: skip
        rows.append(event)
    if rows:
        await conn.execute(_OUTBOX_INSERT, rows)
    return is_new


def first_stage_writes(
    topics: Topics,
    conv: Conversation,
    stage: Stage,
    *,
    message_id: str,
    message_type: MessageType,
    at: dt.datetime,
    envelope: SealedEnvelope,
) -> list[Write]:
    """The writes of :func:`record_stage` with `envelope` for a conversation created with
    them (its stage cannot be recorded yet, so there is nothing to ask the database first):
    the stage row, then the envelope and the stage event in the outbox."""
    stage_row = {
        "conversation_id": conv.id,
        "stage": stage.value,
        "message_id": message_id,
        "at": at,
        "detail": None,
    }
    event = _stage_event_row(
        topics, conv, stage, message_id=message_id, message_type=message_type, at=at, detail=None
    )
    envelope_row = _envelope_row(topics, envelope, at)
    return [(_STAGE_INSERT, stage_row), (_OUTBOX_INSERT, [envelope_row, event])]


@functools.cache
def _insert_new_stages(dialect: str) -> Any:
    """Stage rows unless already recorded, returning those inserted. Built once; unordered
    RETURNING lets SQLAlchemy send the rows as one multi-row INSERT."""
    return (
        dialect_insert(dialect, stages)
        .on_conflict_do_nothing()
        .returning(stages.c.conversation_id, stages.c.stage)
    )


async def record_stages(
    conn: AsyncConnection,
    topics: Topics,
    items: Sequence[StageRecord],
    *,
    emitted: list[StageEvent] | None = None,
) -> int:
    """:func:`record_stage` for many stages at once: one insert for the stage rows and one for
    the events of those that are new, whatever their number. Returns how many were new."""
    if not items:
        return 0
    items = sorted(items, key=lambda i: (i.conv.id, i.stage.value))  # one lock order for all
    rows = [
        {
            "conversation_id": i.conv.id,
            "stage": i.stage.value,
            "message_id": i.message_id,
            "at": i.at,
            "detail": None,
        }
        for i in items
    ]
    result = await conn.execute(_insert_new_stages(conn.dialect.name), rows)
    new = {(r.conversation_id, r.stage) for r in result}
    fresh = [i for i in items if (i.conv.id, i.stage.value) in new]
    if fresh:
        await conn.execute(
            outbox.insert(),
            [
                _stage_event_row(
                    topics, i.conv, i.stage, message_id=i.message_id,
                    message_type=i.message_type, at=i.at, detail=None, emitted=emitted,
                )
                for i in fresh
            ],
        )  # fmt: skip
    return len(fresh)


async def emit_stage_event(
    conn: AsyncConnection,
    topics: Topics,
    conv: Conversation,
    stage: Stage,
    *,
    message_id: str,
    message_type: MessageType,
    at: dt.datetime,
    detail: str | None = None,
    emitted: list[StageEvent] | None = None,
) -> None:
    """Put one stage event for `gateway.tracking` in the outbox (metadata only); `emitted` as
    :func:`record_stage` has it."""
    row = _stage_event_row(
        topics, conv, stage, message_id=message_id, message_type=message_type, at=at,
        detail=detail, emitted=emitted,
    )  # fmt: skip
    await conn.execute(_OUTBOX_INSERT, row)


def _stage_event_row(
    topics: Topics,
    conv: Conversation,
    stage: Stage,
    *,
    message_id: str,
    message_type: MessageType,
    at: dt.datetime,
    detail: str | None,
    emitted: list[StageEvent] | None = None,
) -> dict[str, Any]:
    """The outbox row of one stage event (metadata only, never content); the event is appended
    to `emitted` if given."""
    event = StageEvent(
        event_id=str(uuid.uuid4()),
        conversation_id=conv.id,
        message_id=message_id,
        message_type=message_type,
        stage=stage,
        at=at,
        attest_type=conv.attest_type,
        case_kind=conv.case_kind,
        municipality=conv.municipality,
        region_code=conv.region_code,
        jobcenter_org=conv.jobcenter_org_id,
        receiver_org=conv.receiver_org_id,
        case_ref=conv.case_ref,
        psychiatric_course=conv.psychiatric_course,
        first_day_of_absence=conv.first_day_of_absence,
        reply_deadline=conv.reply_deadline,
        detail=detail,
    )
    if emitted is not None:
        emitted.append(event)
    return {
        "topic": topics.tracking,
        "key": conv.id,
        "value": event.model_dump_json().encode(),
        "headers": _headers(
            {
                "content-type": "application/json",
                "schema-version": "1",
                "message-type": "stage",
                "conversation-id": conv.id,
            }
        ),
        "message_id": None,
        "created_at": at,
    }


async def stages_of(conn: AsyncConnection, conversation_id: str) -> list[Any]:
    rows = await conn.execute(
        sa.select(stages).where(stages.c.conversation_id == conversation_id).order_by(stages.c.at)
    )
    return list(rows)
