"""Who sees what of the ministry's figures, through the real HTTP app: a region's analysts
see their region's, a municipality's analysts their municipality's, and both are refused
(403 `outside-scope`) when they ask for another's; the ministry sees everything; no answer
holds a CPR number or a case ref."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from attest_gateway.core.identifiers import municipalities
from attest_gateway.infra.db.tables import tracker_conversations
from tests.integration.conftest import Harness
from tests.integration.test_tracker_consumer import cpr
from tests.support.harness import attest_request_body, wait_for

JC, JC_AARHUS = "jc-koebenhavn", "jc-aarhus"
MINISTRY, REGION, MUNICIPALITY = "ministry", "analyse-hovedstaden", "analyse-koebenhavn"
IN_1084 = {m.kommunekode for m in municipalities().values() if m.region_code == "1084"}


async def _requests(h: Harness) -> list[str]:
    """Six requests from København (101, region 1084) and six from Aarhus (751, 1082)."""
    ids = []
    for jc, municipality, base in ((JC, "101", 700), (JC_AARHUS, "751", 800)):
        for n in range(6):
            body = attest_request_body(
                municipality=municipality, jobcenter_gln=h.gln(jc), cpr=cpr(base + n)
            )
            response = await h.client.post(
                "/jobcenter/v1/attest-requests", json=body, headers=h.auth(jc)
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["conversation_id"])

    async def tracked() -> bool:
        async with h.gw.engine.connect() as conn:
            n = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        tracker_conversations.c.conversation_id.in_(ids)
                    )
                )
            ).scalar_one()
        return bool(n == len(ids))

    await wait_for(tracked, within=60)
    return ids


async def _refused(h: Harness, org: str, url: str, params: dict[str, str]) -> None:
    response = await h.client.get(url, params=params, headers=h.auth(org))
    assert response.status_code == 403, (url, params, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "outside-scope"


ENDPOINTS = (
    "report",
    "durations",
    "deadlines",
    "contacts",
    "coverage",
    "latency",
    "request-timing",
    "overdue",
    "rehabilitation",
)


async def test_analysts_are_refused_others_figures(harness: Harness) -> None:
    h = harness
    for endpoint in ENDPOINTS:
        url = f"/ministry/v1/{endpoint}"
        for org in (REGION, MUNICIPALITY):
            await _refused(h, org, url, {"region": "1082"})
            await _refused(h, org, url, {"municipality": "751"})  # Aarhus, region 1082
        await _refused(h, MUNICIPALITY, url, {"municipality": "147"})  # same region, not its own
        # the ministry may ask for any place
        for params in ({"region": "1082"}, {"municipality": "751"}):
            response = await h.client.get(url, params=params, headers=h.auth(MINISTRY))
            assert response.status_code == 200, (url, response.text)
    # groupings that would show others' figures
    for endpoint in ("durations", "deadlines", "contacts", "coverage", "latency"):
        await _refused(h, MUNICIPALITY, f"/ministry/v1/{endpoint}", {"by": "region"})
    for endpoint in ("durations", "deadlines"):
        await _refused(h, REGION, f"/ministry/v1/{endpoint}", {"by": "receiver"})
    unknown = await h.client.get(
        "/ministry/v1/coverage", params={"municipality": "999"}, headers=h.auth(MINISTRY)
    )
    assert unknown.status_code == 422
    assert unknown.json()["code"] == "invalid-kommunekode"


def _groups(answer: dict[str, Any]) -> set[str]:
    return {row["group"] for row in answer["rows"]}


async def test_analysts_see_their_own_place_only(harness: Harness) -> None:
    h = harness
    await _requests(h)
    region = (
        await h.client.get(
            "/ministry/v1/deadlines", params={"by": "municipality"}, headers=h.auth(REGION)
        )
    ).json()
    assert region["filters"]["region"] == "1084"
    assert "101" in _groups(region)
    assert _groups(region) <= IN_1084
    (national,) = (await h.client.get("/ministry/v1/latency", headers=h.auth(REGION))).json()[
        "rows"
    ]
    assert (national["group"], national["label"]) == ("1084", "Region Hovedstaden")

    municipality = (
        await h.client.get(
            "/ministry/v1/request-timing",
            params={"by": "municipality"},
            headers=h.auth(MUNICIPALITY),
        )
    ).json()
    assert municipality["filters"]["municipality"] == "101"
    assert _groups(municipality) == {"101"}
    meta = (await h.client.get("/ministry/v1/meta", headers=h.auth(MUNICIPALITY))).json()
    assert meta["scope"] == {"kind": "municipality", "region": "1084", "municipality": "101"}
    report = (await h.client.get("/ministry/v1/report", headers=h.auth(MUNICIPALITY))).json()
    assert report["by_region"]["deadlines"] == []
    assert {r["group"] for r in report["national"]["deadlines"]} == {"101"}
    assert _groups({"rows": report["by_municipality"]["deadlines"]}) <= {"101"}

    # The ministry sees Aarhus; the analysts never do. The cells are decided over the whole
    # country, so a cell the analysts see is shown or suppressed as the ministry sees it.
    everything = (
        await h.client.get(
            "/ministry/v1/deadlines", params={"by": "municipality"}, headers=h.auth(MINISTRY)
        )
    ).json()
    assert {"101", "751"} <= _groups(everything)
    theirs = {r["group"]: r for r in region["rows"]}
    for row in everything["rows"]:
        if row["group"] in theirs:
            assert row == theirs[row["group"]]

    # no CPR number or case ref in any analyst's answer, JSON or CSV
    async with h.gw.engine.connect() as conn:
        refs = set(
            (await conn.execute(sa.select(tracker_conversations.c.case_ref))).scalars().all()
        )
    secrets = refs | {cpr(n) for n in (*range(700, 706), *range(800, 806))}
    for org in (REGION, MUNICIPALITY):
        for endpoint in ENDPOINTS:
            for fmt in ("json", "csv"):
                params = {} if endpoint == "report" else {"format": fmt}
                response = await h.client.get(
                    f"/ministry/v1/{endpoint}", params=params, headers=h.auth(org)
                )
                assert response.status_code == 200, (endpoint, response.text)
                assert not any(s in response.text for s in secrets), endpoint
