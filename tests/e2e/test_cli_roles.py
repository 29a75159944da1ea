"""End to end, the way the compose stack runs it: `attest-gateway setup`, then one
`serve --role worker` and one `serve --role api` as separate processes on one broker and one
database, both over HTTPS with certificates from deploy/make-certs.sh. The API accepts a
request, the worker delivers it, `attest-gateway healthcheck` says both are ready, both
/metrics answer (with the token) and tell what each did, and both stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from attest_gateway.config import Settings
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.infra.kafka.embedded import free_port
from tests.support.harness import CPR, attest_request_body, fresh_database, wait_for
from tests.support.kafka import TestKafka

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

CLI = str(Path(sys.executable).with_name("attest-gateway"))
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "6c1f0e9d8b7a6c5d4e3f2a1b0c9d8e7f"
SETTING_VARS = {name.upper() for name in Settings.model_fields}


@dataclass
class Stack:
    env: dict[str, str]
    certs: Path
    api: str
    worker: str
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]]

    def client(self, base_url: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url,
            verify=ssl.create_default_context(cafile=str(self.certs / "ca.crt")),
            timeout=30,
        )


def _start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(  # the test polls for readiness afterwards
            [CLI, *args], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "make-certs.sh"), str(out)], check=True, capture_output=True
    )
    return out


# PostgreSQL only: it is what the compose stack runs, and each run costs some 20 seconds
# (the SQLite path of `serve` is what tests/e2e/test_serve.py drives).
@pytest_asyncio.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
async def stack(
    request: pytest.FixtureRequest, broker: TestKafka, certs: Path, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with fresh_database(request.param, tmp_path) as url:
        prefix = f"r{uuid.uuid4().hex[:8]}."
        env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_VARS}
        env.update(
            VAR_DIR=str(tmp_path / "var"),
            DATABASE_URL=url,
            **broker.env(),  # bootstrap, and TLS on an external broker
            KAFKA_TOPIC_PREFIX=prefix,
            KAFKA_GROUP_PREFIX=f"{prefix}attest-gateway",
            API_TLS_CERTFILE=str(certs / "gateway-chain.crt"),
            API_TLS_KEYFILE=str(certs / "gateway.key"),
            METRICS_TOKEN=TOKEN,
            LOG_FORMAT="json",
            RELAY_POLL_SECONDS="0.2",
        )
        setup = subprocess.run(  # noqa: ASYNC221 - one short command before the processes start
            [CLI, "setup"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert setup.returncode == 0, setup.stderr
        ports = {"worker": free_port(), "api": free_port()}
        logs = {role: tmp_path / f"{role}.log" for role in ports}
        procs = {
            role: _start(["serve", "--role", role, "--port", str(port)], env, logs[role], tmp_path)
            for role, port in ports.items()
        }
        stack = Stack(
            env,
            certs,
            f"https://127.0.0.1:{ports['api']}",
            f"https://127.0.0.1:{ports['worker']}",
            logs,
            procs,
        )
        try:
            yield stack
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _healthcheck(stack: Stack, port: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "healthcheck", "--wait", "60"],
        env={**stack.env, "API_PORT": port},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_api_and_worker_processes(stack: Stack) -> None:
    for role, base in (("worker", stack.worker), ("api", stack.api)):
        result = _healthcheck(stack, base.rsplit(":", 1)[-1])
        assert result.returncode == 0, (result.stderr, stack.logs[role].read_text("utf-8"))
        assert "ready:" in result.stderr

    creds = json.loads((Path(stack.env["VAR_DIR"]) / "demo-credentials.json").read_text("utf-8"))
    jc = {"Authorization": f"Bearer {creds['jc-koebenhavn']['api_key']}"}
    psy = {"Authorization": f"Bearer {creds['psyk-kbh']['api_key']}"}
    gln = next(o.gln for o in DEMO_ORGS if o.id == "jc-koebenhavn")
    assert gln is not None
    metrics_auth = {"Authorization": f"Bearer {TOKEN}"}
    async with stack.client(stack.api) as api, stack.client(stack.worker) as worker:
        # The clinic long-polls its (empty) mailbox at the API; only the worker runs the
        # delivery consumer, so the API finds the delivery by its check, across processes.
        read = asyncio.create_task(api.get("/medcom/v1/mailbox?wait=30", headers=psy))

        async def read_waits() -> bool:
            text = (await api.get("/metrics", headers=metrics_auth)).text
            return _samples(text).get(("attest_gateway_long_polls_waiting", frozenset())) == 1

        await wait_for(read_waits, within=30)
        response = await api.post(
            "/jobcenter/v1/attest-requests", json=attest_request_body(jobcenter_gln=gln),
            headers=jc,
        )  # fmt: skip
        assert response.status_code == 202, response.text
        message_id = response.json()["message_id"]
        conversation_id = response.json()["conversation_id"]
        answer = await read
        assert answer.status_code == 200
        assert [i["message_id"] for i in answer.json()["items"]] == [message_id]

        # The worker serves only the operations routes.
        assert (await worker.get("/jobcenter/v1/inbox", headers=jc)).status_code == 404
        assert (await worker.get("/metrics")).status_code == 401
        api_metrics = _samples((await api.get("/metrics", headers=metrics_auth)).text)
        worker_metrics = _samples((await worker.get("/metrics", headers=metrics_auth)).text)

    prefix = stack.env["KAFKA_TOPIC_PREFIX"]
    route = frozenset({"method": "POST", "route": "/jobcenter/v1/attest-requests",
                       "status": "202"}.items())  # fmt: skip
    assert api_metrics[("attest_gateway_http_requests_total", route)] == 1
    # Both roles run a relay: whichever claims the outbox row first publishes it (the API's is
    # woken by the commit, the worker's polls), so the record is counted by one of the two.
    produced = ("attest_gateway_kafka_records_produced_total",
                frozenset({"topic": f"{prefix}medcom.messages"}.items()))  # fmt: skip
    assert api_metrics.get(produced, 0) + worker_metrics.get(produced, 0) >= 1
    consumed = frozenset({"topic": f"{prefix}medcom.messages", "outcome": "handled"}.items())
    assert worker_metrics[("attest_gateway_kafka_records_consumed_total", consumed)] >= 1
    waiting = frozenset({"receiver": "psyk-kbh", "message_type": "attest-request"}.items())
    assert worker_metrics[("attest_gateway_mailbox_depth", waiting)] >= 1
    assert not any(n == "attest_gateway_mailbox_depth" for n, _ in api_metrics)  # worker's job

    for proc in stack.procs.values():
        proc.send_signal(signal.SIGTERM)
    for role, proc in stack.procs.items():
        assert proc.wait(timeout=30) == 0, stack.logs[role].read_text("utf-8")

    worker_log = stack.logs["worker"].read_text("utf-8")
    api_log = stack.logs["api"].read_text("utf-8")
    records = [json.loads(line) for line in worker_log.splitlines() if line.startswith("{")]
    # Each consumed record is logged with its conversation id: on its own line, or in the
    # line of the batch it was handled in.
    one_by_one = [r for r in records if r.get("event") == "consumer.record"]
    batches = [r for r in records if r.get("event") == "consumer.batch"]
    assert all(r.get("correlation_id") for r in one_by_one)
    assert all(r["correlation_ids"] and r["records"] >= 1 for r in batches)
    logged = {r["correlation_id"] for r in one_by_one}
    logged |= {i for r in batches for i in r["correlation_ids"]}
    assert conversation_id in logged  # its request, its stage events
    assert any('"event": "http.request"' in line for line in api_log.splitlines())
    assert CPR not in worker_log + api_log
