"""Registering a direct contact on the fake ports: the registration with its tracking event,
the Idempotency-Key replay, and the refusals."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from attest_gateway.contracts.contacts import ContactChannel
from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.core.errors import InvalidInput, NotPermitted, Replay
from attest_gateway.crypto import pseudonyms
from attest_gateway.services.contacts import ContactIn
from tests.support.world import CPR, JC, PSY, World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


def _contact(world: World, **overrides: Any) -> ContactIn:
    today = world.clock.now().date()
    fields: dict[str, Any] = {
        "municipality": "101",
        "citizen_cpr": CPR,
        "psychiatry_sor": world.orgs[PSY].sor,
        "case_kind": CaseKind.SYGEDAGPENGE,
        "first_day_of_absence": today - dt.timedelta(days=30),
        "contact_date": today - dt.timedelta(days=2),
        "channel": ContactChannel.MEETING,
        **overrides,
    }
    return ContactIn.model_validate(fields)


async def test_a_contact_is_stored_with_its_tracking_event(world: World) -> None:
    body = _contact(world)
    accepted, created = await world.register_contact(body)
    assert created
    assert accepted.psychiatry == world.orgs[PSY].name
    record = world.store.state.contacts[accepted.contact_id]
    ref = pseudonyms.case_ref(CPR, world.pseudonym_key)
    assert (record.jobcenter_org, record.psychiatry_org, record.case_ref) == (JC, PSY, ref)
    assert record.citizen_sealed is not None
    assert CPR not in record.citizen_sealed
    [event] = world.store.state.contact_events()
    assert (event.contact_id, event.case_ref) == (accepted.contact_id, ref)
    assert event.region_code == "1084"
    assert event.at.date() == body.contact_date
    assert world.relay.wakes == 1


async def test_the_same_idempotency_key_answers_the_first_answer(world: World) -> None:
    first, _ = await world.register_contact(_contact(world), idempotency_key="meeting-1")
    again, created = await world.register_contact(_contact(world), idempotency_key="meeting-1")
    assert (again, created) == (first, False)
    assert len(world.store.state.contact_events()) == 1
    other = _contact(world, channel=ContactChannel.PHONE)
    with pytest.raises(Replay) as caught:
        await world.register_contact(other, idempotency_key="meeting-1")
    assert caught.value.code == "idempotency-key-reused"


@pytest.mark.parametrize(
    ("overrides", "error", "code"),
    [
        ({"municipality": "751"}, NotPermitted, "jobcenter-mismatch"),
        ({"psychiatry_sor": "486711000016004"}, InvalidInput, "unknown-receiver"),  # a GP
        ({"first_day_of_absence": dt.date(2027, 6, 1)}, InvalidInput,
         "invalid-first-day-of-absence"),
        ({"contact_date": dt.date(2026, 3, 5)}, InvalidInput, "invalid-contact-date"),
        ({"contact_date": dt.date(2024, 1, 1)}, InvalidInput, "invalid-contact-date"),
    ],
)  # fmt: skip
async def test_contacts_that_are_refused(
    world: World, overrides: dict[str, Any], error: type[Exception], code: str
) -> None:
    with pytest.raises(error) as caught:
        await world.register_contact(_contact(world, **overrides))
    assert getattr(caught.value, "code", None) == code
    assert world.store.state.contacts == {}
    assert world.store.state.outbox == []
