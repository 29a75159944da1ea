"""The job centre's use cases on the fake ports: request an attest, its status, the inbox
read and the acknowledgement of a reply, with their refusals."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
import pytest

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core import audit
from attest_gateway.core.errors import InvalidInput, NotPermitted, Replay, Unavailable, Unknown
from attest_gateway.crypto import pseudonyms
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.ports.records import MailItem
from attest_gateway.services import jobcenter
from tests.support.fakes import FakeDirectory, FakeStore, FakeUnitOfWork
from tests.support.world import CPR, GATEWAY, JC, PSY, World, make_world

DEMO = {o.id: o for o in DEMO_ORGS}


@pytest.fixture
def world() -> World:
    return make_world()


async def test_a_request_is_sealed_for_the_receiver_and_stored_with_its_records(
    world: World,
) -> None:
    accepted, created = await world.request_attest()
    assert created
    state = world.store.state
    conv = state.conversations[accepted.conversation_id]
    assert (conv.jobcenter_org_id, conv.receiver_org_id) == (JC, PSY)
    assert conv.request_message_id == accepted.message_id
    assert conv.case_ref == pseudonyms.case_ref(CPR, world.pseudonym_key)
    assert conv.region_code == "1084"  # København's region
    envelope = world.request_in_outbox(conv.id)
    assert (envelope.header.sender, envelope.header.receiver) == (JC, PSY)
    assert envelope.header.signer == GATEWAY
    bundle = world.opened(envelope, PSY)  # the receiver opens it with its own key
    assert bundle.type == "message"
    # the copy for resends is sealed to the gateway, the CPR number only as ciphertext
    copy, acknowledged = state.sent[accepted.message_id]
    assert copy.header.receiver == GATEWAY
    assert acknowledged is None
    assert CPR not in state.citizens[conv.id]
    assert [e.stage for e in state.stage_events()] == [Stage.SUBMITTED]
    assert accepted.status_url == jobcenter.status_url(conv.id)
    assert world.relay.wakes == 1


async def test_the_same_idempotency_key_answers_the_first_answer(world: World) -> None:
    first, created = await world.request_attest(idempotency_key="k-1")
    again, created_again = await world.request_attest(idempotency_key="k-1")
    assert (created, created_again) == (True, False)
    assert again == first
    assert len(world.store.state.conversations) == 1


async def test_an_idempotency_key_reused_for_another_request_is_a_conflict(world: World) -> None:
    await world.request_attest(idempotency_key="k-1")
    with pytest.raises(Replay) as caught:
        await world.request_attest(idempotency_key="k-1", caseworker_ref="another-case")
    assert caught.value.code == "idempotency-key-reused"


class _RacingStore(FakeStore):
    """A store whose first read misses the Idempotency-Key another request is writing
    meanwhile: the write then finds the key taken."""

    def __init__(self, directory: FakeDirectory) -> None:
        super().__init__(directory)
        self.reads = 0

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[FakeUnitOfWork]:
        self.reads += 1
        state = copy.deepcopy(self.state)
        if self.reads == 1:
            state.idempotency = {}
        yield FakeUnitOfWork(state, self.directory, self.busy)


async def test_a_key_taken_at_the_same_moment_answers_as_its_replay(world: World) -> None:
    first, _ = await world.request_attest(idempotency_key="k-1")
    racing = _RacingStore(world.directory)
    racing.state = world.store.state
    world.store = racing
    again, created = await world.request_attest(idempotency_key="k-1")
    assert (again, created) == (first, False)
    assert racing.reads == 2  # the replay was read after the write failed
    assert len(racing.state.conversations) == 1


@pytest.mark.parametrize(
    ("overrides", "error", "code"),
    [
        ({"jobcenter_gln": DEMO["jc-aarhus"].gln}, NotPermitted, "jobcenter-mismatch"),
        ({"municipality": "751"}, NotPermitted, "jobcenter-mismatch"),
        ({"attest_type": "LÆ 999"}, InvalidInput, "unknown-attest-type"),
        ({"receiver": {"sor": "999999999999999"}}, InvalidInput, "unknown-receiver"),
        ({"receiver": {"sor": "101181000016003"}}, InvalidInput, "unknown-receiver"),
        ({"attest_type": "LÆ 135"}, InvalidInput, "receiver-cannot-issue"),
        ({"first_day_of_absence": "2027-06-01"}, InvalidInput, "invalid-first-day-of-absence"),
        ({"reply_deadline": "2026-03-02"}, InvalidInput, "invalid-reply-deadline"),
        ({"reply_deadline": "2027-06-01"}, InvalidInput, "invalid-reply-deadline"),
    ],
)
async def test_requests_that_are_refused(
    world: World, overrides: dict[str, Any], error: type[Exception], code: str
) -> None:
    with pytest.raises(error) as caught:
        await world.request_attest(**overrides)
    assert getattr(caught.value, "code", None) == code
    assert world.store.state.conversations == {}
    assert world.store.state.outbox == []


async def test_a_receiver_without_a_usable_key_is_refused(world: World) -> None:
    world.directory.revoke(world.keys(PSY).current_hpke.key_id, world.clock.now())
    with pytest.raises(InvalidInput) as caught:
        await world.request_attest()
    assert caught.value.code == "receiver-has-no-key"


async def test_a_full_outbox_refuses_new_requests(world: World) -> None:
    world.relay.full = True
    with pytest.raises(Unavailable):
        await world.request_attest()
    assert world.store.state.conversations == {}


async def test_status_shows_the_timeline_to_the_requesting_job_centre_only(world: World) -> None:
    accepted, _ = await world.request_attest()
    status = await jobcenter.conversation_status(
        world.store, world.orgs[JC], accepted.conversation_id
    )
    assert status.stage is Stage.SUBMITTED
    assert [e.stage for e in status.timeline] == [Stage.SUBMITTED]
    assert status.receiver.sor == world.orgs[PSY].sor
    with pytest.raises(Unknown):
        await jobcenter.conversation_status(
            world.store, world.orgs["jc-aarhus"], accepted.conversation_id
        )
    with pytest.raises(Unknown):
        await jobcenter.conversation_status(world.store, world.orgs[JC], "no-such-conversation")


async def _replied(world: World) -> tuple[str, str]:
    """A request answered by a reply now in the job centre's inbox: (conversation, reply id)."""
    accepted, _ = await world.request_attest()
    request = world.opened(world.request_in_outbox(accepted.conversation_id), PSY)
    reply = world.reply(request)
    answer, _ = await world.submit(reply)
    sealed = next(
        e
        for e in world.store.state.envelopes()
        if e.header.message_type is MessageType.ATTEST_REPLY
    )
    world.clock.advance(dt.timedelta(minutes=1))
    world.store.state.mailbox[sealed.header.message_id] = MailItem.of(sealed, world.clock.now())
    return accepted.conversation_id, answer["message_id"]


