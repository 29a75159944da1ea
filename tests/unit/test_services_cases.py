"""Sickness cases, treatments and psychiatry's contacts on the fake ports: a case is stored by
case ref only and idempotent by the job centre's case id; psychiatry registers a treatment or a
contact by CPR number or by the case ref the gateway gave; the refusals."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from attest_gateway.contracts.cases import CaseIn, CasePatch, TreatmentIn
from attest_gateway.contracts.contacts import ContactChannel, Registrar
from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.core.errors import GatewayError, InvalidInput, NotPermitted, Replay, Unknown
from attest_gateway.crypto import pseudonyms
from attest_gateway.services import cases, contacts
from attest_gateway.services.contacts import PsychiatryContactIn
from tests.support.world import CPR, JC, PSY, World, make_world

CPR_2 = "1502857777"


@pytest.fixture
def world() -> World:
    return make_world()


def _case(world: World, **overrides: Any) -> CaseIn:
    fields: dict[str, Any] = {
        "municipality": "101",
        "case_id": "sag-2026-0042",
        "citizen_cpr": CPR,
        "case_kind": CaseKind.SYGEDAGPENGE,
        "psychiatric_course": True,
        "first_day_of_absence": world.clock.now().date() - dt.timedelta(days=30),
        **overrides,
    }
    return CaseIn.model_validate(fields)


async def _register(world: World, body: CaseIn, org: str = JC) -> tuple[Any, bool]:
    return await cases.register_case(
        world.store, world.keyring, world.clock, world.orgs[org], body,
        gateway_org_id=world.gateway_org_id, pseudonym_key=world.pseudonym_key,
    )  # fmt: skip


async def _treatment(world: World, body: TreatmentIn, key: str | None = None) -> tuple[Any, bool]:
    return await cases.register_treatment(
        world.store, world.keyring, world.clock, world.orgs[PSY], body,
        idempotency_key=key, gateway_org_id=world.gateway_org_id,
        pseudonym_key=world.pseudonym_key,
    )  # fmt: skip


async def _psy_contact(world: World, key: str | None = None, **overrides: Any) -> tuple[Any, bool]:
    fields: dict[str, Any] = {
        "municipality": "101",
        "citizen_cpr": CPR,
        "contact_date": world.clock.now().date() - dt.timedelta(days=3),
        "channel": ContactChannel.WRITTEN,
        **overrides,
    }
    return await contacts.register_psychiatry_contact(
        world.store, world.relay, world.keyring, world.clock, world.orgs[PSY],
        PsychiatryContactIn.model_validate(fields), idempotency_key=key,
        gateway_org_id=world.gateway_org_id, pseudonym_key=world.pseudonym_key,
    )  # fmt: skip


async def test_a_case_is_stored_by_case_ref_and_answered_with_it(world: World) -> None:
    out, created = await _register(world, _case(world))
    ref = pseudonyms.case_ref(CPR, world.pseudonym_key)
    assert created
    assert (out.case_id, out.case_ref, out.psychiatric_course) == ("sag-2026-0042", ref, True)
    [record] = world.store.state.cases.values()
    assert (record.jobcenter_org, record.case_ref, record.region_code) == (JC, ref, "1084")
    assert record.citizen_sealed is not None
    assert CPR not in record.citizen_sealed
    assert CPR not in repr(record).replace(record.citizen_sealed, "")


async def test_the_same_case_again_is_answered_and_another_is_a_conflict(world: World) -> None:
    first, _ = await _register(world, _case(world))
    again, created = await _register(world, _case(world))
    assert (again, created) == (first, False)
    for change in (
        {"citizen_cpr": CPR_2},
        {"case_kind": CaseKind.JOBAFKLARINGSFORLOEB},
        {"psychiatric_course": False},
    ):
        with pytest.raises(Replay) as caught:
            await _register(world, _case(world, **change))
        assert caught.value.code == "case-conflict"
    assert len(world.store.state.cases) == 1


@pytest.mark.parametrize(
    ("changes", "error", "code"),
    [
        ({"municipality": "147"}, NotPermitted, "jobcenter-mismatch"),
        (
            {"first_day_of_absence": dt.date(2027, 6, 1)},
            InvalidInput,
            "invalid-first-day-of-absence",
        ),
        ({"closed_on": dt.date(2026, 1, 2)}, InvalidInput, "invalid-closed-date"),
        ({"closed_on": dt.date(2026, 3, 20)}, InvalidInput, "invalid-closed-date"),
    ],
    ids=["other-municipality", "absence-far-ahead", "closed-before-absence", "closed-ahead"],
)
async def test_a_case_is_refused(
    world: World, changes: dict[str, Any], error: type[GatewayError], code: str
) -> None:
    with pytest.raises(error) as caught:
        await _register(world, _case(world, **changes))
    assert caught.value.code == code
    assert world.store.state.cases == {}


async def test_a_case_is_changed_and_closed_by_patch(world: World) -> None:
    await _register(world, _case(world, psychiatric_course=False))
    today = world.clock.now().date()
    out = await cases.update_case(
        world.store, world.clock, world.orgs[JC], "sag-2026-0042",
        CasePatch.model_validate({"psychiatric_course": True}),
    )  # fmt: skip
    assert (out.psychiatric_course, out.closed_on) == (True, None)
    out = await cases.update_case(
        world.store, world.clock, world.orgs[JC], "sag-2026-0042",
        CasePatch.model_validate({"closed_on": today.isoformat()}),
    )  # fmt: skip
    assert (out.psychiatric_course, out.closed_on) == (True, today)
    [record] = world.store.state.cases.values()
    assert (record.psychiatric_course, record.closed_on) == (True, today)
    with pytest.raises(Unknown):  # another job centre's id, or none
        await cases.update_case(
            world.store, world.clock, world.orgs[JC], "sag-unknown",
            CasePatch.model_validate({"closed_on": None}),
        )  # fmt: skip
    with pytest.raises(ValueError, match="send psychiatric_course, closed_on or both"):
        CasePatch.model_validate({})


async def test_a_treatment_by_cpr_or_by_the_case_ref(world: World) -> None:
    start = world.clock.now().date() - dt.timedelta(days=10)
    by_cpr, _ = await _treatment(world, TreatmentIn(citizen_cpr=CPR, start_date=start), "t-1")
    ref = pseudonyms.case_ref(CPR_2, world.pseudonym_key)
    by_ref, _ = await _treatment(world, TreatmentIn(case_ref=ref, start_date=start))
    rows = world.store.state.treatments
    assert rows[by_cpr.treatment_id].case_ref == pseudonyms.case_ref(CPR, world.pseudonym_key)
    assert rows[by_cpr.treatment_id].citizen_sealed is not None
    assert (rows[by_ref.treatment_id].case_ref, rows[by_ref.treatment_id].citizen_sealed) == (
        ref,
        None,
    )
    again, created = await _treatment(world, TreatmentIn(citizen_cpr=CPR, start_date=start), "t-1")
    assert (again, created) == (by_cpr, False)
    with pytest.raises(Replay):
        await _treatment(world, TreatmentIn(citizen_cpr=CPR_2, start_date=start), "t-1")


async def test_a_case_ref_of_another_key_is_refused(world: World) -> None:
    stale = pseudonyms.case_ref(CPR, b"1" * 32)
    with pytest.raises(InvalidInput) as caught:
        await _treatment(world, TreatmentIn(case_ref=stale, start_date=world.clock.now().date()))
    assert caught.value.code == "invalid-case-ref"
    with pytest.raises(ValueError, match="one of them"):  # both, or neither
        TreatmentIn(citizen_cpr=CPR, case_ref=stale, start_date=dt.date(2026, 3, 1))
    with pytest.raises(ValueError, match="one of them"):
        TreatmentIn(start_date=dt.date(2026, 3, 1))


async def test_psychiatry_registers_a_contact_with_the_job_centre(world: World) -> None:
    case, _ = await _register(world, _case(world))
    accepted, created = await _psy_contact(world, "psy-1", case_ref=None)
    assert created
    assert accepted.registered_by is Registrar.PSYCHIATRY
    assert accepted.jobcenter == world.orgs[JC].name
    record = world.store.state.contacts[accepted.contact_id]
    # the job centre's case gave the kind and first day of absence
    assert (record.jobcenter_org, record.psychiatry_org, record.registrar_org) == (JC, PSY, PSY)
    assert (record.case_kind, record.first_day_of_absence) == (
        "sygedagpenge",
        case.first_day_of_absence,
    )
    [event] = world.store.state.contact_events()
    assert (event.registered_by, event.channel) == (Registrar.PSYCHIATRY, ContactChannel.WRITTEN)
    # by the case ref the job centre was given, and the same key again answers the same
    by_ref, _ = await _psy_contact(world, "psy-2", citizen_cpr=None, case_ref=case.case_ref)
    assert world.store.state.contacts[by_ref.contact_id].citizen_sealed is None
    again, created = await _psy_contact(world, "psy-1")
    assert (again, created) == (accepted, False)


async def test_psychiatry_contact_refusals(world: World) -> None:
    with pytest.raises(InvalidInput) as caught:  # no registered case, no kind or first day
        await _psy_contact(world)
    assert caught.value.code == "unknown-case"
    with pytest.raises(InvalidInput) as caught:
        await _psy_contact(
            world,
            municipality="860",  # Hjørring: no job centre in the demo directory
            case_kind=CaseKind.SYGEDAGPENGE,
            first_day_of_absence=dt.date(2026, 2, 1),
        )
    assert caught.value.code == "unknown-jobcenter"
    assert world.store.state.contacts == {}


async def test_every_change_decides_the_citizens_cases_again(world: World) -> None:
    """A registration or change asks the store, in its own transaction, to decide the
    citizen's cases again (the coverage rollup); a replay, which writes nothing, does not."""
    ref = pseudonyms.case_ref(CPR, world.pseudonym_key)
    ref_2 = pseudonyms.case_ref(CPR_2, world.pseudonym_key)
    await _register(world, _case(world))
    await _register(world, _case(world))  # the same again: answered, nothing written
    assert world.store.state.coverage_refreshed == [ref]
    await cases.update_case(
        world.store, world.clock, world.orgs[JC], "sag-2026-0042",
        CasePatch.model_validate({"psychiatric_course": False}),
    )  # fmt: skip
    start = world.clock.now().date() - dt.timedelta(days=10)
    await _treatment(world, TreatmentIn(citizen_cpr=CPR_2, start_date=start), "t-1")
    await _treatment(world, TreatmentIn(citizen_cpr=CPR_2, start_date=start), "t-1")
    await _psy_contact(world, "psy-1")
    await _psy_contact(world, "psy-1")
    today = world.clock.now().date()
    await world.register_contact(
        contacts.ContactIn.model_validate({
            "municipality": "101", "citizen_cpr": CPR_2, "psychiatry_sor": world.orgs[PSY].sor,
            "case_kind": "sygedagpenge", "first_day_of_absence": today - dt.timedelta(days=30),
            "contact_date": today - dt.timedelta(days=2),
        })
    )  # fmt: skip
    assert world.store.state.coverage_refreshed == [ref, ref, ref_2, ref, ref_2]
