"""One organisation's flood against another's reads, through the real app (real broker,
SQLite): a mailbox read is charged the items it hands out, so a few large reads put the
reader over its rate; its further requests are answered 429 with Retry-After before its
credential is looked up in the store, and before the router (the middleware answers them),
while another organisation's reads are admitted.

The limits' clock is frozen (`RequestLimits.monotonic`): no token comes back while the test
runs, whatever the machine's speed."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest
import pytest_asyncio
import sqlalchemy as sa
from fastapi import Request

from attest_gateway.core.audit import MAILBOX_FETCH
from attest_gateway.core.directory import Organisation
from attest_gateway.core.errors import RateLimited
from attest_gateway.entrypoints.http import auth
from attest_gateway.entrypoints.http.middleware import API_CSP
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.tables import audit_log
from tests.integration.conftest import Harness, running_gateway
from tests.support.flows import JC, PSY
from tests.support.harness import attest_request_body, wait_for
from tests.support.kafka import TestKafka

GP = "gp-noerrebro"
WAITING = 25  # attest requests in PSY's mailbox
BUCKET = 20  # reads: 1 a second, a burst of 20 s


@pytest_asyncio.fixture(scope="module")
async def h(broker: TestKafka, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with running_gateway(
        "sqlite",
        tmp_path_factory.mktemp("fair"),
        broker.bootstrap,
        rate_limit_reads_per_second=1,
        rate_limit_burst_seconds=BUCKET,
        rate_limit_items_per_read=1,
        concurrent_requests_per_org=8,
    ) as harness:
        harness.app.state.request_limits.monotonic = lambda: 0.0  # frozen: no refill
        yield harness


async def _fill_psychiatry_mailbox(h: Harness) -> None:
    for i in range(WAITING):
        body = attest_request_body(jobcenter_gln=h.gln(JC), caseworker_ref=f"sag-fair-{i}")
        sent = await h.client.post(
            "/jobcenter/v1/attest-requests",
            json=body,
            headers={**h.auth(JC), "Idempotency-Key": f"fair-{i}"},
        )
        assert sent.status_code == 202, sent.text

    async def delivered() -> bool:
        async with h.gw.engine.connect() as conn:
            found = await conn.execute(
                sa.text("SELECT count(*) FROM mailbox WHERE receiver_org_id = :o"), {"o": PSY}
            )
            return int(found.scalar_one()) >= WAITING

    await wait_for(delivered)


async def test_a_flood_after_large_reads_is_refused_while_another_organisation_reads(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _fill_psychiatry_mailbox(h)
    large = await h.client.get("/medcom/v1/mailbox?limit=500", headers=h.auth(PSY))
    assert large.status_code == 200, large.text
    assert len(large.json()["items"]) == WAITING  # one read: 25 items, 25 tokens of 20

    looked_up: Counter[str] = Counter()
    organisation_of = auth._organisation_of

    async def counted(request: Request, pem: str | None, token: str) -> Organisation:
        looked_up[token] += 1
        return await organisation_of(request, pem, token)

    monkeypatch.setattr(auth, "_organisation_of", counted)
    refused_by_route: Counter[str] = Counter()
    refuse_after_a_pause = auth.refuse_after_a_pause

    async def counted_refusal(request: Request, over: RateLimited) -> NoReturn:
        refused_by_route[request.url.path] += 1
        await refuse_after_a_pause(request, over)

    monkeypatch.setattr(auth, "refuse_after_a_pause", counted_refusal)
    psy_key = h.creds[PSY]["api_key"]
    flood = [h.client.get("/medcom/v1/mailbox?limit=500", headers=h.auth(PSY)) for _ in range(30)]
    # a read is charged what it asks for until it has answered: GP asks for one item a read
    other = [h.client.get("/medcom/v1/mailbox?limit=1", headers=h.auth(GP)) for _ in range(5)]
    answers = await asyncio.gather(*flood, *other)

    refused, admitted = answers[: len(flood)], answers[len(flood) :]
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["code"] for r in refused} == {"rate-limited"}
    # 20 - 25 = -5 tokens at 1 a second: 6 seconds to the next one, less the pause before
    # each refusal is answered (0.5 to 1.5 s, stretched by the 30 refusals waiting at once,
    # at most those 6 s), rounded up
    assert {int(r.headers["retry-after"]) for r in refused} <= set(range(1, 7))
    assert looked_up[psy_key] == 0  # refused before its credential was looked up again
    # ... and before the router: the large read taught the middleware its target
    # (early_refusal.py), whose answers carry what the route's would
    assert refused_by_route == Counter()
    assert all(r.headers["x-correlation-id"] and r.headers["date"] for r in refused)
    assert {r.headers["content-security-policy"] for r in refused} == {API_CSP}
    assert [r.status_code for r in admitted] == [200] * len(other)
    assert looked_up[h.creds[GP]["api_key"]] == len(other)

    # every read that handed out items is audited: the one large read, as one entry
    await audit.chain_all(h.gw.engine, h.gw.topics)
    async with h.gw.engine.connect() as conn:
        reads = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(audit_log)
                .where(audit_log.c.action == MAILBOX_FETCH, audit_log.c.actor == PSY)
            )
        ).scalar_one()
    assert reads == 1
