"""The ports the use cases (services/) work through: what they need from the store, the
directory and the outbox relay, in domain types.

    Store ─ transaction() / reading() → UnitOfWork
            accept_request(AcceptedRequest)      (written with concurrent requests at once)
    UnitOfWork ─ directory, conversations, mailbox, seen, stages, outbox, sent, inbound,
                 idempotency, contacts, cases, audit    (one transaction: all or nothing)
    Relay ─ admit() (back-pressure) / wake() (publish the outbox now)

The database implementation is infra/db/uow.py; tests/support/fakes.py holds in-memory ones.
The clock is `core.clock.Clock`, the private keys `crypto.sealing.KeyRing`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from attest_gateway.contracts.contacts import ContactEvent
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.audit import AuditEvent
from attest_gateway.core.directory import Organisation, VerifyKey
from attest_gateway.crypto.sealing import PublicHpkeKey
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


class KeyTaken(Exception):
    """A unique key of the store was taken meanwhile by a concurrent writer (an
    Idempotency-Key used by two requests at once). `cause`: what the store raised."""

    def __init__(self, cause: Exception) -> None:
        super().__init__("a unique key was taken by a concurrent write")
        self.cause = cause


class Directory(Protocol):
    """The organisations and their public keys."""

    async def org_by_id(self, org_id: str) -> Organisation | None: ...
    async def org_by_sor(self, sor: str) -> Organisation | None: ...
    async def org_by_ydernummer(self, ydernummer: str) -> Organisation | None: ...
    async def jobcenter_of(self, kommunekode: str) -> Organisation | None:
        """The enabled job centre of a municipality."""
        ...

    async def current_hpke_key(self, org_id: str, at: dt.datetime) -> PublicHpkeKey | None:
        """The newest usable HPKE key of an organisation: new mail is sealed to it."""
        ...

    async def usable_signing_key_ids(self, org_id: str, at: dt.datetime) -> list[str]:
        """The organisation's usable signing key ids, newest first."""
        ...

    async def hpke_key_owner(self, key_id: str) -> str | None: ...
    async def signing_key(self, key_id: str) -> VerifyKey | None: ...


