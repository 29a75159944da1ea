"""`attest_gateway_db_statements_total`: every statement an engine from `make_engine` sends
counts once (an executemany too: it is one round trip), and /metrics exports it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from attest_gateway.entrypoints.http.routes.metrics import router
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.observability import metrics

NAME = "attest_gateway_db_statements_total"


def counted() -> float:
    return REGISTRY.get_sample_value(NAME) or 0.0


async def test_each_statement_counts_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{(tmp_path / 'db.sqlite').as_posix()}")
    # The counter is the process's: gateways other tests left running in this process (the
    # session's harnesses) may add to it meanwhile. This engine's own share is what its
    # `before_cursor_execute` listener, the metric's, sees.
    assert sa.event.contains(engine.sync_engine, "before_cursor_execute", metrics.db_statement)
    seen: list[str] = []
    sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    try:
        async with engine.begin() as conn:
            before = counted()
            await conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(
                sa.text("INSERT INTO t (x) VALUES (:x)"), [{"x": i} for i in range(5)]
            )
            await conn.execute(sa.text("SELECT count(*) FROM t"))
            assert len(seen) == 3  # the executemany of five rows is one
            assert counted() - before >= len(seen)
    finally:
        await engine.dispose()


async def test_metrics_exports_the_count(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{(tmp_path / 'db.sqlite').as_posix()}")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    finally:
        await engine.dispose()
    app = FastAPI()
    app.include_router(router)
    app.state.settings = SimpleNamespace(metrics_token=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[NAME] >= 1
    assert samples[NAME] == counted()
