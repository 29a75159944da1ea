"""The whole conversation, then a search for its CPR number and texts in everything the gateway
leaves behind: its log output, every table, the raw bytes of every record on every topic.
They may exist only inside sealed ciphertext, so they must be found nowhere."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from attest_gateway.entrypoints.http.error_handlers import install_error_handlers
from attest_gateway.entrypoints.http.middleware import RequestLogMiddleware
from attest_gateway.infra.db import tables
from tests.integration.conftest import Harness
from tests.support.flows import JC, PSY, round_trip
from tests.support.harness import PDF, attest_request_body, wait_for
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


# --- database errors ----------------------------------------------------------------------------


def _probes(dialect: str) -> dict[str, tuple[str, str]]:
    """Statements that fail in the database or its driver with the parameter `:ref`, each run
    after `CREATE TEMPORARY TABLE probe (ref TEXT PRIMARY KEY)` and one insert of :ref."""
    probes = {"unique-violation": ("INSERT INTO probe VALUES (:ref)", "")}
    if dialect == "postgresql":
        probes |= {
            "nul-byte": ("INSERT INTO probe VALUES (:ref)", "\x00"),  # server: no value echoed
            "server-echo": ("SELECT CAST(CAST(:ref AS TEXT) AS UUID)", ""),  # 'for type uuid: "…"'
            "driver-echo": ("SELECT CAST(:ref AS UUID)", ""),  # asyncpg: 'query argument $1: …'
        }
    return probes


async def test_database_errors_leave_no_parameter_in_logs_or_answers(harness: Harness) -> None:
    """Real database errors whose parameter is a caseworker_ref holding a CPR number, raised on
    the gateway's engine and answered by its own error handlers and request log (as in
    `create_app`), then one through the partner API: the parameter is in no log line, in no
    answer, and the failure is still logged (class, SQL)."""
    h = harness
    engine = h.gw.engine
    ref = f"sag-{uuid.uuid4().hex[:12]}-{MARKER_CPR}"
    probes = _probes(engine.dialect.name)
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestLogMiddleware)

    @app.get("/probe/{name}")
    async def probe(name: str) -> None:
        statement, suffix = probes[name]
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TEMPORARY TABLE probe (ref TEXT PRIMARY KEY)"))
            await conn.execute(sa.text("INSERT INTO probe VALUES (:ref)"), {"ref": ref})
            await conn.execute(sa.text(statement), {"ref": ref + suffix})

    answers = []
    with json_logs() as buffer:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            for name in probes:
                response = await client.get(f"/probe/{name}")
                assert response.status_code == 500, (name, response.text)
                answers.append(response.text)
        if engine.dialect.name == "postgresql":  # a NUL byte, as a client could send it
            body = attest_request_body(jobcenter_gln=h.gln(JC), caseworker_ref=f"{ref}\x00")
            response = await h.client.post(
                "/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC)
            )
            answers.append(response.text)
    log = buffer.getvalue()
    lines = [json.loads(line) for line in log.splitlines()]
    crashes = [line for line in lines if line["event"] == "http.unhandled_error"]
    assert len(crashes) >= len(probes)
    for crash in crashes[: len(probes)]:
        assert "[SQL: " in crash["exception"]
        assert "the database's message and parameters are not logged" in crash["exception"]
    decoded = "\n".join(s for line in lines for s in strings_in(line))
    for secret in (ref, ref.removesuffix(MARKER_CPR), MARKER_CPR):
        assert secret not in log, secret
        assert secret not in decoded, secret
        assert not any(secret in answer for answer in answers), secret
