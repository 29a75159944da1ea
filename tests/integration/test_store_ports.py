"""The same cases on the fake store (tests/support/fakes.py) and on the real one
(infra/db/uow.py, on SQLite and PostgreSQL): the behaviours of the ports the use cases rely
on, so that a unit test on the fakes means what it would mean on the database.

Each test gets organisations of its own, so the databases are made once per module.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
import sqlalchemy as sa

from attest_gateway.contracts.contacts import ContactChannel
from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.crypto.sealing import OrgKeys, seal
from attest_gateway.infra.db import directory, tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.ports.records import (
    AcceptedRequest,
    ContactRecord,
    Conversation,
    IdempotencyRecord,
    InboundRecord,
    MailItem,
    SeenId,
    StageRecord,
    WaitingMail,
)
from attest_gateway.ports.store import KeyTaken, Store
from tests.integration.conftest import DB_KINDS
from tests.support.fakes import FakeStore
from tests.support.harness import fresh_database
from tests.support.world import SUITE

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")


@dataclass
class Backend:
    kind: str
    store: Store
    fake: FakeStore | None
    engine_url: str | None = None


@pytest_asyncio.fixture(scope="module", params=["fake", *DB_KINDS])
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Backend]:
    kind: str = request.param
    if kind == "fake":
        fake = FakeStore()
        yield Backend(kind, fake, fake)
        return
    async with fresh_database(kind, tmp_path_factory.mktemp(f"ports-{kind}")) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        writes = GroupCommit(engine)
        try:
            yield Backend(kind, SqlStore(engine, TOPICS, writes), None, url)
        finally:
            await writes.drain()
            await engine.dispose()


@dataclass
class Parties:
    """A job centre and a psychiatry unit of this test's own, with their keys."""

    jc: Organisation
    psy: Organisation
    keys: dict[str, OrgKeys]


async def _register(backend: Backend, org: Organisation, keys: OrgKeys) -> None:
    if backend.fake is not None:
        backend.fake.directory.add(org, keys)
        return
    assert backend.engine_url is not None
    engine = make_engine(backend.engine_url)
    try:
        async with engine.begin() as conn:
            await directory.add_organisation(conn, org, keys, api_key=None, now=NOW)
    finally:
        await engine.dispose()


@pytest_asyncio.fixture
async def parties(backend: Backend) -> Parties:
    tag = uuid.uuid4().hex[:8]
    jc = Organisation(f"jc-{tag}", "Jobcenter", Role.JOBCENTER, None, None, "101", None, None,
                      True, True)  # fmt: skip
    psy = Organisation(f"psy-{tag}", "Psykiatri", Role.PSYCHIATRY, None, None, None, None,
                       "1084", False, True)  # fmt: skip
    keys = {o.id: OrgKeys.generate(o.id, SUITE) for o in (jc, psy)}
    for org in (jc, psy):
        await _register(backend, org, keys[org.id])
    return Parties(jc, psy, keys)


def _conversation(p: Parties, *, at: dt.datetime = NOW) -> Conversation:
    return Conversation(
        id=str(uuid.uuid4()),
        jobcenter_org_id=p.jc.id,
        receiver_org_id=p.psy.id,
        request_message_id=str(uuid.uuid4()),
        attest_type="LÆ 155",
        case_kind="sygedagpenge",
        caseworker_ref="sag-1",
        municipality="101",
        region_code="1084",
        case_ref="ref-1",
        psychiatric_course=True,
        first_day_of_absence=dt.date(2026, 2, 1),
        reply_deadline=dt.date(2026, 5, 1),
        created_at=at,
    )


def _envelope(
    p: Parties,
    conv: Conversation,
    *,
    message_id: str | None = None,
    message_type: MessageType = MessageType.ATTEST_REQUEST,
    to_jobcenter: bool = False,
) -> SealedEnvelope:
    sender, receiver = (p.psy, p.jc) if to_jobcenter else (p.jc, p.psy)
    recipient = p.keys[receiver.id].current_hpke
    signer = p.keys[sender.id].current_signing
    header = EnvelopeHeader(
        message_id=message_id or str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        conversation_id=conv.id,
        message_type=message_type,
        sender=sender.id,
        receiver=receiver.id,
        suite=SUITE,
        recipient_key_id=recipient.key_id,
        signer=sender.id,
        signer_key_id=signer.key_id,
        created_at=NOW,
    )
    return seal(b"{}", header, recipient.public(), signer)


