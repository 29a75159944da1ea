"""`attest-gateway orgs …` and `keys …` against a real SQLite database and key directory:
what each command changes (directory, key files, audit log) and how bad input is refused
(one sentence, exit code 1)."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from attest_gateway.core.directory import client_cert_key_id, hash_api_key
from attest_gateway.core.identifiers import gln_check_digit
from attest_gateway.crypto.sealing import KeyRing, OrgKeys
from attest_gateway.devtools import devca
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.entrypoints.cli.admin import operator

DEMO_JC_SOR = "101181000016003"  # jc-koebenhavn's, made by `setup`


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    var = tmp_path_factory.mktemp("directory-cli") / "var"
    settings = {
        "ENVIRONMENT": "development",
        "VAR_DIR": str(var),
        "DATABASE_URL": f"sqlite+aiosqlite:///{(var / 'gateway.db').as_posix()}",
        "KEYS_DIR": str(var / "keys"),
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(cli.app, ["setup"], env=settings)
    assert result.exit_code == 0, result.output
    return settings


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli.app, list(args), env=env)


def ok(env: dict[str, str], *args: str) -> Result:
    result = run(env, *args)
    assert result.exit_code == 0, result.output
    return result


def refused(env: dict[str, str], *args: str) -> str:
    """The one sentence a refused command prints (line breaks of the terminal joined)."""
    result = run(env, *args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    text = " ".join(result.stderr.split())
    assert text.startswith("error: ")
    return text.removeprefix("error: ")


def db(env: dict[str, str]) -> sqlite3.Connection:
    path = env["DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    return conn


def audit_of(env: dict[str, str], org_id: str) -> list[sqlite3.Row]:
    with db(env) as conn:
        return conn.execute(
            "SELECT actor, action, source, detail FROM audit_log"
            " WHERE subject_org = ? ORDER BY seq",
            (org_id,),
        ).fetchall()


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def keys_of(env: dict[str, str], org_id: str) -> dict[str, dict[str, Any]]:
    return {k["key_id"]: k for k in json_lines(ok(env, "keys", "list", "--org", org_id, "--json"))}


def gln(first12: str) -> str:
    return first12 + str(gln_check_digit(first12))


def custodial_file(env: dict[str, str], org_id: str) -> Path:
    return Path(env["KEYS_DIR"]) / "custodial" / f"{org_id}.json"


def add_jobcenter(env: dict[str, str], org_id: str, sor: str, gln12: str) -> str:
    result = ok(
        env,
        "orgs",
        "add",
        org_id,
        "--name",
        f"Jobcenter {org_id}",
        "--role",
        "jobcenter",
        "--kommunekode",
        "461",
        "--gln",
        gln(gln12),
        "--sor",
        sor,
        "--custodial",
    )
    return result.stdout.strip()


def test_orgs_add_list_disable(env: dict[str, str]) -> None:
    api_key = add_jobcenter(env, "jc-odense", "461181000016008", "579000161001")
    assert api_key.startswith("agw_jc-odense_")
    with db(env) as conn:
        row = conn.execute("SELECT * FROM organisations WHERE id = 'jc-odense'").fetchone()
    assert row["api_key_hash"] == hash_api_key(api_key)  # only the hash is stored
    assert api_key not in json.dumps(dict(row))
    held = OrgKeys.load(custodial_file(env, "jc-odense"))
    assert stat.S_IMODE(custodial_file(env, "jc-odense").stat().st_mode) == 0o600
    directory_keys = keys_of(env, "jc-odense")
    assert set(directory_keys) == {held.current_hpke.key_id, held.current_signing.key_id}
    assert {k["state"] for k in directory_keys.values()} == {"current"}

    ok(
        env,
        "orgs",
        "add",
        "gp-odense",
        "--name",
        "Lægehuset Odense",
        "--role",
        "gp",
        "--sor",
        "461211000016002",
        "--gln",
        gln("579000461002"),
        "--ydernummer",
        "054321",
        "--region",
        "1083",
        "--webhook-url",
        "https://gp-odense.example/attest-hook",
        "--keys-out",
        str(Path(env["VAR_DIR"]) / "gp-odense.json"),
    )
    listed = {o["id"]: o for o in json_lines(ok(env, "orgs", "list", "--json"))}
    assert {"gateway", "jc-koebenhavn", "psyk-kbh", "jc-odense", "gp-odense"} <= set(listed)
    odense = listed["jc-odense"]
    assert (odense["role"], odense["kommunekode"], odense["region"]) == ("jobcenter", "461", "1083")
    assert (odense["custodial"], odense["enabled"]) == (True, True)
    assert odense["hpke_key"] == held.current_hpke.key_id
    assert listed["gp-odense"]["webhook_url"] == "https://gp-odense.example/attest-hook"
    assert listed["gp-odense"]["custodial"] is False
    table = ok(env, "orgs", "list").stdout
    assert "jc-odense" in table
    assert "Jobcenter jc-odense" in table

    ok(env, "orgs", "disable", "jc-odense")
    again = ok(env, "orgs", "disable", "jc-odense")
    assert "already" in again.stderr
    listed = {o["id"]: o for o in json_lines(ok(env, "orgs", "list", "--json"))}
    assert listed["jc-odense"]["enabled"] is False

    entries = audit_of(env, "jc-odense")
    assert [e["action"] for e in entries] == [
        "org.add",
        "key.generate",
        "key.generate",
        "org.disable",
    ]  # the second disable changed nothing
    assert {(e["actor"], e["source"]) for e in entries} == {(operator(), "cli")}
    generated = {
        json.loads(e["detail"])["key_id"] for e in entries if e["action"] == "key.generate"
    }
    assert generated == set(directory_keys)


def test_a_clinic_makes_its_own_keys_and_the_operator_registers_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    private, public = tmp_path / "psyk-ouh.json", tmp_path / "psyk-ouh.public.json"
    ok(env, "keys", "generate", "--org", "psyk-ouh", "--out", str(private))
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    mine = OrgKeys.load(private)
    published = json.loads(public.read_text("utf-8"))
    assert {k["key_id"] for k in published["keys"]} == {
        mine.current_hpke.key_id,
        mine.current_signing.key_id,
    }
    assert "x25519" not in public.read_text("utf-8")  # no private halves
    assert "ed25519" not in public.read_text("utf-8")

    ok(
        env,
        "orgs",
        "add",
        "psyk-ouh",
        "--name",
        "Psykiatrien OUH",
        "--role",
        "psychiatry",
        "--sor",
        "461381000016007",
        "--gln",
        gln("579000461003"),
        "--region",
        "1083",
        "--public-file",
        str(public),
    )
    assert set(keys_of(env, "psyk-ouh")) == {mine.current_hpke.key_id, mine.current_signing.key_id}
    old_hpke, old_signing = mine.current_hpke.key_id, mine.current_signing.key_id

    # Rotation on the clinic's side: the same file grows, the operator registers the new key.
    ok(env, "keys", "generate", "--org", "psyk-ouh", "--out", str(private), "--purpose", "hpke")
    mine = OrgKeys.load(private)
    assert mine.hpke_keys[0].key_id == old_hpke  # the old key stays
    new_hpke = mine.current_hpke.key_id
    ok(env, "keys", "add", "--org", "psyk-ouh", "--public-file", str(public))
    states = {k: v["state"] for k, v in keys_of(env, "psyk-ouh").items()}
    assert states == {old_hpke: "usable", new_hpke: "current", old_signing: "current"}
    assert "already registered" in refused(
        env, "keys", "add", "--org", "psyk-ouh", "--public-file", str(public)
    )

    assert "rotate first" in refused(env, "keys", "retire", new_hpke)
    ok(env, "keys", "retire", old_hpke)
    assert "already" in ok(env, "keys", "retire", old_hpke).stderr
    ok(env, "keys", "revoke", old_signing, "--reason", "test: key compromised")
    after = keys_of(env, "psyk-ouh")
    assert (after[old_hpke]["state"], after[old_hpke]["not_after"] != "-") == ("retired", True)
    assert after[old_signing]["state"] == "revoked"

    # Not custodial: the gateway does not make its keys (outside development's --out).
    assert "is not custodial" in refused(env, "keys", "rotate", "--org", "psyk-ouh")
    actions = [(e["action"], json.loads(e["detail"] or "{}")) for e in audit_of(env, "psyk-ouh")]
    assert [a for a, _ in actions] == [
        "org.add", "key.generate", "key.generate", "key.rotate", "key.retire", "key.revoke"
    ]  # fmt: skip
    assert actions[3][1]["previous_key_id"] == old_hpke
    assert actions[5][1] == {
        "key_id": old_signing,
        "purpose": "signing",
        "reason": "test: key compromised",
    }


def test_custodial_rotation_keeps_old_keys_until_retired_and_a_running_ring_follows(
    env: dict[str, str],
) -> None:
    add_jobcenter(env, "jc-svendborg", "479181000016001", "579000479001")
    path = custodial_file(env, "jc-svendborg")
    ring = KeyRing.load_dir(path.parent)  # as a running gateway holds it
    before = OrgKeys.load(path)
    old_hpke, old_signing = before.current_hpke.key_id, before.current_signing.key_id

    ok(env, "keys", "rotate", "--org", "jc-svendborg")
    after = OrgKeys.load(path)
    new_hpke, new_signing = after.current_hpke.key_id, after.current_signing.key_id
    assert [k.key_id for k in after.hpke_keys] == [old_hpke, new_hpke]
    assert [k.key_id for k in after.signing_keys] == [old_signing, new_signing]
    states = {k: v["state"] for k, v in keys_of(env, "jc-svendborg").items()}
    assert states == {
        old_hpke: "usable",
        new_hpke: "current",
        old_signing: "usable",
        new_signing: "current",
    }
    # The ring sees the new key at its first use (a miss reloads the changed files).
    assert ring.hpke_key(new_hpke) is not None
    signer = ring.signing_among("jc-svendborg", [new_signing, old_signing])
    assert signer is not None
    assert signer.key_id == new_signing

    ok(env, "keys", "retire", old_hpke)
    assert old_hpke not in {k.key_id for k in OrgKeys.load(path).hpke_keys}
    ring.refresh(force=True)
    assert ring.hpke_key(old_hpke) is None  # mail sealed to it no longer opens

    ok(env, "keys", "revoke", old_signing)
    assert [k.key_id for k in OrgKeys.load(path).signing_keys] == [new_signing]
    only = refused(env, "keys", "revoke", new_signing)
    assert f"{new_signing} is the only usable signing key of jc-svendborg: rotate first" in only
    assert keys_of(env, "jc-svendborg")[new_signing]["state"] == "current"  # unchanged


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    jc = ["orgs", "add", "jc-x", "--name", "X", "--role", "jobcenter"]
    kommune, sor, good_gln = (
        ["--kommunekode", "461"],
        ["--sor", "461181000099999"],
        gln("579000999001"),
    )
    good = [*kommune, *sor, "--gln", good_gln]
    gp = ["orgs", "add", "gp-x", "--name", "X", "--role", "gp", *sor, "--gln", good_gln]
    other = str(tmp / "other.public.json")
    garbage = tmp / "garbage.public.json"
    garbage.write_text('{"format": "attest-gateway/public-keys/v1", "keys": 3}', "utf-8")
    no_org = "there is no organisation 'nope' in the directory"
    return [
        (["orgs", "disable", "nope"], no_org),
        (["orgs", "disable", "gateway"], "the gateway's own organisation cannot be disabled"),
        (["keys", "rotate", "--org", "nope"], no_org),
        (["keys", "list", "--org", "nope"], no_org),
        (["keys", "revoke", "sig-nope"], "there is no key 'sig-nope' in the directory"),
        (["keys", "retire", "hpke-nope"], "there is no key 'hpke-nope' in the directory"),
        (
            ["keys", "rotate", "--org", "jc-koebenhavn", "--purpose", "all"],
            "--purpose must be hpke, signing or both, not 'all'",
        ),
        (
            [*jc, *kommune, *sor, "--gln", "5790009990012"],
            "GLN '5790009990012' is not valid: the GLN's check digit is wrong",
        ),
        ([*jc, *sor, "--gln", good_gln, "--kommunekode", "999"], "kommunekode '999' is not valid"),
        (
            [*jc, *kommune, "--gln", good_gln, "--sor", "12ab5678"],
            "SOR code '12ab5678' is not valid",
        ),
        ([*gp, "--ydernummer", "12"], "ydernummer '12' is not valid"),
        ([*jc, *good, "--region", "1081"], "kommunekode 461 lies in region 1083, not 1081"),
        ([*jc, *kommune, "--gln", good_gln], "a job centre needs --kommunekode, --gln and --sor"),
        (["orgs", "add", "x", "--name", "X", "--role", "clinic"], "--role must be one of"),
        (
            ["orgs", "add", "ra-x", "--name", "X", "--role", "region-analyst"],
            "a region's analysts need --region (and no --kommunekode)",
        ),
        (
            ["orgs", "add", "ma-x", "--name", "X", "--role", "municipality-analyst"],
            "a municipality's analysts need --kommunekode",
        ),
        (
            ["orgs", "add", "Bad Id", "--name", "X", "--role", "ministry"],
            "'Bad Id' is not a valid organisation id",
        ),
        (
            ["orgs", "add", "jc-koebenhavn", "--name", "X", "--role", "ministry"],
            "there is already an organisation 'jc-koebenhavn'",
        ),
        (
            [*jc, *kommune, "--gln", good_gln, "--sor", DEMO_JC_SOR],
            f"SOR code {DEMO_JC_SOR} already belongs to jc-koebenhavn",
        ),
        ([*jc, *good, "--webhook-url", "http://jc-x.example/hook"], "a webhook URL must use https"),
        (
            ["keys", "add", "--org", "psyk-kbh", "--public-file", other],
            "the public-keys file is for someone-else, not psyk-kbh",
        ),
        (
            ["keys", "add", "--org", "psyk-kbh", "--public-file", str(garbage)],
            "the public-keys file is not JSON of the expected shape",
        ),
        (
            ["keys", "add", "--org", "psyk-kbh", "--public-file", str(tmp / "missing.json")],
            "cannot read",
        ),
        (
            ["keys", "add", "--org", "jc-koebenhavn", "--public-file", other],
            "jc-koebenhavn is custodial: its keys are made with keys rotate",
        ),
    ]


def test_bad_input_is_refused_with_one_sentence(env: dict[str, str], tmp_path: Path) -> None:
    ok(env, "keys", "generate", "--org", "someone-else", "--out", str(tmp_path / "other.json"))
    with db(env) as conn:
        before = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        orgs_before = conn.execute("SELECT count(*) FROM organisations").fetchone()[0]
    gateway_hpke = next(k for k, v in keys_of(env, "gateway").items() if v["purpose"] == "hpke")
    cases = [
        *_bad_inputs(tmp_path),
        (["keys", "retire", gateway_hpke], "the gateway's own HPKE keys are never retired"),
    ]
    for args, expected in cases:
        assert expected in refused(env, *args), args
    with db(env) as conn:  # nothing was changed or audited by the refused commands
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] == before
        assert conn.execute("SELECT count(*) FROM organisations").fetchone()[0] == orgs_before


def test_a_client_certificate_is_pinned_listed_audited_and_revoked(
    env: dict[str, str], tmp_path: Path
) -> None:
    add_jobcenter(env, "jc-vejle", "630181000016001", "579000630001")
    ca = devca.ensure_ca(tmp_path / "ca")
    pair = devca.issue_client_certificate(ca, "jc-vejle")
    key_id = client_cert_key_id(devca.certificate_fingerprint(pair.cert.read_bytes()))

    ok(env, "keys", "add-cert", "--org", "jc-vejle", "--cert", str(pair.cert))
    pinned = keys_of(env, "jc-vejle")[key_id]
    assert (pinned["purpose"], pinned["state"]) == ("tls-client", "usable")
    assert [r["action"] for r in audit_of(env, "jc-vejle")][-1] == "cert.add"
    # The same certificate for another organisation is refused, and so is a server certificate.
    add_jobcenter(env, "jc-horsens", "615181000016003", "579000615001")
    assert "another organisation" in refused(
        env, "keys", "add-cert", "--org", "jc-horsens", "--cert", str(pair.cert)
    )
    server = devca.issue_server_certificate(ca)
    assert "client authentication" in refused(
        env, "keys", "add-cert", "--org", "jc-horsens", "--cert", str(server.cert)
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    assert "no PEM certificate" in refused(
        env, "keys", "add-cert", "--org", "jc-horsens", "--cert", str(garbage)
    )

    ok(env, "keys", "revoke", key_id, "--reason", "test")
    assert keys_of(env, "jc-vejle")[key_id]["state"] == "revoked"


def test_an_api_key_is_replaced_and_an_organisation_enabled_again(env: dict[str, str]) -> None:
    first = add_jobcenter(env, "jc-kolding", "621181000016001", "579000621001")
    second = ok(env, "orgs", "new-api-key", "jc-kolding").stdout.strip()
    assert second.startswith("agw_jc-kolding_")
    assert second != first
    with db(env) as conn:
        stored = conn.execute(
            "SELECT api_key_hash, enabled FROM organisations WHERE id = 'jc-kolding'"
        ).fetchone()
    assert stored["api_key_hash"] == hash_api_key(second)  # the old key's hash is gone
    assert stored["api_key_hash"] != hash_api_key(first)

    ok(env, "orgs", "disable", "jc-kolding")
    assert "is enabled" in ok(env, "orgs", "enable", "jc-kolding").stderr
    assert "already" in ok(env, "orgs", "enable", "jc-kolding").stderr
    actions = [r["action"] for r in audit_of(env, "jc-kolding")]
    assert actions[-3:] == ["org.api-key", "org.disable", "org.enable"]
    assert all(second not in str(dict(r)) for r in audit_of(env, "jc-kolding"))
    assert "no organisation" in refused(env, "orgs", "new-api-key", "jc-nowhere")


def test_analysts_of_a_region_and_a_municipality_are_added(env: dict[str, str]) -> None:
    added = ok(
        env, "orgs", "add", "analyse-syd", "--name", "Region Syddanmark (analyse)",
        "--role", "region-analyst", "--region", "1083", "--no-api-key",
    )  # fmt: skip
    assert "added analyse-syd (region-analyst, region 1083)" in added.output
    added = ok(
        env, "orgs", "add", "analyse-odense", "--name", "Odense Kommune (analyse)",
        "--role", "municipality-analyst", "--kommunekode", "461", "--no-api-key",
    )  # fmt: skip
    assert "added analyse-odense (municipality-analyst, region 1083)" in added.output
