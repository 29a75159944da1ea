"""Accepted means delivered: the sweeper's re-publish, the MedCom resend rule, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka.errors import KafkaError

from attest_gateway.bootstrap import published_stages
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import audit, tables
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.housekeeping import retention
from attest_gateway.infra.housekeeping.recovery import EPOCH_ROW, BrokerRecovery
from attest_gateway.infra.housekeeping.sweeper import Sweeper
from attest_gateway.infra.kafka.connection import make_producer
from attest_gateway.infra.kafka.outage import KafkaOutage
from attest_gateway.infra.kafka.relay import OutboxRelay
from attest_gateway.medcom.build import build_acknowledgement
from attest_gateway.medcom.read import read_message
from tests.integration.conftest import Harness
from tests.integration.test_roundtrip import mailbox_item, open_item, submit
from tests.support.harness import attest_request_body, fresh_database, wait_for

JC, PSY = "jc-koebenhavn", "psyk-kbh"


async def request(h: Harness) -> dict[str, Any]:
    response = await h.client.post(
        "/jobcenter/v1/attest-requests",
        json=attest_request_body(jobcenter_gln=h.gln(JC)),
        headers=h.auth(JC),
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def status(h: Harness, cid: str) -> dict[str, Any]:
    result: dict[str, Any] = await h.get_json(f"/jobcenter/v1/attest-requests/{cid}", JC)
    return result


def with_settings(h: Harness, **settings: Any) -> Gateway:
    return dataclasses.replace(h.gw, settings=h.gw.settings.model_copy(update=settings))


def sweeper(h: Harness, **settings: Any) -> Sweeper:
    return Sweeper(with_settings(h, **settings), h.bootstrap, h.running.consumers)


async def test_sweeper_republishes_what_reached_no_mailbox(harness: Harness) -> None:
    h = harness
    accepted = await request(h)
    await mailbox_item(h, PSY, accepted["message_id"])
    # Lose it: published, but never delivered (as if the broker had dropped the record).
    async with h.gw.engine.begin() as conn:
        await conn.execute(
            tables.mailbox.delete().where(tables.mailbox.c.message_id == accepted["message_id"])
        )
        await conn.execute(  # never delivered: its ids were never seen either
            tables.seen_ids.delete().where(tables.seen_ids.c.message_id == accepted["message_id"])
        )
        await conn.execute(
            tables.outbox.update()
            .where(tables.outbox.c.message_id == accepted["message_id"])
            # Published 5 minutes ago: not yet due for the gateway's own background sweeper
            # (REPUBLISH_AFTER is 10 minutes), which would otherwise race this test for it.
            .values(
                delivered_at=None, published_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
            )
        )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)  # past REPUBLISH_AFTER for it
    report = await sweeper(h).sweep_once(later)
    assert report.republished >= 1
    item = await mailbox_item(h, PSY, accepted["message_id"])
    assert item["envelope"]["header"]["message_id"] == accepted["message_id"]
    # Delivered now, so the next sweep leaves it alone.
    await wait_for(lambda: _published(h, accepted["message_id"]))
    await wait_for(lambda: _delivered(h, accepted["message_id"]))
    again = await sweeper(h).sweep_once(later + dt.timedelta(minutes=5))
    assert again.republished == 0
    assert await _mailbox_count(h, accepted["message_id"]) == 1


async def _lose(h: Harness, message_id: str, published_ago: dt.timedelta) -> None:
    """Published, but never delivered (as if the broker had dropped the record)."""
    async with h.gw.engine.begin() as conn:
        await conn.execute(tables.mailbox.delete().where(tables.mailbox.c.message_id == message_id))
        await conn.execute(  # never delivered: its ids were never seen either
            tables.seen_ids.delete().where(tables.seen_ids.c.message_id == message_id)
        )
        await conn.execute(
            tables.outbox.update()
            .where(tables.outbox.c.message_id == message_id)
            .values(delivered_at=None, published_at=dt.datetime.now(dt.UTC) - published_ago)
        )


async def test_a_long_retention_pass_does_not_hold_up_the_sweep(harness: Harness) -> None:
    """Retention runs in a loop of its own: while a pass waits out its pause between two
    batches, the sweep still re-publishes what reached no mailbox."""
    h = harness
    for accepted in [await request(h) for _ in range(2)]:
        await mailbox_item(h, PSY, accepted["message_id"])
        response = await h.client.post(
            f"/medcom/v1/mailbox/{accepted['message_id']}/collected", headers=h.auth(PSY)
        )
        assert response.status_code == 200
    lost = await request(h)
    await mailbox_item(h, PSY, lost["message_id"])
    await wait_for(lambda: _delivered(h, lost["message_id"]))

    async def collected() -> int:  # every collected entry: the pass's to remove
        async with h.gw.engine.connect() as conn:
            count: int = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(tables.mailbox)
                    .where(tables.mailbox.c.collected_at.is_not(None))
                )
            ).scalar_one()
            return count

    before = await collected()
    assert before >= 2
    # One collected entry a batch, ten seconds' pause after each: the pass takes at least
    # ten seconds per entry. Re-publish after a minute: the harness's own sweeper (10
    # minutes) leaves the lost message to this one.
    sweep = sweeper(
        h,
        mailbox_retention_seconds=0,
        prune_batch_size=1,
        retention_pause_seconds=10,
        republish_after_seconds=60,
        sweep_interval_seconds=0.1,
    )
    sweep.start()
    try:
        await wait_for(lambda: _fewer(collected, before))  # the first batch went: its pause
        await _lose(h, lost["message_id"], published_ago=dt.timedelta(minutes=5))
        await wait_for(lambda: _is(lambda: _mailbox_count(h, lost["message_id"]), 1))
        assert await collected() >= 1  # re-published while the pass is still under way
    finally:
        await sweep.stop()


async def _is(probe: Callable[[], Awaitable[int]], value: int) -> bool:
    return await probe() == value


async def _fewer(probe: Callable[[], Awaitable[int]], than: int) -> bool:
    return await probe() < than


async def _published(h: Harness, message_id: str) -> bool:
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.outbox.c.published_at).where(tables.outbox.c.message_id == message_id)
        )
        return all(r.published_at is not None for r in rows)


async def _delivered(h: Harness, message_id: str) -> bool:
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.outbox.c.delivered_at).where(tables.outbox.c.message_id == message_id)
        )
        return all(r.delivered_at is not None for r in rows)


async def _mailbox_count(h: Harness, message_id: str) -> int:
    async with h.gw.engine.connect() as conn:
        count: int = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.mailbox)
                .where(tables.mailbox.c.message_id == message_id)
            )
        ).scalar_one()
        return count


async def test_medcom_resend_rule_and_undeliverable(harness: Harness) -> None:
    h = harness
    accepted = await request(h)
    mid, cid = accepted["message_id"], accepted["conversation_id"]
    first = await mailbox_item(h, PSY, mid)
    first_bundle_id = first["envelope"]["header"]["bundle_id"]
    t0 = dt.datetime.now(dt.UTC)
    sweep = sweeper(h)

    # 29 minutes: too early. (The report counts every conversation in the shared store, some
    # of which other tests left unacknowledged long enough ago: look at this one's stages.)
    await sweep.sweep_once(t0 + dt.timedelta(minutes=29))
    assert "resent" not in (await status(h, cid))["stages"]
    # 31 minutes without acknowledgement: resent with a new Bundle.id, same MessageHeader.id.
    report = await sweep.sweep_once(t0 + dt.timedelta(minutes=31))
    assert report.resent >= 1

    async def resent_copy() -> dict[str, Any] | None:
        item = await mailbox_item(h, PSY, mid)
        return item if item["envelope"]["header"]["bundle_id"] != first_bundle_id else None

    item = await wait_for(resent_copy)
    bundle = open_item(item, h.client_keys(PSY))
    info = read_message(bundle)
    assert info.message_id == mid
    assert info.bundle_id != first_bundle_id
    assert await _mailbox_count(h, mid) == 1  # offered again, not delivered twice
    assert "resent" in (await status(h, cid))["stages"]

    await sweep.sweep_once(t0 + dt.timedelta(minutes=62))  # second resend
    report = await sweep.sweep_once(t0 + dt.timedelta(minutes=93))  # no third: undeliverable
    assert report.undeliverable >= 1
    timeline = (await status(h, cid))["timeline"]
    assert [e["detail"] for e in timeline if e["stage"] == "undeliverable"] == [
        "no acknowledgement after 2 resends"
    ]
    await sweep.sweep_once(t0 + dt.timedelta(minutes=200))  # settled: nothing more happens
    assert mid not in await _unsettled(h)
    async with h.gw.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(tables.sent_messages).where(tables.sent_messages.c.message_id == mid)
            )
        ).one()
    assert row.resend_count == 3
    assert row.undeliverable_at is not None
    # Each resend opened the gateway's own copy of the request: two openings, audited.
    async with h.gw.engine.connect() as conn:
        openings = (
            await conn.execute(
                sa.select(tables.audit_log).where(
                    tables.audit_log.c.message_id == mid,
                    tables.audit_log.c.action == audit.ENVELOPE_OPEN,
                )
            )
        ).all()
    assert [(o.actor, o.subject_org) for o in openings] == [(h.settings.gateway_org_id, JC)] * 2


async def _unsettled(h: Harness) -> set[str]:
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.sent_messages.c.message_id).where(
                tables.sent_messages.c.undeliverable_at.is_(None),
                tables.sent_messages.c.acknowledged_at.is_(None),
            )
        )
        return set(rows.scalars())


async def test_acknowledged_request_is_not_resent(harness: Harness) -> None:
    h = harness
    accepted = await request(h)
    item = await mailbox_item(h, PSY, accepted["message_id"])
    request_bundle = open_item(item, h.client_keys(PSY))
    ack = build_acknowledgement(
        acked=request_bundle,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC),
        code="ok",
    )
    await submit(h, PSY, ack)
    await sweeper(h).sweep_once(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    stages = (await status(h, accepted["conversation_id"]))["stages"]
    assert "acknowledged" in stages
    assert "resent" not in stages
    assert "undeliverable" not in stages


async def test_pruning_while_traffic_flows(harness: Harness) -> None:
    """Retention deletes only what is done, in small batches, while requests keep arriving;
    every request accepted during pruning still reaches its mailbox."""
    h = harness
    gw = with_settings(
        h,
        outbox_retention_seconds=0,
        mailbox_retention_seconds=0,
        seen_ids_retention_seconds=0,
        prune_batch_size=7,
    )
    # Some finished work to prune: collected mailbox rows.
    done = [await request(h) for _ in range(10)]
    for accepted in done:
        await mailbox_item(h, PSY, accepted["message_id"])
        response = await h.client.post(
            f"/medcom/v1/mailbox/{accepted['message_id']}/collected", headers=h.auth(PSY)
        )
        assert response.status_code == 200

    stop = asyncio.Event()
    pruned = 0

    async def keep_pruning() -> None:
        nonlocal pruned
        while not stop.is_set():
            pruned += await retention.prune(gw, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
            await asyncio.sleep(0.01)

    pruner = asyncio.create_task(keep_pruning())
    try:
        flowing = await asyncio.gather(*(request(h) for _ in range(30)))
        for accepted in flowing:
            await mailbox_item(h, PSY, accepted["message_id"])
    finally:
        stop.set()
        await pruner
    assert pruned > 0
    async with h.gw.engine.connect() as conn:
        collected_left = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.mailbox)
                .where(
                    tables.mailbox.c.message_id.in_([a["message_id"] for a in done]),
                )
            )
        ).scalar_one()
        waiting = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.mailbox)
                .where(tables.mailbox.c.message_id.in_([a["message_id"] for a in flowing]))
            )
        ).scalar_one()
    assert collected_left == 0  # the collected ones were pruned
    assert waiting == len(flowing)  # nothing still waiting was touched
    for accepted in flowing:
        assert "in_mailbox" in (await status(h, accepted["conversation_id"]))["stages"]


async def test_a_failed_publish_gives_its_rows_back_at_once(
    harness: Harness, tmp_path: Any
) -> None:
    """A relay whose send fails must not keep its lease on the rows for a minute: the next
    attempt (its own or another replica's) takes them at once."""
    h = harness
    async with fresh_database(h.kind, tmp_path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        producer = make_producer(h.settings, h.bootstrap)
        await producer.start()
        try:
            topic = f"{h.gw.topics.medcom_messages}.relay-{uuid.uuid4().hex[:6]}"
            now = dt.datetime.now(dt.UTC)
            too_big = b"x" * (2 * 1024 * 1024)  # the producer refuses records over 1 MiB
            async with engine.begin() as conn:
                await conn.execute(
                    tables.outbox.insert().values(
                        topic=topic, key="k", value=too_big, headers="[]", created_at=now
                    )
                )
            relay = OutboxRelay(
                engine,
                producer,
                h.gw.topics,
                batch_size=10,
                poll_seconds=0.1,
                max_pending=10,
                clock=h.gw.clock,
                on_published=published_stages(h.gw.topics),
                outage=KafkaOutage(h.bootstrap),
            )
            with pytest.raises(KafkaError):
                await relay.publish_pending()
            async with engine.connect() as conn:
                row = (await conn.execute(sa.select(tables.outbox))).one()
            assert row.published_at is None
            assert row.claimed_until is None  # free for the next attempt

            async with engine.begin() as conn:  # what can be sent, is sent on the next attempt
                await conn.execute(tables.outbox.update().values(value=b"v"))
            assert await relay.publish_pending() == 1
        finally:
            await producer.stop()
            await engine.dispose()


async def test_a_running_relay_claims_once_per_wake_and_misses_nothing(
    harness: Harness, tmp_path: Any
) -> None:
    """A pass that published less than a batch does not look again at once (a claim that
    finds nothing): it waits for the next wake. Rows added while a pass runs still go."""
    h = harness
    claims = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal claims
        claims += statement.startswith("UPDATE outbox SET claim_token")

    async with fresh_database(h.kind, tmp_path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        producer = make_producer(h.settings, h.bootstrap)
        await producer.start()
        topic = f"{h.gw.topics.medcom_messages}.relay-{uuid.uuid4().hex[:6]}"
        relay = OutboxRelay(
            engine,
            producer,
            h.gw.topics,
            batch_size=10,
            poll_seconds=60,  # only wakes start a pass here
            max_pending=100,
            clock=h.gw.clock,
            on_published=published_stages(h.gw.topics),
            outage=KafkaOutage(h.bootstrap),
        )

        async def add(n: int) -> None:
            async with engine.begin() as conn:
                await conn.execute(
                    tables.outbox.insert(),
                    [
                        {"topic": topic, "key": "k", "value": b"v", "headers": "[]",
                         "created_at": dt.datetime.now(dt.UTC)}
                        for _ in range(n)
                    ],
                )  # fmt: skip
            relay.wake()

        async def unpublished() -> int:
            async with engine.connect() as conn:
                query = sa.select(sa.func.count()).where(tables.outbox.c.published_at.is_(None))
                return int((await conn.execute(query.select_from(tables.outbox))).scalar_one())

        async def all_published() -> bool | None:
            return True if await unpublished() == 0 else None

        relay.start()
        try:
            await asyncio.sleep(0.3)  # the pass at start found nothing
            sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
            for n in (1, 3, 2):
                await add(n)
                await wait_for(all_published)
            assert claims == 3  # one per wake, none finding nothing
            await add(25)  # more than a batch: passes follow one another until done
            await wait_for(all_published)
            assert claims == 3 + 3
        finally:
            await relay.stop()
            await producer.stop()
            await engine.dispose()


async def test_a_first_start_replays_nothing_a_lost_broker_is_recovered(
    harness: Harness, tmp_path: Any
) -> None:
    """No canary on the broker means a new broker. For a database that has never seen one
    that is a first start (nothing to replay); for one that has, the broker lost its state
    and what was recently published is handed back to the relay."""
    h = harness
    gone = f"{h.gw.topics.canary}.{uuid.uuid4().hex[:6]}"  # a canary the broker never had
    lost_topics = dataclasses.replace(h.gw.topics, canary=gone)

    async with fresh_database(h.kind, tmp_path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        try:
            first = BrokerRecovery(
                dataclasses.replace(h.gw, engine=engine, topics=lost_topics),
                h.bootstrap,
                h.running.consumers,
            )
            assert await first.check(dt.datetime.now(dt.UTC)) == (True, 0)
            async with engine.connect() as conn:
                remembered = (
                    await conn.execute(
                        sa.select(tables.leases.c.holder).where(tables.leases.c.name == EPOCH_ROW)
                    )
                ).scalar_one()
            assert remembered  # the next missing canary is a lost broker
        finally:
            await engine.dispose()

    # The harness's database has seen its broker: a missing canary is a lost broker state.
    accepted = await request(h)
    await mailbox_item(h, PSY, accepted["message_id"])
    lost = BrokerRecovery(
        dataclasses.replace(h.gw, topics=dataclasses.replace(lost_topics, canary=gone + "x")),
        h.bootstrap,
        h.running.consumers,
    )
    recreated, replayed = await lost.check(dt.datetime.now(dt.UTC))
    assert recreated
    assert replayed >= 1  # at least the request just published goes out again
    h.gw.relay.wake()
    await wait_for(lambda: _published(h, accepted["message_id"]))
    assert await _mailbox_count(h, accepted["message_id"]) == 1  # delivered once all the same
