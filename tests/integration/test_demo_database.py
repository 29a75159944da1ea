"""`make demo` on PostgreSQL plays into a database it creates under a new name and drops that
one only: an existing database, even one of the demo's own prefix, is never touched."""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from attest_gateway.devtools.demo_database import (
    DEMO_PREFIX,
    create_own_database,
    demo_database_names,
    drop_own_database,
)
from tests.support.harness import PG_ADMIN_DSN, pg_url

pytestmark = pytest.mark.postgres

SERVER = pg_url(PG_ADMIN_DSN.rsplit("/", 1)[1])


async def databases() -> set[str]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


def test_the_names_are_new_each_time() -> None:
    names = demo_database_names()
    drawn = {next(names) for _ in range(100)}
    assert len(drawn) == 100
    assert all(n.startswith(DEMO_PREFIX) and len(n) == len(DEMO_PREFIX) + 12 for n in drawn)


async def test_the_demo_creates_its_database_and_drops_only_that() -> None:
    # Other test sessions may create and drop databases meanwhile: compare names, not sets.
    before = await databases()
    own = await create_own_database(SERVER)
    assert own.name.startswith(DEMO_PREFIX)
    assert own.name not in before
    assert own.name in await databases()
    engine = create_async_engine(own.url)  # the gateway's DATABASE_URL for it works
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT current_database()"))).scalar() == own.name
    finally:
        await engine.dispose()
    await drop_own_database(own)
    after = await databases()
    assert own.name not in after
    assert {n for n in before if not n.startswith("attest_test_")} <= after


async def test_an_existing_database_of_the_drawn_name_is_left_alone() -> None:
    """The first name drawn is taken (a database with a table and a row): the demo draws
    another, and dropping its own leaves the existing one as it was."""
    taken = f"{DEMO_PREFIX}{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{taken}"')
    finally:
        await conn.close()
    try:
        theirs = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + taken)
        try:
            await theirs.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        finally:
            await theirs.close()
        fresh = f"{DEMO_PREFIX}{uuid.uuid4().hex[:12]}"
        own = await create_own_database(SERVER, iter([taken, fresh]))
        assert own.name == fresh
        await drop_own_database(own)
        assert taken in await databases()
        theirs = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + taken)
        try:
            assert await theirs.fetchval("SELECT x FROM kept") == 7
        finally:
            await theirs.close()
    finally:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{taken}" WITH (FORCE)')
        finally:
            await conn.close()


async def test_it_gives_up_rather_than_take_a_database_in_use() -> None:
    taken = f"{DEMO_PREFIX}{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{taken}"')
        with pytest.raises(RuntimeError, match="no free database name"):
            await create_own_database(SERVER, iter([taken] * 3), attempts=3)
        assert taken in await databases()
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{taken}" WITH (FORCE)')
        await conn.close()
