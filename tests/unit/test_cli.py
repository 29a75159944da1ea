"""The `attest-gateway` command in process: every command's --help has an example, and the
operator commands (config docs, contracts) work. The commands run as the operator runs
them, as a subprocess, are in tests/e2e/test_cli_commands.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.entrypoints.cli.ops import settings_markdown


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
