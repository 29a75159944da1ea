"""`GET /medcom/v1/mailbox` written a batch at a time (services/health.py, `READ_BATCH`): the
answer is byte for byte what it was when it was written at once from the stored rows, and the
read is still one audit entry listing every message id it handed out, on both databases."""

from __future__ import annotations

import orjson
import pytest

from attest_gateway.infra.db import audit
from attest_gateway.infra.db.tables import audit_log
from attest_gateway.services import health
from tests.integration.conftest import Harness
from tests.integration.test_audit import _client_from, _entries
from tests.support.flows import JC, PSY
from tests.support.harness import attest_request_body, wait_for

SOURCE = "192.0.2.77"  # TEST-NET-1: this test's reads, told apart in the audit log by it


async def test_the_answer_written_batch_by_batch_is_the_answer_written_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    sent = []
    for _ in range(5):
        response = await h.client.post(
            "/jobcenter/v1/attest-requests",
            json=attest_request_body(jobcenter_gln=h.gln(JC)),
            headers=h.auth(JC),
        )
        assert response.status_code == 202, response.text
        sent.append(response.json()["message_id"])

    async def delivered() -> int | None:
        async with h.gw.store.reading() as uow:
            waiting = {i.message_id for i in await uow.mailbox.waiting(PSY, 100_000)}
        return len(waiting) if waiting >= set(sent) else None

    # The session's mailbox holds other tests' messages too: the oldest `limit` of them
    # (at most 500, a read's most), 5 or more, which is more than two batches of 2.
    limit = min(500, await wait_for(delivered))
    async with h.gw.store.reading() as uow:
        stored = await uow.mailbox.waiting(PSY, limit)
    # What the route answered before: each stored row's fields and its envelope as stored.
    at_once = orjson.dumps(
        {
            "items": [
                {
                    "message_id": i.message_id,
                    "conversation_id": i.conversation_id,
                    "message_type": i.message_type,
                    "delivered_at": i.delivered_at.isoformat(),
                    "envelope": orjson.Fragment(i.envelope),
                }
                for i in stored
            ]
        }
    )
    monkeypatch.setattr(health, "READ_BATCH", 2)
    async with _client_from(h, SOURCE) as client:
        response = await client.get(
            "/medcom/v1/mailbox", params={"limit": limit}, headers=h.auth(PSY)
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == at_once
    [entry] = await _entries(
        h, audit_log.c.action == audit.MAILBOX_FETCH, audit_log.c.source == SOURCE
    )
    assert entry.detail is not None
    assert entry.detail["message_ids"].split() == [i.message_id for i in stored]
    assert entry.detail["count"] == str(len(stored))
