"""The gateway's pooled PostgreSQL connections after the server closed them (a restart, a
failover, an operator's pg_terminate_backend): the pool replaces them before use, so the next
requests and deliveries work; and a database error the pool cannot hide is a 503 with a
stable code, not a 500."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa

from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.uow import SqlStore
from tests.integration.conftest import running_gateway
from tests.support.flows import JC, PSY, round_trip
from tests.support.harness import PG_ADMIN_DSN, attest_request_body
from tests.support.kafka import TestKafka

pytestmark = pytest.mark.postgres


async def _terminate_gateway_connections(database: str) -> int:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    return len(rows)


async def test_connections_closed_by_the_server_are_replaced(
    broker: TestKafka, tmp_path: Path
) -> None:
    async with running_gateway("postgres", tmp_path, broker.bootstrap) as h:
        await round_trip(h)  # the pool now holds connections
        database = sa.make_url(h.settings.database_url or "").database or ""
        assert await _terminate_gateway_connections(database) >= 1
        await asyncio.sleep(0.2)  # the event loop sees the sockets close

        body = attest_request_body(jobcenter_gln=h.gln(JC))
        answer = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
        assert answer.status_code == 202, answer.text
        # Every process part (API, relay, delivery, tracker) goes on with fresh connections.
        await round_trip(h)
        mailbox = await h.get_json("/medcom/v1/mailbox", PSY)
        assert answer.json()["message_id"] in {i["message_id"] for i in mailbox["items"]}


async def test_an_unreachable_database_is_a_503(broker: TestKafka, tmp_path: Path) -> None:
    async with running_gateway("postgres", tmp_path, broker.bootstrap) as h:
        # The API's requests now go to an address where no database listens.
        unreachable = sa.make_url(h.settings.database_url or "").set(port=1)
        engine = make_engine(unreachable.render_as_string(hide_password=False))
        h.app.state.gateway = dataclasses.replace(
            h.gw, engine=engine, store=SqlStore(engine, h.gw.topics, h.gw.writes)
        )
        try:
            answer = await h.client.get("/jobcenter/v1/inbox", headers=h.auth(JC))
        finally:
            await engine.dispose()
            h.app.state.gateway = h.gw
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "database-unavailable"
        assert "Retry-After" in answer.headers
