"""`POST /jobcenter/v1/contacts` and its Idempotency-Key: a retry gets the first answer, a
different contact under the same key is 409 and stores nothing."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from attest_gateway.infra.db.tables import tracker_contacts
from tests.integration.conftest import Harness
from tests.support.harness import CPR, CPR_2

JC = "jc-koebenhavn"


def contact_body(**changes: Any) -> dict[str, Any]:
    absence = dt.date.today() - dt.timedelta(days=40)
    body: dict[str, Any] = {
        "municipality": "101",
        "citizen_cpr": CPR,
        "psychiatry_sor": "715381000016006",
        "case_kind": "sygedagpenge",
        "first_day_of_absence": absence.isoformat(),
        "contact_date": (absence + dt.timedelta(days=10)).isoformat(),
        "channel": "meeting",
    }
    return {**body, **changes}


async def contacts_under(h: Harness, key: str) -> int:
    async with h.gw.engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tracker_contacts)
                .where(tracker_contacts.c.idempotency_key == key)
            )
        ).scalar_one()


@pytest.mark.parametrize(
    "changes",
    [
        {"citizen_cpr": CPR_2},
        {"channel": "phone"},
        {"case_kind": "ressourceforloeb"},
        {"first_day_of_absence": (dt.date.today() - dt.timedelta(days=41)).isoformat()},
        {"contact_date": (dt.date.today() - dt.timedelta(days=29)).isoformat()},
        {"psychiatry_sor": "486711000016004"},  # a GP's SOR code: not even a psychiatry unit
    ],
    ids=["citizen", "channel", "case-kind", "absence", "contact-date", "psychiatry"],
)
async def test_idempotency_key_reused_for_another_contact_is_a_conflict(
    harness: Harness, changes: dict[str, Any]
) -> None:
    h = harness
    key = f"contact-{uuid.uuid4()}"
    headers = {**h.auth(JC), "Idempotency-Key": key}
    first = await h.client.post("/jobcenter/v1/contacts", json=contact_body(), headers=headers)
    assert first.status_code == 201, first.text

    again = await h.client.post("/jobcenter/v1/contacts", json=contact_body(), headers=headers)
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"

    other = await h.client.post(
        "/jobcenter/v1/contacts", json=contact_body(**changes), headers=headers
    )
    assert other.status_code == 409, other.text
    assert other.json()["code"] == "idempotency-key-reused"
    assert await contacts_under(h, key) == 1
