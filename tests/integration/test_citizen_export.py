"""The citizen's own view (GDPR art. 15) on both databases: `attest-gateway citizen export`
lists each of the citizen's conversations with every stage, their registered contact and
every read of their data, and nothing of another citizen (not even the ids of the other
citizen's messages handed out in the same read); the export is audited without the CPR
number or the case ref; the HTML page has no script and escapes what it shows.

The Kafka hop is left out, as in test_retention.py: envelopes are taken from the outbox and
handed to the delivery use case.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from attest_gateway.contracts.citizen import CitizenExport
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.audit import CITIZEN_EXPORT, MAILBOX_FETCH
from attest_gateway.crypto import pseudonyms
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.entrypoints.cli.citizen import render_html
from attest_gateway.infra.db import audit, citizen, directory, tables
from attest_gateway.infra.db import pseudonyms as ps
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.services.contacts import ContactIn
from attest_gateway.services.delivery import check_envelope, deliver
from tests.integration.conftest import DB_KINDS
from tests.support.harness import CPR, CPR_2, fresh_database
from tests.support.world import GATEWAY, JC, PSY, World, make_world

TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
DAY = dt.timedelta(days=1)
HOSTILE = '<script>alert("x")</script> & Jobcenter'


@dataclass
class Db:
    world: World
    engine: AsyncEngine
    store: SqlStore
    url: str


@pytest_asyncio.fixture(params=DB_KINDS)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Db]:
    world = make_world()
    kind: str = request.param
    async with fresh_database(kind, tmp_path_factory.mktemp(f"citizen-{kind}")) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        writes = GroupCommit(engine)
        try:
            async with engine.begin() as conn:
                for org in world.orgs.values():
                    await directory.add_organisation(
                        conn, org, world.keys(org.id), api_key=None,
                        now=world.clock.now() - 1000 * DAY,
                    )  # fmt: skip
            world.store = SqlStore(engine, TOPICS, writes)  # type: ignore[assignment]
            yield Db(world, engine, SqlStore(engine, TOPICS, writes), url)
        finally:
            await writes.drain()
            await engine.dispose()


async def _requested(db: Db, key: str, **body: Any) -> SealedEnvelope:
    """A job centre's request, accepted and delivered to the clinic's mailbox."""
    w = db.world
    accepted, _ = await w.request_attest(idempotency_key=key, **body)
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.outbox.c.value).where(tables.outbox.c.topic == TOPICS.medcom_messages)
        )
        envelopes = [SealedEnvelope.from_json(r.value) for r in rows]
    [request] = [
        e
        for e in envelopes
        if e.header.message_type is MessageType.ATTEST_REQUEST
        and e.header.message_id == accepted.message_id
    ]
    async with db.store.transaction() as uow:
        await check_envelope(uow.directory, request, GATEWAY, w.clock.now())
        assert await deliver(uow, request, w.clock.now())
    return request


def _contact(db: Db, cpr: str) -> ContactIn:
    today = db.world.clock.now().date()
    return ContactIn(
        municipality="101", citizen_cpr=cpr, psychiatry_sor="715381000016006",
        case_kind=CaseKind.SYGEDAGPENGE, first_day_of_absence=today - 30 * DAY,
        contact_date=today - 2 * DAY,
    )  # fmt: skip


@dataclass
class Scene:
    mine: list[SealedEnvelope]
    other: SealedEnvelope


async def _scene(db: Db) -> Scene:
    """The citizen's two requests and another citizen's, all read by the clinic in one
    mailbox read; a contact registered for each citizen."""
    w = db.world
    mine = [await _requested(db, f"mine-{i}") for i in range(2)]
    other = await _requested(db, "other", citizen_cpr=CPR_2)
    w.clock.advance(dt.timedelta(hours=1))
    assert len(await w.read_mailbox()) == 3
    await w.register_contact(_contact(db, CPR))
    await w.register_contact(_contact(db, CPR_2))
    return Scene(mine, other)


async def _export(db: Db, actor: str = "operator:dpo") -> CitizenExport:
    return await citizen.export(
        db.engine, TOPICS, CPR, db.world.pseudonym_key, actor=actor, source="cli",
        now=db.world.clock.now(),
    )  # fmt: skip


async def _stages(db: Db, conversation_id: str) -> list[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.stages.c.stage).where(
                tables.stages.c.conversation_id == conversation_id
            )
        )
        return sorted(r.stage for r in rows)


async def test_the_export_lists_each_conversation_stage_contact_and_read(db: Db) -> None:
    scene = await _scene(db)
    found = await _export(db)

    mine = {e.header.conversation_id: e for e in scene.mine}
    assert {c.conversation_id for c in found.conversations} == set(mine)
    for conv in found.conversations:
        assert (conv.jobcenter.id, conv.receiver.id) == (JC, PSY)
        assert conv.jobcenter.name == db.world.orgs[JC].name
        assert conv.kept_by == "gateway"
        assert sorted(s.stage for s in conv.stages) == await _stages(db, conv.conversation_id)
        assert {"submitted", "in_mailbox", "fetched"} <= {s.stage for s in conv.stages}
    [contact] = found.contacts
    assert (contact.jobcenter.id, contact.registered_by.id) == (JC, JC)

    [read] = [a for a in found.accesses if a.action == MAILBOX_FETCH]
    assert (read.actor.id, read.source) == (PSY, "127.0.0.1")
    assert read.actor.name == db.world.orgs[PSY].name
    # the read handed out three messages; the export names the citizen's two only
    assert read.message_ids == sorted(e.header.message_id for e in scene.mine)


async def test_nothing_of_another_citizen_and_no_cpr_number_is_exported(db: Db) -> None:
    scene = await _scene(db)
    text = (await _export(db)).model_dump_json()
    for leak in (
        scene.other.header.conversation_id,
        scene.other.header.message_id,
        CPR,
        CPR_2,
        pseudonyms.case_ref(CPR, db.world.pseudonym_key),
        pseudonyms.case_ref(CPR_2, db.world.pseudonym_key),
        "citizen_sealed",
    ):
        assert leak not in text
    async with db.engine.connect() as conn:  # the other citizen's contact is left out too
        other_contact = await conn.scalar(
            sa.select(tables.tracker_contacts.c.contact_id).where(
                tables.tracker_contacts.c.case_ref
                == pseudonyms.case_ref(CPR_2, db.world.pseudonym_key)
            )
        )
    assert other_contact is not None
    assert other_contact not in text


async def test_the_export_is_audited_without_the_cpr_number_and_shows_in_the_next(
    db: Db,
) -> None:
    await _scene(db)
    first = await _export(db)
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.audit_log).where(tables.audit_log.c.action == CITIZEN_EXPORT)
        )
        [entry] = [audit.entry_from_row(r) for r in rows]
        verdict = await audit.verify(conn, None, gateway_org_id=GATEWAY)
    assert verdict.ok
    assert (entry.actor, entry.source) == ("operator:dpo", "cli")
    assert entry.detail is not None
    assert entry.detail["conversations"] == "2"
    assert entry.detail["contacts"] == "1"
    assert entry.detail["accesses"] == str(len(first.accesses))
    assert set(entry.detail["conversation_ids"].split()) == {
        c.conversation_id for c in first.conversations
    }
    raw = entry.model_dump_json()
    assert CPR not in raw
    assert pseudonyms.case_ref(CPR, db.world.pseudonym_key) not in raw
    # the next export shows the first one among the reads of the citizen's data
    again = await _export(db, actor="operator:other")
    exports = [a for a in again.accesses if a.action == CITIZEN_EXPORT]
    assert [(a.seq, a.actor.id) for a in exports] == [(entry.seq, "operator:dpo")]


async def test_the_html_page_has_no_script_and_escapes_a_hostile_name(db: Db) -> None:
    await _scene(db)
    async with db.engine.begin() as conn:
        await conn.execute(
            tables.organisations.update()
            .where(tables.organisations.c.id == JC)
            .values(name=HOSTILE)
        )
    found = await _export(db)
    page = render_html(found)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Jobcenter" in page
    for conv in found.conversations:
        assert conv.conversation_id in page
        for stage in conv.stages:
            assert stage.stage in page


async def test_a_store_written_with_another_key_is_refused(db: Db) -> None:
    await _scene(db)
    async with db.engine.begin() as conn:
        await ps.store_key(
            conn, db.world.pseudonym_key, tracking_topic=TOPICS.tracking, now=db.world.clock.now()
        )
    assert len((await _export(db)).conversations) == 2  # the recorded key: found
    with pytest.raises(ps.PseudonymKeyMismatch):
        await citizen.export(
            db.engine, TOPICS, CPR, b"1" * 32, actor="operator:dpo", source="cli",
            now=db.world.clock.now(),
        )  # fmt: skip


async def test_the_cli_asks_for_the_cpr_number_and_writes_the_page(db: Db, tmp_path: Path) -> None:
    await _scene(db)
    env = {"DATABASE_URL": db.url, "PSEUDONYM_KEY": db.world.pseudonym_key.decode()}
    out = tmp_path / "citizen.html"
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli.app,
        ["citizen", "export", "--format", "html", "--out", str(out), "--operator", "dpo"],
        input=f"{CPR}\n",
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert CPR not in result.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert "Hvem har læst dine oplysninger" in out.read_text("utf-8")
    as_json = await asyncio.to_thread(
        CliRunner().invoke, cli.app, ["citizen", "export", "--cpr", CPR], env=env
    )
    assert as_json.exit_code == 0, as_json.output
    exported = json.loads(as_json.stdout)
    assert len(exported["conversations"]) == 2
    [first] = [a for a in exported["accesses"] if a["action"] == CITIZEN_EXPORT]
    assert first["actor"]["id"] == "operator:dpo"
    bad = await asyncio.to_thread(
        CliRunner().invoke, cli.app, ["citizen", "export", "--cpr", "123"], env=env
    )
    assert bad.exit_code == 2
