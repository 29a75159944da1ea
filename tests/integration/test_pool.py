"""The store's connection pool on both databases: under more concurrent work than it has
connections, a fixed pool (the default: no overflow) opens no more than its size and makes
the work wait, where overflow connections are opened and closed again and again (on
PostgreSQL, a backend process each time); and an API request that finds every connection
busy for the pool's timeout is a 503 `database-busy`, after which the gateway goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from attest_gateway.config import load_settings
from attest_gateway.infra.db.engine import has_idle_connection, make_engine, settings_engine
from tests.integration.conftest import DB_KINDS, running_gateway
from tests.support.flows import JC, round_trip
from tests.support.harness import fresh_database
from tests.support.kafka import TestKafka

CONCURRENT = 40
ROUNDS = 5


async def _connections_opened(url: str, **pool: Any) -> int:
    """Connections the engine opened while CONCURRENT tasks, ROUNDS times, each ran a short
    transaction."""
    engine = make_engine(url, **pool)
    opened = 0

    def _count(_dbapi_connection: Any, _record: Any) -> None:
        nonlocal opened
        opened += 1

    event.listen(engine.sync_engine, "connect", _count)

    async def work() -> None:
        async with engine.begin() as conn:
            await conn.execute(sa.text("SELECT 1"))
            await asyncio.sleep(0.005)  # held across an await, as a request holds it

    try:
        for _ in range(ROUNDS):
            await asyncio.gather(*(work() for _ in range(CONCURRENT)))
    finally:
        await engine.dispose()
    return opened


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_a_fixed_pool_opens_its_size_and_no_more(kind: str, tmp_path: Path) -> None:
    async with fresh_database(kind, tmp_path) as url:
        fixed = await _connections_opened(url, pool_size=4, max_overflow=0)
        overflowing = await _connections_opened(url, pool_size=4, max_overflow=8)
    assert fixed <= 4
    # The contrast the default avoids: each round opens the overflow connections anew.
    assert overflowing > 4 + 8


def test_the_settings_size_the_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DB_POOL_SIZE", raising=False)  # tests/conftest.py sets one for the suite
    settings = load_settings(var_dir=tmp_path, db_pool_size=7, db_max_overflow=2)
    engine = settings_engine(settings)
    pool: Any = engine.pool
    assert (pool.size(), pool._max_overflow) == (7, 2)
    default: Any = settings_engine(load_settings(var_dir=tmp_path)).pool
    assert (default.size(), default._max_overflow) == (20, 0)


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_a_pool_tells_whether_a_checkout_would_wait(kind: str, tmp_path: Path) -> None:
    async with fresh_database(kind, tmp_path) as url:
        engine = make_engine(url, pool_size=2, max_overflow=0)
        try:
            assert has_idle_connection(engine)  # none opened yet, two may be
            async with engine.connect() as one:
                await one.execute(sa.text("SELECT 1"))
                assert has_idle_connection(engine)
                async with engine.connect() as two:
                    await two.execute(sa.text("SELECT 1"))
                    assert not has_idle_connection(engine)
            assert has_idle_connection(engine)  # both back in the pool
        finally:
            await engine.dispose()


@contextlib.asynccontextmanager
async def _checkout(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection of the gateway's pool for the test to hold. The background loops take
    connections too (the chainer, tracker and relay right after a round trip), and on a
    loaded machine they may hold both for longer than the pool's timeout: the test then
    asks again, since its own checkout is not what it tests."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(exc.TimeoutError), stop=stop_after_attempt(20), reraise=True
    )

    async def connect() -> AsyncConnection:
        return await engine.connect().start()

    conn: AsyncConnection = await retrying(connect)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_every_connection_busy_is_a_503_and_the_gateway_goes_on(
    kind: str, broker: TestKafka, tmp_path: Path
) -> None:
    async with running_gateway(
        kind, tmp_path, broker.bootstrap, db_pool_size=2, db_pool_timeout_seconds=1.0
    ) as h:
        await round_trip(h)
        # The test holds both of the process's connections (the relay, consumers and
        # sweepers wait for one meanwhile, and must not give up for good).
        async with contextlib.AsyncExitStack() as held:
            for _ in range(2):
                conn = await held.enter_async_context(_checkout(h.gw.engine))
                await conn.execute(sa.text("SELECT 1"))
            answer = await h.client.get("/jobcenter/v1/inbox", headers=h.auth(JC))
            await asyncio.sleep(1.2)  # long enough for the background loops to time out too
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "database-busy"
        assert answer.headers["Retry-After"] == "1"
        await round_trip(h)  # API, relay, delivery and tracker all work again