async def _accepted(
    backend: Backend, p: Parties, *, key: str | None = None, at: dt.datetime = NOW
) -> Conversation:
    conv = _conversation(p, at=at)
    envelope = _envelope(p, conv, message_id=conv.request_message_id)
    idempotency = (
        None if key is None else IdempotencyRecord(p.jc.id, key, "fp", conv.id, '{"answer": 1}', at)
    )
    # the kept copy is sealed for another party than the request (the gateway, in service)
    copy = _envelope(p, conv, message_id=conv.request_message_id, to_jobcenter=True)
    await backend.store.accept_request(
        AcceptedRequest(conv, "sealed", idempotency, envelope=envelope, sent_copy=copy)
    )
    return conv


async def test_an_accepted_request_is_read_back_as_it_was_written(
    backend: Backend, parties: Parties
) -> None:
    conv = await _accepted(backend, parties, key="k-1")
    async with backend.store.reading() as uow:
        assert await uow.conversations.get(conv.id) == conv
        assert await uow.conversations.by_request(conv.request_message_id) == conv
        assert await uow.conversations.by_ids([conv.id, conv.id, "nothing"]) == {conv.id: conv}
        assert await uow.conversations.get("nothing") is None
        [entry] = await uow.stages.timeline(conv.id)
        assert (entry.stage, entry.message_id, entry.at) == (
            Stage.SUBMITTED.value,
            conv.request_message_id,
            NOW,
        )
        record = await uow.idempotency.get(parties.jc.id, "k-1")
        assert record == IdempotencyRecord(
            parties.jc.id, "k-1", "fp", conv.id, '{"answer": 1}', NOW
        )
        assert await uow.idempotency.get(parties.psy.id, "k-1") is None
        # the request and its sent copy are carried under its message id
        assert await uow.inbound.carried_before(conv.request_message_id, "no-bundle")
    # the copy kept for resends: sealed for the gateway, routed as the request
    sender, receiver, copy_receiver = await _sent_copy(backend, conv.request_message_id)
    assert (sender, receiver) == (parties.jc.id, parties.psy.id)
    assert copy_receiver == parties.jc.id  # the kept copy, told apart from the routing


async def _sent_copy(backend: Backend, message_id: str) -> tuple[str, str, str]:
    """(sender, receiver) of a sent message as the resend rule reads them, and the receiver
    its kept copy is sealed for (no port reads them: the housekeeping does, with SQL)."""
    if backend.fake is not None:
        copy, _ = backend.fake.state.sent[message_id]
        conv = next(
            c for c in backend.fake.state.conversations.values()
            if c.request_message_id == message_id
        )  # fmt: skip
        return conv.jobcenter_org_id, conv.receiver_org_id, copy.header.receiver
    assert backend.engine_url is not None
    engine = make_engine(backend.engine_url)
    try:
        async with engine.connect() as conn:
            sent = tables.sent_messages
            row = (await conn.execute(sa.select(sent).where(sent.c.message_id == message_id))).one()
    finally:
        await engine.dispose()
    copy = SealedEnvelope.from_json(row.copy)
    return row.sender_org_id, row.receiver_org_id, copy.header.receiver


async def test_a_taken_idempotency_key_is_reported_as_such(
    backend: Backend, parties: Parties
) -> None:
    await _accepted(backend, parties, key="k-1")
    with pytest.raises(KeyTaken):
        await _accepted(backend, parties, key="k-1")
    async with backend.store.reading() as uow:  # nothing of the second was kept
        assert [r.key for r in [await uow.idempotency.get(parties.jc.id, "k-1")] if r] == ["k-1"]


