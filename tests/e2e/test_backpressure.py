"""Back-pressure with real processes: while Kafka is unreachable the API keeps accepting into
the outbox up to OUTBOX_MAX_PENDING, then answers 503 with Retry-After; when Kafka is back,
everything accepted is delivered."""

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
from tests.support.kafka import EXTERNAL, START_COMMAND, STOP_COMMAND, run_command
from tests.support.processes import Proc, base_env, wait_until_healthy, wait_until_listening

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BOUND = 8


class Broker:
    """A broker of the test's own, or the external one (TEST_KAFKA_BOOTSTRAP_SERVERS) stopped
    and started by TEST_KAFKA_STOP_COMMAND and TEST_KAFKA_START_COMMAND."""

    def __init__(self, port: int, env: dict[str, str], tmp_path: Path) -> None:
        self.port = port
        self.proc = None if EXTERNAL else Proc("broker", ["broker", "--port", str(port)], env,
                                               tmp_path, tmp_path / "broker.log")  # fmt: skip

    async def start(self) -> None:
        if self.proc is None:
            assert EXTERNAL is not None
            assert EXTERNAL.start_command is not None
            await asyncio.to_thread(run_command, EXTERNAL.start_command)
            await asyncio.to_thread(EXTERNAL.wait_reachable)
            return
        self.proc.start()
        await wait_until_listening(self.port, self.proc)

    async def stop(self) -> None:
        if self.proc is None:
            assert EXTERNAL is not None
            assert EXTERNAL.stop_command is not None
            await asyncio.to_thread(run_command, EXTERNAL.stop_command)
            return
        self.proc.terminate()


async def test_outbox_bound_then_503_then_everything_delivered(tmp_path: Path) -> None:
    if EXTERNAL is not None and not (EXTERNAL.stop_command and EXTERNAL.start_command):
        pytest.skip(
            f"stops and starts the broker: on an external broker it needs {STOP_COMMAND} "
            f"and {START_COMMAND}"
        )
    broker_port, api_port = free_port(), free_port()
    env = base_env(
        VAR_DIR=str(tmp_path / "var"),
        # A broker of the test's own; base_env names the external one (with a topic prefix).
        **({} if EXTERNAL else {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker_port}"}),
        API_PORT=str(api_port),
        OUTBOX_MAX_PENDING=str(BOUND),
        SWEEP_INTERVAL_SECONDS="1",
        RELAY_POLL_SECONDS="0.2",
        LOG_LEVEL="WARNING",
    )
    broker = Broker(broker_port, env, tmp_path)
    api = Proc("api", ["serve"], env, tmp_path, tmp_path / "api.log")
    base_url = f"http://127.0.0.1:{api_port}"
    try:
        if EXTERNAL is None:
            await broker.start()
        api.start()
        await wait_until_healthy(base_url, api)
        creds = json.loads((tmp_path / "var" / "demo-credentials.json").read_text("utf-8"))
        jc = {"Authorization": f"Bearer {creds['jc-koebenhavn']['api_key']}"}
        gln = next(o.gln for o in DEMO_ORGS if o.id == "jc-koebenhavn")
        assert gln is not None
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

            async def post() -> httpx.Response:
                return await client.post(
                    "/jobcenter/v1/attest-requests",
                    json=attest_request_body(jobcenter_gln=gln),
                    headers=jc,
                )

            async def delivered(cid: str) -> bool:
                status = (
                    await client.get(f"/jobcenter/v1/attest-requests/{cid}", headers=jc)
                ).json()
                return "in_mailbox" in status["stages"]

            async def wait_delivered(cids: list[str], within: float = 120) -> None:
                deadline = time.monotonic() + within
                for cid in cids:
                    while not await delivered(cid):
                        assert time.monotonic() < deadline, api.log()[-3000:]
                        await asyncio.sleep(0.2)

            first = await post()
            assert first.status_code == 202
            await wait_delivered([first.json()["conversation_id"]])

            await broker.stop()  # Kafka is gone
            accepted: list[str] = []
            refused: dict[str, Any] | None = None
            for _ in range(BOUND * 3):
                response = await post()
                if response.status_code == 503:
                    assert int(response.headers["retry-after"]) > 0
                    refused = response.json()
                    break
                assert response.status_code == 202, response.text
                accepted.append(response.json()["conversation_id"])
            assert refused is not None, "the API never pushed back"
            assert refused["code"] == "outbox-full"
            assert 0 < len(accepted) <= BOUND

            await broker.start()  # Kafka is back (empty, if it is an embedded broker)
            await wait_delivered(accepted)

            deadline = time.monotonic() + 60
            while (again := await post()).status_code == 503:  # pending drains, intake resumes
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
            assert again.status_code == 202
    finally:
        api.terminate()
        if broker.proc is not None:
            broker.proc.terminate()
        # The external broker is left running, as it was found.
        elif EXTERNAL is not None and not EXTERNAL.reachable():
            await broker.start()
