"""The request lifecycle on the fake ports: the list with its filters and cursor, a
cancellation (a cancellation message to the receiver, stage `cancelled`, idempotent), a
deadline extension (later only, idempotent per deadline), a reminder by hand (one a day) —
each in the status timeline."""

from __future__ import annotations

import datetime as dt

import pytest

from attest_gateway.contracts.jobcenter import DeadlineExtensionIn
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.errors import InvalidInput, Replay, Unknown
from attest_gateway.medcom.read import read_message
from attest_gateway.services import jobcenter, lifecycle
from tests.support.world import JC, PSY, World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


async def _cancel(world: World, cid: str, org: str = JC) -> tuple[object, bool]:
    return await lifecycle.cancel_request(
        world.store, world.relay, world.keyring, world.clock, world.orgs[org], cid,
        source="test", gateway_org_id=world.gateway_org_id,
    )  # fmt: skip


async def _extend(world: World, cid: str, day: dt.date) -> tuple[object, bool]:
    body = DeadlineExtensionIn(reply_deadline=day)
    return await lifecycle.extend_deadline(
        world.store, world.relay, world.clock, world.orgs[JC], cid, body
    )


async def _remind(world: World, cid: str, key: str | None = None) -> tuple[object, bool]:
    return await lifecycle.remind_by_hand(
        world.store, world.relay, world.keyring, world.clock, world.orgs[JC], cid,
        idempotency_key=key, source="test", gateway_org_id=world.gateway_org_id,
    )  # fmt: skip


async def _status(world: World, cid: str) -> object:
    return await jobcenter.conversation_status(world.store, world.orgs[JC], cid)


async def test_a_cancellation_reaches_the_receiver_once_and_ends_the_request(
    world: World,
) -> None:
    accepted, _ = await world.request_attest()
    cid = accepted.conversation_id
    out, created = await _cancel(world, cid)
    again, created_again = await _cancel(world, cid)
    assert (created, created_again) == (True, False)
    assert again == out
    sent = [
        e
        for e in world.store.state.envelopes()
        if e.header.message_type is MessageType.ATTEST_CANCELLATION
    ]
    assert len(sent) == 1
    assert (sent[0].header.sender, sent[0].header.receiver) == (JC, PSY)
    info = read_message(world.opened(sent[0], PSY))
    assert info.message_type == "attest-cancellation"
    assert info.conversation_id == cid
    status = await _status(world, cid)
    assert status.stage is Stage.CANCELLED  # type: ignore[attr-defined]
    events = [e.stage for e in world.store.state.stage_events()]
    assert events.count(Stage.CANCELLED) == 1
    with pytest.raises(Replay) as caught:
        await _remind(world, cid)
    assert caught.value.code == "request-cancelled"


async def test_another_job_centres_request_cannot_be_cancelled(world: World) -> None:
    accepted, _ = await world.request_attest()
    with pytest.raises(Unknown):
        await _cancel(world, accepted.conversation_id, org="jc-aarhus")


async def test_an_extension_moves_the_deadline_later_only_and_is_idempotent(
    world: World,
) -> None:
    accepted, _ = await world.request_attest()
    cid = accepted.conversation_id
    with pytest.raises(InvalidInput) as caught:
        await _extend(world, cid, accepted.reply_deadline)
    assert caught.value.code == "invalid-reply-deadline"
    later = accepted.reply_deadline + dt.timedelta(days=7)
    out, created = await _extend(world, cid, later)
    _, created_again = await _extend(world, cid, later)
    assert (created, created_again) == (True, False)
    assert out.reply_deadline == later  # type: ignore[attr-defined]
    even_later = later + dt.timedelta(days=7)
    await _extend(world, cid, even_later)
    assert world.store.state.conversations[cid].reply_deadline == even_later
    status = await _status(world, cid)
    timeline = [(e.stage, e.detail) for e in status.timeline]  # type: ignore[attr-defined]
    assert (Stage.DEADLINE_EXTENDED, later.isoformat()) in timeline
    assert (Stage.DEADLINE_EXTENDED, even_later.isoformat()) in timeline
    details = [
        e.detail for e in world.store.state.stage_events() if e.stage is Stage.DEADLINE_EXTENDED
    ]
    assert details == [later.isoformat(), even_later.isoformat()]


async def test_a_reminder_by_hand_goes_once_a_day(world: World) -> None:
    accepted, _ = await world.request_attest()
    cid = accepted.conversation_id
    out, created = await _remind(world, cid, key="r-1")
    replay, replayed = await _remind(world, cid, key="r-1")
    assert (created, replayed, replay) == (True, False, out)
    with pytest.raises(Replay) as caught:
        await _remind(world, cid, key="r-2")
    assert caught.value.code == "reminder-limit"
    world.clock.advance(dt.timedelta(days=1))
    _, created = await _remind(world, cid)
    assert created
    reminders = [
        e
        for e in world.store.state.envelopes()
        if e.header.message_type is MessageType.ATTEST_REMINDER
    ]
    assert len(reminders) == 2
    assert read_message(world.opened(reminders[0], PSY)).message_type == "attest-reminder"
    status = await _status(world, cid)
    manual = [e for e in status.timeline if e.stage is Stage.REMINDED]  # type: ignore[attr-defined]
    assert [e.detail for e in manual] == ["manual", "manual"]


async def test_the_list_filters_and_pages(world: World) -> None:
    ids = []
    for _ in range(3):
        accepted, _ = await world.request_attest()
        ids.append(accepted.conversation_id)
        world.clock.advance(dt.timedelta(seconds=1))
    await _cancel(world, ids[0])

    async def page(**kw: object) -> object:
        args: dict[str, object] = {
            "status": None, "overdue": None, "attest_type": None, "cursor": None, "limit": 50,
        }  # fmt: skip
        args.update(kw)
        return await lifecycle.list_requests(world.store, world.clock, world.orgs[JC], **args)  # type: ignore[arg-type]

    everything = await page()
    assert [i.conversation_id for i in everything.items] == ids[::-1]  # type: ignore[attr-defined]
    cancelled = await page(status=Stage.CANCELLED)
    assert [i.conversation_id for i in cancelled.items] == [ids[0]]  # type: ignore[attr-defined]
    first = await page(limit=2)
    assert len(first.items) == 2  # type: ignore[attr-defined]
    rest = await page(limit=2, cursor=first.next_cursor)  # type: ignore[attr-defined]
    assert [i.conversation_id for i in rest.items] == [ids[0]]  # type: ignore[attr-defined]
    assert rest.next_cursor is None  # type: ignore[attr-defined]
    assert (await page(overdue=True)).items == []  # type: ignore[attr-defined]
    world.clock.advance(dt.timedelta(days=400))
    overdue = await page(overdue=True)
    assert {i.conversation_id for i in overdue.items} == set(ids[1:])  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        await page(cursor="not-a-cursor")
    assert caught.value.code == "invalid-cursor"
