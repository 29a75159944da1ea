"""The directory's snapshot cache (infra/db/directory.py, migration 0008) is exact, on both
databases: a change made elsewhere — another engine, plain SQL, as the admin CLI in another
process or an operator's psql would — counts at the very next transaction; one transaction
checks the generation token once; a transaction sees its own directory writes; a re-created
database is never served the old snapshot; an old schema without the generation table is
read directly. A time-based cache fails the first three tests, a generation counter the
re-created database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
import sqlalchemy as sa
from alembic import command
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.contracts.envelope import Suite
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.directory import Organisation, Role, hash_api_key, new_api_key
from attest_gateway.crypto.sealing import OrgKeys, PrivateHpkeKey
from attest_gateway.infra.db import directory, tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import alembic_config, upgrade_async
from tests.integration.conftest import DB_KINDS, running_gateway
from tests.support.flows import JC as DEMO_JC
from tests.support.harness import PG_ADMIN_DSN, attest_request_body, fresh_database, wait_for
from tests.support.kafka import TestKafka

SUITE: Suite = "X25519/HKDF_SHA256/AES_256_GCM"
JC = Organisation(
    id="jc-cache", name="Jobcenter Cache", role=Role.JOBCENTER, sor="101181000099001",
    gln="5790000990011", kommunekode="101", ydernummer=None, region_code="1084",
    custodial=True, enabled=True,
)  # fmt: skip
PSY = Organisation(
    id="psy-cache", name="Psykiatri Cache", role=Role.PSYCHIATRY, sor="715381000099002",
    gln="5790000990028", kommunekode=None, ydernummer="099002", region_code="1084",
    custodial=False, enabled=True,
)  # fmt: skip
FINGERPRINT = "ab" * 32  # a pinned client certificate of PSY


@dataclass
class Store:
    """A migrated database with JC and PSY; `reader` is the engine whose cache (`cache`) is
    under test, `writer` stands for another process (plain SQL, never through
    infra/db/directory.py)."""

    kind: str
    url: str
    tmp: Path
    cache: directory.DirectoryCache
    reader: AsyncEngine
    writer: AsyncEngine
    keys: dict[str, OrgKeys]
    api_keys: dict[str, str]

    def hpke_id(self, org: Organisation) -> str:
        return self.keys[org.id].current_hpke.key_id

    def signing_id(self, org: Organisation) -> str:
        return self.keys[org.id].current_signing.key_id


async def seed(engine: AsyncEngine) -> tuple[dict[str, OrgKeys], dict[str, str]]:
    keys = {org.id: OrgKeys.generate(org.id, SUITE) for org in (JC, PSY)}
    api_keys = {org.id: new_api_key(org.id) for org in (JC, PSY)}
    now = SystemClock().now()
    async with engine.begin() as conn:
        for org in (JC, PSY):
            await directory.add_organisation(
                conn, org, keys[org.id], api_key=api_keys[org.id], now=now
            )
        await directory.register_client_certificate(
            conn, PSY.id, FINGERPRINT, not_after=now + dt.timedelta(days=30), now=now
        )
    return keys, api_keys


@pytest_asyncio.fixture(params=DB_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind: str = request.param
    async with fresh_database(kind, tmp_path) as url:
        await upgrade_async(url)
        cache = directory.DirectoryCache()
        reader, writer = cache.bind(make_engine(url)), make_engine(url)
        try:
            keys, api_keys = await seed(writer)
            yield Store(kind, url, tmp_path, cache, reader, writer, keys, api_keys)
        finally:
            await reader.dispose()
            await writer.dispose()


async def elsewhere(engine: AsyncEngine, sql: str, **params: Any) -> None:
    """Plain SQL in a transaction of its own, committed."""
    async with engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def revoke_elsewhere(engine: AsyncEngine, key_id: str, at: dt.datetime) -> None:
    async with engine.begin() as conn:  # Core, so that SQLite stores the time as SQLAlchemy does
        await conn.execute(
            tables.org_keys.update().where(tables.org_keys.c.key_id == key_id).values(revoked_at=at)
        )


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements `engine` sends while the block runs."""
    seen: list[str] = []

    def listener(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()).lower())

    event.listen(engine.sync_engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listener)


