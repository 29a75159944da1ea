"""The case, treatment and psychiatry-contact endpoints over HTTP, and the ministry's new
figures: roles, status codes, idempotency, CSV, and no CPR number or case ref in the
ministry's answers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa

from attest_gateway.infra.db.tables import tracker_cases, tracker_contacts, tracker_treatments
from tests.integration.conftest import Harness
from tests.integration.test_tracker_consumer import cpr

JC, PSY, MINISTRY = "jc-koebenhavn", "psyk-kbh", "ministry"


def case_body(case_id: str, citizen: str, **changes: Any) -> dict[str, Any]:
    return {
        "municipality": "101",
        "case_id": case_id,
        "citizen_cpr": citizen,
        "case_kind": "sygedagpenge",
        "psychiatric_course": True,
        "first_day_of_absence": (dt.date.today() - dt.timedelta(days=70)).isoformat(),
    } | changes


async def test_a_job_centre_registers_and_closes_a_case(harness: Harness) -> None:
    h = harness
    case_id, citizen = f"sag-{uuid.uuid4().hex[:12]}", cpr(7101)
    first = await h.client.post("/jobcenter/v1/cases", json=case_body(case_id, citizen),
                                headers=h.auth(JC))  # fmt: skip
    assert first.status_code == 201, first.text
    case = first.json()
    assert citizen not in first.text
    again = await h.client.post("/jobcenter/v1/cases", json=case_body(case_id, citizen),
                                headers=h.auth(JC))  # fmt: skip
    assert (again.status_code, again.json()) == (200, case)
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await h.client.post("/jobcenter/v1/cases", json=case_body(case_id, cpr(7102)),
                                headers=h.auth(JC))  # fmt: skip
    assert (other.status_code, other.json()["code"]) == (409, "case-conflict")

    closed = dt.date.today().isoformat()
    patched = await h.client.patch(f"/jobcenter/v1/cases/{case_id}", json={"closed_on": closed},
                                   headers=h.auth(JC))  # fmt: skip
    assert (patched.status_code, patched.json()["closed_on"]) == (200, closed)
    missing = await h.client.patch("/jobcenter/v1/cases/sag-none", json={"closed_on": closed},
                                   headers=h.auth(JC))  # fmt: skip
    assert (missing.status_code, missing.json()["code"]) == (404, "not-found")
    # psychiatry may not register cases, a job centre no treatments
    assert (await h.client.post("/jobcenter/v1/cases", json=case_body("x", citizen),
                                headers=h.auth(PSY))).status_code == 403  # fmt: skip
    async with h.gw.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(tracker_cases).where(tracker_cases.c.jobcenter_case_id == case_id)
            )
        ).all()
    assert len(rows) == 1
    assert citizen not in str(tuple(rows[0]))


async def test_psychiatry_registers_a_treatment_and_a_contact(harness: Harness) -> None:
    h = harness
    case_id, citizen = f"sag-{uuid.uuid4().hex[:12]}", cpr(7201)
    case = (await h.client.post("/jobcenter/v1/cases", json=case_body(case_id, citizen),
                                headers=h.auth(JC))).json()  # fmt: skip
    start = (dt.date.today() - dt.timedelta(days=60)).isoformat()
    treatment = await h.client.post(
        "/psychiatry/v1/treatments",
        json={"case_ref": case["case_ref"], "start_date": start},
        headers={**h.auth(PSY), "Idempotency-Key": f"t-{case_id}"},
    )
    assert treatment.status_code == 201, treatment.text
    assert (await h.client.post("/psychiatry/v1/treatments",
                                json={"citizen_cpr": citizen, "start_date": start},
                                headers=h.auth(JC))).status_code == 403  # fmt: skip
    contact = await h.client.post(
        "/psychiatry/v1/contacts",
        json={
            "municipality": "101",
            "citizen_cpr": citizen,
            "contact_date": (dt.date.today() - dt.timedelta(days=50)).isoformat(),
            "channel": "phone",
        },
        headers=h.auth(PSY),
    )
    assert contact.status_code == 201, contact.text
    assert contact.json()["registered_by"] == "psychiatry"
    async with h.gw.engine.connect() as conn:
        stored = (
            await conn.execute(
                sa.select(tracker_contacts).where(
                    tracker_contacts.c.contact_id == contact.json()["contact_id"]
                )
            )
        ).one()
        treatments = (
            await conn.execute(
                sa.select(sa.func.count()).where(tracker_treatments.c.case_ref == case["case_ref"])
            )
        ).scalar_one()
    assert (stored.case_ref, stored.first_day_of_absence.isoformat()) == (
        case["case_ref"],
        case["first_day_of_absence"],
    )
    assert treatments == 1


async def test_the_ministry_reads_the_new_figures(harness: Harness) -> None:
    h = harness
    refs = []
    for n in range(6):
        response = await h.client.post(
            "/jobcenter/v1/cases",
            json=case_body(f"sag-{uuid.uuid4().hex[:12]}", cpr(7300 + n)),
            headers=h.auth(JC),
        )
        refs.append(response.json()["case_ref"])
    for path in ("coverage", "latency", "request-timing", "overdue"):
        assert (await h.client.get(f"/ministry/v1/{path}", headers=h.auth(JC))).status_code == 403
        answer = await h.client.get(f"/ministry/v1/{path}", headers=h.auth(MINISTRY))
        assert answer.status_code == 200, answer.text
        csv = await h.client.get(
            f"/ministry/v1/{path}", params={"format": "csv"}, headers=h.auth(MINISTRY)
        )
        assert csv.headers["content-type"].startswith("text/csv")
        for text in (answer.text, csv.text):
            assert not any(ref in text for ref in refs)
            assert "case_ref" not in text
    coverage = await h.get_json("/ministry/v1/coverage", MINISTRY, params={"by": "municipality"})
    assert coverage["baseline"] == 0.75
    kbh = next(row for row in coverage["rows"] if row["group"] == "101")
    assert kbh["suppressed"] is False
    assert kbh["cases"] >= 6  # these six: windows closed, no contact
