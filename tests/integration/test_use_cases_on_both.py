"""A whole conversation through the use cases, one test body run on the fake store and on the
real one (SQLite and PostgreSQL): request an attest, deliver it, fetch it, reply, deliver the
reply, read the inbox, acknowledge, and read the status. What the fakes let the unit tests
assume is what the database does.

The Kafka hop is left out: the envelopes are taken from the outbox and handed to the
delivery use case directly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
import sqlalchemy as sa

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.jobcenter import AttestRequestIn
from attest_gateway.contracts.stages import MessageType, Stage
from attest_gateway.infra.db import directory, tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.ports.store import Store
from attest_gateway.services import health, jobcenter
from attest_gateway.services.delivery import check_envelope, deliver
from tests.integration.conftest import DB_KINDS
from tests.support.harness import attest_request_body, fresh_database
from tests.support.world import GATEWAY, JC, PSY, World, make_world

TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")


@dataclass
class Side:
    """The world's parties and keys, with the store under test."""

    world: World
    store: Store
    engine_url: str | None  # None: the fake store

    async def envelopes(self, message_type: MessageType) -> list[SealedEnvelope]:
        """The envelopes of this type in the outbox, oldest first."""
        if self.engine_url is None:
            found = self.world.store.state.envelopes()
        else:
            engine = make_engine(self.engine_url)
            try:
                async with engine.connect() as conn:
                    outbox = tables.outbox
                    rows = await conn.execute(
                        sa.select(outbox.c.value)
                        .where(outbox.c.topic == TOPICS.medcom_messages)
                        .order_by(outbox.c.id)
                    )
                    found = [SealedEnvelope.from_json(r.value) for r in rows]
            finally:
                await engine.dispose()
        return [e for e in found if e.header.message_type is message_type]


@pytest_asyncio.fixture(params=["fake", *DB_KINDS])
async def side(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Side]:
    world = make_world()
    kind: str = request.param
    if kind == "fake":
        yield Side(world, world.store, None)
        return
    async with fresh_database(kind, tmp_path_factory.mktemp(f"both-{kind}")) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        writes = GroupCommit(engine)
        try:
            async with engine.begin() as conn:
                for org in world.orgs.values():
                    keys = world.keys(org.id)
                    await directory.add_organisation(
                        conn, org, keys, api_key=None, now=world.clock.now() - dt.timedelta(days=1)
                    )
            yield Side(world, SqlStore(engine, TOPICS, writes), url)
        finally:
            await writes.drain()
            await engine.dispose()


async def _deliver(side: Side, envelope: SealedEnvelope) -> bool:
    now = side.world.clock.now()
    async with side.store.transaction() as uow:
        await check_envelope(uow.directory, envelope, GATEWAY, now)
        return await deliver(uow, envelope, now)


async def test_a_conversation_from_request_to_acknowledged_reply(side: Side) -> None:
    w, store = side.world, side.store
    minute = dt.timedelta(minutes=1)
    body = attest_request_body(jobcenter_gln=w.orgs[JC].gln or "")
    body["first_day_of_absence"] = (w.clock.now().date() - dt.timedelta(days=30)).isoformat()
    accepted, created = await jobcenter.submit_attest_request(
        store, w.relay, w.keyring, w.clock, w.orgs[JC], AttestRequestIn.model_validate(body),
        idempotency_key="k-1", catalogue=w.catalogue, gateway_org_id=GATEWAY,
        pseudonym_key=w.pseudonym_key,
    )  # fmt: skip
    assert created
    [request] = await side.envelopes(MessageType.ATTEST_REQUEST)
    assert request.header.message_id == accepted.message_id

    w.clock.advance(minute)
    assert await _deliver(side, request)
    assert not await _deliver(side, request)  # redelivered: a no-op
    w.clock.advance(minute)
    [item] = await health.read_mailbox(store, w.clock, w.orgs[PSY], limit=10, source="test")
    assert item["message_id"] == accepted.message_id
    opened = w.opened(SealedEnvelope.model_validate(item["envelope"]), PSY)

    w.clock.advance(minute)
    answer, created = await health.submit_message(
        store, w.relay, w.keyring, w.clock, w.orgs[PSY], w.reply(opened),
        gateway_org_id=GATEWAY, pseudonym_key=w.pseudonym_key,
    )  # fmt: skip
    assert created
    [reply] = await side.envelopes(MessageType.ATTEST_REPLY)
    assert (reply.header.sender, reply.header.receiver) == (PSY, JC)
    w.clock.advance(minute)
    assert await _deliver(side, reply)

    w.clock.advance(minute)
    inbox = await jobcenter.read_inbox(
        store, w.keyring, w.clock, w.orgs[JC], limit=10, source="test", gateway_org_id=GATEWAY
    )
    assert [i.conversation_id for i in inbox.items] == [accepted.conversation_id]
    w.clock.advance(minute)
    ack = jobcenter.acknowledge_reply
    args = (store, w.relay, w.keyring, w.clock, w.orgs[JC], answer["message_id"])
    assert await ack(*args, source="test", gateway_org_id=GATEWAY)
    assert not await ack(*args, source="test", gateway_org_id=GATEWAY)
    [acknowledgement] = await side.envelopes(MessageType.ACKNOWLEDGEMENT)
    assert (acknowledgement.header.sender, acknowledgement.header.receiver) == (JC, PSY)

    status = await jobcenter.conversation_status(store, w.orgs[JC], accepted.conversation_id)
    assert [e.stage for e in status.timeline] == [
        Stage.SUBMITTED,
        Stage.IN_MAILBOX,
        Stage.FETCHED,
        Stage.REPLIED,
        Stage.REPLY_IN_INBOX,
        Stage.REPLY_FETCHED,
        Stage.REPLY_ACKNOWLEDGED,
    ]
    assert status.stage is Stage.REPLY_ACKNOWLEDGED
    # the idempotent replay answers the same, on both stores
    again, created = await jobcenter.submit_attest_request(
        store, w.relay, w.keyring, w.clock, w.orgs[JC], AttestRequestIn.model_validate(body),
        idempotency_key="k-1", catalogue=w.catalogue, gateway_org_id=GATEWAY,
        pseudonym_key=w.pseudonym_key,
    )  # fmt: skip
    assert (again, created) == (accepted, False)