def directory_statements(seen: list[str]) -> dict[str, int]:
    """Statements that read the directory: token checks and reads of the two tables."""
    return {
        "token": sum("from directory_generation" in s for s in seen),
        "organisations": sum("from organisations" in s for s in seen),
        "org_keys": sum("from org_keys" in s for s in seen),
    }


# --- changes made elsewhere count at the next transaction ------------------------------------


async def test_a_revocation_elsewhere_counts_at_the_next_transaction(store: Store) -> None:
    now = SystemClock().now()
    signing, hpke = store.signing_id(PSY), store.hpke_id(PSY)
    async with store.reader.connect() as conn:
        key = await directory.signing_key(conn, signing)
        assert key is not None
        assert key.usable(now)
        assert await directory.usable_signing_key_ids(conn, PSY.id, now) == [signing]
        current = await directory.current_hpke_key(conn, PSY.id, now)
        assert current is not None
        assert current.key_id == hpke
        await conn.commit()

        await revoke_elsewhere(store.writer, signing, now - dt.timedelta(seconds=1))
        # The same connection, a new transaction: checked again.
        key = await directory.signing_key(conn, signing)
        assert key is not None
        assert not key.usable(now)
        assert await directory.usable_signing_key_ids(conn, PSY.id, now) == []
        await conn.rollback()

        await revoke_elsewhere(store.writer, hpke, now - dt.timedelta(seconds=1))
        assert await directory.current_hpke_key(conn, PSY.id, now) is None
    async with store.reader.begin() as conn:  # and a new connection
        assert await directory.current_hpke_key(conn, PSY.id, now) is None
        key = await directory.signing_key(conn, signing)
        assert key is not None
        assert not key.usable(now)
        # the other organisation's keys are untouched
        assert await directory.usable_signing_key_ids(conn, JC.id, now) == [store.signing_id(JC)]


async def test_disabling_elsewhere_counts_at_the_next_transaction(store: Store) -> None:
    now = SystemClock().now()
    api_key = store.api_keys[PSY.id]
    async with store.reader.connect() as conn:
        found = await directory.org_by_api_key(conn, api_key)
        assert found is not None
        assert found.enabled
        assert await directory.org_by_client_certificate(conn, FINGERPRINT, now) == found
    await elsewhere(
        store.writer, "UPDATE organisations SET enabled = :e WHERE id = :id", e=False, id=PSY.id
    )
    async with store.reader.connect() as conn:
        for org in (
            await directory.org_by_api_key(conn, api_key),
            await directory.org_by_id(conn, PSY.id),
            await directory.org_by_sor(conn, PSY.sor or ""),
            await directory.org_by_ydernummer(conn, PSY.ydernummer or ""),
            await directory.org_by_identifiers(conn, sor=None, gln=PSY.gln),
        ):
            assert org is not None
            assert not org.enabled
        assert await directory.org_by_client_certificate(conn, FINGERPRINT, now) is None
    # A new API key elsewhere: the old one stops working at once, the new one works.
    new_key = new_api_key(PSY.id)
    await elsewhere(
        store.writer,
        "UPDATE organisations SET enabled = :e, api_key_hash = :h WHERE id = :id",
        e=True,
        h=hash_api_key(new_key),
        id=PSY.id,
    )
    async with store.reader.connect() as conn:
        assert await directory.org_by_api_key(conn, api_key) is None
        found = await directory.org_by_api_key(conn, new_key)
        assert found is not None
        assert found.enabled
        assert await directory.org_by_client_certificate(conn, FINGERPRINT, now) == found


