"""A conversation's timeline never shows a stage before the stage that causes it.

`published` is the relay's stage, `in_mailbox` the delivery consumer's. A consumer may read a
record and deliver it before the broker's acknowledgement has reached the relay (seen: a
timeline with `in_mailbox` 7 ms before `published`). The relay stamps `published` with the
time it handed the batch to the producer, which is before any consumer can have it.

Here Kafka is a stand-in whose consumer is quicker than its acknowledgement: the request is
delivered while the relay still waits, on a manual clock that moves on between the steps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa

from attest_gateway.bootstrap import published_stages
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.jobcenter import AttestRequestIn
from attest_gateway.contracts.stages import Stage
from attest_gateway.core.clock import ManualClock
from attest_gateway.infra.db import directory, tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.kafka.outage import KafkaOutage
from attest_gateway.infra.kafka.relay import OutboxRelay
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.services import jobcenter
from attest_gateway.services.delivery import check_envelope, deliver
from tests.integration.conftest import DB_KINDS
from tests.support.harness import attest_request_body, fresh_database
from tests.support.world import GATEWAY, JC, make_world

TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
STEP = dt.timedelta(milliseconds=7)


class QuickConsumerKafka:
    """A producer whose records reach the consumer before their acknowledgement reaches the
    relay: a record of `medcom.messages` is delivered (`deliver`) one step after it is sent,
    and acknowledged one step after that."""

    def __init__(
        self, clock: ManualClock, deliver: Callable[[SealedEnvelope], Awaitable[None]]
    ) -> None:
        self._clock = clock
        self._deliver = deliver
        self.sent: list[str] = []

    async def send(self, topic: str, *, value: bytes, key: bytes, headers: Any) -> Any:
        self.sent.append(topic)
        return self._acknowledged(topic, value)

    async def _acknowledged(self, topic: str, value: bytes) -> None:
        if topic == TOPICS.medcom_messages:
            self._clock.advance(STEP)
            await self._deliver(SealedEnvelope.from_json(value))
        self._clock.advance(STEP)


@pytest.mark.parametrize("kind", DB_KINDS)
async def test_published_is_never_after_the_delivery_it_causes(
    kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    world = make_world()
    clock = world.clock
    async with fresh_database(kind, tmp_path_factory.mktemp(f"clocks-{kind}")) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        writes = GroupCommit(engine)
        try:
            async with engine.begin() as conn:
                for org in world.orgs.values():
                    await directory.add_organisation(
                        conn, org, world.keys(org.id), api_key=None,
                        now=clock.now() - dt.timedelta(days=1),
                    )  # fmt: skip
            store = SqlStore(engine, TOPICS, writes)
            body = attest_request_body(jobcenter_gln=world.orgs[JC].gln or "")
            accepted, _ = await jobcenter.submit_attest_request(
                store, world.relay, world.keyring, clock, world.orgs[JC],
                AttestRequestIn.model_validate(body), idempotency_key="k-1",
                catalogue=world.catalogue, gateway_org_id=GATEWAY,
                pseudonym_key=world.pseudonym_key,
            )  # fmt: skip

            async def delivered(envelope: SealedEnvelope) -> None:
                async with store.transaction() as uow:
                    await check_envelope(uow.directory, envelope, GATEWAY, clock.now())
                    assert await deliver(uow, envelope, clock.now())

            kafka = QuickConsumerKafka(clock, delivered)
            relay = OutboxRelay(
                engine, kafka, TOPICS, batch_size=10, poll_seconds=0.1, max_pending=10,
                clock=clock, on_published=published_stages(TOPICS), outage=KafkaOutage("-"),
            )  # fmt: skip
            clock.advance(dt.timedelta(seconds=1))
            assert await relay.publish_pending() >= 1
            assert TOPICS.medcom_messages in kafka.sent

            stages = tables.stages
            async with engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(stages.c.stage, stages.c.at).where(
                        stages.c.conversation_id == accepted.conversation_id
                    )
                )
                at = {Stage(r.stage): r.at for r in rows}
        finally:
            await writes.drain()
            await engine.dispose()
    assert {Stage.SUBMITTED, Stage.PUBLISHED, Stage.IN_MAILBOX} <= set(at)
    assert at[Stage.SUBMITTED] <= at[Stage.PUBLISHED] <= at[Stage.IN_MAILBOX]
