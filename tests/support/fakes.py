"""In-memory implementations of the use cases' ports (ports/store.py), for unit tests that run
in milliseconds: no database, no broker.

`FakeStore` keeps every table family as a dict (or a list for the outbox and the audit log)
in a `FakeState`; a unit of work works on a copy and puts it back when the block ends
without an error, so a refused use case leaves nothing behind, as a rolled-back
transaction would. The behaviours that matter on both sides (idempotent inserts, first
fetches, first stages, the waiting order, a taken Idempotency-Key) are run on this store and
on the real one by tests/integration/test_store_ports.py.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from attest_gateway.contracts.contacts import ContactEvent
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.contracts.webhooks import DeliveryStatus
from attest_gateway.core.audit import AuditEvent
from attest_gateway.core.directory import Organisation, Role, VerifyKey
from attest_gateway.core.errors import ErrorCode, Unavailable
from attest_gateway.crypto.sealing import OrgKeys, PublicHpkeKey
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
from attest_gateway.ports.webhooks import Attempt, DeliveryRecord, EndpointRecord


@dataclass(frozen=True, slots=True)
class StageEventRecord:
    """A stage event put in the outbox (what `gateway.tracking` would carry)."""

    conversation_id: str
    stage: Stage
    message_id: str
    message_type: MessageType
    at: dt.datetime
    detail: str | None


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One record waiting for the relay: an envelope, a stage event or a contact event."""

    payload: SealedEnvelope | StageEventRecord | ContactEvent
    created_at: dt.datetime
    delivered_at: dt.datetime | None = None

    @property
    def message_id(self) -> str | None:
        return self.payload.header.message_id if isinstance(self.payload, SealedEnvelope) else None


@dataclass(frozen=True, slots=True)
class _HpkeEntry:
    org_id: str
    public: PublicHpkeKey
    validity: VerifyKey  # its revocation and expiry (public_key unused)


class FakeDirectory:
    """Organisations and their public keys, newest key last."""

    def __init__(self) -> None:
        self.orgs: dict[str, Organisation] = {}
        self.hpke: dict[str, _HpkeEntry] = {}
        self.signing: dict[str, VerifyKey] = {}

    def add(self, org: Organisation, keys: OrgKeys | None = None) -> None:
        """Register an organisation with the public halves of its keys (usable for good)."""
        self.orgs[org.id] = org
        if keys is None:
            return
        for h in keys.hpke_keys:
            validity = VerifyKey(h.key_id, org.id, h.public_encoded, None, None)
            self.hpke[h.key_id] = _HpkeEntry(org.id, h.public(), validity)
        for s in keys.signing_keys:
            self.signing[s.key_id] = VerifyKey(s.key_id, org.id, s.public_encoded, None, None)

    def revoke(self, key_id: str, at: dt.datetime) -> None:
        if key_id in self.signing:
            self.signing[key_id] = replace(self.signing[key_id], revoked_at=at)
        if key_id in self.hpke:
            entry = self.hpke[key_id]
            self.hpke[key_id] = replace(entry, validity=replace(entry.validity, revoked_at=at))

    def disable(self, org_id: str) -> None:
        self.orgs[org_id] = replace(self.orgs[org_id], enabled=False)

    async def org_by_id(self, org_id: str) -> Organisation | None:
        return self.orgs.get(org_id)

    async def org_by_sor(self, sor: str) -> Organisation | None:
        return next((o for o in self.orgs.values() if o.sor == sor), None)

    async def org_by_ydernummer(self, ydernummer: str) -> Organisation | None:
        return next((o for o in self.orgs.values() if o.ydernummer == ydernummer), None)

    async def jobcenter_of(self, kommunekode: str) -> Organisation | None:
        found = (
            o
            for o in sorted(self.orgs.values(), key=lambda o: o.id)
            if o.kommunekode == kommunekode and o.role is Role.JOBCENTER and o.enabled
        )
        return next(found, None)

    async def current_hpke_key(self, org_id: str, at: dt.datetime) -> PublicHpkeKey | None:
        usable = [
            e.public for e in self.hpke.values() if e.org_id == org_id and e.validity.usable(at)
        ]
        return usable[-1] if usable else None

    async def usable_signing_key_ids(self, org_id: str, at: dt.datetime) -> list[str]:
        keys = [k for k in self.signing.values() if k.org_id == org_id and k.usable(at)]
        return [k.key_id for k in reversed(keys)]

    async def hpke_key_owner(self, key_id: str) -> str | None:
        entry = self.hpke.get(key_id)
        return entry.org_id if entry is not None else None

    async def signing_key(self, key_id: str) -> VerifyKey | None:
        return self.signing.get(key_id)