async def test_keys_and_organisations_added_elsewhere_count_at_once(store: Store) -> None:
    now = SystemClock().now()
    async with store.reader.connect() as conn:
        current = await directory.current_hpke_key(conn, PSY.id, now)
        assert current is not None
        assert current.key_id == store.hpke_id(PSY)
    newer = PrivateHpkeKey.generate(SUITE)
    async with store.writer.begin() as conn:
        await conn.execute(
            tables.org_keys.insert().values(
                key_id=newer.key_id, org_id=PSY.id, purpose="hpke", algorithm=SUITE,
                public_key=newer.public_encoded, created_at=now + dt.timedelta(minutes=1),
            )
        )  # fmt: skip
    async with store.reader.connect() as conn:
        current = await directory.current_hpke_key(conn, PSY.id, now)
        assert current is not None
        assert current.key_id == newer.key_id
        assert await directory.hpke_key_owner(conn, newer.key_id) == PSY.id
        assert await directory.org_by_id(conn, "gp-new") is None
    await elsewhere(
        store.writer,
        "INSERT INTO organisations (id, name, role, sor, gln, custodial, enabled, created_at) "
        "VALUES ('gp-new', 'Lægen', 'gp', '900000000000001', '5790000990035', :f, :t, :at)",
        f=False,
        t=True,
        at=now,
    )
    async with store.reader.connect() as conn:
        found = await directory.org_by_identifiers(conn, sor="900000000000001", gln=None)
        assert found is not None
        assert (found.id, found.role) == ("gp-new", Role.GP)
    # ... and deletions
    await elsewhere(store.writer, "DELETE FROM org_keys WHERE key_id = :k", k=newer.key_id)
    await elsewhere(store.writer, "DELETE FROM organisations WHERE id = 'gp-new'")
    async with store.reader.connect() as conn:
        assert await directory.hpke_key_owner(conn, newer.key_id) is None
        current = await directory.current_hpke_key(conn, PSY.id, now)
        assert current is not None
        assert current.key_id == store.hpke_id(PSY)
        assert await directory.org_by_id(conn, "gp-new") is None


# --- the cost: one token query per transaction -----------------------------------------------


async def every_lookup(conn: Any, store: Store, now: dt.datetime) -> None:
    assert await directory.org_by_id(conn, JC.id) is not None
    assert await directory.org_by_api_key(conn, store.api_keys[JC.id]) is not None
    assert await directory.org_by_sor(conn, PSY.sor or "") is not None
    assert await directory.org_by_ydernummer(conn, PSY.ydernummer or "") is not None
    assert await directory.org_by_identifiers(conn, sor=None, gln=PSY.gln) is not None
    assert await directory.current_hpke_key(conn, PSY.id, now) is not None
    assert await directory.usable_signing_key_ids(conn, JC.id, now)
    assert await directory.hpke_key_owner(conn, store.hpke_id(PSY)) == PSY.id
    assert await directory.signing_key(conn, store.signing_id(JC)) is not None
    assert await directory.org_by_client_certificate(conn, FINGERPRINT, now) is not None


async def test_a_transaction_checks_the_token_once(store: Store) -> None:
    now = SystemClock().now()
    async with store.reader.connect() as conn:  # the engine's first look
        await every_lookup(conn, store, now)
    with statements(store.reader) as seen:
        async with store.reader.connect() as conn:
            await every_lookup(conn, store, now)
            await every_lookup(conn, store, now)
    assert len(seen) == 1
    assert seen[0].startswith("select directory_generation.token from")

    with statements(store.reader) as seen:
        async with store.reader.connect() as conn:
            await every_lookup(conn, store, now)
            await conn.commit()
            await every_lookup(conn, store, now)  # a new transaction: checked again
            await conn.rollback()
            await every_lookup(conn, store, now)
            await conn.commit()
    assert directory_statements(seen) == {"token": 3, "organisations": 0, "org_keys": 0}
    assert len(seen) == 3

    await elsewhere(store.writer, "UPDATE organisations SET name = name WHERE id = :id", id=JC.id)
    with statements(store.reader) as seen:
        async with store.reader.connect() as conn:
            await every_lookup(conn, store, now)
        async with store.reader.connect() as conn:
            await every_lookup(conn, store, now)
    # the first transaction reloads (two reads), the second finds the snapshot current
    assert directory_statements(seen) == {"token": 2, "organisations": 1, "org_keys": 1}
    assert len(seen) == 4


