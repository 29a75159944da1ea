"""The `attest-gateway` command as an operator meets it: every command's --help has an
example, errors are one sentence and a non-zero exit (never a traceback), and the operator
commands (config, contracts, healthcheck) work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from attest_gateway.config import Settings
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.entrypoints.cli.ops import settings_markdown
from attest_gateway.infra.kafka.embedded import free_port

CLI = str(Path(sys.executable).with_name("attest-gateway"))
ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed command with a clean gateway environment plus `env`."""
    base = {k: v for k, v in os.environ.items() if k.upper() not in _SETTING_VARS}
    return subprocess.run(
        [CLI, *args],
        env={**base, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=cwd,
    )


def _setting_vars() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


_SETTING_VARS = _setting_vars()


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    if hasattr(command, "commands"):  # a group (typer's own group class)
        for name, sub in command.commands.items():
            found += _commands(sub, (*path, name))
    return found


ALL_COMMANDS = _commands(typer.main.get_command(cli.app))


def test_the_top_level_help_lists_the_commands_with_examples() -> None:
    result = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("serve", "setup", "migrate", "healthcheck", "config", "contracts", "client"):
        assert name in result.output
    assert "Examples" in result.output


@pytest.mark.parametrize(
    "command",
    [c for p, c in ALL_COMMANDS if p and not hasattr(c, "commands")],
    ids=[" ".join(p) for p, c in ALL_COMMANDS if p and not hasattr(c, "commands")],
)
def test_every_command_has_an_example_in_its_help(command: Any) -> None:
    assert "Example" in (command.help or ""), f"{command.name}: add 'Example: …' to its help"


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


def test_config_docs_prints_the_settings_table() -> None:
    result = CliRunner().invoke(cli.app, ["config", "docs"])
    assert result.exit_code == 0
    assert result.output.strip() == settings_markdown()


def test_contracts_write_produces_the_documents(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["contracts", "write", str(tmp_path)])
    assert result.exit_code == 0, result.output
    openapi: dict[str, Any] = json.loads((tmp_path / "openapi.json").read_text("utf-8"))
    asyncapi: dict[str, Any] = json.loads((tmp_path / "asyncapi.json").read_text("utf-8"))
    assert openapi["openapi"].startswith("3.1")
    assert asyncapi["asyncapi"] == "3.0.0"
    assert (tmp_path / "messages.md").read_text("utf-8").startswith("# Kafka topics")


def test_serve_with_a_role_needs_a_shared_broker(tmp_path: Path) -> None:
    result = run_cli(["serve", "--role", "worker"], env={"VAR_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "--role worker needs KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert "Traceback" not in result.stderr
