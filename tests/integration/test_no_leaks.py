"""The whole conversation, then a search for its CPR number and texts in everything the gateway
leaves behind: its log output, every table, the raw bytes of every record on every topic.
They may exist only inside sealed ciphertext, so they must be found nowhere."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import sqlalchemy as sa

from attest_gateway.gateway.store import tables
from tests.integration.conftest import Harness
from tests.support.flows import PSY, round_trip
from tests.support.harness import PDF, wait_for
from tests.support.leaks import json_logs, kafka_dump, store_dump

MARKER_CPR = "1708763344"  # 17 Aug 1976
MARKER_CPR_DASHED = "170876-3344"


def strings_in(value: Any) -> list[str]:
    """Every string in a decoded JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return [str(value)]


async def test_round_trip_leaves_no_cpr_or_attest_text_in_logs_store_or_kafka(
    harness: Harness,
) -> None:
    h = harness
    run = uuid.uuid4().hex
    questions = f"Unikke spoergsmaal om funktionsevne {run}"
    attest_text = f"Unik attesttekst om behandling {run}"
    secrets = [MARKER_CPR, MARKER_CPR_DASHED, questions, attest_text]
    pdf_b64 = base64.b64encode(PDF).decode()

    with json_logs(level="DEBUG") as buffer:
        done = await round_trip(h, cpr=MARKER_CPR, questions=questions, text=attest_text)

        async def last_message_delivered() -> bool:
            # The job centre's acknowledgement of the reply, in psychiatry's mailbox: the last
            # thing the round trip sets going.
            async with h.gw.engine.connect() as conn:
                row = (
                    await conn.execute(
                        sa.select(tables.mailbox.c.message_id).where(
                            tables.mailbox.c.conversation_id == done.conversation_id,
                            tables.mailbox.c.receiver_org_id == PSY,
                            tables.mailbox.c.message_type == "acknowledgement",
                        )
                    )
                ).first()
            return row is not None

        await wait_for(last_message_delivered)
    log = buffer.getvalue()

    # The log really is the gateway's output for this conversation, one JSON object a line.
    lines = [json.loads(line) for line in log.splitlines()]
    assert len(lines) > 10
    assert done.conversation_id in log
    events = {line["event"] for line in lines}
    assert {"jobcenter.request_accepted", "delivery.delivered", "http.request"} <= events
    decoded = "\n".join(s for line in lines for s in strings_in(line))
    for secret in secrets:
        assert secret not in log, secret
        assert secret not in decoded, secret  # not hidden behind JSON escapes either
    assert pdf_b64 not in log

    text = await store_dump(h)
    assert done.conversation_id in text  # the dump really holds this exchange
    for secret in secrets:
        assert secret not in text, secret

    blobs = await kafka_dump(h)
    assert any(done.conversation_id.encode() in blob for blob in blobs)
    for blob in blobs:
        for secret in secrets:
            assert secret.encode() not in blob, secret
        assert pdf_b64.encode() not in blob