async def test_an_engine_without_a_cache_reads_the_directory_every_time(store: Store) -> None:
    """The cache belongs to the engine it is bound to: an engine without one (the operator
    commands', here the writer) never checks a token and reads the tables at every lookup,
    also within one transaction."""
    with statements(store.writer) as seen:
        async with store.writer.connect() as conn:
            for _ in range(2):
                found = await directory.org_by_id(conn, PSY.id)
                assert found is not None
    assert directory_statements(seen) == {"token": 0, "organisations": 2, "org_keys": 0}
    async with store.writer.connect() as conn, store.reader.connect() as cached:
        assert directory.cache_of(conn) is None
        assert directory.cache_of(cached) is store.cache


# --- a transaction's own writes --------------------------------------------------------------


async def test_a_transaction_sees_its_own_directory_writes(store: Store) -> None:
    now = SystemClock().now()
    gp = Organisation(
        id="gp-own", name="Lægen", role=Role.GP, sor="900000000000002", gln="5790000990042",
        kommunekode=None, ydernummer="099004", region_code="1084", custodial=False, enabled=True,
    )  # fmt: skip
    gp_keys = OrgKeys.generate(gp.id, SUITE)
    async with store.reader.connect() as conn:
        psy = await directory.org_by_id(conn, PSY.id)  # the snapshot, checked
        assert psy is not None
        assert psy.enabled
        await directory.execute_write(
            conn,
            tables.organisations.update()
            .where(tables.organisations.c.id == PSY.id)
            .values(enabled=False),
        )
        psy = await directory.org_by_id(conn, PSY.id)
        assert psy is not None
        assert not psy.enabled
        await directory.add_organisation(conn, gp, gp_keys, api_key=None, now=now)
        assert await directory.org_by_ydernummer(conn, "099004") == gp
        current = await directory.current_hpke_key(conn, gp.id, now)
        assert current is not None
        assert current.key_id == gp_keys.current_hpke.key_id
        await conn.rollback()
        # rolled back: nothing of it was cached
        psy = await directory.org_by_id(conn, PSY.id)
        assert psy is not None
        assert psy.enabled
        assert await directory.org_by_id(conn, gp.id) is None
        assert await directory.current_hpke_key(conn, gp.id, now) is None
    async with store.reader.begin() as conn:  # committed this time: everyone sees it
        await directory.add_organisation(conn, gp, gp_keys, api_key=None, now=now)
        assert await directory.org_by_id(conn, gp.id) == gp
    async with store.writer.connect() as conn:
        assert await directory.org_by_id(conn, gp.id) == gp
    async with store.reader.connect() as conn:
        assert await directory.hpke_key_owner(conn, gp_keys.current_hpke.key_id) == gp.id


# --- one generation per HTTP request ---------------------------------------------------------


