"""Schemathesis against the gateway's own OpenAPI document, over HTTP, on SQLite and on
PostgreSQL, with every role's key: every check schemathesis has (`--checks all`: no 5xx, every
answer as documented, schema-violating requests refused, undeclared methods 405 with `Allow`,
no access without credentials …) plus our own (tests/support/schemathesis_hooks.py): every
error is problem+json with a code, and a schema-valid request is refused only for a rule no
schema can state. Bounded (examples per operation) and seeded, so a run is the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from attest_gateway.entrypoints.http.openapi import ERROR_CATALOGUE
from attest_gateway.infra.kafka.embedded import free_port
from tests.support.harness import fresh_database
from tests.support.processes import Proc, base_env, wait_until_healthy
from tests.support.schemathesis_hooks import BEYOND_THE_SCHEMA

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
TESTS = Path(__file__).resolve().parents[1]
SEED = "20261122"
MAX_EXAMPLES = "50"  # per operation and phase: about 45 s per database on two cores

# Who calls which paths: every role that has endpoints (README, "The API"), and anyone for
# the public ones. None: no credentials.
CALLERS: list[tuple[str | None, str]] = [
    ("jc-koebenhavn", "^/jobcenter/"),
    ("psyk-kbh", "^/medcom/"),
    ("psyk-kbh", "^/psychiatry/"),
    ("gp-noerrebro", "^/medcom/"),
    ("ministry", "^/ministry/"),
    ("jc-koebenhavn", "^/audit/"),
    ("psyk-kbh", "^/audit/"),
    (None, "^/(healthz|readyz|metrics|asyncapi\\.json)$"),
]

# Checks of `--checks all` left out, each for a reason that is not the gateway's:
EXCLUDED_CHECKS = [
    # Wants every schema-valid request accepted; the gateway refuses some for rules that no
    # JSON Schema can state (its directory, the clock, signatures, a GLN's check digit,
    # MedCom's profiles). `positive_data_refused_only_beyond_the_schema` (hooks) runs it and
    # lets through only refusals with those rules' codes: anything else still fails.
    "positive_data_acceptance",
]


@pytest_asyncio.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    async with fresh_database(request.param, tmp_path) as url:
        port = free_port()
        env = base_env(VAR_DIR=str(tmp_path / "var"), API_PORT=str(port), LOG_LEVEL="WARNING")
        # Schemathesis sends wrong and missing credentials on purpose, many from one address,
        # and as fast as the API answers: neither the lockout nor the rates are under test.
        env.update(AUTH_LOCKOUT_FAILURES="0", RATE_LIMIT_BURST_SECONDS="1000")
        if request.param == "postgres":
            env["DATABASE_URL"] = url
        proc = Proc("api", ["serve"], env, tmp_path, tmp_path / "api.log").start()
        try:
            await wait_until_healthy(f"http://127.0.0.1:{port}", proc)
            yield f"http://127.0.0.1:{port}", tmp_path
        finally:
            proc.terminate()


def schemathesis(base_url: str, paths: str, key: str | None, cwd: Path) -> tuple[int, str]:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
        "PYTHONPATH": str(TESTS.parent),
    }
    auth = ["-H", f"Authorization: Bearer {key}"] if key else []
    result = subprocess.run(
        [
            SCHEMATHESIS, "run", f"{base_url}/openapi.json",
            "--checks", "all", "--exclude-checks", ",".join(EXCLUDED_CHECKS),
            "--include-path-regex", paths, *auth,
            "--max-examples", MAX_EXAMPLES, "--seed", SEED, "--generation-database", "none",
            "--phases", "examples,coverage,fuzzing", "--continue-on-failure",
            "--workers", "1", "--request-timeout", "30", "--no-color",
        ],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout[-8000:] + result.stderr[-2000:]


def test_the_rules_beyond_the_schema_are_codes_the_gateway_answers() -> None:
    assert BEYOND_THE_SCHEMA - set(ERROR_CATALOGUE) == set()


def test_every_check_for_every_role(api: tuple[str, Path]) -> None:
    base_url, tmp_path = api
    creds = json.loads((tmp_path / "var" / "demo-credentials.json").read_text("utf-8"))
    failed: dict[str, str] = {}
    for org, paths in CALLERS:
        started = time.monotonic()
        returncode, output = schemathesis(
            base_url, paths, creds[org]["api_key"] if org else None, tmp_path
        )
        took = time.monotonic() - started
        print(f"schemathesis {org or 'anyone'} {paths}: exit {returncode} in {took:.0f} s")
        if returncode != 0:
            failed[f"{org or 'anyone'} {paths}"] = output
    assert failed == {}, "\n\n".join(f"=== {who}\n{output}" for who, output in failed.items())
