"""The person acting (core/actors.py) on the fake ports: a request, a reply and the reads
record who acted for the organisation; a reply whose MedCom author carries another
autorisations-ID than the one the caller names is refused; no person named, nothing recorded
of one."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import cast

import pytest
from fastapi import Request

from attest_gateway.config import load_settings
from attest_gateway.contracts.jobcenter import AttestRequestIn
from attest_gateway.core import audit
from attest_gateway.core.actors import AUTHORISATION_KEY, PERSON_KEY, Actor
from attest_gateway.core.errors import ErrorCode, InvalidInput
from attest_gateway.entrypoints.http.auth import acting_person
from attest_gateway.infra.db.citizen import _concerns
from attest_gateway.medcom.build import build_attest_reply
from attest_gateway.medcom.model import Bundle
from attest_gateway.ports.records import MailItem
from attest_gateway.services import health, jobcenter
from tests.support.harness import attest_request_body
from tests.support.people import CASEWORKER, CLINICIAN
from tests.support.world import JC, PSY, World, make_world

CASEWORKER_ID = "sagsbeh-4711"
CLINICIAN_ID = "mette.holm@psyk.example"


@pytest.fixture
def world() -> World:
    return make_world()


def _entries(world: World, action: str) -> list[audit.AuditEvent]:
    return [a for a in world.store.state.audit if a.action == action]


async def _requested(world: World, actor: Actor | None) -> tuple[str, Bundle]:
    body = attest_request_body(jobcenter_gln=world.orgs[JC].gln or "")
    body["first_day_of_absence"] = (world.clock.now().date() - dt.timedelta(days=30)).isoformat()
    accepted, _ = await jobcenter.submit_attest_request(
        world.store, world.relay, world.keyring, world.clock, world.orgs[JC],
        AttestRequestIn.model_validate(body), idempotency_key=None, catalogue=world.catalogue,
        gateway_org_id=world.gateway_org_id, pseudonym_key=world.pseudonym_key,
        source="192.0.2.10", actor=actor,
    )  # fmt: skip
    envelope = world.request_in_outbox(accepted.conversation_id)
    world.store.state.mailbox[accepted.message_id] = MailItem.of(envelope, world.clock.now())
    return accepted.conversation_id, world.opened(envelope, PSY)


async def _submit(world: World, data: object, actor: Actor | None) -> dict[str, object]:
    answer, _ = await health.submit_message(
        world.store, world.relay, world.keyring, world.clock, world.orgs[PSY], data,
        gateway_org_id=world.gateway_org_id, pseudonym_key=world.pseudonym_key,
        source="192.0.2.20", actor=actor,
    )  # fmt: skip
    return answer


async def test_a_request_records_the_caseworker_who_sent_it(world: World) -> None:
    conversation_id, _ = await _requested(world, Actor(CASEWORKER_ID))
    [entry] = _entries(world, audit.REQUEST_SUBMIT)
    assert (entry.actor, entry.source, entry.subject_org) == (JC, "192.0.2.10", PSY)
    assert entry.conversation_id == conversation_id
    assert entry.detail == {PERSON_KEY: CASEWORKER_ID}


async def test_reads_record_the_person_who_read(world: World) -> None:
    await _requested(world, None)
    await health.read_mailbox(
        world.store, world.clock, world.orgs[PSY], limit=10, source="192.0.2.20",
        actor=Actor(CLINICIAN_ID, CLINICIAN.authorisation_id),
    )  # fmt: skip
    [read] = _entries(world, audit.MAILBOX_FETCH)
    assert read.detail is not None
    assert (read.detail[PERSON_KEY], read.detail[AUTHORISATION_KEY]) == (
        CLINICIAN_ID, CLINICIAN.authorisation_id,
    )  # fmt: skip
    assert read.detail["count"] == "1"


async def test_a_reply_records_its_sender_and_its_authors_autorisations_id(world: World) -> None:
    _, request = await _requested(world, None)
    reply = world.reply(request)
    await _submit(world, reply, Actor(CLINICIAN_ID, CLINICIAN.authorisation_id))
    [entry] = _entries(world, audit.MESSAGE_SUBMIT)
    assert (entry.actor, entry.subject_org, entry.source) == (PSY, JC, "192.0.2.20")
    assert entry.detail == {
        PERSON_KEY: CLINICIAN_ID,
        AUTHORISATION_KEY: "0C4B1",
        "author_authorisations": "0C4B1",
        "message_type": "attest-reply",
    }


async def test_a_reply_by_another_clinician_than_the_one_named_is_refused(world: World) -> None:
    _, request = await _requested(world, None)
    reply = world.reply(request)
    with pytest.raises(InvalidInput) as caught:
        await _submit(world, reply, Actor("someone.else", "0D5F2"))
    assert caught.value.code == ErrorCode.ACTOR_MISMATCH
    assert _entries(world, audit.MESSAGE_SUBMIT) == []
    # a person without an autorisations-ID (a secretary sending it) is recorded as they are
    await _submit(world, reply, Actor("secretary-12"))
    [entry] = _entries(world, audit.MESSAGE_SUBMIT)
    assert entry.detail is not None
    assert entry.detail[PERSON_KEY] == "secretary-12"
    assert entry.detail["author_authorisations"] == "0C4B1"


async def test_without_a_person_nothing_of_one_is_recorded(world: World) -> None:
    _, request = await _requested(world, None)
    [entry] = _entries(world, audit.REQUEST_SUBMIT)
    assert entry.detail is None
    reply = build_attest_reply(
        author=CASEWORKER, request=request, message_id="m-1", bundle_id="b-1",
        sent_at=world.clock.now(), text="svar", pdf=None,
    )  # fmt: skip
    await _submit(world, reply, Actor(CLINICIAN_ID, "0C4B1"))  # no autorisations-ID to hold
    [submitted] = _entries(world, audit.MESSAGE_SUBMIT)
    assert submitted.detail is not None
    assert "author_authorisations" not in submitted.detail


def _request(**settings: object) -> Request:
    gateway = SimpleNamespace(settings=load_settings(**settings))
    return cast(
        Request, SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(gateway=gateway)))
    )


async def test_a_gateway_that_requires_the_person_refuses_a_call_naming_none(world: World) -> None:
    org = world.orgs[JC]
    assert await acting_person(_request(), org, None, None) is None
    assert await acting_person(_request(), org, "", "") is None  # empty headers: no one named
    with pytest.raises(InvalidInput) as caught:
        await acting_person(_request(require_acting_person=True), org, None, None)
    assert caught.value.code == ErrorCode.ACTOR_REQUIRED
    named = await acting_person(_request(require_acting_person=True), org, "sagsbeh-1", None)
    assert named == Actor("sagsbeh-1")
    # An autorisations-ID alone names the health professional: it is their id as well.
    alone = await acting_person(_request(require_acting_person=True), org, None, "0C4B1")
    assert alone == Actor("0C4B1", "0C4B1")


def test_the_citizen_export_names_the_person_who_read() -> None:
    row = SimpleNamespace(
        seq=7, at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC), actor=PSY, action="mailbox.fetch",
        source="192.0.2.20", message_id=None, conversation_id=None,
        detail='{"actor_authorisation":"0C4B1","actor_person":"mette.holm","count":"2",'
        '"message_ids":"m-1 m-2"}',
    )  # fmt: skip
    access = _concerns(row, set(), {"m-2"}, set())
    assert access is not None
    assert (access.person, access.authorisation_id, access.message_ids) == (
        "mette.holm", "0C4B1", ["m-2"],
    )  # fmt: skip
