"""The store gauges (outbox depth and age, mailbox depth, overdue attests, audit entries not yet
chained) against a fresh
database of each kind, with rows made for the purpose; and the metrics token."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest

from attest_gateway.config import load_settings
from attest_gateway.core.clock import ManualClock
from attest_gateway.entrypoints.http.app import create_app
from attest_gateway.infra.db import tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.gauges import StoreGauges
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.observability.metrics import (
    AUDIT_PENDING,
    AUDIT_PENDING_OLDEST,
    MAILBOX_DEPTH,
    OUTBOX_DEPTH,
    OUTBOX_OLDEST,
    OVERDUE,
)
from tests.support.harness import fresh_database

NOW = dt.datetime.now(dt.UTC)


def _gauge(metric: object, **labels: str) -> float:
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.labels == labels:
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_store_gauges(kind: str, tmp_path: Path) -> None:
    async with fresh_database(kind, tmp_path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                for org_id, role in (("jc-test", "jobcenter"), ("psy-test", "psychiatry")):
                    await conn.execute(tables.organisations.insert().values(
                        id=org_id, name=org_id, role=role, custodial=False, enabled=True,
                        created_at=NOW))  # fmt: skip
                for i, (deadline, replied) in enumerate(
                    [(-3, False), (-1, False), (-2, True), (5, False)]
                ):
                    await conn.execute(tables.conversations.insert().values(
                        id=f"c{i}", jobcenter_org_id="jc-test", receiver_org_id="psy-test",
                        request_message_id=f"m{i}", attest_type="LÆ 155",
                        case_kind="sygedagpenge", caseworker_ref="x", municipality="101",
                        region_code="1084", case_ref="r", psychiatric_course=True,
                        first_day_of_absence=NOW.date() - dt.timedelta(days=40),
                        reply_deadline=NOW.date() + dt.timedelta(days=deadline),
                        created_at=NOW))  # fmt: skip
                    if replied:
                        await conn.execute(tables.stages.insert().values(
                            conversation_id=f"c{i}", stage="replied", message_id=f"r{i}",
                            at=NOW))  # fmt: skip
                for i, published in enumerate([None, None, NOW]):
                    await conn.execute(tables.outbox.insert().values(
                        topic="t.medcom.messages", key="k", value=b"v", headers="[]",
                        created_at=NOW - dt.timedelta(seconds=60 - i),
                        published_at=published))  # fmt: skip
                for i, collected in enumerate([None, None, NOW]):
                    await conn.execute(tables.mailbox.insert().values(
                        message_id=f"mb{i}", receiver_org_id="psy-test", sender_org_id="jc-test",
                        conversation_id="c0", message_type="attest-request", envelope=b"{}",
                        delivered_at=NOW, collected_at=collected))  # fmt: skip
                for i, seq in enumerate([None, None, 1]):
                    await conn.execute(tables.audit_pending.insert().values(
                        at=NOW - dt.timedelta(seconds=90 - 30 * i), actor="psy-test",
                        action="mailbox.fetch", source="127.0.0.1", seq=seq))  # fmt: skip
            await StoreGauges().refresh(engine, ManualClock(NOW), force=True)
        finally:
            await engine.dispose()
    assert _gauge(OVERDUE, attest_type="LÆ 155") == 2  # deadline passed, no reply
    assert _gauge(OUTBOX_DEPTH, topic="t.medcom.messages") == 2
    assert 55 <= _gauge(OUTBOX_OLDEST) < 3600
    assert _gauge(MAILBOX_DEPTH, receiver="psy-test", message_type="attest-request") == 2
    assert _gauge(AUDIT_PENDING) == 2  # the chained one is not pending
    assert _gauge(AUDIT_PENDING_OLDEST) == 90


async def test_metrics_token_guards_the_endpoint() -> None:
    token = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    app = create_app(load_settings(metrics_token=token), "unused", run_consumers=False)
    transport = httpx.ASGITransport(app=app)  # no lifespan: /metrics needs no gateway
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "unauthenticated"
    assert right.status_code == 200
    assert "attest_gateway_http_requests_total" in right.text