async def test_the_mailbox_keeps_each_message_once_and_hands_out_oldest_first(
    backend: Backend, parties: Parties
) -> None:
    conv = await _accepted(backend, parties)
    minute = dt.timedelta(minutes=1)
    request = _envelope(parties, conv, message_id=conv.request_message_id)
    later = [_envelope(parties, conv, message_type=MessageType.ATTEST_REMINDER) for _ in "ab"]
    async with backend.store.transaction() as uow:
        assert await uow.mailbox.add(MailItem.of(later[0], NOW + 2 * minute))
        assert not await uow.mailbox.add(MailItem.of(later[0], NOW + 3 * minute))
        new = [MailItem.of(request, NOW), *(MailItem.of(e, NOW + 2 * minute) for e in later)]
        assert await uow.mailbox.add_new(new) == {
            request.header.message_id,
            later[1].header.message_id,
        }
        ids = [request.header.message_id, later[0].header.message_id, "nothing"]
        assert await uow.mailbox.known(ids) == set(ids[:2])
    async with backend.store.transaction() as uow:
        waiting = await uow.mailbox.waiting(parties.psy.id, 10)
        tied = sorted(e.header.message_id for e in later)
        assert [i.message_id for i in waiting] == [request.header.message_id, *tied]
        assert waiting[0] == MailItem.of(request, NOW)
        assert [i.message_id for i in await uow.mailbox.waiting(parties.psy.id, 1)] == [
            request.header.message_id
        ]
        assert await uow.mailbox.waiting(parties.jc.id, 10) == []
        # first fetches only; collected ones leave the waiting list, for their receiver only
        first = await uow.mailbox.mark_fetched([request.header.message_id, *tied], NOW)
        assert first == {request.header.message_id, *tied}
        assert await uow.mailbox.mark_fetched([request.header.message_id], NOW + minute) == set()
        assert not await uow.mailbox.collect(
            request.header.message_id, NOW, receiver_org_id=parties.jc.id
        )
        assert await uow.mailbox.collect(
            request.header.message_id, NOW, receiver_org_id=parties.psy.id
        )
        assert not await uow.mailbox.collect(request.header.message_id, NOW)
        assert [i.message_id for i in await uow.mailbox.waiting(parties.psy.id, 10)] == tied
        # a resend's copy is offered again
        await uow.mailbox.replace_envelope(tied[0], request.to_json())
        item = await uow.mailbox.get(tied[0])
        assert item is not None
        assert (item.envelope, item.fetched_at) == (request.to_json(), None)
        assert await uow.mailbox.get("nothing") is None
        # the entry's routing without its envelope, collected or not
        address = await uow.mailbox.address(request.header.message_id)
        assert address is not None
        assert (address.receiver_org_id, address.conversation_id, address.message_type) == (
            parties.psy.id,
            request.header.conversation_id,
            request.header.message_type.value,
        )
        assert address.collected_at == NOW
        still_waiting = await uow.mailbox.address(tied[0])
        assert still_waiting is not None
        assert still_waiting.collected_at is None
        assert await uow.mailbox.address("nothing") is None


async def test_a_read_is_handed_out_in_batches_with_the_event_loop_free_between(
    backend: Backend, parties: Parties
) -> None:
    conv = await _accepted(backend, parties)
    reminder = MessageType.ATTEST_REMINDER
    envelopes = [_envelope(parties, conv, message_type=reminder) for _ in "abcdef"]
    # delivered at 0, 1, 2, 2, 2, 2 s: the second batch ends between tied ones
    at = {
        e.header.message_id: NOW + min(n, 2) * dt.timedelta(seconds=1)
        for n, e in enumerate(envelopes)
    }
    async with backend.store.transaction() as uow:
        await uow.mailbox.add_new([MailItem.of(e, at[e.header.message_id]) for e in envelopes])
        await uow.mailbox.mark_fetched([envelopes[0].header.message_id], NOW)
        assert await uow.mailbox.collect(envelopes[1].header.message_id, NOW)
    waiting = sorted(
        envelopes[:1] + envelopes[2:], key=lambda e: (at[e.header.message_id], e.header.message_id)
    )
    expected = [
        WaitingMail(
            e.header.message_id,
            conv.id,
            reminder.value,
            at[e.header.message_id],
            e is not envelopes[0],
            e.to_json(),
        )
        for e in waiting
    ]
    ran: list[int] = []  # callbacks scheduled as each batch came, once they ran
    before: list[list[int]] = []  # what had run when each batch came
    async with backend.store.transaction() as uow:
        batches: list[list[WaitingMail]] = []
        async for batch in uow.mailbox.waiting_batches(parties.psy.id, 10, 2):
            before.append(list(ran))
            batches.append(list(batch))
            asyncio.get_running_loop().call_soon(ran.append, len(batches))
        assert batches == [expected[:2], expected[2:4], expected[4:]]
        # each batch was read after the event loop had run what waited: each is its own
        # await, not a slice of one answer read at once
        assert before == [[], [1], [1, 2]]
        assert [
            [i.message_id for i in b]
            async for b in uow.mailbox.waiting_batches(parties.psy.id, 3, 2)
        ] == [[e.message_id for e in expected[:2]], [expected[2].message_id]]
        assert [b async for b in uow.mailbox.waiting_batches(parties.jc.id, 10, 2)] == []


