"""Attest semantics through the real HTTP app, broker and database: the catalogue's form pairs,
the citizen's consent checked per attest type and carried to the clinic, and the answers
without an attest (not in treatment, wrong form, cannot answer) in the job centre's inbox and
the request's status."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from attest_gateway.infra.db.tables import tracker_conversations, tracker_reminders
from attest_gateway.medcom.build import build_attest_reply
from attest_gateway.medcom.codes import ATTEST_TYPE_SYSTEM, REPLY_KIND_EXTENSION_URL
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.read import read_message
from attest_gateway.tracker.consumer import TrackerState
from attest_gateway.tracker.rules import TrackerRules
from attest_gateway.tracker.sweep import TrackerSweep
from tests.integration.conftest import Harness
from tests.integration.test_medcom_side import GP, JC, PSY, new_request, post
from tests.integration.test_reply_checks import refused_and_nothing_kept, resources
from tests.integration.test_roundtrip import mailbox_item, open_item
from tests.support.harness import QUESTIONS, attest_request_body, wait_for
from tests.support.people import CLINICIAN

URL = "/jobcenter/v1/attest-requests"


def answer(request: Bundle, kind: str, text: str | None = None, **more: Any) -> dict[str, Any]:
    return build_attest_reply(
        author=CLINICIAN,
        request=request,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC),
        text=text,
        pdf=None,
        kind=kind,
        **more,
    )


async def inbox_item_of(h: Harness, conversation_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        items = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
        return next((i for i in items if i["conversation_id"] == conversation_id), None)

    return await wait_for(probe)


async def test_the_catalogue_names_each_types_form_pair_and_consent(harness: Harness) -> None:
    response = await harness.client.get("/jobcenter/v1/attest-types", headers=harness.auth(JC))
    assert response.status_code == 200, response.text
    types = {t["code"]: t for t in response.json()["items"]}
    pairs = {code: (t["request_form"], t["reply_form"]) for code, t in types.items()}
    assert pairs["LÆ 125"] == ("LÆ 121", "LÆ 125")
    assert pairs["LÆ 265"] == ("LÆ 261", "LÆ 265")
    assert pairs["LÆ 285"] == ("LÆ 281", "LÆ 285")
    assert {c for c, t in types.items() if t["request_form_source"] == "observed"} == {
        "LÆ 125",
        "LÆ 265",
        "LÆ 285",
    }
    assert types["LÆ 285"]["consent_required"] is False
    assert types["LÆ 285"]["legal_bases"] == ["sygedagpengeloven § 11 a"]
    assert types["LÆ 155"]["consent_required"] is True
    assert types["LÆ 155"]["legal_bases"] == []
    # Only job centres read it.
    other = await harness.client.get("/jobcenter/v1/attest-types", headers=harness.auth(PSY))
    assert other.status_code == 403


def _without(body: dict[str, Any]) -> None:
    body.pop("consent")


def _basis_of_another_type(body: dict[str, Any]) -> None:
    body["consent"] = {"legal_basis": "sygedagpengeloven § 11 a"}


def _consent_tomorrow(body: dict[str, Any]) -> None:
    body["consent"] = {"given": True, "date": (dt.date.today() + dt.timedelta(2)).isoformat()}


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (_without, "consent-required"),
        (_basis_of_another_type, "consent-required"),
        (_consent_tomorrow, "consent-required"),
        (lambda b: b.update(consent={"given": True}), "invalid-request"),
        (lambda b: b.update(consent={"given": False, "date": "2026-01-02"}), "invalid-request"),
        (
            lambda b: b.update(
                consent={"given": True, "date": "2026-01-02", "legal_basis": "retssikkerhedsloven"}
            ),
            "invalid-request",
        ),
        (lambda b: b.update(consent={"legal_basis": "lov\x00"}), "control-character"),
    ],
)
async def test_a_request_without_the_consent_its_type_needs_is_refused(
    harness: Harness, mutate: Callable[[dict[str, Any]], None], code: str
) -> None:
    body = attest_request_body(jobcenter_gln=harness.gln(JC), attest_type="LÆ 155")
    mutate(body)
    response = await harness.client.post(URL, json=body, headers=harness.auth(JC))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


async def test_the_clinic_reads_the_consent_or_the_legal_basis(harness: Harness) -> None:
    h = harness
    # LÆ 285 is asked for under the sickness-benefit act: no consent needed.
    body = attest_request_body(
        jobcenter_gln=h.gln(JC),
        attest_type="LÆ 285",
        receiver={"ydernummer": "012345"},
        consent={"legal_basis": "sygedagpengeloven § 11 a"},
    )
    response = await h.client.post(URL, json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    accepted = response.json()
    request = read_message(
        open_item(await mailbox_item(h, GP, accepted["message_id"]), h.client_keys(GP))
    )
    assert (request.legal_basis, request.consent_date) == ("sygedagpengeloven § 11 a", None)
    assert request.texts == [
        f"{QUESTIONS}\n\nAnmodningen sker uden samtykke med hjemmel i sygedagpengeloven § 11 a."
    ]
    assert request.topic == "Anmodning (LÆ 281) om LÆ 285: Attest til sygedagpengeopfølgning"

    status = await h.get_json(accepted["status_url"], JC)
    assert (status["request_form"], status["reply_form"]) == ("LÆ 281", "LÆ 285")
    assert status["reply_kind"] is None


async def test_not_in_treatment_ends_the_request_without_an_attest(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    reply = answer(request, "not-in-treatment")
    response = await post(h, PSY, reply)
    assert response.status_code == 202, response.text

    item = await inbox_item_of(h, accepted["conversation_id"])
    assert item["reply_kind"] == "not-in-treatment"
    assert item["attest_text"] == "Borgeren er ikke i behandling hos os."  # not the questions
    assert (item["attachments"], item["suggested_attest_type"]) == ([], None)

    status = await h.get_json(accepted["status_url"], JC)
    assert status["reply_kind"] == "not-in-treatment"
    replied = [e for e in status["timeline"] if e["stage"] == "replied"]
    assert [e["detail"] for e in replied] == ["not-in-treatment"]
    listed = await h.get_json(URL, JC, params={"status": status["stage"], "limit": 100})
    mine = [i for i in listed["items"] if i["conversation_id"] == accepted["conversation_id"]]
    assert [i["reply_kind"] for i in mine] == ["not-in-treatment"]
    # Answered: the job centre can no longer cancel or remind.
    cancel = await h.client.post(f"{accepted['status_url']}/cancel", headers=h.auth(JC))
    assert cancel.status_code == 409
    assert cancel.json()["code"] == "request-answered"


async def test_wrong_form_names_the_form_to_ask_for(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    reply = answer(
        request,
        "wrong-form",
        "Borgeren er i behandling hos en praktiserende speciallæge.",
        suggested_attest_type=("LÆ 115", "Journaloplysninger fra speciallægepraksis"),
    )
    assert (await post(h, PSY, reply)).status_code == 202

    item = await inbox_item_of(h, accepted["conversation_id"])
    assert (item["reply_kind"], item["suggested_attest_type"]) == ("wrong-form", "LÆ 115")
    assert item["attest_text"] == "Borgeren er i behandling hos en praktiserende speciallæge."


async def test_an_attest_reply_is_of_kind_attest(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    assert (await post(h, PSY, answer(request, "attest", "Se attesten."))).status_code == 202
    item = await inbox_item_of(h, accepted["conversation_id"])
    assert (item["reply_kind"], item["attest_text"]) == ("attest", "Se attesten.")
    assert (await h.get_json(accepted["status_url"], JC))["reply_kind"] == "attest"


def _own_segment(reply: dict[str, Any]) -> dict[str, Any]:
    segment: dict[str, Any] = resources(reply, "Communication")[0]["payload"][-1]
    return segment


def _kind_extension(reply: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in _own_segment(reply)["extension"] if e["url"] == REPLY_KIND_EXTENSION_URL)


def _cannot_answer_without_text(request: Bundle) -> dict[str, Any]:
    reply = answer(request, "not-in-treatment")
    _kind_extension(reply)["valueCoding"]["code"] = "cannot-answer"
    _own_segment(reply)["contentString"] = " "
    return reply


def _unknown_kind(request: Bundle) -> dict[str, Any]:
    reply = answer(request, "not-in-treatment")
    _kind_extension(reply)["valueCoding"]["code"] = "maybe-later"
    return reply


def _suggestion_without_wrong_form(request: Bundle) -> dict[str, Any]:
    reply = answer(request, "wrong-form", suggested_attest_type=("LÆ 115", "Journaloplysninger"))
    _kind_extension(reply)["valueCoding"]["code"] = "not-in-treatment"
    return reply


def _suggesting_the_type_asked_for(request: Bundle) -> dict[str, Any]:
    return answer(request, "wrong-form", suggested_attest_type=("LÆ 155", None))


def _on_another_form(request: Bundle) -> dict[str, Any]:
    reply = answer(request, "attest", "Se attesten.")
    topic = resources(reply, "Communication")[0]["topic"]
    next(c for c in topic["coding"] if c["system"] == ATTEST_TYPE_SYSTEM)["code"] = "LÆ 125"
    return reply


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_cannot_answer_without_text, "invalid-reply-kind"),
        (_unknown_kind, "invalid-reply-kind"),
        (_suggestion_without_wrong_form, "invalid-reply-kind"),
        (_suggesting_the_type_asked_for, "invalid-reply-kind"),
        (_on_another_form, "wrong-reply-form"),
    ],
)
async def test_a_reply_that_breaks_its_kind_or_form_is_refused(
    harness: Harness, make: Callable[[Bundle], dict[str, Any]], code: str
) -> None:
    accepted, request, _ = await new_request(harness)
    await refused_and_nothing_kept(harness, accepted["conversation_id"], make(request), 422, code)
    status = await harness.get_json(accepted["status_url"], JC)
    assert status["reply_kind"] is None
    # A cannot-answer with its reason is accepted.
    why = answer(request, "cannot-answer", "Borgeren har ikke været her i to år.")
    assert (await post(harness, PSY, why)).status_code == 202


async def _tracked(h: Harness, cid: str, outcome: str) -> Any:
    async def probe() -> Any:
        async with h.gw.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(tracker_conversations).where(
                        tracker_conversations.c.conversation_id == cid
                    )
                )
            ).first()
        return row if row is not None and row.outcome == outcome else None

    return await wait_for(probe)


async def test_the_tracker_settles_an_answer_without_attest_as_answered(harness: Harness) -> None:
    h = harness
    accepted, request, _ = await new_request(h)
    cid = accepted["conversation_id"]
    assert (await post(h, PSY, answer(request, "not-in-treatment"))).status_code == 202
    await inbox_item_of(h, cid)
    row = await _tracked(h, cid, "answered")
    assert row.replied_at is None  # not an attest: no reply, no attest duration


async def test_an_overdue_request_answered_without_attest_is_reminded_no_more(
    harness: Harness,
) -> None:
    h = harness
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    body = attest_request_body(
        jobcenter_gln=h.gln(JC), cpr="1702851234", reply_deadline=tomorrow.isoformat()
    )
    response = await h.client.post(URL, json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    accepted = response.json()
    cid = accepted["conversation_id"]
    request = open_item(await mailbox_item(h, PSY, accepted["message_id"]), h.client_keys(PSY))

    async def due() -> Any:
        async with h.gw.engine.connect() as conn:
            return (
                await conn.execute(
                    sa.select(tracker_conversations.c.due_date).where(
                        tracker_conversations.c.conversation_id == cid
                    )
                )
            ).scalar()

    due_date = await wait_for(due)
    rules = TrackerRules.build(reminder_interval_days=1)
    sweep = TrackerSweep(h.gw, TrackerState(rules, h.gw.catalogue), interval=3600)
    t0 = dt.datetime.combine(due_date + dt.timedelta(days=1), dt.time(8), tzinfo=dt.UTC)
    await sweep.run_once(now=t0)
    await _tracked(h, cid, "overdue")

    why = answer(request, "cannot-answer", "Borgeren er flyttet til en anden region.")
    assert (await post(h, PSY, why)).status_code == 202
    await _tracked(h, cid, "answered")
    await sweep.run_once(now=t0 + dt.timedelta(days=1, hours=1))
    await sweep.run_once(now=t0 + dt.timedelta(days=2, hours=2))
    async with h.gw.engine.connect() as conn:
        sent = (
            await conn.execute(
                sa.select(tracker_reminders.c.seq).where(tracker_reminders.c.conversation_id == cid)
            )
        ).scalars()
        assert sorted(sent) == [1]  # the first sweep's, none after the answer
