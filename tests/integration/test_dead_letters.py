"""`attest-gateway dead-letters list|show|replay` against the real broker and store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.infra.db import tables
from tests.integration.conftest import Harness
from tests.integration.test_reliability import request
from tests.integration.test_roundtrip import mailbox_item
from tests.support.harness import wait_for
from tests.support.kafka import client_args, kafka_env

PSY = "psyk-kbh"
# Both tests run `attest-gateway dead-letters` as a subprocess.
pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("attest-gateway"))


async def cli(h: Harness, *args: str) -> str:
    env = {
        **os.environ,
        **kafka_env(h.bootstrap),
        "KAFKA_TOPIC_PREFIX": h.settings.kafka_topic_prefix,
        "LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def set_enabled(h: Harness, org_id: str, enabled: bool) -> None:
    async with h.gw.engine.begin() as conn:
        await conn.execute(
            tables.organisations.update()
            .where(tables.organisations.c.id == org_id)
            .values(enabled=enabled)
        )


async def test_replay_after_the_cause_is_fixed_is_idempotent(harness: Harness) -> None:
    h = harness
    accepted = await request(h)
    item = await mailbox_item(h, PSY, accepted["message_id"])
    envelope = SealedEnvelope.model_validate(item["envelope"])
    # Pretend the first delivery never happened and the receiver was disabled when it came.
    async with h.gw.engine.begin() as conn:
        await conn.execute(
            tables.mailbox.delete().where(tables.mailbox.c.message_id == accepted["message_id"])
        )
        await conn.execute(  # never delivered: its ids were never seen either
            tables.seen_ids.delete().where(tables.seen_ids.c.message_id == accepted["message_id"])
        )
    await set_enabled(h, PSY, False)
    try:
        producer = AIOKafkaProducer(**client_args(h.bootstrap), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                h.gw.topics.medcom_messages,
                value=envelope.to_json(),
                key=accepted["conversation_id"].encode(),
                headers=[("message-id", accepted["message_id"].encode())],
            )
        finally:
            await producer.stop()

        async def listed() -> dict[str, Any] | None:
            out = await cli(h, "dead-letters", "list", "--json", "--reason", "unknown-receiver")
            rows = [json.loads(line) for line in out.splitlines() if line.strip()]
            return next((r for r in rows if r["message_id"] == accepted["message_id"]), None)

        row = await wait_for(listed)
        assert row["envelope_header"]["receiver"] == PSY
        assert "ciphertext" not in json.dumps(row)  # never the content
        shown = json.loads(await cli(h, "dead-letters", "show", row["id"]))
        assert shown["headers"]["dlq-source-topic"] == h.gw.topics.medcom_messages
    finally:
        await set_enabled(h, PSY, True)

    # Fixed: replay it, twice. It is delivered once.
    await cli(h, "dead-letters", "replay", row["id"])
    await cli(h, "dead-letters", "replay", row["id"])
    await mailbox_item(h, PSY, accepted["message_id"])

    async def both_replays_handled() -> bool:
        async with h.gw.engine.connect() as conn:
            delivered = (
                (
                    await conn.execute(
                        sa.select(tables.outbox.c.delivered_at).where(
                            tables.outbox.c.message_id == accepted["message_id"]
                        )
                    )
                )
                .scalars()
                .all()
            )
        return bool(delivered) and all(d is not None for d in delivered)

    await wait_for(both_replays_handled)
    async with h.gw.engine.connect() as conn:
        count = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.mailbox)
                .where(tables.mailbox.c.message_id == accepted["message_id"])
            )
        ).scalar_one()
    assert count == 1


async def test_errors_are_one_clear_sentence(harness: Harness) -> None:
    cases = [
        (harness.bootstrap, "no dead letter 99:99999"),
        ("127.0.0.1:1", "cannot reach Kafka at 127.0.0.1:1"),
    ]
    for bootstrap, message in cases:
        env = {
            **os.environ,
            **kafka_env(bootstrap),
            "KAFKA_TOPIC_PREFIX": harness.settings.kafka_topic_prefix,
        }
        proc = await asyncio.create_subprocess_exec(
            CLI, "dead-letters", "replay", "99:99999", env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _out, err = await proc.communicate()
        assert proc.returncode == 1
        assert b"Traceback" not in err
        assert message.encode() in err