@dataclass
class FakeState:
    """The fake store's tables."""

    conversations: dict[str, Conversation] = field(default_factory=dict)
    citizens: dict[str, str] = field(default_factory=dict)  # conversation id → sealed CPR
    mailbox: dict[str, MailItem] = field(default_factory=dict)
    seen: dict[tuple[str, str], SeenId] = field(default_factory=dict)  # (kind, id) → entry
    stages: dict[tuple[str, str], StageEntry] = field(default_factory=dict)
    outbox: list[OutboxRecord] = field(default_factory=list)
    sent: dict[str, tuple[SealedEnvelope, dt.datetime | None]] = field(default_factory=dict)
    inbound: dict[str, InboundRecord] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    contacts: dict[str, ContactRecord] = field(default_factory=dict)
    closures: dict[str, CaseClosure] = field(default_factory=dict)  # not yet erased, by id
    cases: dict[str, CaseRecord] = field(default_factory=dict)
    treatments: dict[str, TreatmentRecord] = field(default_factory=dict)
    audit: list[AuditEvent] = field(default_factory=list)
    # the citizens whose coverage decisions were asked to be refreshed, in order
    coverage_refreshed: list[str] = field(default_factory=list)
    actions: dict[tuple[str, str, str], RequestAction] = field(default_factory=dict)

    def envelopes(self) -> list[SealedEnvelope]:
        """The envelopes in the outbox, in the order they were put there."""
        return [r.payload for r in self.outbox if isinstance(r.payload, SealedEnvelope)]

    def stage_events(self) -> list[StageEventRecord]:
        return [r.payload for r in self.outbox if isinstance(r.payload, StageEventRecord)]

    def contact_events(self) -> list[ContactEvent]:
        return [r.payload for r in self.outbox if isinstance(r.payload, ContactEvent)]


class _Repo:
    def __init__(self, state: FakeState) -> None:
        self.s = state


