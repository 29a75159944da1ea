"""The ministry API: role only, aggregates only, small cells suppressed, JSON and CSV, and
never a CPR number, a case ref, a conversation id or any message text."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

import sqlalchemy as sa

from attest_gateway.infra.db.tables import tracker_conversations
from tests.integration.conftest import Harness
from tests.integration.test_tracker_consumer import answer, cpr, request
from tests.support.harness import ATTEST_TEXT, QUESTIONS, wait_for

JC = "jc-koebenhavn"
MINISTRY = "ministry"
# Attest types no other test asks for, so the counts below are exact. HIDDEN is too small to
# show; BUFFER, smaller than SHOWN, is suppressed with it (so that HIDDEN cannot be recomputed
# from the total over all types) and SHOWN stays shown.
SHOWN, HIDDEN, BUFFER = "LÆ 275", "LÆ 105", "LÆ 145"  # BUFFER: a GP's
GP, GP_SOR = "gp-noerrebro", "486711000016004"


async def _populate(h: Harness) -> list[dict[str, Any]]:
    accepted = []
    for n in range(7):
        accepted.append(await request(h, cpr=cpr(100 + n), attest_type=SHOWN))
    for n in range(2):
        accepted.append(await request(h, cpr=cpr(200 + n), attest_type=HIDDEN))
    for acc in accepted:
        await answer(h, acc)
    for n in range(6):
        acc = await request(h, cpr=cpr(300 + n), attest_type=BUFFER, receiver={"sor": GP_SOR})
        await answer(h, acc, org=GP)
        accepted.append(acc)
    ids = [a["conversation_id"] for a in accepted]

    async def all_read() -> bool:
        async with h.gw.engine.connect() as conn:
            n = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        tracker_conversations.c.conversation_id.in_(ids),
                        tracker_conversations.c.reply_fetched_at.is_not(None),
                    )
                )
            ).scalar_one()
        return bool(n == len(ids))

    await wait_for(all_read, within=60)
    return accepted


async def test_only_the_ministry_may_read(harness: Harness) -> None:
    h = harness
    assert (await h.client.get("/ministry/v1/report")).status_code == 401
    response = await h.client.get("/ministry/v1/report", headers=h.auth(JC))
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (await h.client.get("/ministry/v1/meta", headers=h.auth(MINISTRY))).status_code == 200


async def test_aggregates_suppression_csv_and_no_personal_data(harness: Harness) -> None:
    h = harness
    accepted = await _populate(h)
    auth = h.auth(MINISTRY)

    by_type = (
        await h.client.get("/ministry/v1/deadlines", params={"by": "attest_type"}, headers=auth)
    ).json()["rows"]
    shown = next(r for r in by_type if r["group"] == SHOWN)
    hidden = next(r for r in by_type if r["group"] == HIDDEN)
    assert shown["suppressed"] is False
    assert (shown["requests"], shown["replied"], shown["decided"], shown["overdue"]) == (7, 7, 7, 0)
    assert shown["overdue_rate"] == 0.0
    assert hidden["suppressed"] is True
    assert hidden["requests"] is None
    # secondary suppression: HIDDEN is not the only type missing from the total (BUFFER is
    # the one next to it here, unless the shared database holds another small type already)
    others = [r for r in by_type if r["group"] != HIDDEN and r["suppressed"]]
    assert others
    assert all(r["requests"] is None for r in others)

    durations = (
        await h.client.get(
            "/ministry/v1/durations",
            params={"by": "attest_type", "metric": "request_to_attest", "attest_type": SHOWN},
            headers=auth,
        )
    ).json()
    (row,) = durations["rows"]
    assert row["count"] == 7
    assert 0 < row["median"] <= row["p90"] <= row["p99"]
    assert durations["unit"] == "seconds"

    # Histograms are kept per type: all types together are every type's summed.
    (everything,) = (
        await h.client.get(
            "/ministry/v1/durations", params={"metric": "request_to_attest"}, headers=auth
        )
    ).json()["rows"]
    (national,) = (await h.client.get("/ministry/v1/deadlines", headers=auth)).json()["rows"]
    assert everything["suppressed"] is False
    assert everything["count"] == national["replied"] >= len(accepted) > row["count"]

    series = (
        await h.client.get(
            "/ministry/v1/durations",
            params={"series": "true", "period": "week", "attest_type": SHOWN},
            headers=auth,
        )
    ).json()["rows"]
    assert sum(r["count"] or 0 for r in series) <= 7
    assert all("period_start" in r for r in series)

    response = await h.client.get(
        "/ministry/v1/deadlines",
        params={"by": "attest_type", "format": "csv"},
        headers=auth,
    )
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert next(r for r in table if r["group"] == SHOWN)["requests"] == "7"
    assert next(r for r in table if r["group"] == HIDDEN)["requests"] == ""
    # the export hides the same cells as the JSON answer (which ones beside HIDDEN depends on
    # what else the shared database holds)
    for row in by_type:
        cell = next(r for r in table if r["group"] == row["group"])["requests"]
        assert cell == ("" if row["suppressed"] else str(row["requests"]))

    weekly = await h.client.get(
        "/ministry/v1/durations", params={"by": "receiver", "period": "week"}, headers=auth
    )
    assert weekly.status_code == 422
    assert weekly.json()["code"] == "invalid-period"
    bad = await h.client.get("/ministry/v1/durations", params={"metric": "x"}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["code"] == "unknown-metric"

    # Nothing personal in any answer: no CPR, no case ref, no conversation id, no text.
    async with h.gw.engine.connect() as conn:
        refs = set(
            (await conn.execute(sa.select(tracker_conversations.c.case_ref))).scalars().all()
        )
    forbidden = (
        {cpr(n) for n in itertools.chain(range(100, 107), range(200, 202), range(300, 306))}
        | refs
        | {a["conversation_id"] for a in accepted}
        | {a["message_id"] for a in accepted}
        | {QUESTIONS, ATTEST_TEXT}
    )
    urls = ["/ministry/v1/report", "/ministry/v1/meta"]
    for endpoint, by, fmt in itertools.product(
        ("durations", "deadlines"),
        ("national", "region", "municipality", "receiver", "attest_type"),
        ("json", "csv"),
    ):
        period = "month" if by in ("municipality", "receiver") else "week"
        urls.append(f"/ministry/v1/{endpoint}?by={by}&format={fmt}&series=true&period={period}")
    for by, fmt in itertools.product(("national", "region", "municipality"), ("json", "csv")):
        urls.append(f"/ministry/v1/contacts?by={by}&format={fmt}")
    for url in urls:
        response = await h.client.get(url, headers=auth)
        assert response.status_code == 200, (url, response.text)
        assert not any(secret in response.text for secret in forbidden), url


async def test_the_report_has_the_main_aggregates(harness: Harness) -> None:
    h = harness
    report = (await h.client.get("/ministry/v1/report", headers=h.auth(MINISTRY))).json()
    national = report["national"]["deadlines"]
    if not national or national[0]["suppressed"]:  # run alone: make some traffic first
        await _populate(h)
        report = (await h.client.get("/ministry/v1/report", headers=h.auth(MINISTRY))).json()
    assert set(report) >= {"national", "series", "by_region", "by_attest_type", "by_municipality"}
    national = report["national"]
    assert {r["metric"] for r in national["durations"]} >= {"request_to_attest", "fetch_to_ack"}
    (deadlines,) = national["deadlines"]
    assert deadlines["group"] == "DK"
    assert deadlines["suppressed"] is False
    assert deadlines["requests"] >= 8
    (region,) = [r for r in report["by_region"]["deadlines"] if r["group"] == "1084"]
    assert region["label"] == "Region Hovedstaden"
    assert report["contact_baseline"] == 0.25
    bad = await h.client.get(
        "/ministry/v1/report",
        params={"from": "2026-05-01", "to": "2026-01-01"},
        headers=h.auth(MINISTRY),
    )
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid-period"
