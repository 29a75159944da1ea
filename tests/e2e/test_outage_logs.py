"""A broker outage in the logs, with real processes: a `serve` process on a broker of the
test's own, the broker stopped for some seconds while accepted requests wait in the outbox,
then started again on the same port. The work completes, and the log tells the outage in two
lines: one `kafka.unreachable` warning when it starts, one `kafka.reachable_again` when it
ends (with its duration and what was retried); no "Task exception was never retrieved", and
no flood of lines from the clients' retries while the broker is away.

The test stops its broker, so it runs on an embedded broker of its own; on an external broker
(TEST_KAFKA_BOOTSTRAP_SERVERS) it is skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.infra.kafka.embedded import free_port
from tests.support.harness import attest_request_body
from tests.support.kafka import BOOTSTRAP, EXTERNAL
from tests.support.processes import Proc, base_env, wait_until_healthy, wait_until_listening

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OUTAGE_SECONDS = 10
DURING_OUTAGE = 4  # requests accepted while the broker is away
# Lines the gateway may write while the broker is away, besides those of the requests the test
# makes: the outage's warning and a few more. Before the outage was tracked there were over two
# thousand in ten seconds (aiokafka's line per connection attempt, the sweeper's per sweep).
MOST_LINES_DURING_OUTAGE = 4
# The lines of the test's own requests (one per request and one per accepted request).
TRAFFIC = frozenset({"http.request", "jobcenter.request_accepted"})


async def settled(api: Proc, quiet: float = 1.5, within: float = 60) -> int:
    """The number of log lines once the work before the outage is logged: the stage events of
    the delivered request handled from `gateway.tracking`, then no new line for `quiet` seconds
    (on a loaded machine the consumers may still be joining or finishing that batch when the
    request is in the mailbox)."""
    deadline = time.monotonic() + within
    count, since = -1, time.monotonic()
    while True:
        now = lines(api.log())
        handled = any(
            e.get("topic") == "gateway.tracking" and e.get("outcome") == "handled" for e in now
        )
        if len(now) != count:
            count, since = len(now), time.monotonic()
        elif handled and time.monotonic() - since >= quiet:
            return count
        assert time.monotonic() < deadline, api.log()[-5000:]
        await asyncio.sleep(0.25)


def lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a log file (the Proc's own markers and anything else as text)."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = {"event": line, "not_json": True}
        if isinstance(entry, dict):
            out.append(entry)
    return out


@pytest.mark.skipif(
    EXTERNAL is not None,
    reason=f"stops and starts a broker of its own; with {BOOTSTRAP} set, the gateway "
    "processes are on the external broker",
)
async def test_a_broker_outage_reads_well_in_the_log(tmp_path: Path) -> None:
    broker_port, api_port = free_port(), free_port()
    env = base_env(
        VAR_DIR=str(tmp_path / "var"),
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{broker_port}",
        API_PORT=str(api_port),
        SWEEP_INTERVAL_SECONDS="1",
        RELAY_POLL_SECONDS="0.2",
        LOG_LEVEL="INFO",
    )
    broker = Proc("broker", ["broker", "--port", str(broker_port)], env, tmp_path,
                  tmp_path / "broker.log")  # fmt: skip
    api = Proc("api", ["serve"], env, tmp_path, tmp_path / "api.log")
    base_url = f"http://127.0.0.1:{api_port}"
    try:
        broker.start()
        await wait_until_listening(broker_port, broker)
        api.start()
        await wait_until_healthy(base_url, api)
        creds = json.loads((tmp_path / "var" / "demo-credentials.json").read_text("utf-8"))
        jc = {"Authorization": f"Bearer {creds['jc-koebenhavn']['api_key']}"}
        gln = next(o.gln for o in DEMO_ORGS if o.id == "jc-koebenhavn")
        assert gln is not None
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

            async def post() -> str:
                response = await client.post(
                    "/jobcenter/v1/attest-requests",
                    json=attest_request_body(jobcenter_gln=gln),
                    headers=jc,
                )
                assert response.status_code == 202, response.text
                return str(response.json()["conversation_id"])

            async def wait_delivered(cids: list[str], within: float = 180) -> None:
                deadline = time.monotonic() + within
                for cid in cids:
                    while True:
                        got = await client.get(f"/jobcenter/v1/attest-requests/{cid}", headers=jc)
                        if "in_mailbox" in got.json()["stages"]:
                            break
                        assert time.monotonic() < deadline, api.log()[-5000:]
                        await asyncio.sleep(0.5)

            await wait_delivered([await post()])
            before = await settled(api)

            broker.terminate()  # Kafka is gone (and the embedded broker forgets everything)
            pending = [await post() for _ in range(DURING_OUTAGE)]
            await asyncio.sleep(OUTAGE_SECONDS)
            during = lines(api.log())[before:]

            broker.start()  # Kafka is back, on the same port
            await wait_until_listening(broker_port, broker)
            await wait_delivered(pending)
            deadline = time.monotonic() + 60
            while not any(e.get("event") == "kafka.reachable_again" for e in lines(api.log())):
                assert time.monotonic() < deadline, api.log()[-5000:]
                await asyncio.sleep(0.5)
            after = lines(api.log())[before:]  # from the outage to the work done, not the stop
    finally:
        api.terminate()
        broker.terminate()

    log_text = api.log()
    everything = lines(log_text)
    assert "Task exception was never retrieved" not in log_text
    assert "never retrieved" not in log_text
    unreachable = [e for e in everything if e.get("event") == "kafka.unreachable"]
    assert len(unreachable) == 1, unreachable
    assert unreachable[0]["level"] == "warning"
    assert unreachable[0]["bootstrap"] == f"127.0.0.1:{broker_port}"
    again = [e for e in everything if e.get("event") == "kafka.reachable_again"]
    assert len(again) == 1, again
    assert again[0]["level"] == "info"
    assert again[0]["down_seconds"] > 0
    assert again[0]["retried"], again[0]
    own = [e for e in during if e.get("event") not in TRAFFIC]
    assert len(own) <= MOST_LINES_DURING_OUTAGE, "\n".join(map(str, own))
    # aiokafka's own lines of the outage and of what follows from it (an expired session, a
    # member the group forgot) are counted in `kafka.reachable_again`, not written.
    aiokafka = [e for e in after if str(e.get("logger", "")).startswith("aiokafka")]
    assert aiokafka == [], "\n".join(map(str, aiokafka))
