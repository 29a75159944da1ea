"""Two roles on the real PostgreSQL: the owner migrates and prunes; the runtime role, granted by
`attest-gateway db grant`, reads and appends the audit log and can neither change nor remove
an entry; production refuses to start as a role that could, and retention run as the runtime
role leaves the audit log to the owner (infra/db/grants.py).

The roles are made for the test and dropped after it (the server trusts 127.0.0.1, so any
role with LOGIN connects without a password)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from attest_gateway.bootstrap import refuse_audit_rewrites
from attest_gateway.config import load_settings
from attest_gateway.core.audit import AuditEvent
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.infra.db import audit, directory, grants, tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.housekeeping.retention import prune_all
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.production import UnsafeSettings
from tests.support.harness import PG_ADMIN_DSN, fresh_database
from tests.support.world import GATEWAY, PSY, World, make_world

pytestmark = pytest.mark.postgres

TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
DAY = dt.timedelta(days=1)


@dataclass
class Roles:
    world: World
    database: str
    owner_url: str
    runtime_url: str
    runtime_role: str
    owner: AsyncEngine
    runtime: AsyncEngine


def _as(url: str, role: str) -> str:
    """`url` with `role` as its user (trust authentication: no password)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


async def _admin(*statements: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def roles(tmp_path: Path) -> AsyncIterator[Roles]:
    suffix = uuid.uuid4().hex[:10]
    owner_role, runtime_role = f"attest_owner_{suffix}", f"attest_runtime_{suffix}"
    await _admin(f'CREATE ROLE "{owner_role}" LOGIN', f'CREATE ROLE "{runtime_role}" LOGIN')
    try:
        async with fresh_database("postgres", tmp_path) as url:
            name = urlsplit(url).path.lstrip("/")
            await _admin(f'ALTER DATABASE "{name}" OWNER TO "{owner_role}"')
            owner_url, runtime_url = _as(url, owner_role), _as(url, runtime_role)
            await upgrade_async(owner_url)
            world = make_world()
            owner, runtime = make_engine(owner_url), make_engine(runtime_url)
            try:
                async with owner.begin() as conn:
                    for org in world.orgs.values():
                        await directory.add_organisation(
                            conn, org, world.keys(org.id), api_key=None,
                            now=world.clock.now() - 1000 * DAY,
                        )  # fmt: skip
                yield Roles(world, name, owner_url, runtime_url, runtime_role, owner, runtime)
            finally:
                await owner.dispose()
                await runtime.dispose()
    finally:  # the database (and with it every grant in it) is gone: the roles can go
        await _admin(f'DROP ROLE IF EXISTS "{runtime_role}"', f'DROP ROLE IF EXISTS "{owner_role}"')


async def _grant(r: Roles) -> list[str]:
    async with r.owner.begin() as conn:
        return await grants.grant_runtime(conn, r.runtime_role)


async def _append(engine: AsyncEngine, world: World, n: int) -> None:
    now = world.clock.now()
    events = [
        AuditEvent(actor=PSY, action="mailbox.fetch", source="192.0.2.10", at=now,
                   message_id=str(uuid.uuid4()))
        for _ in range(n)
    ]  # fmt: skip
    async with engine.begin() as conn:
        await audit.record_many(conn, TOPICS, events)
    await audit.chain_all(engine, TOPICS)  # as the worker's chainer does, as the same role


async def _refused(engine: AsyncEngine, statement: sa.Executable) -> str | None:
    """The SQLSTATE PostgreSQL answers `statement` with (it must refuse it)."""
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(statement)
    return getattr(getattr(caught.value.orig, "__cause__", None), "sqlstate", None)


async def test_the_runtime_role_appends_to_the_audit_log_and_cannot_rewrite_it(
    roles: Roles,
) -> None:
    r = roles
    async with r.owner.connect() as conn:  # the owner holds every privilege on its tables
        assert set(await grants.rewrite_privileges(conn)) == {
            f"{p} on {t}" for t, privs in grants.REWRITES.items() for p in privs
        }
    statements = await _grant(r)
    assert f"GRANT SELECT, INSERT ON public.audit_log TO {r.runtime_role}" in statements
    assert f"GRANT SELECT, INSERT, UPDATE (seq) ON public.audit_pending TO {r.runtime_role}" in (
        statements
    )
    async with r.runtime.connect() as conn:
        assert await grants.rewrite_privileges(conn) == []
        assert not await grants.may_prune_audit(conn)

    await _append(r.runtime, r.world, 5)  # the log, the head and the outbox, as a read does
    async with r.runtime.begin() as conn:  # the sweeper's signed checkpoint
        point = await audit.checkpoint_if_due(
            conn, r.world.keys(GATEWAY).current_signing, r.world.clock.now(),
            every=1, interval=DAY, topics=TOPICS, actor=GATEWAY,
        )  # fmt: skip
    assert point is not None
    assert point.seq == 5

    log, head, points = tables.audit_log, tables.audit_head, tables.audit_checkpoints
    denied = "42501"  # insufficient_privilege
    assert await _refused(r.runtime, log.update().values(actor="someone-else")) == denied
    assert await _refused(r.runtime, log.delete().where(log.c.seq > 3)) == denied
    assert await _refused(r.runtime, sa.text("TRUNCATE audit_log")) == denied
    assert await _refused(r.runtime, points.delete()) == denied
    assert await _refused(r.runtime, points.update().values(seq=99)) == denied
    assert await _refused(r.runtime, head.delete()) == denied
    # Pending entries: appended, then only marked chained, once, by the chainer.
    pending = tables.audit_pending
    async with r.runtime.begin() as conn:
        await audit.record_many(
            conn,
            TOPICS,
            [
                AuditEvent(
                    actor=PSY, action="mailbox.fetch", source="192.0.2.10", at=r.world.clock.now()
                )
            ],
        )
    assert await _refused(r.runtime, pending.delete()) == denied
    assert await _refused(r.runtime, sa.text("TRUNCATE audit_pending")) == denied
    assert await _refused(r.runtime, pending.update().values(actor="someone-else")) == denied
    # the trigger: a chained row's mark stays, a pending row is marked with a seq or not at all
    assert await _refused(r.runtime, pending.update().values(seq=None)) == denied
    assert (
        await _refused(r.runtime, pending.update().where(pending.c.seq == 2).values(seq=99))
        == denied
    )
    assert (
        await _refused(r.runtime, pending.update().where(pending.c.seq.is_(None)).values(seq=None))
        == denied
    )
    assert await audit.chain_all(r.runtime, TOPICS) == 1

    async with r.runtime.connect() as conn:
        verdict = await audit.verify(conn, gateway_org_id=GATEWAY)
    assert verdict.ok, verdict.reason
    assert verdict.last_seq == 7  # five reads, the signed head, one more read
    assert verdict.pending == 0


async def test_production_refuses_to_start_as_a_role_that_may_rewrite_the_audit_log(
    roles: Roles,
) -> None:
    r = roles
    await _grant(r)
    production = load_settings(environment="production", database_url=r.owner_url)
    with pytest.raises(UnsafeSettings) as caught:
        await refuse_audit_rewrites(production, r.owner)
    (problem,) = caught.value.problems
    assert "UPDATE on audit_log, DELETE on audit_log, TRUNCATE on audit_log" in problem
    assert "attest-gateway db grant --runtime-role" in problem
    await refuse_audit_rewrites(production.model_copy(update={"database_url": r.runtime_url}),
                                r.runtime)  # fmt: skip
    # a grant given by hand later is found too
    async with r.owner.begin() as conn:
        await conn.execute(sa.text(f'GRANT DELETE ON audit_log TO "{r.runtime_role}"'))
    with pytest.raises(UnsafeSettings, match="DELETE on audit_log"):
        await refuse_audit_rewrites(production, r.runtime)


async def test_retention_as_the_runtime_role_leaves_the_audit_log_to_the_owner(
    roles: Roles,
) -> None:
    r = roles
    await _grant(r)
    settings = load_settings(database_url=r.runtime_url, audit_checkpoint_entries=1)
    await _append(r.runtime, r.world, 4)
    report = await prune_all(r.runtime, settings, TOPICS, r.world.keyring, r.world.clock.now())
    assert report.counts == {"audit_checkpoints": 1}
    r.world.clock.advance(6 * 365 * DAY)  # past AUDIT_RETENTION_DAYS
    later = r.world.clock.now()
    again = await prune_all(r.runtime, settings, TOPICS, r.world.keyring, later)
    assert "audit_log" not in again.counts  # not an error: the owner's job
    async with r.owner.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.min(tables.audit_log.c.seq)))).scalar() == 1
    by_owner = await prune_all(r.owner, settings, TOPICS, r.world.keyring, later)
    assert by_owner.counts.get("audit_log") == 4
    async with r.runtime.connect() as conn:
        verdict = await audit.verify(conn, gateway_org_id=GATEWAY)
    assert verdict.ok, verdict.reason
    assert verdict.start is not None
    assert verdict.start.seq == 4


def test_db_grant_and_db_privileges_from_the_command_line(roles: Roles, tmp_path: Path) -> None:
    r = roles
    runner = CliRunner()
    env = {"VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200", "DATABASE_URL": r.runtime_url}
    as_owner = runner.invoke(cli.app, ["db", "privileges"], env=env | {"DATABASE_URL": r.owner_url})
    assert as_owner.exit_code == 1
    assert "UPDATE on audit_log" in as_owner.output
    granted = runner.invoke(
        cli.app,
        ["db", "grant", "--runtime-role", r.runtime_role],
        env=env | {"DATABASE_OWNER_URL": r.owner_url},
    )
    assert granted.exit_code == 0, granted.output
    assert f"REVOKE ALL ON public.audit_log FROM {r.runtime_role};" in granted.stdout
    checked = runner.invoke(cli.app, ["db", "privileges"], env=env)
    assert checked.exit_code == 0, checked.output
    assert checked.stdout == "the database role can only read and append the audit log\n"
    sqlite = runner.invoke(
        cli.app, ["db", "grant", "--runtime-role", "x"], env={"VAR_DIR": str(tmp_path / "v2")}
    )
    assert sqlite.exit_code == 2
    assert "SQLite has no roles" in sqlite.output
