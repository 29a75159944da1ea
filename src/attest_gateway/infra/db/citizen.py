"""The citizen's own view (GDPR art. 15), gathered from the store: `export` finds the
citizen's rows by their case refs, reads the metadata and the audit entries about them, and
records its own `citizen.export` entry, in one transaction.

- The CPR number is turned into the citizen's pseudonyms under the store's key (and the bare
  ref, while bare refs still belong to that key: infra/db/pseudonyms.py); it is not stored,
  logged or written into the audit entry. A re-key moves every ref to the new key in one
  transaction, so the store holds one key's refs; refs a forced re-key made unlinked are,
  by design, no longer the citizen's and are not found.
- What is read is metadata only: never `citizen_sealed`, an envelope, a sent copy, a
  submission's answer or a caseworker's reference.
- The audit log has no index by message, so it is read once through, in batches by seq (as
  `audit verify` does). An entry concerns the citizen when it names one of their
  conversations or messages, lists one of their messages among those a read handed out
  (only theirs are exported), names a closure of their case, or is an earlier export of
  their conversations.
- The export's own entry names the operator, the conversation ids and the counts, never the
  CPR number or the case ref: the audit log outlives a case's erasure
  (docs/data-lifecycle.md), so it holds no pseudonym.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.contracts.citizen import (
    Access,
    CaseClosure,
    CitizenExport,
    ConversationTimeline,
    OrgName,
    RegisteredContact,
    SicknessCase,
    StageTime,
    Treatment,
)
from attest_gateway.contracts.stages import STAGE_ORDER, Stage
from attest_gateway.core.actors import AUTHORISATION_KEY, PERSON_KEY
from attest_gateway.core.audit import CITIZEN_EXPORT
from attest_gateway.crypto.pseudonyms import bare_ref, case_ref, key_id
from attest_gateway.infra.db import audit
from attest_gateway.infra.db import pseudonyms as ps
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    audit_log,
    case_closures,
    conversations,
    inbound_messages,
    mailbox,
    organisations,
    seen_ids,
    sent_messages,
    stages,
    tracker_cases,
    tracker_contacts,
    tracker_conversations,
    tracker_reminders,
    tracker_treatments,
)
from attest_gateway.infra.kafka.topics import Topics

AUDIT_BATCH = 2000
_CHUNK = 500  # ids per IN list

# The tracker's timeline columns, by stage (`reminded`: the latest reminder).
_TRACKER_STAGE_COLUMNS: tuple[tuple[Stage, str], ...] = tuple(
    (stage, "last_reminded_at" if stage is Stage.REMINDED else f"{stage.value}_at")
    for stage in STAGE_ORDER
    if stage not in (Stage.RESENT, Stage.UNDELIVERABLE)
)


async def citizen_refs(conn: AsyncConnection, cpr: str, key: bytes) -> list[str]:
    """The citizen's case refs in this store. Raises PseudonymKeyMismatch when the store's
    pseudonyms were made with another key (an export would silently find nothing)."""
    kid = key_id(key)
    recorded, legacy = await ps.recorded_key(conn)
    if recorded is not None and recorded != kid:
        raise ps.PseudonymKeyMismatch(ps.mismatch_message(kid, recorded))
    refs = [case_ref(cpr, key)]
    if recorded is None or legacy == kid:
        refs.append(bare_ref(cpr, key))
    return refs


def _chunks(values: Collection[str]) -> Iterable[list[str]]:
    ordered = sorted(values)
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


async def _rows_in(
    conn: AsyncConnection, query: sa.Select[Any], column: sa.ColumnElement[Any], ids: set[str]
) -> list[Any]:
    found: list[Any] = []
    for chunk in _chunks(ids):
        found.extend(await conn.execute(query.where(column.in_(chunk))))
    return found


async def _message_ids(conn: AsyncConnection, conv_ids: set[str]) -> set[str]:
    """Every message id of the conversations the store still knows."""
    found: set[str] = set()
    for column, id_column in (
        (conversations.c.request_message_id, conversations.c.id),
        (stages.c.message_id, stages.c.conversation_id),
        (seen_ids.c.message_id, seen_ids.c.conversation_id),
        (mailbox.c.message_id, mailbox.c.conversation_id),
        (sent_messages.c.message_id, sent_messages.c.conversation_id),
        (inbound_messages.c.message_id, inbound_messages.c.conversation_id),
        (tracker_reminders.c.message_id, tracker_reminders.c.conversation_id),
    ):
        rows = await _rows_in(conn, sa.select(column), id_column, conv_ids)
        found.update(r[0] for r in rows)
    return found


def _concerns(
    row: Any, conv_ids: set[str], message_ids: set[str], closure_ids: set[str]
) -> Access | None:
    """The entry as the citizen sees it, or None when it is not about them."""
    detail: dict[str, str] = orjson.loads(row.detail) if row.detail is not None else {}
    listed = detail.get("message_ids", "").split()
    exported = detail.get("conversation_ids", "").split() if row.action == CITIZEN_EXPORT else []
    convs = {c for c in (row.conversation_id, *exported) if c in conv_ids}
    msgs = {m for m in (row.message_id, *listed) if m in message_ids}
    if not convs and not msgs and detail.get("closure_id") not in closure_ids:
        return None
    return Access(
        seq=row.seq,
        at=aware(row.at),
        actor=OrgName(id=row.actor),
        action=row.action,
        source=row.source,
        conversation_ids=sorted(convs),
        message_ids=sorted(msgs),
        person=detail.get(PERSON_KEY),
        authorisation_id=detail.get(AUTHORISATION_KEY),
    )


async def _accesses(
    conn: AsyncConnection, conv_ids: set[str], message_ids: set[str], closure_ids: set[str]
) -> list[Access]:
    found: list[Access] = []
    if not (conv_ids or message_ids or closure_ids):
        return found
    after = 0
    columns = (
        audit_log.c.seq, audit_log.c.at, audit_log.c.actor, audit_log.c.action,
        audit_log.c.source, audit_log.c.message_id, audit_log.c.conversation_id,
        audit_log.c.detail,
    )  # fmt: skip
    while True:
        rows = list(
            await conn.execute(
                sa.select(*columns)
                .where(audit_log.c.seq > after)
                .order_by(audit_log.c.seq)
                .limit(AUDIT_BATCH)
            )
        )
        if not rows:
            return found
        for row in rows:
            access = _concerns(row, conv_ids, message_ids, closure_ids)
            if access is not None:
                found.append(access)
        after = rows[-1].seq


async def _org_names(conn: AsyncConnection, ids: set[str]) -> dict[str, str]:
    query = sa.select(organisations.c.id, organisations.c.name)
    return {r.id: r.name for r in await _rows_in(conn, query, organisations.c.id, ids)}


async def gather(conn: AsyncConnection, refs: list[str], now: dt.datetime) -> CitizenExport:
    """Everything the store holds about the citizen whose case refs are `refs`."""
    conv_rows = list(
        await conn.execute(
            sa.select(
                conversations.c.id, conversations.c.jobcenter_org_id,
                conversations.c.receiver_org_id, conversations.c.attest_type,
                conversations.c.case_kind, conversations.c.created_at,
                conversations.c.reply_deadline,
            )
            .where(conversations.c.case_ref.in_(refs))
            .order_by(conversations.c.created_at, conversations.c.id)
        )
    )  # fmt: skip
    tracked = list(
        await conn.execute(
            sa.select(tracker_conversations)
            .where(tracker_conversations.c.case_ref.in_(refs))
            .order_by(tracker_conversations.c.submitted_at, tracker_conversations.c.conversation_id)
        )
    )
    kept_ids = {r.id for r in conv_rows}
    stage_rows = await _rows_in(
        conn,
        sa.select(stages.c.conversation_id, stages.c.stage, stages.c.at),
        stages.c.conversation_id,
        kept_ids,
    )
    timelines: dict[str, list[StageTime]] = {}
    for r in sorted(stage_rows, key=lambda r: (aware(r.at), r.stage)):
        timelines.setdefault(r.conversation_id, []).append(StageTime(stage=r.stage, at=aware(r.at)))
    contact_rows = list(
        await conn.execute(
            sa.select(tracker_contacts)
            .where(tracker_contacts.c.case_ref.in_(refs))
            .order_by(tracker_contacts.c.created_at, tracker_contacts.c.contact_id)
        )
    )
    case_rows = list(
        await conn.execute(
            sa.select(tracker_cases)
            .where(tracker_cases.c.case_ref.in_(refs))
            .order_by(tracker_cases.c.created_at, tracker_cases.c.case_id)
        )
    )
    treatment_rows = list(
        await conn.execute(
            sa.select(tracker_treatments)
            .where(tracker_treatments.c.case_ref.in_(refs))
            .order_by(tracker_treatments.c.created_at, tracker_treatments.c.treatment_id)
        )
    )
    closure_rows = list(
        await conn.execute(
            sa.select(case_closures)
            .where(case_closures.c.case_ref.in_(refs))
            .order_by(case_closures.c.closed_at, case_closures.c.id)
        )
    )
    conv_ids = kept_ids | {r.conversation_id for r in tracked}
    accesses = await _accesses(
        conn, conv_ids, await _message_ids(conn, conv_ids), {r.id for r in closure_rows}
    )

    org_ids = {a.actor.id for a in accesses}
    org_ids |= {o for r in conv_rows for o in (r.jobcenter_org_id, r.receiver_org_id)}
    org_ids |= {o for r in tracked for o in (r.jobcenter_org, r.receiver_org)}
    org_ids |= {
        o for r in contact_rows for o in (r.jobcenter_org, r.psychiatry_org, r.registrar_org)
    }
    org_ids |= {r.jobcenter_org for r in case_rows} | {r.psychiatry_org for r in treatment_rows}
    org_ids |= {r.jobcenter_org_id for r in closure_rows}
    names = await _org_names(conn, org_ids)

    def org(org_id: str) -> OrgName:
        return OrgName(id=org_id, name=names.get(org_id))

    timeline = [
        ConversationTimeline(
            conversation_id=r.id, jobcenter=org(r.jobcenter_org_id),
            receiver=org(r.receiver_org_id), attest_type=r.attest_type, case_kind=r.case_kind,
            created_at=aware(r.created_at), reply_deadline=r.reply_deadline,
            stages=timelines.get(r.id, []), kept_by="gateway",
        )
        for r in conv_rows
    ]  # fmt: skip
    for r in tracked:
        if r.conversation_id in kept_ids:
            continue
        times = [
            StageTime(stage=stage.value, at=aware(getattr(r, column)))
            for stage, column in _TRACKER_STAGE_COLUMNS
            if getattr(r, column) is not None
        ]
        timeline.append(
            ConversationTimeline(
                conversation_id=r.conversation_id, jobcenter=org(r.jobcenter_org),
                receiver=org(r.receiver_org), attest_type=r.attest_type,
                case_kind=r.case_kind, reply_deadline=r.due_date,
                stages=sorted(times, key=lambda s: s.at), kept_by="tracker",
            )
        )  # fmt: skip
    return CitizenExport(
        exported_at=now,
        pseudonym_key_id=refs[0].partition(".")[0],
        conversations=timeline,
        contacts=[
            RegisteredContact(
                contact_id=r.contact_id, jobcenter=org(r.jobcenter_org),
                psychiatry=org(r.psychiatry_org), registered_by=org(r.registrar_org),
                case_kind=r.case_kind, first_day_of_absence=r.first_day_of_absence,
                contact_date=r.contact_date, channel=r.channel,
                registered_at=aware(r.created_at),
            )
            for r in contact_rows
        ],
        cases=[
            SicknessCase(
                case_id=r.case_id, jobcenter=org(r.jobcenter_org), case_kind=r.case_kind,
                psychiatric_course=r.psychiatric_course,
                first_day_of_absence=r.first_day_of_absence, closed_on=r.closed_on,
                registered_at=aware(r.created_at),
            )
            for r in case_rows
        ],
        treatments=[
            Treatment(
                treatment_id=r.treatment_id, psychiatry=org(r.psychiatry_org),
                start_date=r.start_date, end_date=r.end_date, registered_at=aware(r.created_at),
            )
            for r in treatment_rows
        ],
        closures=[
            CaseClosure(
                closure_id=r.id, jobcenter=org(r.jobcenter_org_id), case_kind=r.case_kind,
                closed_at=aware(r.closed_at), erase_after=aware(r.erase_after),
            )
            for r in closure_rows
        ],
        accesses=[
            a.model_copy(update={"actor": org(a.actor.id)}) if a.actor.id in names else a
            for a in accesses
        ],
    )  # fmt: skip


def export_detail(found: CitizenExport) -> dict[str, str]:
    """The `citizen.export` entry's detail: ids and counts, never the CPR number or case ref."""
    return {
        "conversation_ids": " ".join(c.conversation_id for c in found.conversations),
        "conversations": str(len(found.conversations)),
        "contacts": str(len(found.contacts)),
        "cases": str(len(found.cases)),
        "treatments": str(len(found.treatments)),
        "accesses": str(len(found.accesses)),
    }


async def export(
    engine: AsyncEngine,
    topics: Topics,
    cpr: str,
    key: bytes,
    *,
    actor: str,
    source: str,
    now: dt.datetime,
) -> CitizenExport:
    """Gather the citizen's view and record the `citizen.export` entry, in one transaction:
    an export that cannot be audited does not happen. The entries appended but not chained
    yet are chained first, so the view holds every access committed before it."""
    await audit.chain_all(engine, topics)
    async with engine.begin() as conn:
        found = await gather(conn, await citizen_refs(conn, cpr, key), now)
        await audit.record(
            conn, topics, actor=actor, action=CITIZEN_EXPORT, source=source, at=now,
            detail=export_detail(found),
        )  # fmt: skip
    return found
