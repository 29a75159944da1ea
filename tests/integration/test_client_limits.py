"""One client's address and limits, on a gateway of their own (real broker, SQLite): the
audit records the client a trusted proxy names and the TCP peer otherwise (X-Forwarded-For
and the PROXY protocol, over a real socket to uvicorn), rates and requests at once per
organisation and endpoint class answer 429 with Retry-After, and repeated failed
authentications lock one address out and no other."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
import uvicorn

from attest_gateway.core.audit import MAILBOX_FETCH
from attest_gateway.core.limits import EndpointClass, RequestLimits
from attest_gateway.entrypoints.http.proxy_protocol import V2_SIGNATURE, ProxyProtocolServer
from attest_gateway.infra.db import audit
from attest_gateway.infra.db.tables import audit_log
from tests.integration.conftest import Harness, running_gateway
from tests.support.flows import JC, PSY
from tests.support.harness import attest_request_body, wait_for
from tests.support.kafka import TestKafka

PROXY = "10.0.0.1"  # the trusted proxy (TRUSTED_PROXIES)
STRANGER = "192.0.2.50"  # a client that is no proxy
CLAIMED = "203.0.113.66"  # what X-Forwarded-For claims
VIA_PROXY_PROTOCOL = "198.51.100.23"  # the client a PROXY header names
MINISTRY = "ministry"
GP = "gp-noerrebro"


@pytest_asyncio.fixture(scope="module")
async def h(broker: TestKafka, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with running_gateway(
        "sqlite",
        tmp_path_factory.mktemp("limits"),
        broker.bootstrap,
        trusted_proxies=f"{PROXY}, 127.0.0.1",
        auth_lockout_failures=3,
        rate_limit_reports_per_second=0.01,  # a bucket of 3 (burst 300 s): the fourth waits
        rate_limit_burst_seconds=300,
        concurrent_requests_per_org=2,
    ) as harness:
        yield harness


def client_from(h: Harness, ip: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=h.app, client=(ip, 40000)), base_url="http://gateway"
    )


async def _sources(h: Harness, message_id: str) -> list[str]:
    """The sources of the mailbox reads that handed out `message_id`, oldest first."""
    await audit.chain_all(h.gw.engine, h.gw.topics)
    async with h.gw.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(audit_log.c.source, audit_log.c.detail)
            .where(audit_log.c.action == MAILBOX_FETCH)
            .order_by(audit_log.c.seq)
        )
        return [r.source for r in rows if r.detail and message_id in r.detail]


async def _waiting_request(h: Harness) -> str:
    """A new attest request in psychiatry's mailbox (not yet read); its message id."""
    body = attest_request_body(jobcenter_gln=h.gln(JC))
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    message_id: str = response.json()["message_id"]

    async def delivered() -> bool:
        async with h.gw.engine.connect() as conn:
            found = await conn.execute(
                sa.text("SELECT 1 FROM mailbox WHERE message_id = :m"), {"m": message_id}
            )
            return found.first() is not None

    await wait_for(delivered)
    return message_id


async def test_forwarded_for_is_believed_from_a_trusted_proxy_only(h: Harness) -> None:
    message_id = await _waiting_request(h)
    claim = {**h.auth(PSY), "X-Forwarded-For": CLAIMED}
    async with client_from(h, STRANGER) as stranger, client_from(h, PROXY) as proxy:
        assert (await stranger.get("/medcom/v1/mailbox", headers=claim)).status_code == 200
        assert (await proxy.get("/medcom/v1/mailbox", headers=claim)).status_code == 200
        # A chain: the client's own claim left of what the proxy appended is not believed.
        chained = {**h.auth(PSY), "X-Forwarded-For": f"6.6.6.6, {CLAIMED}"}
        assert (await proxy.get("/medcom/v1/mailbox", headers=chained)).status_code == 200
        # Not an address: the proxy itself is recorded, never the text.
        garbage = {**h.auth(PSY), "X-Forwarded-For": "x" * 300}
        assert (await proxy.get("/medcom/v1/mailbox", headers=garbage)).status_code == 200
    assert await _sources(h, message_id) == [STRANGER, CLAIMED, CLAIMED, PROXY]


def _proxy_v2(source: str, port: int = 55555) -> bytes:
    src = ipaddress.IPv4Address(source).packed
    dst = ipaddress.IPv4Address("10.0.0.2").packed
    payload = src + dst + struct.pack("!HH", port, 8443)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(payload)) + payload


