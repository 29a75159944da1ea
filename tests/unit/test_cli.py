"""The `attest-gateway` command in process: every command's --help has an example, and the
operator commands (config docs, contracts) work. The commands run as the operator runs
them, as a subprocess, are in tests/e2e/test_cli_commands.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.entrypoints.cli.ops import settings_markdown
from attest_gateway.medcom.build import build_attest_request
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import OrgIdentifiers, read_message
from tests.support.people import CASEWORKER, CITIZEN_NAME


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


def _request_file(tmp_path: Path) -> Path:
    bundle = build_attest_request(
        message_id="2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01",
        bundle_id="9b1f0a4c-6b53-4b3e-8f0e-7f3b1a2c9d02",
        sent_at=dt.datetime(2026, 3, 4, 10, 0, tzinfo=dt.UTC),
        sender=OrgIdentifiers(name="Jobcenter", sor="123456789012345", gln="5790000123456"),
        receiver=OrgIdentifiers(name="Psykiatrien", sor="987654321000016", gln="5790001348120"),
        cpr="0101901234",
        patient_name=CITIZEN_NAME,
        author=CASEWORKER,
        attest_type="LÆ 125",
        attest_title="Statusattest",
        case_kind="sygedagpenge",
        questions="Hvilken behandling får borgeren?",
        reply_deadline=dt.date(2026, 3, 18),
        conversation_id="6f1c2a8e-3b7d-4c1e-9a0f-2d5e8b7c4a11",
    )
    path = tmp_path / "request.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return path


CLINICIAN_OPTIONS = [
    "--family", "Holm", "--given", "Mette", "--authorisation-id", "0C4B1",
    "--phone", "+4578470000",
]  # fmt: skip


def test_client_reply_names_the_clinician_as_author(tmp_path: Path) -> None:
    request = _request_file(tmp_path)
    result = CliRunner().invoke(
        cli.app, ["client", "reply", str(request), "--text", "Se attesten.", *CLINICIAN_OPTIONS]
    )
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    people = [e["resource"] for e in reply["entry"]]
    [clinician] = [
        r for r in people if r["resourceType"] == "Practitioner" and "qualification" in r
    ]
    assert clinician["name"] == [{"family": "Holm", "given": ["Mette"]}]
    assert clinician["qualification"][0]["identifier"] == [
        {"system": "https://autregweb.sst.dk", "value": "0C4B1"}
    ]
    info = read_message(parse_bundle(reply))
    assert info.new_texts == ["Se attesten."]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--authorisation-id", "ABCDE", "authorisation id"),
        ("--phone", "ring", "phone"),
        ("--role", "praest", "--role"),
    ],
)
def test_client_reply_refuses_a_bad_author(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    request = _request_file(tmp_path)
    options = [*CLINICIAN_OPTIONS, option, value]
    result = CliRunner().invoke(cli.app, ["client", "reply", str(request), "--text", "x", *options])
    assert result.exit_code != 0
    assert message in result.output
