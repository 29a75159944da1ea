"""The `attest-gateway` command as an operator meets it, run as a subprocess: errors are one
sentence and a non-zero exit (never a traceback), and the operator commands (config,
healthcheck, serve's refusals) answer as documented."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from attest_gateway.infra.kafka.embedded import free_port
from tests.support.cli import run_cli

pytestmark = pytest.mark.slow


def test_an_invalid_setting_is_one_sentence_naming_it() -> None:
    result = run_cli(["config", "show"], env={"API_PORT": "eighty"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: the setting API_PORT is not valid:")


def test_an_unexpected_error_is_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli(["contracts", "write", str(blocker / "docs")])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_healthcheck_of_nothing_fails_with_a_sentence() -> None:
    url = f"http://127.0.0.1:{free_port()}/readyz"
    result = run_cli(["healthcheck", "--url", url])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: {url} is not ready: no answer (ConnectError)" in result.stderr


def test_config_check_in_production_lists_the_problems(tmp_path: Path) -> None:
    result = run_cli(["config", "check", "--production"], env={"VAR_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "production mode refuses these settings" in result.stderr
    assert "- DATABASE_URL points at SQLite" in result.stderr


def test_config_show_hides_secrets() -> None:
    result = run_cli(
        ["config", "show"],
        env={"PSEUDONYM_KEY": "s3cr3t-pseudonym-key-value", "DATABASE_URL":
             "postgresql+asyncpg://attest:hunter2@db/attest"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "s3cr3t" not in result.stdout
    assert "hunter2" not in result.stdout
    assert "PSEUDONYM_KEY" in result.stdout
    assert "attest:••••••@db/attest" in result.stdout


def test_serve_with_a_role_needs_a_shared_broker(tmp_path: Path) -> None:
    result = run_cli(["serve", "--role", "worker"], env={"VAR_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "--role worker needs KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_stops_before_starting_anything(tmp_path: Path) -> None:
    """`serve` in production with unsafe settings: exit 2, a list of sentences, no traceback,
    and no embedded broker started."""
    result = run_cli(["serve"], env={"ENVIRONMENT": "production", "VAR_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "production mode refuses these settings" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS is not set" in result.stderr
    assert "embedded broker (Tansu)" not in result.stderr
    assert not (tmp_path / "broker.log").exists()
    assert isinstance(result, subprocess.CompletedProcess)
