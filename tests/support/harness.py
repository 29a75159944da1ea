"""Helpers for tests against real parts: fresh databases, Kafka topic reads, waiting, data."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from fastapi import FastAPI

from attest_gateway.bootstrap import Running
from attest_gateway.config import Settings
from attest_gateway.crypto.sealing import OrgKeys
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.infra.container import Gateway
from tests.support.kafka import client_args
from tests.support.people import caseworker_json, citizen_name_json, consent_json

PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

# Test citizens: syntactically valid CPR numbers (the first six digits are a date).
CPR = "0101901234"
CPR_2 = "1502857777"
QUESTIONS = "Hvad er borgerens aktuelle funktionsevne, og hvilken behandling er planlagt?"
ATTEST_TEXT = "Borgeren er i ambulant behandling; forventet afslutning om tre måneder."
PDF = b"%PDF-1.4\n% attest test document\n"

T = TypeVar("T")


@dataclass
class Harness:
    """A running in-process gateway: `gw` its container, `running` what runs in it (consumers,
    tracker, sweeper), `app` the HTTP app whose lifespan built both."""

    kind: str
    settings: Settings
    bootstrap: str
    gw: Gateway
    running: Running
    app: FastAPI
    client: httpx.AsyncClient
    creds: dict[str, dict[str, str]]

    def auth(self, org_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds[org_id]['api_key']}"}

    def client_keys(self, org_id: str) -> OrgKeys:
        return OrgKeys.load(Path(self.creds[org_id]["private_keys"]))

    @staticmethod
    def gln(org_id: str) -> str:
        org = next(o for o in DEMO_ORGS if o.id == org_id)
        assert org.gln is not None
        return org.gln

    async def get_json(self, url: str, org_id: str, **kw: Any) -> Any:
        response = await self.client.get(url, headers=self.auth(org_id), **kw)
        assert response.status_code == 200, response.text
        return response.json()


def pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


@asynccontextmanager
async def fresh_database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{(tmp_path / 'gateway.db').as_posix()}"
        return
    name = f"attest_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield pg_url(name)
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float = 60.0,
    interval: float = 0.05,
) -> T:
    """Poll `probe` until it returns something truthy; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in `topic` (all partitions, from the beginning; no consumer group)."""
    consumer = AIOKafkaConsumer(**client_args(bootstrap), enable_auto_commit=False)
    try:  # a consumer whose start fails must still be closed
        await consumer.start()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, recs in batch.items():
                records.extend(recs)
                if recs and recs[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def committed_offsets(
    bootstrap: str, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """What `group` has committed on each partition (an offset fetch: the reader does not
    join the group, so it causes no rebalance)."""
    reader = AIOKafkaConsumer(**client_args(bootstrap), group_id=group)
    await reader.start()
    try:
        return {tp: await reader.committed(tp) for tp in tps}
    finally:
        await reader.stop()


def attest_request_body(
    *,
    municipality: str = "101",
    jobcenter_gln: str,
    receiver: dict[str, str] | None = None,
    cpr: str = CPR,
    attest_type: str = "LÆ 155",
    **overrides: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "municipality": municipality,
        "jobcenter_gln": jobcenter_gln,
        "caseworker_ref": "sag-2026-0042",
        "citizen_cpr": cpr,
        "citizen_name": citizen_name_json(),
        "caseworker": caseworker_json(),
        "attest_type": attest_type,
        "receiver": receiver or {"sor": "715381000016006"},
        "case_kind": "sygedagpenge",
        "first_day_of_absence": (dt.date.today() - dt.timedelta(days=30)).isoformat(),
        "psychiatric_course": True,
        "questions": QUESTIONS,
        "consent": consent_json(),
    }
    body.update(overrides)
    return body
