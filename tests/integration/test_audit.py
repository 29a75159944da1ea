"""The audit log on both databases and the real broker: every mailbox fetch, inbox fetch and
opening at the edge is an entry (who, which message, when, from where) written with the
read itself; the hash chain verifies, and an altered, deleted, reordered or cut entry is found
(a cut tail with its head reset too, against `gateway.audit`); an organisation reads only
its own trail; the topic carries no CPR number or content; `attest-gateway audit` works."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import pytest_asyncio
import sqlalchemy as sa

from attest_gateway.config import Settings
from attest_gateway.contracts.audit import AuditEntry
from attest_gateway.core.clock import SystemClock
from attest_gateway.entrypoints.http.asyncapi import build_asyncapi
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.engine import aware
from attest_gateway.infra.db.tables import (
    audit_checkpoints,
    audit_head,
    audit_log,
    audit_pending,
    mailbox,
    stages,
)
from tests.integration.conftest import Harness
from tests.support.flows import JC, PSY, Conversation, round_trip
from tests.support.harness import (
    ATTEST_TEXT,
    CPR,
    QUESTIONS,
    attest_request_body,
    read_topic,
    wait_for,
)
from tests.support.kafka import kafka_env

CLIENT_IP = "192.0.2.10"  # TEST-NET-1: the address the partner systems call from here
OTHER_JC = "jc-aarhus"
CLI = str(Path(sys.executable).with_name("attest-gateway"))


@dataclasses.dataclass
class Trip:
    h: Harness  # the harness, with a client that calls from CLIENT_IP
    conversation: Conversation


def _client_from(h: Harness, ip: str, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = h.client._transport  # the in-process app behind the harness's client
    assert isinstance(transport, httpx.ASGITransport)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(
            app=transport.app, client=(ip, 40000), raise_app_exceptions=raise_app_exceptions
        ),
        base_url="http://gateway",
    )


@pytest_asyncio.fixture(scope="module")
async def trip(harness: Harness) -> AsyncIterator[Trip]:
    """One whole conversation, every call made from CLIENT_IP."""
    async with _client_from(harness, CLIENT_IP) as client:
        h = dataclasses.replace(harness, client=client)
        yield Trip(h, await round_trip(h))


def naming(message_id: str) -> Any:
    """The entries about a message: it alone (`message_id`), or a read listing it among
    others (`detail.message_ids`)."""
    return sa.or_(audit_log.c.message_id == message_id, audit_log.c.detail.contains(message_id))


async def _entries(h: Harness, *where: Any) -> list[AuditEntry]:
    """The chained entries matching `where`, oldest first, once what is pending is chained."""
    await audit.chain_all(h.gw.engine, h.gw.topics)
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(sa.select(audit_log).where(*where).order_by(audit_log.c.seq))
        return [audit.entry_from_row(r) for r in rows]


async def _fetched_at(h: Harness, message_id: str) -> Any:
    async with h.gw.engine.connect() as conn:
        value = (
            await conn.execute(
                sa.select(mailbox.c.fetched_at).where(mailbox.c.message_id == message_id)
            )
        ).scalar_one()
    return aware(value) if value is not None else None


async def test_mailbox_fetches_are_audited_with_who_what_when_where(trip: Trip) -> None:
    h, conv = trip.h, trip.conversation
    entries = await _entries(h, naming(conv.request_message_id))
    assert entries[0].action == audit.REQUEST_SUBMIT  # sent, then read
    assert (entries[0].actor, entries[0].subject_org) == (JC, PSY)
    fetches = entries[1:]
    assert fetches
    assert {e.action for e in fetches} == {audit.MAILBOX_FETCH}
    for entry in fetches:
        assert (entry.actor, entry.subject_org, entry.source) == (PSY, PSY, CLIENT_IP)
        # one entry per read, listing the message ids it handed out; a read of one names it
        assert entry.detail is not None
        listed = entry.detail["message_ids"].split()
        assert conv.request_message_id in listed
        assert entry.detail["count"] == str(len(listed))
        if len(listed) == 1:
            assert entry.message_id == conv.request_message_id
            assert entry.conversation_id == conv.conversation_id
        else:
            assert (entry.message_id, entry.conversation_id) == (None, None)
    # The first fetch marked the message fetched in the same transaction, at the same time.
    assert fetches[0].at == await _fetched_at(h, conv.request_message_id)


async def test_inbox_fetches_and_openings_at_the_edge_are_audited(trip: Trip) -> None:
    h, conv = trip.h, trip.conversation
    entries = await _entries(h, naming(conv.reply_message_id))
    fetches = [e for e in entries if e.action == audit.INBOX_FETCH]
    opened = [e for e in entries if e.action == audit.ENVELOPE_OPEN]
    assert fetches
    assert {(e.actor, e.subject_org, e.source) for e in fetches} == {(JC, JC, CLIENT_IP)}
    assert fetches[0].at == await _fetched_at(h, conv.reply_message_id)
    # The gateway opens the reply with the job centre's custodial key for each inbox read
    # and once more to acknowledge it: each opening is the gateway's, for the job centre.
    gateway = h.settings.gateway_org_id
    assert {(e.actor, e.subject_org, e.source) for e in opened} == {(gateway, JC, CLIENT_IP)}
    assert sorted(e.detail["for"] for e in opened if e.detail) == sorted(
        ["inbox"] * len(fetches) + ["ack"]
    )
    # an inbox read's openings are one entry naming the keys used (`key_ids`); the ack's
    # opening names its key (`key_id`)
    assert all(
        e.detail and e.detail.get("key_id", e.detail.get("key_ids", "")).startswith("hpke-")
        for e in opened
    )
    # (a read of several replies names no one conversation: the shared inbox may hold others)
    assert {e.conversation_id for e in entries} <= {conv.conversation_id, None}
    # Each inbox read records the opening just before the fetch it served.
    assert {f.seq - 1 for f in fetches} <= {e.seq for e in opened}
    async with h.gw.engine.connect() as conn:
        verdict = await audit.verify(conn)
    assert verdict.ok, verdict


async def _trail(h: Harness, org: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        response = await h.client.get(
            "/audit/v1/entries", params={"after_seq": after, "limit": 40}, headers=h.auth(org)
        )
        assert response.status_code == 200, response.text
        body = response.json()
        if not body["entries"]:
            assert body["next_after_seq"] == after
            return found
        assert body["next_after_seq"] == body["entries"][-1]["seq"]
        assert all(e["seq"] > after for e in body["entries"])
        found += body["entries"]
        after = body["next_after_seq"]


async def test_an_organisation_reads_only_its_own_audit_trail(trip: Trip) -> None:
    h, conv = trip.h, trip.conversation
    jc, psy, other = [await _trail(h, org) for org in (JC, PSY, OTHER_JC)]
    for org, trail in ((JC, jc), (PSY, psy), (OTHER_JC, other)):
        assert all(org in (e["actor"], e["subject_org"]) for e in trail), org
        assert [e["seq"] for e in trail] == sorted({e["seq"] for e in trail})
        for e in trail:  # as stored: the hash covers what the API answers
            assert AuditEntry.model_validate(e).expected_hash() == e["hash"]

    def seen(trail: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {
            (e["action"], i)
            for e in trail
            for i in ((e["detail"] or {}).get("message_ids") or e["message_id"] or "").split()
        }

    jc_seen = seen(jc)
    assert (audit.INBOX_FETCH, conv.reply_message_id) in jc_seen
    assert (audit.ENVELOPE_OPEN, conv.reply_message_id) in jc_seen
    assert (audit.MAILBOX_FETCH, conv.request_message_id) not in jc_seen
    psy_seen = seen(psy)
    assert (audit.MAILBOX_FETCH, conv.request_message_id) in psy_seen
    # of the reply, the clinic sees its own sending, not the job centre's reads
    assert [a for a, i in psy_seen if i == conv.reply_message_id] == [audit.MESSAGE_SUBMIT]
    assert (audit.REQUEST_SUBMIT, conv.request_message_id) in jc_seen
    assert (audit.REQUEST_SUBMIT, conv.request_message_id) in psy_seen  # the subject
    assert not [e for e in other if e["conversation_id"] == conv.conversation_id]


async def test_the_audit_api_answers_problems(trip: Trip) -> None:
    h = trip.h
    anonymous = await h.client.get("/audit/v1/entries")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    for params in ({"limit": 0}, {"limit": 501}, {"after_seq": -1}, {"after_seq": "x"}):
        bad = await h.client.get("/audit/v1/entries", params=params, headers=h.auth(JC))
        assert bad.status_code == 422, params
        assert bad.json()["code"] == "invalid-request"


async def test_the_request_the_reply_and_the_reads_name_the_person_acting(trip: Trip) -> None:
    """Over HTTP: `Attest-Actor` (and a clinician's `Attest-Actor-Authorisation`) on the
    request, the mailbox read and the reply are in their audit entries; the round trip
    without them recorded organisations only."""
    h = trip.h
    caseworker = {**h.auth(JC), "Attest-Actor": "sagsbeh-4711"}
    body = attest_request_body(jobcenter_gln=h.gln(JC))
    sent = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=caseworker)
    assert sent.status_code == 202, sent.text
    request_id = sent.json()["message_id"]
    [submitted] = await _entries(h, audit_log.c.message_id == request_id)
    assert (submitted.action, submitted.actor, submitted.source) == (
        "request.submit",
        JC,
        CLIENT_IP,
    )
    assert submitted.detail == {"actor_person": "sagsbeh-4711"}

    clinician = {
        **h.auth(PSY), "Attest-Actor": "mette.holm", "Attest-Actor-Authorisation": "0C4B1"
    }  # fmt: skip

    async def delivered() -> list[Any] | None:
        items = (await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500}))["items"]
        return [i for i in items if i["message_id"] == request_id] or None

    await wait_for(delivered)
    read = await h.client.get("/medcom/v1/mailbox", params={"limit": 500}, headers=clinician)
    assert read.status_code == 200, read.text
    reads = [e for e in await _entries(h, naming(request_id)) if e.action == "mailbox.fetch"]
    assert reads[-1].detail is not None
    assert (reads[-1].detail["actor_person"], reads[-1].detail["actor_authorisation"]) == (
        "mette.holm", "0C4B1",
    )  # fmt: skip
    assert all("actor_person" not in (e.detail or {}) for e in reads[:-1])


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Attest-Actor": "010190-1234"}, "cpr-in-reference"),
        ({"Attest-Actor": "two words"}, "invalid-request"),
        ({"Attest-Actor": "x" * 65}, "invalid-request"),
        ({"Attest-Actor": "clin-1", "Attest-Actor-Authorisation": "0a4b1"}, "invalid-request"),
    ],
)
async def test_a_person_acting_of_the_wrong_form_is_refused(
    trip: Trip, headers: dict[str, str], code: str
) -> None:
    h = trip.h
    refused = await h.client.get("/medcom/v1/mailbox", headers={**h.auth(PSY), **headers})
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == code


async def _on_topic(h: Harness, seqs: set[int]) -> list[Any]:
    async def probe() -> list[Any] | None:
        records = await read_topic(h.bootstrap, h.gw.topics.audit)
        found = {AuditEntry.model_validate_json(r.value or b"").seq for r in records}
        return records if seqs <= found else None

    return await wait_for(probe)


async def test_the_audit_topic_carries_the_entries_and_no_cpr_or_content(trip: Trip) -> None:
    h, conv = trip.h, trip.conversation
    ids = (conv.request_message_id, conv.reply_message_id)
    stored = {e.seq: e for e in await _entries(h, sa.or_(*(naming(i) for i in ids)))}
    records = await _on_topic(h, set(stored))
    doc = json.loads(json.dumps(build_asyncapi(h.settings)))
    message = doc["components"]["messages"]["AuditEntry"]
    components = {"components": doc["components"]}
    headers_ok = jsonschema.Draft202012Validator({**message["headers"], **components})
    payload_ok = jsonschema.Draft202012Validator({**message["payload"], **components})
    for record in records:
        raw = (record.value or b"") + b"".join(v for _, v in record.headers)
        for secret in (CPR, QUESTIONS, ATTEST_TEXT):
            assert secret.encode() not in raw
        assert record.key == audit.CHAIN_KEY.encode()
        headers = {k: v.decode() for k, v in record.headers}
        headers_ok.validate(headers)
        payload_ok.validate(json.loads(record.value or b"null"))
        entry = AuditEntry.model_validate_json(record.value or b"")
        assert headers["audit-seq"] == str(entry.seq)
        if entry.seq in stored:
            assert entry == stored[entry.seq]


async def _anchors_up_to(h: Harness, seq: int) -> dict[int, set[str]]:
    async def probe() -> dict[int, set[str]] | None:
        anchors = await audit.read_anchors(h.settings, h.bootstrap)
        return anchors if seq in anchors else None

    return await wait_for(probe)


async def _head(h: Harness) -> audit.ChainHead:
    await audit.chain_all(h.gw.engine, h.gw.topics)
    async with h.gw.engine.connect() as conn:
        head = await audit.read_head(conn)
    assert head is not None
    return head


async def _verify_tampered(
    h: Harness,
    statements: Sequence[sa.Executable],
    anchors: dict[int, set[str]] | None = None,
) -> audit.Verdict:
    """Tamper in a transaction, verify inside it, roll it back (the log stays intact)."""
    async with h.gw.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            for statement in statements:
                await conn.execute(statement)
            return await audit.verify(conn, anchors)
        finally:
            await transaction.rollback()


async def test_tampering_with_the_log_is_found(trip: Trip) -> None:
    h, conv = trip.h, trip.conversation
    head = await _head(h)
    # The reply's first entry: after the request's fetches, before its acknowledgement's opening.
    (target, *_) = await _entries(h, naming(conv.reply_message_id))
    assert 1 < target.seq < head.seq - 1
    s = target.seq
    seq = audit_log.c.seq

    altered = await _verify_tampered(
        h, [audit_log.update().where(seq == s).values(actor="someone-else")]
    )
    assert (altered.broken_seq, altered.entries) == (s, s - 1)
    assert "altered" in (altered.reason or "")

    deleted = await _verify_tampered(h, [audit_log.delete().where(seq == s)])
    assert deleted.broken_seq == s
    assert deleted.reason == f"entry {s} is missing"

    reordered = await _verify_tampered(
        h,
        [
            audit_log.update().where(seq == s).values(seq=-1),
            audit_log.update().where(seq == s + 1).values(seq=s),
            audit_log.update().where(seq == -1).values(seq=s + 1),
        ],
    )
    assert reordered.broken_seq == s

    cut = await _verify_tampered(h, [audit_log.delete().where(seq == head.seq)])
    assert cut.broken_seq == head.seq
    assert f"chain head is at {head.seq}" in (cut.reason or "")

    (before_last,) = await _entries(h, seq == head.seq - 1)
    cut_and_reset = [
        audit_log.delete().where(seq == head.seq),
        audit_head.update().values(seq=before_last.seq, hash=before_last.hash),
        # and the appended row it was chained from, which would tell it was there
        audit_pending.delete().where(audit_pending.c.seq == head.seq),
    ]
    # The database alone agrees with itself after that…
    assert (await _verify_tampered(h, cut_and_reset)).ok
    # …but the last entry was published on gateway.audit.
    anchors = await _anchors_up_to(h, head.seq)
    found = await _verify_tampered(h, cut_and_reset, anchors)
    assert found.broken_seq == head.seq
    assert "gateway.audit" in (found.reason or "")

    async with h.gw.engine.connect() as conn:
        intact = await audit.verify(conn, anchors)
    assert intact.ok, intact
    assert intact.anchored >= head.seq - 1


async def test_a_signed_head_reaches_the_topic_and_finds_a_cut_tail(trip: Trip) -> None:
    """The sweeper's checkpoint is an `audit.checkpoint` entry on the real `gateway.audit`;
    with the entries after it cut, the checkpoint row deleted and the head moved back, the
    database agrees with itself and the signed head on the topic does not."""
    h = trip.h
    gw = h.gw
    async with gw.engine.begin() as conn:
        point = await audit.checkpoint_if_due(
            conn, gw.keyring.signing(h.settings.gateway_org_id), SystemClock().now(),
            every=1, interval=dt.timedelta(seconds=0), topics=gw.topics,
            actor=h.settings.gateway_org_id,
        )  # fmt: skip
    assert point is not None

    async def published() -> audit.TopicAnchors | None:
        topic = await audit.read_topic_anchors(h.settings, h.bootstrap)
        return topic if point in topic.signed_heads else None

    topic = await wait_for(published)
    async with gw.engine.connect() as conn:
        intact = await audit.verify(
            conn, topic.entries, gateway_org_id=h.settings.gateway_org_id,
            signed_heads=topic.signed_heads,
        )  # fmt: skip
    assert intact.ok, intact.reason
    assert intact.anchored >= point.seq
    (before,) = await _entries(h, audit_log.c.seq == point.seq - 1)
    cut = [
        audit_log.delete().where(audit_log.c.seq >= point.seq),
        audit_checkpoints.delete().where(audit_checkpoints.c.seq >= point.seq),
        audit_head.update().values(seq=before.seq, hash=before.hash),
        audit_pending.delete().where(audit_pending.c.seq >= point.seq),
    ]
    assert (await _verify_tampered(h, cut)).ok  # the database alone is fooled…
    async with gw.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            for statement in cut:
                await conn.execute(statement)
            found = await audit.verify(
                conn, {}, gateway_org_id=h.settings.gateway_org_id,
                signed_heads=topic.signed_heads,
            )  # fmt: skip
        finally:
            await transaction.rollback()
    assert not found.ok  # …the signed head on the topic is not
    assert "beyond the chain's head" in (found.reason or "")


async def test_concurrent_appends_do_not_fork_the_chain(harness: Harness) -> None:
    h = harness

    async def append(i: int) -> None:
        async with h.gw.engine.begin() as conn:
            await audit.record(
                conn, h.gw.topics, actor="test-concurrency", action="test.append",
                source=audit.SOURCE_GATEWAY, at=SystemClock().now(), detail={"i": str(i)},
            )  # fmt: skip

    await asyncio.gather(*(append(i) for i in range(12)))
    entries = await _entries(h, audit_log.c.actor == "test-concurrency")
    assert sorted(e.detail["i"] for e in entries if e.detail) == sorted(str(i) for i in range(12))
    assert len({e.seq for e in entries}) == 12
    # the running gateway may append (the sweeper's entries) while this verifies: the verdict
    # covers the whole chain as it stood when verify read the head, between these two
    before = await _head(h)
    async with h.gw.engine.connect() as conn:
        verdict = await audit.verify(conn)
    after = await _head(h)
    assert verdict.ok, verdict
    assert verdict.first_seq == 1
    assert before.seq <= verdict.entries <= after.seq
    assert max(e.seq for e in entries) <= verdict.entries


async def test_a_read_that_cannot_be_audited_does_not_happen(harness: Harness) -> None:
    h = harness
    body = attest_request_body(jobcenter_gln=h.gln(JC))
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    message_id = response.json()["message_id"]

    async def delivered() -> bool:
        async with h.gw.engine.connect() as conn:
            found = await conn.execute(
                sa.select(mailbox.c.message_id).where(mailbox.c.message_id == message_id)
            )
            return found.first() is not None

    await wait_for(delivered)
    # Entries are appended to `audit_pending` in the read's transaction: without it, no read.
    async with h.gw.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE audit_pending RENAME TO audit_pending_away"))
    try:
        async with _client_from(h, CLIENT_IP, raise_app_exceptions=False) as client:
            failed = await client.get("/medcom/v1/mailbox", headers=h.auth(PSY))
        # SQLite's "no such table" is an OperationalError, told as the database away (503)
        assert failed.status_code in (500, 503)
        assert await _fetched_at(h, message_id) is None
        async with h.gw.engine.connect() as conn:
            fetched_stage = await conn.execute(
                sa.select(stages.c.stage).where(
                    stages.c.message_id == message_id, stages.c.stage == "fetched"
                )
            )
            assert fetched_stage.first() is None
    finally:
        async with h.gw.engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE audit_pending_away RENAME TO audit_pending"))
    items = (await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500}))["items"]
    assert message_id in {i["message_id"] for i in items}
    (entry, *_) = await _entries(h, naming(message_id), audit_log.c.action == audit.MAILBOX_FETCH)
    assert entry.at == await _fetched_at(h, message_id)


def _cli_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    names = {name.upper() for name in Settings.model_fields}
    base = {k: v for k, v in os.environ.items() if k.upper() not in names}
    return {
        **base,
        "COLUMNS": "200",
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": settings.effective_database_url,
        "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
    }


async def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [CLI, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.slow  # runs `attest-gateway audit` as a subprocess
async def test_the_audit_commands(trip: Trip, tmp_path: Path) -> None:
    h, conv = trip.h, trip.conversation
    env = _cli_env(h.settings, tmp_path)
    with_topic = {**env, **kafka_env(h.bootstrap)}
    head = await _head(h)
    await _on_topic(h, {head.seq})

    intact = await _cli(["audit", "verify"], with_topic, tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("chain intact, ")
    assert "confirmed on gateway.audit" in intact.stdout
    alone = await _cli(["audit", "verify"], env, tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert "not held against gateway.audit" in alone.stdout

    listed = await _cli(["audit", "list", "--org", PSY, "--limit", "500", "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    entries = [AuditEntry.model_validate_json(line) for line in listed.stdout.splitlines()]
    assert entries
    assert all(PSY in (e.actor, e.subject_org) for e in entries)
    assert conv.request_message_id in {
        i for e in entries for i in ((e.detail or {}).get("message_ids") or "").split()
    }

    (target, *_) = await _entries(h, naming(conv.reply_message_id))
    async with h.gw.engine.begin() as conn:
        await conn.execute(
            audit_log.update().where(audit_log.c.seq == target.seq).values(source="203.0.113.9")
        )
    try:
        broken = await _cli(["audit", "verify", "--no-topic"], with_topic, tmp_path)
    finally:
        async with h.gw.engine.begin() as conn:
            await conn.execute(
                audit_log.update().where(audit_log.c.seq == target.seq).values(source=target.source)
            )
    assert broken.returncode == 1
    assert f"chain broken at seq {target.seq}" in broken.stderr
    assert "Traceback" not in broken.stderr
    assert broken.stdout == ""
