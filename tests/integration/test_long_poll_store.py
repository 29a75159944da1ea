"""What a long-poll waits on (infra/db/arrivals.py), on both databases: a delivery committed
through the store wakes a waiting read at once (its check comes too late to find it), a
delivery by another process is found by the check, a reply waiter ignores other mail, one
waiter more than the bound and a released store answer at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.contracts.stages import MessageType
from attest_gateway.infra.db.arrivals import MailArrivals
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.ports.records import MailItem
from tests.integration.conftest import DB_KINDS
from tests.support.harness import fresh_database, wait_for

TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
NEVER = 3600.0  # a check interval no test waits out: only the wake-up can answer in time


@pytest_asyncio.fixture(params=DB_KINDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with fresh_database(request.param, tmp_path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        try:
            yield engine
        finally:
            await engine.dispose()


def _store(engine: AsyncEngine, *, check: float = NEVER, most: int = 10) -> SqlStore:
    return SqlStore(
        engine, TOPICS, None, MailArrivals(engine, max_waiters=most, check_seconds=check)
    )


def _mail(receiver: str, message_type: MessageType = MessageType.ATTEST_REQUEST) -> MailItem:
    return MailItem(
        message_id=str(uuid.uuid4()),
        receiver_org_id=receiver,
        sender_org_id="jc",
        conversation_id=str(uuid.uuid4()),
        message_type=message_type.value,
        envelope=b"{}",
        delivered_at=dt.datetime.now(dt.UTC),
    )


async def _deliver(store: SqlStore, item: MailItem) -> None:
    async with store.transaction() as uow:
        assert await uow.mailbox.add(item)


async def _until_waiting(store: SqlStore, n: int) -> None:
    arrivals = store.arrivals
    assert arrivals is not None

    async def there() -> bool:
        return arrivals.waiting == n

    await wait_for(there, interval=0.01)


async def test_a_delivery_through_the_store_wakes_the_waiting_read(engine: AsyncEngine) -> None:
    store = _store(engine)
    waiting = asyncio.create_task(store.wait_for_mail("clinic", replies=False, seconds=30))
    await _until_waiting(store, 1)
    await _deliver(store, _mail("clinic"))
    assert await waiting  # woken: with no wake-up it would answer False after 30 s
    assert store.arrivals is not None
    assert store.arrivals.waiting == 0


async def test_a_delivery_by_another_process_is_found_by_the_check(engine: AsyncEngine) -> None:
    store, other = _store(engine, check=0.05), _store(engine)  # two processes' stores
    waiting = asyncio.create_task(store.wait_for_mail("clinic", replies=False, seconds=30))
    await _until_waiting(store, 1)
    await _deliver(other, _mail("clinic"))
    assert await waiting


async def test_a_reply_waiter_wakes_for_replies_only(engine: AsyncEngine) -> None:
    store = _store(engine, check=0.05)
    await _deliver(store, _mail("jobcentre", MessageType.ACKNOWLEDGEMENT))
    assert not await store.wait_for_mail("jobcentre", replies=True, seconds=0.3)
    assert await store.wait_for_mail("jobcentre", replies=False, seconds=0.3)
    await _deliver(store, _mail("jobcentre", MessageType.ATTEST_REPLY))
    assert await store.wait_for_mail("jobcentre", replies=True, seconds=0.3)


async def test_beyond_the_bound_and_after_release_no_one_waits(engine: AsyncEngine) -> None:
    store = _store(engine, most=1)
    first = asyncio.create_task(store.wait_for_mail("clinic", replies=False, seconds=NEVER))
    await _until_waiting(store, 1)
    assert not await store.wait_for_mail("clinic", replies=False, seconds=30)  # answers at once
    assert store.arrivals is not None
    store.arrivals.release()  # as the SIGTERM handler does
    # Answered at once, empty: without the release it would wait an hour (10 s: a hang guard).
    assert not await asyncio.wait_for(first, 10)
    assert not await store.wait_for_mail("clinic", replies=False, seconds=30)