async def _raw_get(port: int, preamble: bytes, path: str, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 GET over a real TCP connection, after `preamble`; the raw answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "Host: gateway", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(preamble + ("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def _serving(h: Harness, proxies: str) -> tuple[ProxyProtocolServer, asyncio.Task[Any], int]:
    """The harness's app behind `ProxyProtocolServer` on a free port (its lifespan ran)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    config = uvicorn.Config(
        h.app, host="127.0.0.1", port=port, lifespan="off", log_config=None, proxy_headers=False
    )
    server = ProxyProtocolServer(config, (ipaddress.ip_network(proxies),))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: asyncio.sleep(0, server.started))
    return server, task, port


async def test_a_proxy_protocol_header_from_a_trusted_peer_names_the_client(h: Harness) -> None:
    server, task, port = await _serving(h, "127.0.0.1/32")
    try:
        first = await _waiting_request(h)
        answer = await _raw_get(
            port, _proxy_v2(VIA_PROXY_PROTOCOL), "/medcom/v1/mailbox", h.auth(PSY)
        )
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert await _sources(h, first) == [VIA_PROXY_PROTOCOL]
        # v1 too; and a trusted peer without a header (a health check) is itself the client
        second = await _waiting_request(h)
        v1 = f"PROXY TCP4 {CLAIMED} 10.0.0.2 40000 8443\r\n".encode()
        answer = await _raw_get(port, v1, "/medcom/v1/mailbox", h.auth(PSY))
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        answer = await _raw_get(port, b"", "/medcom/v1/mailbox", h.auth(PSY))
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert (await _sources(h, second))[-2:] == [CLAIMED, "127.0.0.1"]
    finally:
        server.should_exit = True
        await task


async def test_a_proxy_protocol_header_from_anyone_else_is_not_read(h: Harness) -> None:
    server, task, port = await _serving(h, "10.0.0.0/8")  # the test's 127.0.0.1 is no proxy
    try:
        message_id = await _waiting_request(h)
        answer = await _raw_get(
            port, _proxy_v2(VIA_PROXY_PROTOCOL), "/medcom/v1/mailbox", h.auth(PSY)
        )
        assert not answer.startswith(b"HTTP/1.1 200")  # the header is no HTTP: refused
        assert VIA_PROXY_PROTOCOL not in await _sources(h, message_id)
    finally:
        server.should_exit = True
        await task


async def test_reports_over_the_rate_get_429_with_retry_after_and_others_do_not(
    h: Harness,
) -> None:
    for _ in range(3):  # the bucket: 3
        response = await h.client.get("/ministry/v1/meta", headers=h.auth(MINISTRY))
        assert response.status_code == 200, response.text
    over = await h.client.get("/ministry/v1/meta", headers=h.auth(MINISTRY))
    assert over.status_code == 429
    assert over.headers["content-type"] == "application/problem+json"
    assert over.json()["code"] == "rate-limited"
    assert int(over.headers["retry-after"]) >= 90  # 0.01 a second: a token in 100 s
    # another endpoint class of the same organisation, and other organisations, go on
    assert (await h.client.get("/audit/v1/entries", headers=h.auth(MINISTRY))).status_code == 200
    assert (await h.client.get("/medcom/v1/mailbox", headers=h.auth(PSY))).status_code == 200


async def test_requests_at_once_over_the_cap_get_429(h: Harness) -> None:
    limits: RequestLimits = h.app.state.request_limits
    with limits.admit(GP, EndpointClass.READS), limits.admit(GP, EndpointClass.READS):
        busy = await h.client.get("/medcom/v1/mailbox", headers=h.auth(GP))
        assert busy.status_code == 429
        assert busy.json()["code"] == "too-many-concurrent-requests"
        assert busy.headers["retry-after"] == "1"
        # its writes and other organisations' reads are not held back
        assert (await h.client.get("/medcom/v1/mailbox", headers=h.auth(PSY))).status_code == 200
        collected = await h.client.post(
            "/medcom/v1/mailbox/unknown-message/collected", headers=h.auth(GP)
        )
        assert collected.status_code != 429
    assert limits.in_progress(GP, EndpointClass.READS) == 0
    assert (await h.client.get("/medcom/v1/mailbox", headers=h.auth(GP))).status_code == 200


async def test_repeated_failed_authentication_locks_out_that_address_only(h: Harness) -> None:
    attacker, neighbour = "192.0.2.200", "192.0.2.201"
    wrong = {"Authorization": "Bearer not-a-key"}
    async with client_from(h, attacker) as bad, client_from(h, neighbour) as good:
        for _ in range(3):
            assert (await bad.get("/medcom/v1/mailbox", headers=wrong)).status_code == 401
        locked = await bad.get("/medcom/v1/mailbox", headers=h.auth(PSY))  # even a right key
        assert locked.status_code == 429
        assert locked.json()["code"] == "authentication-locked-out"
        assert int(locked.headers["retry-after"]) > 0
        assert (await good.get("/medcom/v1/mailbox", headers=h.auth(PSY))).status_code == 200
