"""`attest-gateway orgs set-format` and `orgs add --message-format` against a real SQLite
database: the format is stored, listed, audited, and refused where it cannot hold (a custodial
organisation, whose mail the gateway opens itself; an unknown format)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_directory_cli import audit_of, env, gln, json_lines, ok, refused

__all__ = ["env"]  # the module's database and key directory (test_directory_cli.py)

PSY = "psyk-kbh"  # a demo organisation `setup` makes


def _format_of(environment: dict[str, str], org_id: str) -> str:
    rows = json_lines(ok(environment, "orgs", "list", "--json"))
    return str(next(r for r in rows if r["id"] == org_id)["message_format"])


def test_set_format_is_stored_listed_and_audited(env: dict[str, str]) -> None:
    assert _format_of(env, PSY) == "json"
    assert "psyk-kbh gets xml" in ok(env, "orgs", "set-format", PSY, "xml").stderr
    assert _format_of(env, PSY) == "xml"
    assert "it did already" in ok(env, "orgs", "set-format", PSY, "xml").stderr
    table = ok(env, "orgs", "list").stdout
    assert "format" in table
    assert "xml" in table
    [entry] = [r for r in audit_of(env, PSY) if r["action"] == "org.message_format"]
    assert json.loads(entry["detail"]) == {"message_format": "xml"}
    ok(env, "orgs", "set-format", PSY, "json")
    assert _format_of(env, PSY) == "json"


def test_formats_that_cannot_hold_are_refused(env: dict[str, str]) -> None:
    assert "json or xml" in refused(env, "orgs", "set-format", PSY, "hl7v2")
    assert "custodial" in refused(env, "orgs", "set-format", "jc-koebenhavn", "xml")


def test_a_new_organisation_can_take_xml(env: dict[str, str], tmp_path: Path) -> None:
    ok(
        env,
        "orgs", "add", "gp-xml", "--name", "Lægehuset XML", "--role", "gp",
        "--sor", "987654321012", "--gln", gln("579000999912"),
        "--message-format", "xml", "--keys-out", str(tmp_path / "gp-xml.json"),
    )  # fmt: skip
    assert _format_of(env, "gp-xml") == "xml"


def test_a_custodial_organisation_cannot_be_added_taking_xml(
    env: dict[str, str],
) -> None:
    assert "custodial" in refused(
        env,
        "orgs", "add", "jc-xml", "--name", "Jobcenter XML", "--role", "jobcenter",
        "--kommunekode", "461", "--gln", gln("579000888812"), "--sor", "4611810000160",
        "--custodial", "--message-format", "xml",
    )  # fmt: skip
