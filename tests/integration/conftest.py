"""An in-process gateway on the real embedded broker and a real database, per database kind.

The gateway (API + relay + delivery consumer) runs in the test's event loop through the
FastAPI lifespan; HTTP goes through httpx's ASGI transport. Each kind gets fresh topics
(a unique prefix) and a fresh database.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from attest_gateway.bootstrap import database
from attest_gateway.config import load_settings
from attest_gateway.core.clock import Clock
from attest_gateway.devtools.demo import ensure_demo_orgs
from attest_gateway.entrypoints.http.app import create_app
from attest_gateway.infra.db.migrate import upgrade_async
from tests.support.harness import Harness as Harness  # the tests import it from here
from tests.support.harness import fresh_database
from tests.support.kafka import TestKafka, settings_for

DB_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@asynccontextmanager
async def running_gateway(
    kind: str,
    tmp: Path,
    bootstrap: str,
    *,
    freeze_heap: bool = False,
    clock: Clock | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """The in-process gateway on the broker at `bootstrap`, with a fresh database of `kind`
    and fresh topics; `overrides` are further settings (Kafka TLS, for instance);
    `freeze_heap` as `create_app` takes it (the caller unfreezes); `clock` instead of the
    machine's."""
    async with fresh_database(kind, tmp) as url:
        prefix = f"t{uuid.uuid4().hex[:8]}."
        settings = load_settings(
            **{
                "var_dir": tmp / "var",
                "database_url": url,
                "kafka_topic_prefix": prefix,
                "kafka_group_prefix": f"{prefix}attest-gateway",
                "relay_poll_seconds": 0.2,
                "max_body_bytes": 256 * 1024,
                # The session's gateway answers the authorisation matrix and the fuzzers,
                # which send wrong credentials by the hundred from one address on purpose;
                # the lockout has its own gateway (test_client_limits.py).
                "auth_lockout_failures": 0,
                # test_reliability sends 30 attest requests of one job centre at once.
                "concurrent_requests_per_org": 32,
                "concurrent_requests_per_org_total": 64,
                # Tests poll shared mailboxes of hundreds of items many times a second; the
                # items' cost has its own gateway (test_client_limits.py).
                "rate_limit_items_per_read": 0,
                # Published disclosure decisions would suppress the cells tests add after
                # one until the next; their own tests publish (test_tracker_decisions.py).
                "tracker_decisions_seconds": 0,
                **settings_for(bootstrap),
                **overrides,
            }
        )
        await upgrade_async(url)
        async with database(settings) as engine:
            creds_path = (await ensure_demo_orgs(engine, settings)).path
        creds = json.loads(creds_path.read_text("utf-8"))
        app = create_app(settings, bootstrap, freeze_heap=freeze_heap, clock=clock)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield Harness(
                    kind,
                    settings,
                    bootstrap,
                    app.state.gateway,
                    app.state.running,
                    app,
                    client,
                    creds,
                )


@pytest_asyncio.fixture(params=DB_KINDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database of each kind of its own, migrated to the head (the tracker's rollup tests)."""
    async with fresh_database(request.param, tmp_path) as url:
        await upgrade_async(url)
        yield url


@pytest_asyncio.fixture(scope="session", params=DB_KINDS)
async def harness(
    request: pytest.FixtureRequest, broker: TestKafka, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Harness]:
    kind: str = request.param
    async with running_gateway(kind, tmp_path_factory.mktemp(f"gw-{kind}"), broker.bootstrap) as h:
        yield h