async def test_a_request_reads_the_generation_it_first_checked(store: Store) -> None:
    """Inside `DirectoryCache.request_view` (one HTTP request) the first check fixes the
    snapshot: a change committed elsewhere meanwhile counts from the next request on, and a
    request that writes the directory reads it as it is from then on."""
    now = SystemClock().now()
    api_key = store.api_keys[PSY.id]
    with store.cache.request_view():
        with statements(store.reader) as seen:
            async with store.reader.connect() as conn:  # the authentication
                assert await directory.org_by_api_key(conn, api_key) is not None
        assert directory_statements(seen)["token"] == 1
        await elsewhere(
            store.writer, "UPDATE organisations SET enabled = :e WHERE id = :id", e=False, id=PSY.id
        )
        with statements(store.reader) as seen:
            async with store.reader.begin() as conn:  # the request's own transaction
                org = await directory.org_by_id(conn, PSY.id)
                assert org is not None
                assert org.enabled  # as authenticated
        assert directory_statements(seen) == {"token": 0, "organisations": 0, "org_keys": 0}
        async with store.reader.begin() as conn:
            await directory.execute_write(
                conn,
                tables.organisations.update()
                .where(tables.organisations.c.id == JC.id)
                .values(name="Jobcenter Omdøbt"),
            )
        async with store.reader.connect() as conn:  # after its own write: checked again
            jc = await directory.org_by_id(conn, JC.id)
            assert jc is not None
            assert jc.name == "Jobcenter Omdøbt"
            psy = await directory.org_by_id(conn, PSY.id)
            assert psy is not None
            assert not psy.enabled
    with store.cache.request_view():  # the next request
        async with store.reader.connect() as conn:
            assert await directory.org_by_api_key(conn, api_key) is not None
            assert await directory.org_by_client_certificate(conn, FINGERPRINT, now) is None
    async with store.reader.connect() as conn:  # outside a request: every transaction checks
        org = await directory.org_by_id(conn, PSY.id)
        assert org is not None
        assert not org.enabled


# --- a re-created database -------------------------------------------------------------------


async def recreate(store: Store) -> None:
    """Drop the database and make it again under the same URL: migrations, the same
    organisations with new keys (the same writes, so a counter would come out the same)."""
    await store.reader.dispose()
    await store.writer.dispose()
    if store.kind == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            (store.tmp / f"gateway.db{suffix}").unlink(missing_ok=True)
    else:
        name = store.url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    await upgrade_async(store.url)
    store.keys, store.api_keys = await seed(store.writer)


async def test_a_recreated_database_is_not_served_the_old_snapshot(store: Store) -> None:
    now = SystemClock().now()
    old_hpke, old_signing, old_api_key = store.hpke_id(PSY), store.signing_id(JC), store.api_keys
    async with store.reader.connect() as conn:
        current = await directory.current_hpke_key(conn, PSY.id, now)
        assert current is not None
        assert current.key_id == old_hpke
    await recreate(store)  # the same engine objects (their pools were disposed)
    assert store.hpke_id(PSY) != old_hpke
    async with store.reader.connect() as conn:
        current = await directory.current_hpke_key(conn, PSY.id, now)
        assert current is not None
        assert current.key_id == store.hpke_id(PSY)
        assert await directory.signing_key(conn, old_signing) is None
        assert await directory.org_by_api_key(conn, old_api_key[JC.id]) is None
        assert await directory.org_by_api_key(conn, store.api_keys[JC.id]) is not None


# --- the migration and an old schema ---------------------------------------------------------


def _alembic(url: str, verb: str, target: str) -> None:
    getattr(command, verb)(alembic_config(url), target)