async def test_unreadable_replies_come_after_the_readable_ones(
    backend: Backend, parties: Parties
) -> None:
    conv = await _accepted(backend, parties)
    replies = [
        _envelope(parties, conv, message_type=MessageType.ATTEST_REPLY, to_jobcenter=True)
        for _ in range(3)
    ]
    async with backend.store.transaction() as uow:
        for n, reply in enumerate(replies):
            await uow.mailbox.add(MailItem.of(reply, NOW + dt.timedelta(minutes=n)))
        await uow.mailbox.mark_unreadable(replies[0].header.message_id, NOW, "unknown-key")
    async with backend.store.transaction() as uow:
        order = [i.message_id for i in await uow.mailbox.waiting_replies(parties.jc.id, 10)]
        ids = [r.header.message_id for r in replies]
        assert order == [ids[1], ids[2], ids[0]]
        first_two = await uow.mailbox.waiting_replies(parties.jc.id, 2)
        assert [i.message_id for i in first_two] == ids[1:]
        marked = await uow.mailbox.get(ids[0])
        assert marked is not None
        assert (marked.unreadable_at, marked.unreadable_reason) == (NOW, "unknown-key")
        await uow.mailbox.mark_unreadable(ids[0], NOW, None)
        mended = await uow.mailbox.get(ids[0])
        assert mended is not None
        assert (mended.unreadable_at, mended.unreadable_reason) == (None, None)


async def test_a_stage_is_recorded_once(backend: Backend, parties: Parties) -> None:
    conv = await _accepted(backend, parties)
    other = await _accepted(backend, parties)
    minute = dt.timedelta(minutes=1)
    async with backend.store.transaction() as uow:
        record = uow.stages.record
        kwargs = {"message_id": "m-1", "message_type": MessageType.ATTEST_REQUEST}
        assert await record(conv, Stage.IN_MAILBOX, at=NOW + minute, **kwargs)  # type: ignore[arg-type]
        assert not await record(conv, Stage.IN_MAILBOX, at=NOW + 2 * minute, **kwargs)  # type: ignore[arg-type]
        items = [
            StageRecord(conv, Stage.IN_MAILBOX, "m-1", MessageType.ATTEST_REQUEST, NOW),
            StageRecord(conv, Stage.FETCHED, "m-1", MessageType.ATTEST_REQUEST, NOW + 2 * minute),
            StageRecord(other, Stage.FETCHED, "m-2", MessageType.ATTEST_REQUEST, NOW + minute),
        ]
        assert await uow.stages.record_many(items) == 2
        assert await uow.stages.record_many(items) == 0
        timeline = await uow.stages.timeline(conv.id)
    assert [(e.stage, e.at) for e in timeline] == [
        (Stage.SUBMITTED.value, NOW),
        (Stage.IN_MAILBOX.value, NOW + minute),
        (Stage.FETCHED.value, NOW + 2 * minute),
    ]


async def test_a_failed_unit_of_work_leaves_nothing(backend: Backend, parties: Parties) -> None:
    conv = await _accepted(backend, parties)
    envelope = _envelope(parties, conv)

    async def refused_after_a_write() -> None:
        async with backend.store.transaction() as uow:
            await uow.mailbox.add(MailItem.of(envelope, NOW))
            raise RuntimeError("refused after the write")

    with pytest.raises(RuntimeError):
        await refused_after_a_write()
    async with backend.store.reading() as uow:
        assert await uow.mailbox.get(envelope.header.message_id) is None


