"""Re-keying the citizens' pseudonyms (`attest-gateway pseudonyms rekey`), on a store of its
own (the shared harness gateway keeps running, and a re-key is offline).

The store is filled through the real code paths: a gateway (no relay, no consumers) accepts
attest requests and registers contacts; the tracker's handler applies the tracking events
from the outbox; a conversation of before sealed CPR numbers (a bare case ref, no sealed CPR)
is written as migration 0007 found it. Expected pseudonyms are computed here, independently
of the code (SHA-256 for the key id, HMAC-SHA256 for the rest).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import ConsumerRecord
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from attest_gateway.bootstrap import build_gateway, tracker_rules
from attest_gateway.config import (
    Settings,
    custodial_keys_dir,
    load_settings,
    pseudonym_key_file,
    staged_key_file,
)
from attest_gateway.contracts.jobcenter import AttestRequestIn, CaseKind
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.errors import InvalidInput
from attest_gateway.crypto import pseudonyms as cps
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.devtools.demo import ensure_demo_orgs
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.entrypoints.cli.pseudonyms import key_mismatch
from attest_gateway.infra.db import directory, tables
from attest_gateway.infra.db import pseudonyms as ps
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.messaging import emit_stage_event
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.rekey import LEASE, RekeyRefused, RekeyReport, rekey
from attest_gateway.infra.db.tables import (
    conversations,
    leases,
    outbox,
    tracker_cell_citizens,
    tracker_contacts,
    tracker_conversations,
    tracker_counts,
    tracker_durations,
    tracker_episodes,
)
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.ports.records import Conversation
from attest_gateway.services.contacts import ContactIn, register_contact
from attest_gateway.services.jobcenter import submit_attest_request
from attest_gateway.tracker.consumer import TrackerHandler, TrackerState
from tests.integration.conftest import DB_KINDS, Harness
from tests.support.harness import attest_request_body, fresh_database
from tests.support.kafka import TestKafka, settings_for

KEY_OLD = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
KEY_NEW = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
CPR_A, CPR_B, CPR_C, CPR_OLD = "0101901234", "1502857777", "2304781111", "3112694444"
JC, PSY = "jc-koebenhavn", "psyk-kbh"


def pseudonym(cpr: str, key: str) -> str:
    raw = key.encode()
    return f"{hashlib.sha256(raw).hexdigest()[:6]}.{_hmac(raw, cpr.encode())}"


def unlinked(old_ref: str, key: str) -> str:
    raw = key.encode()
    digest = _hmac(raw, b"unlinked\x00" + old_ref.encode())
    return f"{hashlib.sha256(raw).hexdigest()[:6]}.{digest}"


def _hmac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()[:32]


@dataclass
class Store:
    settings: Settings
    engine: AsyncEngine
    key: str  # the pseudonym key the store was filled with
    cpr_of_conversation: dict[str, str] = field(default_factory=dict)
    cpr_of_contact: dict[str, str] = field(default_factory=dict)
    old_conversation: str = ""  # made before CPR numbers were sealed: no sealed CPR number

    @property
    def keyring(self) -> KeyRing:
        return KeyRing.load_dir(custodial_keys_dir(self.settings))

    @property
    def tracking(self) -> str:
        return Topics.from_settings(self.settings).tracking

    def old_ref(self, cpr: str) -> str:
        return pseudonym(cpr, self.key)


def make_settings(tmp: Path, url: str, key: str | None, bootstrap: str) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    extra: dict[str, Any] = {} if key is None else {"pseudonym_key": key}
    return load_settings(
        var_dir=tmp / "var",
        database_url=url,
        kafka_topic_prefix=prefix,
        kafka_group_prefix=f"{prefix}attest-gateway",
        **settings_for(bootstrap),
        **extra,
    )


async def fill(settings: Settings, bootstrap: str, *, legacy: bool) -> Store:
    """A migrated, empty database → demo organisations, a pre-0007 conversation (`legacy`),
    four conversations and two registered contacts of three citizens, tracker rows."""
    url = settings.effective_database_url
    await upgrade_async(url)
    engine = make_engine(url)
    await ensure_demo_orgs(engine, settings)
    key = settings.pseudonym_key.get_secret_value() if settings.pseudonym_key is not None else ""
    store = Store(settings, engine, key)
    first_day = dt.date.today() - dt.timedelta(days=30)
    if legacy:
        store.old_conversation = await _pre_0007_conversation(
            engine, settings, CPR_OLD, key, first_day
        )
    async with build_gateway(settings, bootstrap) as gw:
        if not key:  # the generated key file
            store.key = gw.pseudonym_key.decode()
        async with engine.connect() as conn:
            jc = await directory.org_by_id(conn, JC)
        assert jc is not None
        assert jc.gln is not None
        for cpr in (CPR_A, CPR_A, CPR_B, CPR_C):
            body = attest_request_body(
                jobcenter_gln=jc.gln, cpr=cpr, first_day_of_absence=first_day.isoformat()
            )
            accepted, _ = await submit_attest_request(
                gw.store,
                gw.relay,
                gw.keyring,
                gw.clock,
                jc,
                AttestRequestIn.model_validate(body),
                idempotency_key=None,
                catalogue=gw.catalogue,
                gateway_org_id=gw.settings.gateway_org_id,
                pseudonym_key=gw.pseudonym_key,
            )
            store.cpr_of_conversation[accepted.conversation_id] = cpr
        for n, cpr in enumerate((CPR_B, CPR_C)):
            contact = ContactIn(
                municipality="101",
                citizen_cpr=cpr,
                psychiatry_sor="715381000016006",
                case_kind=CaseKind.SYGEDAGPENGE,
                first_day_of_absence=first_day,
                contact_date=dt.date.today() - dt.timedelta(days=2),
            )
            done, _ = await register_contact(
                gw.store,
                gw.relay,
                gw.keyring,
                gw.clock,
                jc,
                contact,
                idempotency_key=f"meeting-{n}",
                gateway_org_id=gw.settings.gateway_org_id,
                pseudonym_key=gw.pseudonym_key,
            )
            store.cpr_of_contact[done.contact_id] = cpr
        if legacy:  # the bare ref got the key id at the gateway's first start
            async with engine.connect() as conn:
                ref = (
                    await conn.execute(
                        sa.select(conversations.c.case_ref).where(
                            conversations.c.id == store.old_conversation
                        )
                    )
                ).scalar_one()
            assert ref == store.old_ref(CPR_OLD)
        await apply_tracking(store, gw.store_key)
    return store


async def _pre_0007_conversation(
    engine: AsyncEngine, settings: Settings, cpr: str, key: str, first_day: dt.date
) -> str:
    """A conversation as an older gateway stored it: bare case ref, no sealed CPR number, with
    its `submitted` event still in the outbox. The gateway has not started yet."""
    bare = pseudonym(cpr, key).split(".", 1)[1] if key else ""
    assert bare, "the pre-0007 conversation needs a known key"
    now = SystemClock().now()
    conv = Conversation(
        id=str(uuid.uuid4()),
        jobcenter_org_id=JC,
        receiver_org_id=PSY,
        request_message_id=str(uuid.uuid4()),
        attest_type="LÆ 155",
        case_kind="sygedagpenge",
        caseworker_ref="sag-old",
        municipality="101",
        region_code="1084",
        case_ref=bare,
        psychiatric_course=True,
        first_day_of_absence=first_day,
        reply_deadline=dt.date.today() + dt.timedelta(days=30),
        created_at=now - dt.timedelta(days=1),
    )
    async with engine.begin() as conn:
        await conn.execute(conversations.insert().values(**vars_of(conv)))
        await emit_stage_event(
            conn,
            Topics.from_settings(settings),
            conv,
            Stage.SUBMITTED,
            message_id=conv.request_message_id,
            message_type=MessageType.ATTEST_REQUEST,
            at=conv.created_at,
        )
    return conv.id


def vars_of(conv: Conversation) -> dict[str, Any]:
    return {f: getattr(conv, f) for f in conv.__dataclass_fields__}


def as_record(topic: str, row: Any) -> ConsumerRecord[bytes, bytes]:
    key = row.key.encode()
    return ConsumerRecord(
        topic, 0, row.id, 0, 0, key, row.value, None, len(key), len(row.value), ()
    )


async def apply_tracking(store: Store, store_key: ps.StoreKey | None) -> None:
    """Feed the outbox's tracking events to the tracker's handler (as its consumer would);
    then mark some published: recently (a re-key publishes those again) and long ago."""
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(outbox).where(outbox.c.topic == store.tracking).order_by(outbox.c.id)
            )
        ).all()
    handler = TrackerHandler(
        store.engine,
        TrackerState(tracker_rules(store.settings)),
        store_key=store_key,
    )
    for row in rows:
        await handler(as_record(store.tracking, row))
    now = SystemClock().now()
    async with store.engine.begin() as conn:
        for row, ago in zip(rows, (dt.timedelta(minutes=5), dt.timedelta(days=2)), strict=False):
            await conn.execute(
                outbox.update().where(outbox.c.id == row.id).values(published_at=now - ago)
            )


@asynccontextmanager
async def filled_store(
    kind: str, tmp: Path, bootstrap: str, *, legacy: bool = True, key: str | None = KEY_OLD
) -> AsyncIterator[Store]:
    async with fresh_database(kind, tmp) as url:
        store = await fill(make_settings(tmp, url, key, bootstrap), bootstrap, legacy=legacy)
        try:
            yield store
        finally:
            await store.engine.dispose()


async def dump(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (the re-key's own lease row aside), in key order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in tables.metadata.sorted_tables:
            query = sa.select(table).order_by(*table.primary_key.columns)
            if table is leases:
                query = query.where(leases.c.name != LEASE)
            out[table.name] = [tuple(r) for r in await conn.execute(query)]
    return out


async def run_rekey(store: Store, new_key: str = KEY_NEW, **kw: Any) -> RekeyReport:
    return await rekey(
        store.engine,
        store.keyring,
        gateway_org_id=store.settings.gateway_org_id,
        old_key=store.key.encode(),
        new_key=new_key.encode(),
        tracking_topic=store.tracking,
        republish_since=SystemClock().now() - dt.timedelta(hours=1),
        audit_to=Topics.from_settings(store.settings),
        actor="operator:test",
        clock=SystemClock(),
        **kw,
    )


# --- the re-key ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_a_rekey_that_fails_changes_nothing(
    kind: str, tmp_path: Path, broker: TestKafka
) -> None:
    async with filled_store(kind, tmp_path, broker.bootstrap) as store:
        before = await dump(store.engine)
        assert before["tracker_cell_citizens"]
        assert before["tracker_episodes"]

        # A row without a sealed CPR number: refused without --force, after every sealed
        # CPR number was opened and the key record moved (in the transaction).
        with pytest.raises(RekeyRefused, match=r"1 pseudonym\(s\) in \d+ row\(s\) have no sealed"):
            await run_rekey(store)
        assert await dump(store.engine) == before

        # A dry run does all of it and rolls back.
        report = await run_rekey(store, force=True, dry_run=True)
        assert (report.citizens, report.unlinked_refs) == (3, 1)
        assert report.sealed_rows == {
            "conversations": 4,
            "tracker_contacts": 2,
            "tracker_cases": 0,
            "tracker_treatments": 0,
        }
        assert await dump(store.engine) == before

        # A sealed CPR number that does not open (moved to another row): with --force too,
        # the re-key stops after the conversations were mapped, and nothing changed.
        contacts = sorted(store.cpr_of_contact)
        async with store.engine.begin() as conn:
            sealed = (
                await conn.execute(
                    sa.select(tracker_contacts.c.citizen_sealed).where(
                        tracker_contacts.c.contact_id == contacts[0]
                    )
                )
            ).scalar_one()
            await conn.execute(
                tracker_contacts.update()
                .where(tracker_contacts.c.contact_id == contacts[1])
                .values(citizen_sealed=sealed)
            )
        damaged = await dump(store.engine)
        with pytest.raises(RekeyRefused, match=rf"tracker_contacts row {contacts[1]}: .*open"):
            await run_rekey(store, force=True)
        assert await dump(store.engine) == damaged

        # The lease was given back: a second re-key may run (and stops at the same row).
        with pytest.raises(RekeyRefused, match="does not open"):
            await run_rekey(store, force=True)


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_rekey_rewrites_every_pseudonym_under_the_new_key(
    kind: str, tmp_path: Path, broker: TestKafka
) -> None:
    async with filled_store(kind, tmp_path, broker.bootstrap) as store:
        before = await dump(store.engine)
        renamed = {pseudonym(c, KEY_OLD): pseudonym(c, KEY_NEW) for c in (CPR_A, CPR_B, CPR_C)}
        old_only = store.old_ref(CPR_OLD)
        renamed[old_only] = unlinked(old_only, KEY_NEW)

        report = await run_rekey(store, force=True)

        assert report.old_key_id == hashlib.sha256(KEY_OLD.encode()).hexdigest()[:6]
        assert report.new_key_id == hashlib.sha256(KEY_NEW.encode()).hexdigest()[:6]
        assert (report.citizens, report.unlinked_refs) == (3, 1)
        after = await dump(store.engine)
        rekeyed = [r for r in after["audit_log"] if "pseudonym.rekey" in r]
        assert len(rekeyed) == 1  # an audited administrative change
        assert "operator:test" in rekeyed[0]

        # Every case ref is the new key's pseudonym of the same CPR number.
        async with store.engine.connect() as conn:
            for cid, ref in await conn.execute(
                sa.select(conversations.c.id, conversations.c.case_ref)
            ):
                cpr = store.cpr_of_conversation.get(cid)
                assert ref == (pseudonym(cpr, KEY_NEW) if cpr else unlinked(old_only, KEY_NEW))
            for cid, ref in await conn.execute(
                sa.select(tracker_conversations.c.conversation_id, tracker_conversations.c.case_ref)
            ):
                cpr = store.cpr_of_conversation.get(cid)
                assert ref == (pseudonym(cpr, KEY_NEW) if cpr else unlinked(old_only, KEY_NEW))
            for contact_id, ref in await conn.execute(
                sa.select(tracker_contacts.c.contact_id, tracker_contacts.c.case_ref)
            ):
                assert ref == pseudonym(store.cpr_of_contact[contact_id], KEY_NEW)

        # The same citizen keeps one pseudonym across tables: each tracker table is what it
        # was with every ref renamed; the aggregates did not move.
        for table in (tracker_episodes, tracker_cell_citizens, tracker_conversations):
            position = list(table.c.keys()).index("case_ref")
            expected = sorted(
                tuple(renamed[v] if i == position else v for i, v in enumerate(row))
                for row in before[table.name]
            )
            assert sorted(after[table.name]) == expected, table.name
        for table in (tracker_counts, tracker_durations):
            assert after[table.name] == before[table.name]

        # Tracking events not yet published, or published within the window (published
        # again), carry the new ref; one published long ago is left as it was.
        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(outbox).where(outbox.c.topic == store.tracking))
            ).all()
        old_rows = {r[0]: dict(zip(outbox.c.keys(), r, strict=True)) for r in before["outbox"]}
        republished = 0
        for row in rows:
            event = orjson.loads(row.value)
            old = old_rows[row.id]
            was = orjson.loads(old["value"])
            if old["published_at"] is not None and row.published_at is not None:  # long ago
                assert row.value == old["value"]
                continue
            assert row.published_at is None
            republished += old["published_at"] is not None
            assert event["case_ref"] == renamed[was["case_ref"]]
            assert event == was | {"case_ref": event["case_ref"]}
            if event["type"] == "contact":
                assert row.key == event["case_ref"]
        assert republished == report.republished == 1

        # The CPR numbers exist only sealed (to the gateway's key), nowhere in clear.
        text = "\n".join(
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for rows_ in after.values()
            for row in rows_
            for v in row
        )
        for cpr in (CPR_A, CPR_B, CPR_C, CPR_OLD):
            assert cpr not in text
        assert KEY_NEW not in text
        assert KEY_OLD not in text

        # The store records the new key; the gateway refuses to start with the old one.
        async with store.engine.connect() as conn:
            assert await ps.recorded_key(conn) == (report.new_key_id, None)
        with pytest.raises(ps.PseudonymKeyMismatch, match=r"key id [0-9a-f]{6}\) is not the key"):
            async with build_gateway(store.settings, broker.bootstrap):
                pass
        assert "is not the key the store's pseudonyms were made with" in (
            await asyncio.to_thread(key_mismatch, store.settings) or ""
        )

        # With the new key it starts, and its tracker refuses the old key's events.
        fresh = store.settings.model_copy(update={"pseudonym_key": SecretStr(KEY_NEW)})
        async with build_gateway(fresh, broker.bootstrap) as gw:
            assert gw.store_key == ps.StoreKey(report.new_key_id, legacy=False)
            handler = TrackerHandler(
                gw.engine, TrackerState(tracker_rules(fresh)), store_key=gw.store_key
            )
            stale = next(r for r in rows if r.published_at is not None)
            with pytest.raises(InvalidInput) as caught:
                await handler(as_record(store.tracking, stale))
            assert caught.value.code == "stale-pseudonym"

        # A second re-key (back to the first key) needs --force again for the old row only.
        store.key = KEY_NEW
        again = await run_rekey(store, KEY_OLD, force=True)
        assert (again.citizens, again.unlinked_refs) == (3, 1)
        async with store.engine.connect() as conn:
            refs = set((await conn.execute(sa.select(tracker_episodes.c.case_ref))).scalars())
        assert {pseudonym(c, KEY_OLD) for c in (CPR_A, CPR_B, CPR_C)} <= refs


async def test_the_shared_harness_stores_sealed_cpr_numbers(harness: Harness) -> None:
    """The running gateway records its key and seals each request's CPR number to itself."""
    h = harness
    body = attest_request_body(jobcenter_gln=h.gln(JC), cpr="0707071234")
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202
    cid = response.json()["conversation_id"]
    async with h.gw.engine.connect() as conn:
        row = (await conn.execute(sa.select(conversations).where(conversations.c.id == cid))).one()
        recorded, _ = await ps.recorded_key(conn)
        current = await directory.current_hpke_key(
            conn, h.settings.gateway_org_id, SystemClock().now()
        )
    assert current is not None
    assert cps.sealed_key_id(row.citizen_sealed) == current.key_id  # the directory's current
    assert row.case_ref == cps.case_ref("0707071234", h.gw.pseudonym_key)
    assert recorded == cps.key_id(h.gw.pseudonym_key)
    assert "0707071234" not in row.citizen_sealed
    opened = cps.open_citizen(row.citizen_sealed, h.gw.keyring, context=f"conversation:{cid}")
    assert opened == "0707071234"