# The organisations column a later revision (0018) adds: today's code reads and writes it, so
# the 0007 directory is given it by hand while it stands for the old schema (and loses it
# again before the migrations that add it run).
_LATER_COLUMN = (
    "ALTER TABLE organisations ADD COLUMN message_format VARCHAR(8) NOT NULL DEFAULT 'json'"
)
_LATER_COLUMN_GONE = "ALTER TABLE organisations DROP COLUMN message_format"


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_an_old_schema_is_read_directly_until_migrated(kind: str, tmp_path: Path) -> None:
    async with fresh_database(kind, tmp_path) as url:
        await asyncio.to_thread(_alembic, url, "upgrade", "0007")
        reader, writer = directory.DirectoryCache().bind(make_engine(url)), make_engine(url)
        try:
            await elsewhere(writer, _LATER_COLUMN)
            keys, api_keys = await seed(writer)
            now = SystemClock().now()
            with statements(reader) as seen:
                async with reader.connect() as conn:
                    found = await directory.org_by_api_key(conn, api_keys[JC.id])
                    assert found is not None
                    assert found.enabled
                    assert await directory.org_by_id(conn, PSY.id) is not None
            assert directory_statements(seen) == {"token": 0, "organisations": 2, "org_keys": 0}
            await elsewhere(writer, "UPDATE organisations SET enabled = :e", e=False)
            async with reader.connect() as conn:
                found = await directory.org_by_api_key(conn, api_keys[JC.id])
                assert found is not None
                assert not found.enabled

            await elsewhere(writer, _LATER_COLUMN_GONE)
            await asyncio.to_thread(_alembic, url, "upgrade", "heads")  # the engine lives on
            with statements(reader) as seen:
                async with reader.connect() as conn:
                    found = await directory.org_by_api_key(conn, api_keys[JC.id])
                    assert found is not None
                    assert not found.enabled
                    assert await directory.org_by_id(conn, PSY.id) is not None
            assert directory_statements(seen) == {"token": 1, "organisations": 1, "org_keys": 1}
            await revoke_elsewhere(writer, keys[JC.id].current_signing.key_id, now)
            async with reader.connect() as conn:
                assert await directory.usable_signing_key_ids(conn, JC.id, now) == []

            # Down again: the triggers and their function go with the table (writes work).
            await reader.dispose()
            await asyncio.to_thread(_alembic, url, "downgrade", "0007")
            await elsewhere(writer, _LATER_COLUMN)
            await elsewhere(writer, "UPDATE organisations SET enabled = :e", e=True)
            await elsewhere(writer, "DELETE FROM org_keys WHERE org_id = :o", o=PSY.id)
            async with writer.connect() as conn:
                names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
                assert "directory_generation" not in names
                if kind == "postgres":
                    leftover = await conn.scalar(
                        sa.text("SELECT count(*) FROM pg_proc WHERE proname LIKE 'directory_%'")
                    )
                    assert leftover == 0
            fresh = make_engine(url)
            try:
                async with fresh.connect() as conn:
                    found = await directory.org_by_id(conn, JC.id)
                    assert found is not None
                    assert found.enabled
                    assert await directory.current_hpke_key(conn, PSY.id, now) is None
            finally:
                await fresh.dispose()
        finally:
            await reader.dispose()
            await writer.dispose()


# --- what one accepted request costs ---------------------------------------------------------


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_an_accepted_request_checks_the_directory_twice(
    kind: str, tmp_path: Path, broker: TestKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authentication and the delivery each check the token once (the request's own
    transaction reads the generation its authentication checked) and read nothing else of the
    directory (was: nine queries of the two tables, then three token checks)."""
    # No sweeps and no tracker in the window: only the request and its delivery touch the
    # database (the tracker's first event of a conversation looks up the receiver's role).
    quiet: dict[str, Any] = {"sweep_interval_seconds": 3600.0, "tracker_enabled": False}
    async with running_gateway(kind, tmp_path, broker.bootstrap, **quiet) as h:

        async def accept() -> dict[str, int]:
            body = attest_request_body(jobcenter_gln=h.gln(DEMO_JC))
            with statements(h.gw.engine) as seen:
                response = await h.client.post(
                    "/jobcenter/v1/attest-requests", json=body, headers=h.auth(DEMO_JC)
                )
                assert response.status_code == 202, response.text
                message_id = response.json()["message_id"]

                async def delivered() -> bool:
                    async with h.gw.engine.connect() as conn:
                        row = await conn.scalar(
                            sa.select(tables.mailbox.c.message_id).where(
                                tables.mailbox.c.message_id == message_id
                            )
                        )
                    return row is not None

                await wait_for(delivered)
            return directory_statements(seen)

        await accept()  # the snapshot is loaded
        cached = await accept()
        assert cached == {"token": 2, "organisations": 0, "org_keys": 0}

        async def no_snapshot(_conn: Any) -> None:
            return None

        monkeypatch.setattr(directory, "_snapshot", no_snapshot)
        direct = await accept()
        print(f"\ndirectory statements per accepted request ({kind}): {cached}; direct: {direct}")
        assert direct["token"] == 0
        assert direct["organisations"] + direct["org_keys"] > 3