async def test_submissions_are_found_by_message_id_or_bundle_id(
    backend: Backend, parties: Parties
) -> None:
    conv = await _accepted(backend, parties)
    reply = MessageType.ATTEST_REPLY.value
    record = InboundRecord(
        "in-" + conv.id, "b-" + conv.id, parties.psy.id, conv.id, reply, '{"ok": 1}', NOW
    )
    async with backend.store.transaction() as uow:
        await uow.inbound.add(record)
    async with backend.store.reading() as uow:
        assert await uow.inbound.seen(record.message_id, "other") == [record]
        assert await uow.inbound.seen("other", record.bundle_id) == [record]
        assert await uow.inbound.seen("other", "other") == []
        # a submission is not "carried before" by itself: it came in through the API
        assert not await uow.inbound.carried_before(record.message_id, "no-bundle")
        assert not await uow.inbound.carried_before("nothing", "nothing")


async def test_contacts_are_found_by_their_idempotency_key(
    backend: Backend, parties: Parties
) -> None:
    contact = ContactRecord(
        contact_id=str(uuid.uuid4()),
        jobcenter_org=parties.jc.id,
        psychiatry_org=parties.psy.id,
        case_ref="ref-1",
        case_kind="sygedagpenge",
        first_day_of_absence=dt.date(2026, 2, 1),
        contact_date=dt.date(2026, 2, 27),
        channel=ContactChannel.PHONE.value,
        idempotency_key="meeting-1",
        response='{"contact_id": "x"}',
        created_at=NOW,
        citizen_sealed="sealed",
        registrar_org=parties.jc.id,
    )
    async with backend.store.transaction() as uow:
        await uow.contacts.add(contact)
    async with backend.store.reading() as uow:
        assert await uow.contacts.by_idempotency_key(parties.jc.id, "meeting-1") == contact
        assert await uow.contacts.by_idempotency_key(parties.jc.id, "meeting-2") is None
        assert await uow.contacts.by_idempotency_key(parties.psy.id, "meeting-1") is None


async def test_the_directory_lists_usable_keys(backend: Backend, parties: Parties) -> None:
    keys = parties.keys[parties.psy.id]
    async with backend.store.reading() as uow:
        d = uow.directory
        assert await d.org_by_id(parties.psy.id) == parties.psy
        current = await d.current_hpke_key(parties.psy.id, NOW)
        assert current is not None
        assert current.key_id == keys.current_hpke.key_id
        assert await d.usable_signing_key_ids(parties.psy.id, NOW) == [keys.current_signing.key_id]
        assert await d.hpke_key_owner(keys.current_hpke.key_id) == parties.psy.id
        assert await d.hpke_key_owner(keys.current_signing.key_id) is None
        signing = await d.signing_key(keys.current_signing.key_id)
        assert signing is not None
        assert signing.org_id == parties.psy.id
        assert await d.signing_key(keys.current_hpke.key_id) is None


async def test_seen_ids_keep_the_first_entry_and_count_as_carried(
    backend: Backend, parties: Parties
) -> None:
    conv = await _accepted(backend, parties)
    first = _envelope(parties, conv, message_type=MessageType.ATTEST_REMINDER)
    message, bundle = SeenId.of(first, NOW)
    resend = SeenId.of(first, NOW + dt.timedelta(hours=1))
    async with backend.store.transaction() as uow:
        await uow.seen.add([message, bundle])
        await uow.seen.add(list(resend))  # known already: the first entries stay
    async with backend.store.reading() as uow:
        h = first.header
        found = await uow.seen.find([h.message_id, "nothing"], [h.bundle_id, "nothing"])
        assert sorted(found, key=lambda e: e.kind) == [bundle, message]
        assert await uow.seen.find([], []) == []
        assert await uow.seen.find([h.bundle_id], [h.message_id]) == []  # kinds kept apart
        assert await uow.inbound.carried_before(h.message_id, "other")
        assert await uow.inbound.carried_before("other", h.bundle_id)