class Conversations(Protocol):
    async def get(self, conversation_id: str) -> Conversation | None: ...

    async def lock(self, conversation_id: str) -> None:
        """Hold the conversation against other transactions that lock it until this one
        ends: what either decides after its lock, it decides on the other's committed
        writes (a cancellation and a reply arriving at once)."""
        ...

    async def by_ids(self, ids: Iterable[str]) -> dict[str, Conversation]:
        """The conversations with these ids, by id (one look-up for all)."""
        ...

    async def by_request(self, message_id: str) -> Conversation | None:
        """The conversation whose request has this message id."""
        ...

    async def of_jobcenter(
        self,
        jobcenter_org_id: str,
        *,
        attest_type: str | None,
        before: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[Conversation]:
        """Up to `limit` of the job centre's conversations (of `attest_type` when given),
        newest first (created, then id, descending), those after `before` in that order."""
        ...

    async def set_deadline(self, conversation_id: str, reply_deadline: dt.date) -> None:
        """Move the conversation's reply deadline (an extension)."""
        ...


class Mailbox(Protocol):
    """The sealed messages delivered to organisations, until they collect them."""

    async def get(self, message_id: str) -> MailItem | None: ...

    async def address(self, message_id: str) -> MailAddress | None:
        """The entry's routing and collection time, without reading its envelope."""
        ...

    async def waiting(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        """Up to `limit` messages not yet collected, oldest first."""
        ...

    def waiting_batches(
        self, receiver_org_id: str, limit: int, batch: int
    ) -> AsyncIterator[Sequence[WaitingMail]]:
        """`waiting`'s messages (up to `limit`, oldest first), `batch` at a time, as one
        query read in parts: between two batches the caller's event loop serves others."""
        ...

    async def waiting_replies(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        """Up to `limit` attest replies not yet collected, oldest first: the readable ones,
        then those marked unreadable."""
        ...

    async def waiting_refusals(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        """Up to `limit` refusals not yet collected, oldest first: the acknowledgements whose
        message is a conversation's `refused` stage."""
        ...

    async def known(self, message_ids: Sequence[str]) -> set[str]:
        """Which of these message ids are in a mailbox already."""
        ...

    async def add(self, item: MailItem) -> bool:
        """Deliver one message unless its id is there already; whether it was added."""
        ...

    async def add_new(self, items: Sequence[MailItem]) -> set[str]:
        """`add` for many at once (one statement); the ids of those added."""
        ...

    async def replace_envelope(self, message_id: str, envelope: bytes) -> None:
        """A resend replaces the waiting copy and is offered again (not yet fetched)."""
        ...

    async def mark_fetched(self, message_ids: Iterable[str], at: dt.datetime) -> set[str]:
        """Mark these fetched; the ids of those fetched for the first time (one statement)."""
        ...

    async def mark_unreadable(self, message_id: str, at: dt.datetime, reason: str | None) -> None:
        """Mark a reply unreadable with its error code, or (`reason` None) readable again."""
        ...

    async def collect(
        self, message_id: str, at: dt.datetime, *, receiver_org_id: str | None = None
    ) -> bool:
        """Mark collected if not yet (and addressed to `receiver_org_id` when given);
        whether it changed."""
        ...


class Stages(Protocol):
    """The stages each conversation reached, each with its stage event in the outbox."""

    async def timeline(self, conversation_id: str) -> list[StageEntry]:
        """The recorded stages, in the order they were reached."""
        ...

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
        """Record the first time a conversation reaches a stage, with its stage event;
        a stage already recorded is left alone (no second event). Whether it was new.
        `envelope`: also put this envelope in the outbox."""
        ...

    async def record_many(self, items: Sequence[StageRecord]) -> int:
        """`record` for many stages at once (no envelopes); how many were new."""
        ...

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
        """A stage event again, for a stage recorded before (a second extension or reminder)."""
        ...

    async def timelines(self, conversation_ids: Sequence[str]) -> dict[str, list[StageEntry]]:
        """The recorded stages of these conversations (one look-up for all)."""
        ...


class RequestActions(Protocol):
    """What job centres did to their requests after sending them (`RequestAction`)."""

    async def get(self, conversation_id: str, action: str, key: str) -> RequestAction | None: ...

    async def of(self, conversation_id: str) -> list[RequestAction]:
        """The conversation's actions, oldest first."""
        ...

    async def add(self, record: RequestAction) -> bool:
        """Add unless its (conversation, action, key) is there already; whether it was added."""
        ...


class Outbox(Protocol):
    """The records waiting to be published to Kafka by the relay."""

    async def add_envelope(self, envelope: SealedEnvelope, at: dt.datetime) -> None:
        """A sealed envelope for `medcom.messages` (key: its conversation)."""
        ...

    async def add_contact_event(self, event: ContactEvent, at: dt.datetime) -> None:
        """A contact registration for `gateway.tracking` (key: its case ref)."""
        ...

    async def mark_delivered(self, message_id: str, at: dt.datetime) -> None:
        """Mark the envelope records of this message delivered (if not yet)."""
        ...

    async def claim_undelivered(self, message_ids: Sequence[str]) -> set[str]:
        """Take hold of the envelope records of these messages not yet marked delivered,
        without waiting for any another transaction holds; the message ids of those held
        elsewhere."""
        ...

    async def mark_claimed_delivered(self, message_ids: Iterable[str], at: dt.datetime) -> None:
        """Mark delivered the records of these messages that `claim_undelivered` took."""
        ...


class SeenIds(Protocol):
    """The MessageHeader ids and Bundle ids that reached a mailbox, kept longer than the
    mailbox rows (replay detection that outlives them)."""

    async def find(self, message_ids: Sequence[str], bundle_ids: Sequence[str]) -> list[SeenId]:
        """The entries of these MessageHeader ids and these Bundle ids (one look-up)."""
        ...

    async def add(self, items: Sequence[SeenId]) -> None:
        """Remember these ids; an id already known keeps its first entry."""
        ...


class SentCopies(Protocol):
    """The copies of sent messages that await a MedCom acknowledgement (resend rule)."""

    async def acknowledge(self, message_id: str, at: dt.datetime) -> None: ...

    async def copy_of(self, message_id: str) -> bytes | None:
        """The gateway's own sealed copy of a message it sent (a sealed envelope), if kept."""
        ...


class Inbound(Protocol):
    """The messages health organisations submitted, with the answers they got."""

    async def seen(self, message_id: str, bundle_id: str) -> list[InboundRecord]:
        """The submissions with this MessageHeader.id or this Bundle.id."""
        ...

    async def add(self, record: InboundRecord) -> None: ...

    async def carried_before(self, message_id: str, bundle_id: str) -> bool:
        """Whether the gateway carries a message under this MessageHeader id that did not come
        in through this API (one it sent, one in a mailbox, or one in the outbox), or has
        seen either id reach a mailbox (`SeenIds`)."""
        ...


class IdempotencyKeys(Protocol):
    async def get(self, org_id: str, key: str) -> IdempotencyRecord | None: ...


class Contacts(Protocol):
    async def by_idempotency_key(self, registrar_org: str, key: str) -> ContactRecord | None: ...
    async def add(self, record: ContactRecord) -> None: ...


class CaseClosures(Protocol):
    """Cases job centres closed, until retention erased them."""

    async def pending(
        self, jobcenter_org_id: str, case_ref: str, case_kind: str
    ) -> CaseClosure | None:
        """The closure of this case not yet erased, if any."""
        ...

    async def conversations_of(
        self, jobcenter_org_id: str, case_ref: str, case_kind: str, before: dt.datetime
    ) -> int:
        """How many conversations the job centre has in this case, made up to `before`."""
        ...

    async def add(self, closure: CaseClosure) -> bool:
        """Record the closure; False (nothing written) when the case has a pending closure
        already, say one a concurrent request just made."""
        ...


class Cases(Protocol):
    async def by_jobcenter_case_id(
        self, jobcenter_org: str, jobcenter_case_id: str
    ) -> CaseRecord | None: ...

    async def of_citizen(self, jobcenter_org: str, case_ref: str) -> list[CaseRecord]:
        """The job centre's cases of one citizen."""
        ...

    async def add(self, record: CaseRecord) -> None: ...

    async def update(self, record: CaseRecord) -> None:
        """Write the case's changeable fields (psychiatric course, closed on, updated at)."""
        ...


class Treatments(Protocol):
    async def by_idempotency_key(self, psychiatry_org: str, key: str) -> TreatmentRecord | None: ...

    async def add(self, record: TreatmentRecord) -> None: ...


class Coverage(Protocol):
    """Contact over registered cases, kept as a rollup by the store."""

    async def refresh(self, case_refs: Collection[str]) -> None:
        """Decide the cases of these citizens again after a change to their cases,
        treatments or contacts (in this unit of work); a call that changes nothing writes
        nothing."""
        ...


class AuditLog(Protocol):
    async def record_many(self, events: Sequence[AuditEvent]) -> None:
        """Append in the unit of work, unchained: committed with it, chained into the hash
        chain (and onto `gateway.audit`) a moment later, taking no lock other units wait on."""
        ...


class UnitOfWork(Protocol):
    """The repositories of one transaction."""

    @property
    def directory(self) -> Directory: ...
    @property
    def conversations(self) -> Conversations: ...
    @property
    def mailbox(self) -> Mailbox: ...
    @property
    def seen(self) -> SeenIds: ...
    @property
    def stages(self) -> Stages: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def sent(self) -> SentCopies: ...
    @property
    def inbound(self) -> Inbound: ...
    @property
    def idempotency(self) -> IdempotencyKeys: ...
    @property
    def contacts(self) -> Contacts: ...
    @property
    def closures(self) -> CaseClosures: ...
    @property
    def cases(self) -> Cases: ...
    @property
    def treatments(self) -> Treatments: ...
    @property
    def coverage(self) -> Coverage: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def actions(self) -> RequestActions: ...


class Store(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A unit of work committed when the block ends, rolled back if it raises."""
        ...

    def reading(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A unit of work for reads only (no transaction held open between them)."""
        ...

    async def accept_request(self, accepted: AcceptedRequest) -> None:
        """Write an accepted request's records, committed together with those of the
        requests accepted at the same moment. Raises `KeyTaken` when its Idempotency-Key
        was taken meanwhile."""
        ...

    async def wait_for_mail(self, org_id: str, *, replies: bool, seconds: float) -> bool:
        """Wait up to `seconds` until mail waits uncollected for `org_id` (only readable attest
        replies: `replies`), answering as soon as it does (a long-poll). Whether it does; False
        at once when too many requests wait already or the gateway is shutting down."""
        ...


class Relay(Protocol):
    """The outbox relay, as the use cases see it."""

    def admit(self) -> None:
        """Refuse new work (Unavailable) while the outbox is past its bound."""
        ...

    def wake(self) -> None:
        """A transaction just added outbox records: publish them now."""
        ...