class FakeConversations(_Repo):
    async def get(self, conversation_id: str) -> Conversation | None:
        return self.s.conversations.get(conversation_id)

    async def lock(self, conversation_id: str) -> None:
        pass  # the fake does not model concurrent transactions (the last commit wins)

    async def by_ids(self, ids: Iterable[str]) -> dict[str, Conversation]:
        return {i: self.s.conversations[i] for i in set(ids) if i in self.s.conversations}

    async def by_request(self, message_id: str) -> Conversation | None:
        found = (c for c in self.s.conversations.values() if c.request_message_id == message_id)
        return next(found, None)

    async def of_jobcenter(
        self,
        jobcenter_org_id: str,
        *,
        attest_type: str | None,
        before: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[Conversation]:
        found = sorted(
            (
                c
                for c in self.s.conversations.values()
                if c.jobcenter_org_id == jobcenter_org_id
                and (attest_type is None or c.attest_type == attest_type)
                and (before is None or (c.created_at, c.id) < before)
            ),
            key=lambda c: (c.created_at, c.id),
            reverse=True,
        )
        return found[:limit]

    async def set_deadline(self, conversation_id: str, reply_deadline: dt.date) -> None:
        conv = self.s.conversations[conversation_id]
        self.s.conversations[conversation_id] = replace(conv, reply_deadline=reply_deadline)


class FakeMailbox(_Repo):
    def _oldest_first(self, items: Iterable[MailItem]) -> list[MailItem]:
        return sorted(items, key=lambda i: (i.delivered_at, i.message_id))

    async def get(self, message_id: str) -> MailItem | None:
        return self.s.mailbox.get(message_id)

    async def address(self, message_id: str) -> MailAddress | None:
        item = self.s.mailbox.get(message_id)
        if item is None:
            return None
        return MailAddress(
            message_id=item.message_id,
            receiver_org_id=item.receiver_org_id,
            sender_org_id=item.sender_org_id,
            conversation_id=item.conversation_id,
            message_type=item.message_type,
            collected_at=item.collected_at,
        )

    async def waiting(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        items = (
            i
            for i in self.s.mailbox.values()
            if i.receiver_org_id == receiver_org_id and i.collected_at is None
        )
        return self._oldest_first(items)[:limit]

    async def waiting_batches(
        self, receiver_org_id: str, limit: int, batch: int
    ) -> AsyncIterator[list[WaitingMail]]:
        items = [
            WaitingMail(
                i.message_id,
                i.conversation_id,
                i.message_type,
                i.delivered_at,
                i.fetched_at is None,
                i.envelope,
            )
            for i in await self.waiting(receiver_org_id, limit)
        ]
        for start in range(0, len(items), batch):
            if start:
                await asyncio.sleep(0)  # as the store's cursor: the next batch is an await
            yield items[start : start + batch]

    async def waiting_replies(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        replies = [
            i
            for i in await self.waiting(receiver_org_id, len(self.s.mailbox))
            if i.message_type == MessageType.ATTEST_REPLY.value
        ]
        readable = [i for i in replies if i.unreadable_at is None]
        unreadable = [i for i in replies if i.unreadable_at is not None]
        return (readable + unreadable)[:limit]

    async def waiting_refusals(self, receiver_org_id: str, limit: int) -> list[MailItem]:
        refusals = {
            (cid, e.message_id)
            for (cid, stage), e in self.s.stages.items()
            if stage == Stage.REFUSED.value
        }
        return [
            i
            for i in await self.waiting(receiver_org_id, len(self.s.mailbox))
            if i.message_type == MessageType.ACKNOWLEDGEMENT.value
            and (i.conversation_id, i.message_id) in refusals
        ][:limit]

    async def known(self, message_ids: Sequence[str]) -> set[str]:
        return {i for i in message_ids if i in self.s.mailbox}

    async def add(self, item: MailItem) -> bool:
        if item.message_id in self.s.mailbox:
            return False
        self.s.mailbox[item.message_id] = item
        return True

    async def add_new(self, items: Sequence[MailItem]) -> set[str]:
        return {i.message_id for i in items if await self.add(i)}

    async def replace_envelope(self, message_id: str, envelope: bytes) -> None:
        item = self.s.mailbox[message_id]
        self.s.mailbox[message_id] = replace(item, envelope=envelope, fetched_at=None)

    async def mark_fetched(self, message_ids: Iterable[str], at: dt.datetime) -> set[str]:
        first = set()
        for message_id in set(message_ids):
            item = self.s.mailbox.get(message_id)
            if item is not None and item.fetched_at is None:
                self.s.mailbox[message_id] = replace(item, fetched_at=at)
                first.add(message_id)
        return first

    async def mark_unreadable(self, message_id: str, at: dt.datetime, reason: str | None) -> None:
        item = self.s.mailbox[message_id]
        self.s.mailbox[message_id] = replace(
            item, unreadable_at=at if reason else None, unreadable_reason=reason
        )

    async def collect(
        self, message_id: str, at: dt.datetime, *, receiver_org_id: str | None = None
    ) -> bool:
        item = self.s.mailbox.get(message_id)
        if item is None or item.collected_at is not None:
            return False
        if receiver_org_id is not None and item.receiver_org_id != receiver_org_id:
            return False
        self.s.mailbox[message_id] = replace(item, collected_at=at)
        return True


class FakeSeenIds(_Repo):
    async def find(self, message_ids: Sequence[str], bundle_ids: Sequence[str]) -> list[SeenId]:
        keys = [("message", i) for i in message_ids] + [("bundle", i) for i in bundle_ids]
        return [self.s.seen[k] for k in keys if k in self.s.seen]

    async def add(self, items: Sequence[SeenId]) -> None:
        for item in items:
            self.s.seen.setdefault((item.kind, item.id), item)


class FakeStages(_Repo):
    async def timeline(self, conversation_id: str) -> list[StageEntry]:
        entries = [e for (cid, _), e in self.s.stages.items() if cid == conversation_id]
        return sorted(entries, key=lambda e: e.at)

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
        if envelope is not None:
            self.s.outbox.append(OutboxRecord(envelope, at))
        if (conv.id, stage.value) in self.s.stages:
            return False
        self.s.stages[(conv.id, stage.value)] = StageEntry(stage.value, message_id, at, detail)
        event = StageEventRecord(conv.id, stage, message_id, message_type, at, detail)
        self.s.outbox.append(OutboxRecord(event, at))
        return True

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
        event = StageEventRecord(conv.id, stage, message_id, message_type, at, detail)
        self.s.outbox.append(OutboxRecord(event, at))

    async def timelines(self, conversation_ids: Sequence[str]) -> dict[str, list[StageEntry]]:
        return {cid: await self.timeline(cid) for cid in conversation_ids}

    async def record_many(self, items: Sequence[StageRecord]) -> int:
        new = 0
        for i in sorted(items, key=lambda i: (i.conv.id, i.stage.value)):
            new += await self.record(
                i.conv, i.stage, message_id=i.message_id, message_type=i.message_type, at=i.at
            )
        return new


class FakeOutbox(_Repo):
    def __init__(self, state: FakeState, busy: set[str]) -> None:
        super().__init__(state)
        self._busy = busy  # message ids whose records another transaction holds
        self._claimed: set[str] = set()

    async def add_envelope(self, envelope: SealedEnvelope, at: dt.datetime) -> None:
        self.s.outbox.append(OutboxRecord(envelope, at))

    async def add_contact_event(self, event: ContactEvent, at: dt.datetime) -> None:
        self.s.outbox.append(OutboxRecord(event, at))

    def _mark(self, message_ids: set[str], at: dt.datetime) -> None:
        self.s.outbox = [
            replace(r, delivered_at=at)
            if r.message_id in message_ids and r.delivered_at is None
            else r
            for r in self.s.outbox
        ]

    async def mark_delivered(self, message_id: str, at: dt.datetime) -> None:
        self._mark({message_id}, at)

    async def claim_undelivered(self, message_ids: Sequence[str]) -> set[str]:
        undelivered = {
            r.message_id
            for r in self.s.outbox
            if r.message_id in set(message_ids) and r.delivered_at is None
        }
        self._claimed |= undelivered - self._busy
        return {m for m in undelivered if m in self._busy}

    async def mark_claimed_delivered(self, message_ids: Iterable[str], at: dt.datetime) -> None:
        self._mark(set(message_ids) & self._claimed, at)


class FakeRequestActions(_Repo):
    async def get(self, conversation_id: str, action: str, key: str) -> RequestAction | None:
        return self.s.actions.get((conversation_id, action, key))

    async def of(self, conversation_id: str) -> list[RequestAction]:
        found = [a for a in self.s.actions.values() if a.conversation_id == conversation_id]
        return sorted(found, key=lambda a: a.at)

    async def add(self, record: RequestAction) -> bool:
        key = (record.conversation_id, record.action, record.key)
        if key in self.s.actions:
            return False
        self.s.actions[key] = record
        return True


class FakeSentCopies(_Repo):
    async def copy_of(self, message_id: str) -> bytes | None:
        found = self.s.sent.get(message_id)
        return found[0].to_json() if found is not None else None

    async def acknowledge(self, message_id: str, at: dt.datetime) -> None:
        if message_id in self.s.sent and self.s.sent[message_id][1] is None:
            self.s.sent[message_id] = (self.s.sent[message_id][0], at)


class FakeInbound(_Repo):
    async def seen(self, message_id: str, bundle_id: str) -> list[InboundRecord]:
        return [
            r
            for r in self.s.inbound.values()
            if r.message_id == message_id or r.bundle_id == bundle_id
        ]

    async def add(self, record: InboundRecord) -> None:
        clash = record.message_id in self.s.inbound or any(
            r.bundle_id == record.bundle_id for r in self.s.inbound.values()
        )
        if clash:
            raise ValueError("unique key taken in inbound_messages")
        self.s.inbound[record.message_id] = record

    async def carried_before(self, message_id: str, bundle_id: str) -> bool:
        return (
            message_id in self.s.sent
            or message_id in self.s.mailbox
            or any(r.message_id == message_id for r in self.s.outbox)
            or ("message", message_id) in self.s.seen
            or ("bundle", bundle_id) in self.s.seen
        )


class FakeIdempotencyKeys(_Repo):
    async def get(self, org_id: str, key: str) -> IdempotencyRecord | None:
        return self.s.idempotency.get((org_id, key))


class FakeContacts(_Repo):
    async def by_idempotency_key(self, registrar_org: str, key: str) -> ContactRecord | None:
        found = (
            c
            for c in self.s.contacts.values()
            if c.registrar_org == registrar_org and c.idempotency_key == key
        )
        return next(found, None)

    async def add(self, record: ContactRecord) -> None:
        self.s.contacts[record.contact_id] = record


class FakeCaseClosures(_Repo):
    async def pending(
        self, jobcenter_org_id: str, case_ref: str, case_kind: str
    ) -> CaseClosure | None:
        key = (jobcenter_org_id, case_ref, case_kind)
        found = (
            c
            for c in self.s.closures.values()
            if (c.jobcenter_org_id, c.case_ref, c.case_kind) == key
        )
        return next(found, None)

    async def conversations_of(
        self, jobcenter_org_id: str, case_ref: str, case_kind: str, before: dt.datetime
    ) -> int:
        return sum(
            1
            for c in self.s.conversations.values()
            if (c.jobcenter_org_id, c.case_ref, c.case_kind)
            == (jobcenter_org_id, case_ref, case_kind)
            and c.created_at <= before
        )

    async def add(self, closure: CaseClosure) -> bool:
        if await self.pending(closure.jobcenter_org_id, closure.case_ref, closure.case_kind):
            return False
        self.s.closures[closure.id] = closure
        return True


class FakeCases(_Repo):
    async def by_jobcenter_case_id(
        self, jobcenter_org: str, jobcenter_case_id: str
    ) -> CaseRecord | None:
        found = (
            c
            for c in self.s.cases.values()
            if (c.jobcenter_org, c.jobcenter_case_id) == (jobcenter_org, jobcenter_case_id)
        )
        return next(found, None)

    async def of_citizen(self, jobcenter_org: str, case_ref: str) -> list[CaseRecord]:
        return [
            c
            for c in self.s.cases.values()
            if (c.jobcenter_org, c.case_ref) == (jobcenter_org, case_ref)
        ]

    async def add(self, record: CaseRecord) -> None:
        self.s.cases[record.case_id] = record

    async def update(self, record: CaseRecord) -> None:
        old = self.s.cases[record.case_id]
        self.s.cases[record.case_id] = replace(
            old,
            psychiatric_course=record.psychiatric_course,
            closed_on=record.closed_on,
            updated_at=record.updated_at,
        )


class FakeTreatments(_Repo):
    async def by_idempotency_key(self, psychiatry_org: str, key: str) -> TreatmentRecord | None:
        found = (
            t
            for t in self.s.treatments.values()
            if t.psychiatry_org == psychiatry_org and t.idempotency_key == key
        )
        return next(found, None)

    async def add(self, record: TreatmentRecord) -> None:
        self.s.treatments[record.treatment_id] = record


class FakeAuditLog(_Repo):
    async def record_many(self, events: Sequence[AuditEvent]) -> None:
        self.s.audit.extend(events)


class FakeCoverage(_Repo):
    """No rollup in memory: the citizens asked for are recorded."""

    async def refresh(self, case_refs: Collection[str]) -> None:
        self.s.coverage_refreshed.extend(sorted(set(case_refs)))


class FakeUnitOfWork:
    def __init__(self, state: FakeState, directory: FakeDirectory, busy: set[str]) -> None:
        self.state = state
        self.directory = directory
        self.conversations = FakeConversations(state)
        self.mailbox = FakeMailbox(state)
        self.seen = FakeSeenIds(state)
        self.stages = FakeStages(state)
        self.outbox = FakeOutbox(state, busy)
        self.sent = FakeSentCopies(state)
        self.inbound = FakeInbound(state)
        self.idempotency = FakeIdempotencyKeys(state)
        self.contacts = FakeContacts(state)
        self.closures = FakeCaseClosures(state)
        self.cases = FakeCases(state)
        self.treatments = FakeTreatments(state)
        self.coverage = FakeCoverage(state)
        self.audit = FakeAuditLog(state)
        self.actions = FakeRequestActions(state)


class FakeStore:
    """The store in memory. `busy`: message ids whose outbox records another transaction
    holds (what SKIP LOCKED would pass over)."""

    def __init__(self, directory: FakeDirectory | None = None) -> None:
        self.state = FakeState()
        self.directory = directory or FakeDirectory()
        self.busy: set[str] = set()
        self.commits = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeUnitOfWork]:
        work = copy.deepcopy(self.state)
        yield FakeUnitOfWork(work, self.directory, self.busy)
        self.state = work  # reached only when the block did not raise: committed
        self.commits += 1

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[FakeUnitOfWork]:
        yield FakeUnitOfWork(copy.deepcopy(self.state), self.directory, self.busy)

    async def wait_for_mail(self, org_id: str, *, replies: bool, seconds: float) -> bool:
        """No waiting in memory: whether mail waits now."""
        return any(
            m.receiver_org_id == org_id
            and m.collected_at is None
            and (not replies or m.message_type == MessageType.ATTEST_REPLY.value)
            for m in self.state.mailbox.values()
        )

    async def accept_request(self, accepted: AcceptedRequest) -> None:
        conv, s = accepted.conv, self.state
        taken = (
            conv.id in s.conversations
            or any(
                c.request_message_id == conv.request_message_id for c in s.conversations.values()
            )
            or (
                accepted.idempotency is not None
                and (accepted.idempotency.org_id, accepted.idempotency.key) in s.idempotency
            )
        )
        if taken:
            error = ValueError("unique key taken")
            if accepted.idempotency is None:
                raise error
            raise KeyTaken(error)
        async with self.transaction() as uow:
            uow.state.conversations[conv.id] = conv
            uow.state.citizens[conv.id] = accepted.citizen_sealed
            if (key := accepted.idempotency) is not None:
                uow.state.idempotency[(key.org_id, key.key)] = key
            uow.state.sent[conv.request_message_id] = (accepted.sent_copy, None)
            h = accepted.envelope.header
            await uow.stages.record(
                conv,
                Stage.SUBMITTED,
                message_id=h.message_id,
                message_type=h.message_type,
                at=conv.created_at,
                envelope=accepted.envelope,
            )
            if accepted.audit is not None:
                await uow.audit.record_many([accepted.audit])


class FakeRelay:
    """Counts the wake-ups; refuses work (as a full outbox does) while `full`."""

    def __init__(self) -> None:
        self.full = False
        self.wakes = 0

    def admit(self) -> None:
        if self.full:
            raise Unavailable(
                ErrorCode.OUTBOX_FULL, "the gateway cannot forward messages right now; retry later"
            )

    def wake(self) -> None:
        self.wakes += 1


class FakeWebhookStore:
    """ports/webhooks.py `WebhookStore` in memory: endpoints and deliveries by id."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointRecord] = {}
        self.deliveries: dict[str, DeliveryRecord] = {}

    async def add_endpoint(self, endpoint: EndpointRecord) -> None:
        self.endpoints[endpoint.id] = endpoint

    async def endpoint(self, endpoint_id: str) -> EndpointRecord | None:
        found = self.endpoints.get(endpoint_id)
        return found if found is not None and found.removed_at is None else None

    async def endpoints_of(self, org_ids: Iterable[str]) -> list[EndpointRecord]:
        wanted = set(org_ids)
        return [e for e in self.endpoints.values() if e.org_id in wanted and e.removed_at is None]

    async def remove_endpoint(self, endpoint_id: str, at: dt.datetime) -> bool:
        if await self.endpoint(endpoint_id) is None:
            return False
        self.endpoints[endpoint_id] = replace(self.endpoints[endpoint_id], removed_at=at)
        for d in list(self.deliveries.values()):
            if d.endpoint_id == endpoint_id and d.status is DeliveryStatus.PENDING:
                self.deliveries[d.id] = replace(
                    d, status=DeliveryStatus.FAILED, next_attempt_at=None, last_error="removed"
                )
        return True

    async def rotate_secret(
        self, endpoint_id: str, secret: str, previous_until: dt.datetime
    ) -> bool:
        found = await self.endpoint(endpoint_id)
        if found is None:
            return False
        self.endpoints[endpoint_id] = replace(
            found, secret=secret, previous_secret=found.secret, previous_until=previous_until
        )
        return True

    async def add_deliveries(self, deliveries: Sequence[DeliveryRecord]) -> set[str]:
        added: set[str] = set()
        for d in deliveries:
            if d.id not in self.deliveries:
                self.deliveries[d.id] = d
                added.add(d.id)
        return added

    async def delivery(self, delivery_id: str) -> DeliveryRecord | None:
        return self.deliveries.get(delivery_id)

    async def deliveries_of(
        self, org_id: str, *, status: DeliveryStatus | None, limit: int
    ) -> list[DeliveryRecord]:
        found = [
            d
            for d in self.deliveries.values()
            if d.org_id == org_id and (status is None or d.status is status)
        ]
        return sorted(found, key=lambda d: d.created_at, reverse=True)[:limit]

    async def due(self, now: dt.datetime, limit: int) -> list[DeliveryRecord]:
        found = [
            d
            for d in self.deliveries.values()
            if d.status is DeliveryStatus.PENDING
            and d.next_attempt_at is not None
            and d.next_attempt_at <= now
        ]
        return sorted(found, key=lambda d: (d.next_attempt_at or now, d.id))[:limit]

    async def claim(self, delivery: DeliveryRecord, until: dt.datetime) -> bool:
        current = self.deliveries.get(delivery.id)
        if (
            current is None
            or current.status is not DeliveryStatus.PENDING
            or current.next_attempt_at != delivery.next_attempt_at
        ):
            return False
        self.deliveries[delivery.id] = replace(current, next_attempt_at=until)
        return True

    async def record_attempt(self, delivery_id: str, attempt: Attempt) -> None:
        d = self.deliveries[delivery_id]
        if d.status is not DeliveryStatus.PENDING:
            return
        self.deliveries[delivery_id] = replace(
            d,
            attempts=d.attempts + 1,
            status=attempt.status,
            last_attempt_at=attempt.at,
            last_status_code=attempt.status_code,
            last_error=attempt.error,
            next_attempt_at=attempt.next_attempt_at,
            delivered_at=attempt.at if attempt.status is DeliveryStatus.DELIVERED else None,
        )

    async def redeliver(self, delivery_id: str, now: dt.datetime, give_up_at: dt.datetime) -> bool:
        d = self.deliveries.get(delivery_id)
        if d is None:
            return False
        self.deliveries[delivery_id] = replace(
            d,
            status=DeliveryStatus.PENDING,
            next_attempt_at=now,
            give_up_at=give_up_at,
            delivered_at=None,
        )
        return True
