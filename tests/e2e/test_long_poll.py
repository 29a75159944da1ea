"""The long-poll over real HTTP, against `attest-gateway serve` as a subprocess: a clinic's
`GET /medcom/v1/mailbox?wait=30` that is waiting answers with the request as soon as it is
delivered, also through the partner client with a read timeout shorter than the wait; an inbox
with nothing arriving answers empty after its `wait`; a `wait` beyond 30
is refused with its code; and SIGTERM does not wait for a waiting request."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from attest_gateway.client import AsyncClient, Client
from attest_gateway.devtools.demo import DEMO_ORGS
from tests.e2e.test_serve import Server, server  # noqa: F401 - the fixture
from tests.support.harness import attest_request_body, wait_for

pytestmark = pytest.mark.slow


def _key(srv: Server, org: str) -> str:
    key: str = srv.creds()[org]["api_key"]
    return key


def _auth(srv: Server, org: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_key(srv, org)}"}


async def _waiting(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "attest_gateway_long_polls_waiting":
            return family.samples[0].value
    return 0.0


async def _until_waiting(client: httpx.AsyncClient, n: int) -> None:
    async def there() -> Any:
        return await _waiting(client) == n

    await wait_for(there)


async def test_a_waiting_mailbox_read_answers_when_the_request_arrives(
    server: Server,  # noqa: F811 - the fixture
) -> None:
    psy, jc = _auth(server, "psyk-kbh"), _auth(server, "jc-koebenhavn")
    gln = next(o.gln for o in DEMO_ORGS if o.id == "jc-koebenhavn")
    assert gln is not None
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        first = await client.get("/medcom/v1/mailbox", headers=psy)
        assert first.json() == {"items": []}
        read = asyncio.create_task(client.get("/medcom/v1/mailbox?wait=30", headers=psy))
        await _until_waiting(client, 1)  # it waits: nothing was there
        response = await client.post(
            "/jobcenter/v1/attest-requests", json=attest_request_body(jobcenter_gln=gln), headers=jc
        )
        assert response.status_code == 202, response.text
        answer = await read
        assert answer.status_code == 200
        assert [i["message_id"] for i in answer.json()["items"]] == [response.json()["message_id"]]
        assert await _waiting(client) == 0

        # Nothing arrives in the job centre's inbox: an empty answer once the wait is over.
        empty = await client.get("/jobcenter/v1/inbox?wait=1", headers=jc)
        assert empty.status_code == 200
        assert empty.json()["items"] == []

        # The partner client's long-poll, with a read timeout shorter than the wait: the client
        # stretches its read timeout by the wait, so the wait is not cut off.
        collected = await client.post(
            f"/medcom/v1/mailbox/{response.json()['message_id']}/collected", headers=psy
        )
        assert collected.status_code == 200, collected.text
        with Client(server.base_url, api_key=_key(server, "psyk-kbh"), timeout=1) as clinic:
            read_by_client = asyncio.create_task(asyncio.to_thread(clinic.mailbox, 500, wait=20))
            await _until_waiting(client, 1)
            await asyncio.sleep(1.5)  # longer than the client's read timeout
            second = await client.post(
                "/jobcenter/v1/attest-requests",
                json=attest_request_body(jobcenter_gln=gln),
                headers=jc,
            )
            assert second.status_code == 202, second.text
            got = await read_by_client
        assert [i.message_id for i in got.items] == [second.json()["message_id"]]
        async with AsyncClient(
            server.base_url, api_key=_key(server, "jc-koebenhavn"), timeout=1
        ) as jobcentre:
            assert (await jobcentre.inbox(wait=2)).items == []

        for url, headers in (("/medcom/v1/mailbox", psy), ("/jobcenter/v1/inbox", jc)):
            refused = await client.get(f"{url}?wait=31", headers=headers)
            assert refused.status_code == 422
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["code"] == "invalid-request"

        # Shutdown answers a waiting read at once (empty) instead of after its 30 seconds.
        read = asyncio.create_task(client.get("/jobcenter/v1/inbox?wait=30", headers=jc))
        await _until_waiting(client, 1)
        server.proc.send_signal(signal.SIGTERM)
        answer = await read
        assert answer.status_code == 200
        assert answer.json()["items"] == []
    # Without the release it would first wait out the read's 30 seconds.
    assert server.proc.wait(timeout=20) == 0