async def test_the_inbox_hands_out_replies_opened_and_audits_it(world: World) -> None:
    conversation_id, reply_id = await _replied(world)
    inbox = await world.read_inbox()
    assert [i.conversation_id for i in inbox.items] == [conversation_id]
    assert inbox.unreadable == []
    state = world.store.state
    assert state.mailbox[reply_id].fetched_at == world.clock.now()
    assert [(a.action, a.message_id) for a in state.audit][-2:] == [
        (audit.ENVELOPE_OPEN, reply_id),
        (audit.INBOX_FETCH, reply_id),
    ]
    assert Stage.REPLY_FETCHED in [e.stage for e in state.stage_events()]
    # a second read hands it out again (until acknowledged), without a second stage
    await world.read_inbox()
    assert [e.stage for e in state.stage_events()].count(Stage.REPLY_FETCHED) == 1


async def test_an_unreadable_reply_is_named_and_kept_until_mended(world: World) -> None:
    conversation_id, reply_id = await _replied(world)
    item = world.store.state.mailbox[reply_id]
    broken = SealedEnvelope.from_json(item.envelope).model_copy(update={"ciphertext": b"x" * 64})
    world.store.state.mailbox[reply_id] = replace(item, envelope=broken.to_json())
    inbox = await world.read_inbox()
    assert inbox.items == []
    assert [(u.message_id, u.conversation_id) for u in inbox.unreadable] == [
        (reply_id, conversation_id)
    ]
    marked = world.store.state.mailbox[reply_id]
    assert marked.unreadable_reason == inbox.unreadable[0].code
    assert marked.fetched_at is None  # not handed out
    # mended: handed out like any other, and the mark is gone
    world.store.state.mailbox[reply_id] = replace(marked, envelope=item.envelope)
    inbox = await world.read_inbox()
    assert [i.conversation_id for i in inbox.items] == [conversation_id]
    assert world.store.state.mailbox[reply_id].unreadable_reason is None


async def test_acknowledging_a_reply_answers_its_sender_once(world: World) -> None:
    _, reply_id = await _replied(world)
    assert await world.acknowledge(reply_id)
    state = world.store.state
    assert state.mailbox[reply_id].collected_at is not None
    acks = [e for e in state.envelopes() if e.header.message_type is MessageType.ACKNOWLEDGEMENT]
    assert [(a.header.sender, a.header.receiver) for a in acks] == [(JC, PSY)]
    ack = orjson.loads(orjson.dumps(world.opened(acks[0], PSY).model_dump(mode="json")))
    assert ack["type"] == "message"
    assert Stage.REPLY_ACKNOWLEDGED in [e.stage for e in state.stage_events()]
    assert [a.action for a in state.audit][-1] == audit.ENVELOPE_OPEN
    # twice: nothing changes
    assert not await world.acknowledge(reply_id)
    assert (
        len(
            [
                e
                for e in world.store.state.envelopes()
                if e.header.message_type is MessageType.ACKNOWLEDGEMENT
            ]
        )
        == 1
    )


async def test_acknowledging_what_is_not_in_the_inbox_is_not_found(world: World) -> None:
    _, reply_id = await _replied(world)
    with pytest.raises(Unknown):
        await world.acknowledge("no-such-message")
    with pytest.raises(Unknown):
        await world.acknowledge(reply_id, org="jc-aarhus")
