"""The domain values the use cases and their ports speak: a conversation, the mail waiting in
a mailbox, a recorded stage, a remembered submission, an accepted request's records.

Plain frozen dataclasses: the store (infra/db) turns its rows into these and these into its
rows; the in-memory fakes of the tests keep them as they are.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal, NamedTuple

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.audit import AuditEvent


@dataclass(frozen=True, slots=True)
class Conversation:
    """One attest request and everything that answers it, between a job centre and the
    healthcare organisation it asked (the receiver)."""

    id: str
    jobcenter_org_id: str
    receiver_org_id: str
    request_message_id: str
    attest_type: str
    case_kind: str
    caseworker_ref: str
    municipality: str
    region_code: str
    case_ref: str
    psychiatric_course: bool
    first_day_of_absence: dt.date
    reply_deadline: dt.date
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class StageRecord:
    """One stage to record with its stage event (`Stages.record_many`)."""

    conv: Conversation
    stage: Stage
    message_id: str
    message_type: MessageType
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class RequestAction:
    """What a job centre did to its request after sending it: `cancel` (key ""), `extend`
    (key: the new deadline, ISO), `remind` (key: the day, ISO: one a day). `id`: the message
    sent (cancel, remind) or the action's own id (extend)."""

    conversation_id: str
    action: Literal["cancel", "extend", "remind"]
    key: str
    id: str
    at: dt.datetime
    detail: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class StageEntry:
    """A stage a conversation reached, as recorded (its timeline)."""

    stage: str
    message_id: str
    at: dt.datetime
    detail: str | None


@dataclass(frozen=True, slots=True)
class MailItem:
    """A sealed message delivered to an organisation's mailbox (a job centre's inbox is the
    attest replies of its mailbox)."""

    message_id: str
    receiver_org_id: str
    sender_org_id: str
    conversation_id: str
    message_type: str
    envelope: bytes
    delivered_at: dt.datetime
    fetched_at: dt.datetime | None = None
    collected_at: dt.datetime | None = None
    unreadable_at: dt.datetime | None = None
    unreadable_reason: str | None = None

    @classmethod
    def of(cls, envelope: SealedEnvelope, delivered_at: dt.datetime) -> MailItem:
        """The mailbox entry of an envelope delivered now."""
        h = envelope.header
        return cls(
            message_id=h.message_id,
            receiver_org_id=h.receiver,
            sender_org_id=h.sender,
            conversation_id=h.conversation_id,
            message_type=h.message_type.value,
            envelope=envelope.to_json(),
            delivered_at=delivered_at,
        )


class WaitingMail(NamedTuple):
    """What a mailbox read hands out of one waiting message, and no more: a tuple, not a
    dataclass, since a read makes up to 500 of them at once (`Mailbox.waiting_batches`)."""

    message_id: str
    conversation_id: str
    message_type: str
    delivered_at: dt.datetime
    #: not fetched before: this read is its first (the conversation's `fetched` stage)
    unfetched: bool
    #: the sealed envelope's JSON, as stored
    envelope: bytes


@dataclass(frozen=True, slots=True)
class MailAddress:
    """Where a delivered message went and whether it was collected: a mailbox entry without
    its envelope, for the checks that need no more (the envelope is the row's bulk)."""

    message_id: str
    receiver_org_id: str
    sender_org_id: str
    conversation_id: str
    message_type: str
    collected_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """A message a health organisation submitted, remembered with the answer it got (the
    MedCom duplicate rule answers a resend with it)."""

    message_id: str
    bundle_id: str
    sender_org_id: str
    conversation_id: str
    message_type: str
    response: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A job centre's Idempotency-Key with the request it named (by fingerprint) and the
    answer it got."""

    org_id: str
    key: str
    fingerprint: str
    conversation_id: str
    response: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AcceptedRequest:
    """Everything an accepted attest request stores, written at once: the conversation (with
    the citizen's CPR number sealed to the gateway), the Idempotency-Key if one was given,
    the copy kept for resends (sealed to the gateway), and the `submitted` stage with the
    envelope for the receiver."""

    conv: Conversation
    citizen_sealed: str
    idempotency: IdempotencyRecord | None
    envelope: SealedEnvelope
    sent_copy: SealedEnvelope
    #: its audit entry (`request.submit`), appended last in the same transaction
    audit: AuditEvent | None = None


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """A registered direct contact between a job centre and a psychiatry unit (registered by
    either; an Idempotency-Key is the registrar's)."""

    contact_id: str
    jobcenter_org: str
    psychiatry_org: str
    case_ref: str
    case_kind: str
    first_day_of_absence: dt.date
    contact_date: dt.date
    channel: str
    idempotency_key: str | None
    response: str
    created_at: dt.datetime
    citizen_sealed: str | None
    registrar_org: str  # who registered it: the job centre or the psychiatry unit


@dataclass(frozen=True, slots=True)
class SeenId:
    """A MessageHeader.id (`kind` message) or Bundle.id (`kind` bundle) that reached a
    mailbox, with the message it belongs to: remembered longer than the mailbox row, so a
    reused id is known as a replay after the row was pruned."""

    kind: Literal["message", "bundle"]
    id: str
    message_id: str
    sender_org_id: str
    receiver_org_id: str
    conversation_id: str
    message_type: str
    first_seen_at: dt.datetime

    @classmethod
    def of(cls, envelope: SealedEnvelope, at: dt.datetime) -> tuple[SeenId, SeenId]:
        """The envelope's MessageHeader.id and Bundle.id."""
        h = envelope.header
        routing = (h.sender, h.receiver, h.conversation_id, h.message_type.value, at)
        return (
            cls("message", h.message_id, h.message_id, *routing),
            cls("bundle", h.bundle_id, h.message_id, *routing),
        )

    def conflict(self, envelope: SealedEnvelope) -> str | None:
        """Why the envelope is not (a copy or resend of) the message this id was seen with,
        or None if it is."""
        h = envelope.header
        if self.kind == "bundle":
            if h.bundle_id == self.id and h.message_id != self.message_id:
                return "this Bundle.id was already delivered under another message id"
            return None
        routing = (h.sender, h.receiver, h.conversation_id, h.message_type.value)
        mine = (self.sender_org_id, self.receiver_org_id, self.conversation_id, self.message_type)
        if h.message_id == self.id and routing != mine:
            return "another message was already delivered under this message id"
        return None


@dataclass(frozen=True, slots=True)
class CaseClosure:
    """A job centre closed its case of a citizen (its conversations of that case kind, made
    before `closed_at`); after `erase_after` retention erases what identifies the citizen."""

    id: str
    jobcenter_org_id: str
    case_kind: str
    case_ref: str
    conversations: int
    closed_at: dt.datetime
    erase_after: dt.datetime


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """A sickness case a job centre registered: the denominator of contact coverage."""

    case_id: str
    jobcenter_org: str
    jobcenter_case_id: str
    case_ref: str
    municipality: str
    region_code: str
    case_kind: str
    psychiatric_course: bool
    first_day_of_absence: dt.date
    closed_on: dt.date | None
    created_at: dt.datetime
    updated_at: dt.datetime
    citizen_sealed: str | None


@dataclass(frozen=True, slots=True)
class TreatmentRecord:
    """A citizen a psychiatry unit registered as in its treatment."""

    treatment_id: str
    psychiatry_org: str
    case_ref: str
    region_code: str | None
    start_date: dt.date
    end_date: dt.date | None
    idempotency_key: str | None
    response: str
    created_at: dt.datetime
    citizen_sealed: str | None