# --- the command ------------------------------------------------------------------------------


def cli_env(store: Store, **extra: str | None) -> dict[str, str | None]:
    return {
        "VAR_DIR": str(store.settings.var_dir),
        "DATABASE_URL": store.settings.effective_database_url,
        "KAFKA_TOPIC_PREFIX": store.settings.kafka_topic_prefix,
        "PSEUDONYM_KEY": None,
        "COLUMNS": "200",
        **extra,
    }


async def test_the_rekey_command_with_the_generated_key_file(
    tmp_path: Path, broker: TestKafka
) -> None:
    """The command, in a worker thread (it runs its own event loop), on a SQLite store."""
    async with filled_store("sqlite", tmp_path, broker.bootstrap, legacy=False, key=None) as store:
        await store.engine.dispose()
        key_file = pseudonym_key_file(store.settings)
        old_key = key_file.read_text().strip()
        runner = CliRunner()

        async def invoke(*args: str, **env: str | None) -> Result:
            return await asyncio.to_thread(
                lambda: runner.invoke(cli.app, ["pseudonyms", *args], env=cli_env(store, **env))
            )

        # The operator's key is not the store's: refused, in one sentence, nothing changed.
        wrong = await invoke(
            "rekey", "--new-key-env", "NEW", PSEUDONYM_KEY="0123456789abcdef" * 4, NEW=KEY_NEW
        )
        assert wrong.exit_code == 1
        # (a console without a terminal may wrap the sentence)
        assert "is not the key the store's pseudonyms were made with" in " ".join(
            wrong.output.split()
        )
        assert key_file.read_text().strip() == old_key
        mismatch = await invoke("status", PSEUDONYM_KEY="0123456789abcdef" * 4)
        assert mismatch.exit_code == 2

        status = await invoke("status")
        assert status.exit_code == 0, status.output
        assert f"configured key id: {_kid(old_key)} (key file)" in status.output

        done = await invoke("rekey")
        assert done.exit_code == 0, done.output
        assert "citizens re-keyed from their sealed CPR number: 3" in done.output
        new_key = key_file.read_text().strip()
        assert new_key != old_key
        assert not staged_key_file(store.settings).exists()
        engine = make_engine(store.settings.effective_database_url)
        try:
            async with engine.connect() as conn:
                refs = set((await conn.execute(sa.select(conversations.c.case_ref))).scalars())
        finally:
            await engine.dispose()
        assert refs == {pseudonym(c, new_key) for c in (CPR_A, CPR_B, CPR_C)}

        # A re-key that committed but did not rename its key file: the gateway refuses to
        # start (naming the staged file), and running the command again finishes it.
        staged_key_file(store.settings).write_text(new_key)
        key_file.write_text(old_key)
        problem = await asyncio.to_thread(key_mismatch, store.settings) or ""
        assert "pseudonym.key.new" in problem
        assert "finish it" in problem
        finished = await invoke("rekey")
        assert finished.exit_code == 0, finished.output
        assert "finished an interrupted re-key" in finished.output
        assert key_file.read_text().strip() == new_key
        assert await asyncio.to_thread(key_mismatch, store.settings) is None


def _kid(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:6]
