"""End to end: `attest-gateway serve` as a subprocess, the way `make run` starts it, driven
over HTTP through the whole round trip, with the documented client tool on the health side.
Once on SQLite (the default) and once on PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.infra.kafka.embedded import free_port
from tests.support.harness import ATTEST_TEXT, CPR, PDF, attest_request_body, fresh_database
from tests.support.kafka import EXTERNAL, KAFKA_ENV, gateway_env

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("attest-gateway"))


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    var_dir: Path
    log_path: Path

    def creds(self) -> dict[str, dict[str, str]]:
        data: dict[str, dict[str, str]] = json.loads(
            (self.var_dir / "demo-credentials.json").read_text("utf-8")
        )
        return data

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest_asyncio.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    async with fresh_database(request.param, tmp_path) as url:
        env = {k: v for k, v in os.environ.items() if k not in KAFKA_ENV}
        env.update(gateway_env())  # the external broker, when the suite runs on one
        port = free_port()
        env.update(VAR_DIR=str(tmp_path / "var"), API_PORT=str(port), LOG_FORMAT="json")
        if request.param == "postgres":
            env["DATABASE_URL"] = url
        else:
            env.pop("DATABASE_URL", None)
        log_path = tmp_path / "serve.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 - starting it is instant; we poll after
                [CLI, "serve"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        srv = Server(proc, f"http://127.0.0.1:{port}", tmp_path / "var", log_path)
        try:
            async with httpx.AsyncClient(base_url=srv.base_url) as client:
                deadline = time.monotonic() + 60
                while True:
                    assert proc.poll() is None, srv.log()
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, srv.log()
                    await _sleep(0.1)
            yield srv
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def run_cli(*args: str, stdin: bytes | None = None, cwd: Path) -> bytes:
    result = subprocess.run(
        [CLI, *args], input=stdin, capture_output=True, cwd=cwd, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


async def poll(client: httpx.AsyncClient, url: str, headers: dict[str, str], pick: Any) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = await client.get(url, headers=headers)
        assert response.status_code == 200, response.text
        found = pick(response.json())
        if found:
            return found
        await _sleep(0.1)
    raise AssertionError(f"nothing arrived at {url}")


def broker_pid(log: str) -> int:
    match = re.search(r"embedded broker \(Tansu\) on \S+, pid (\d+)", log)
    assert match, log
    return int(match.group(1))


async def test_round_trip_over_http(server: Server, tmp_path: Path) -> None:
    creds = server.creds()
    jc = {"Authorization": f"Bearer {creds['jc-koebenhavn']['api_key']}"}
    psy = {"Authorization": f"Bearer {creds['psyk-kbh']['api_key']}"}
    psy_keys = creds["psyk-kbh"]["private_keys"]
    gln = next(o.gln for o in DEMO_ORGS if o.id == "jc-koebenhavn")
    assert gln is not None
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        response = await client.post(
            "/jobcenter/v1/attest-requests",
            json=attest_request_body(jobcenter_gln=gln),
            headers={**jc, "Idempotency-Key": "e2e-1"},
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        cid = accepted["conversation_id"]

        item = await poll(
            client,
            "/medcom/v1/mailbox",
            psy,
            lambda d: next((i for i in d["items"] if i["conversation_id"] == cid), None),
        )
        request_json = run_cli(
            "client", "open", "-", "--keys", psy_keys,
            "--gateway", server.base_url, "--api-key", creds["psyk-kbh"]["api_key"],
            stdin=json.dumps(item).encode(), cwd=tmp_path,
        )  # fmt: skip
        assert json.loads(request_json)["resourceType"] == "Bundle"
        assert CPR.encode() in request_json  # only the receiver sees the CPR number

        ack = run_cli("client", "ack", "-", stdin=request_json, cwd=tmp_path)
        fhir = {**psy, "Content-Type": "application/fhir+json"}
        response = await client.post("/medcom/v1/messages", content=ack, headers=fhir)
        assert response.status_code == 202, response.text

        pdf = tmp_path / "attest.pdf"
        pdf.write_bytes(PDF)
        reply = run_cli(
            "client", "reply", "-", "--text", ATTEST_TEXT, "--pdf", str(pdf),
            "--family", "Holm", "--given", "Mette", "--authorisation-id", "0C4B1",
            "--phone", "+4578470000", stdin=request_json, cwd=tmp_path,
        )  # fmt: skip
        response = await client.post("/medcom/v1/messages", content=reply, headers=fhir)
        assert response.status_code == 202, response.text

        got = await poll(
            client,
            "/jobcenter/v1/inbox",
            jc,
            lambda d: next((i for i in d["items"] if i["conversation_id"] == cid), None),
        )
        assert got["attest_text"] == ATTEST_TEXT
        response = await client.post(f"/jobcenter/v1/inbox/{got['message_id']}/ack", headers=jc)
        assert response.status_code == 200

        status = (await client.get(f"/jobcenter/v1/attest-requests/{cid}", headers=jc)).json()
        assert status["stage"] == "reply_acknowledged"
        assert len(status["stages"]) == 9

    # Ctrl-C / SIGTERM stops everything, the broker child included (on an external broker,
    # TEST_KAFKA_BOOTSTRAP_SERVERS, `serve` has no broker child: only its own exit is checked).
    pid = None if EXTERNAL else broker_pid(server.log())
    assert pid is None or _pid_alive(pid)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while pid is not None and _pid_alive(pid) and time.monotonic() < deadline:
        await _sleep(0.1)
    assert pid is None or not _pid_alive(pid)

    log = server.log()
    assert "http.request" in log  # the log really holds the requests
    assert CPR not in log
    assert ATTEST_TEXT not in log
