"""The Alembic migrations produce exactly the tables the code declares (both databases)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from attest_gateway.gateway.store.db import make_engine
from attest_gateway.gateway.store.migrate import upgrade_async
from attest_gateway.gateway.store.tables import metadata
from tests.support.harness import fresh_database


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_migrations_match_the_declared_schema(kind: str, tmp_path: Path) -> None:
    async with fresh_database(kind, tmp_path) as url:
        await upgrade_async(url)
        await upgrade_async(url)  # running them again changes nothing
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                diff = await conn.run_sync(_diff)
        finally:
            await engine.dispose()
    assert diff == []
