"""Schemathesis against the gateway's own OpenAPI document, over HTTP, with each role's key:
no 5xx, and every error is problem+json with a code (tests/support/schemathesis_hooks.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from attest_gateway.gateway.broker import free_port
from tests.support.processes import Proc, base_env, wait_until_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
TESTS = Path(__file__).resolve().parents[1]


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    port = free_port()
    env = base_env(VAR_DIR=str(tmp_path / "var"), API_PORT=str(port), LOG_LEVEL="WARNING")
    proc = Proc("api", ["serve"], env, tmp_path, tmp_path / "api.log").start()
    try:
        await wait_until_healthy(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}", tmp_path / "var"
    finally:
        proc.terminate()


@pytest.mark.parametrize(
    ("org", "paths"), [("jc-koebenhavn", "^/jobcenter/"), ("psyk-kbh", "^/medcom/")]
)
def test_no_server_errors_and_problem_json(api: tuple[str, Path], org: str, paths: str) -> None:
    base_url, var_dir = api
    creds = json.loads((var_dir / "demo-credentials.json").read_text("utf-8"))
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
        "PYTHONPATH": str(TESTS.parent),
    }
    result = subprocess.run(
        [
            SCHEMATHESIS, "run", f"{base_url}/openapi.json",
            "--checks", "not_a_server_error,problem_json_with_a_code",
            "--include-path-regex", paths,
            "-H", f"Authorization: Bearer {creds[org]['api_key']}",
            "--max-examples", "40", "--seed", "20261122",
            "--phases", "examples,coverage,fuzzing",
            "--workers", "1", "--request-timeout", "30",
        ],
        env=env, capture_output=True, text=True, timeout=800, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
