"""What `gateway.audit` keeps when the embedded broker restarts (it keeps nothing in memory
across a restart): the sweeper recreates the topic and replays only the outbox of the last
REPLAY_WINDOW_SECONDS, so older entries are gone from the topic; `audit verify` against what
is left still holds (no false alarm), anchors the entries written since, and the database's
own checks and the signed heads in the chain cover the rest (docs/operations.md, "Audit log").

A broker of its own (restarted on its port), SQLite, the gateway in process; a replay window
of zero, so that nothing written before the restart comes back."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from attest_gateway.config import Settings
from attest_gateway.core.clock import SystemClock
from attest_gateway.infra.db import audit
from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from attest_gateway.infra.kafka.reading import TopicMissing
from tests.integration.conftest import running_gateway
from tests.support.flows import JC
from tests.support.harness import attest_request_body, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def _topic(settings: Settings, bootstrap: str) -> audit.TopicAnchors | None:
    try:
        return await audit.read_topic_anchors(settings, bootstrap)
    except TopicMissing:
        return None


async def test_the_audit_topic_after_an_embedded_broker_restart(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    try:
        async with running_gateway(
            "sqlite", tmp_path, broker.bootstrap,
            sweep_interval_seconds=0.5, replay_window_seconds=0.0,
        ) as h:  # fmt: skip
            gw, org = h.gw, h.settings.gateway_org_id
            body = attest_request_body(jobcenter_gln=h.gln(JC))
            sent = await h.client.post(
                "/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC)
            )
            assert sent.status_code == 202, sent.text
            async with gw.engine.begin() as conn:
                point = await audit.checkpoint_if_due(
                    conn, gw.keyring.signing(org), SystemClock().now(), every=1,
                    interval=dt.timedelta(0), topics=gw.topics, actor=org,
                )  # fmt: skip
            assert point is not None
            async with gw.engine.connect() as conn:
                before = await audit.read_head(conn)
            assert before is not None

            async def all_published() -> audit.TopicAnchors | None:
                topic = await _topic(h.settings, broker.bootstrap)
                return topic if topic is not None and before.seq in topic.entries else None

            assert point in (await wait_for(all_published)).signed_heads

            broker.stop()
            await asyncio.sleep(1)
            broker.start()  # the same port, nothing in it

            after_restart = await wait_for(lambda: _topic(h.settings, broker.bootstrap))
            assert not [seq for seq in after_restart.entries if seq <= before.seq]
            assert after_restart.signed_heads == []

            again = await h.client.post(
                "/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC)
            )
            assert again.status_code == 202, again.text
            await audit.chain_all(gw.engine, gw.topics)  # its entry, if not chained yet
            async with gw.engine.connect() as conn:
                now = await audit.read_head(conn)
            assert now is not None

            async def new_published() -> audit.TopicAnchors | None:
                topic = await _topic(h.settings, broker.bootstrap)
                return topic if topic is not None and now.seq in topic.entries else None

            topic = await wait_for(new_published)
            async with gw.engine.connect() as conn:
                verdict = await audit.verify(
                    conn, topic.entries, gateway_org_id=org, signed_heads=topic.signed_heads
                )
            assert verdict.ok, verdict.reason
            assert verdict.last_seq == now.seq
            assert 0 < verdict.anchored <= now.seq - before.seq  # only what came since
            assert verdict.checkpoints == 1  # the database's signed checkpoint still checked
    finally:
        broker.stop()
