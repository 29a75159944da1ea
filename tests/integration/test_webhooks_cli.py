"""`attest-gateway webhooks add|list|remove|rotate` on a fresh SQLite gateway (`setup`'s
demo organisations): the secret is printed once and never listed, a rotation keeps the old
secret signing during the overlap, refusals are one sentence."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from attest_gateway.entrypoints.cli import main as cli


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    var = tmp_path_factory.mktemp("webhooks-cli") / "var"
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


def ok_json(env: dict[str, str], *args: str) -> Any:
    result = run(env, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(env: dict[str, str], *args: str) -> str:
    result = run(env, *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return " ".join(result.stderr.split()).removeprefix("error: ")


def test_add_list_rotate_remove(env: dict[str, str]) -> None:
    url = "https://sag.kk.example/hooks"
    added = ok_json(env, "webhooks", "add", "jc-koebenhavn", url, "--event", "reply.arrived")
    assert added["secret"].startswith("whsec_")
    assert added["events"] == ["reply.arrived"]
    listed = ok_json(env, "webhooks", "list", "jc-koebenhavn")
    assert [e["id"] for e in listed] == [added["id"]]
    assert added["secret"] not in json.dumps(listed)
    assert listed[0]["rotating_until"] is None

    rotated = ok_json(env, "webhooks", "rotate", "jc-koebenhavn", added["id"])
    assert rotated["secret"] not in (added["secret"], None)
    var = env["VAR_DIR"]
    with sqlite3.connect(f"{var}/gateway.db") as conn:
        row = conn.execute(
            "SELECT secret, previous_secret FROM webhook_endpoints WHERE id = ?", (added["id"],)
        ).fetchone()
    assert row == (rotated["secret"], added["secret"])
    assert ok_json(env, "webhooks", "list", "jc-koebenhavn")[0]["rotating_until"] is not None

    # another organisation's endpoint is not found
    assert refused(env, "webhooks", "remove", "psyk-kbh", added["id"]) == (
        "no such webhook endpoint"
    )
    result = run(env, "webhooks", "remove", "jc-koebenhavn", added["id"])
    assert result.exit_code == 0, result.output
    assert ok_json(env, "webhooks", "list", "jc-koebenhavn") == []


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["nobody", "https://x.example/h"], "no organisation 'nobody'"),
        (["jc-koebenhavn", "http://x.example/h"], "a webhook endpoint is an absolute https URL"),
        (
            ["psyk-kbh", "https://x.example/h", "--event", "reply.arrived"],
            "this organisation's role may subscribe to message.waiting only",
        ),
    ],
)
def test_bad_input_is_refused_with_one_sentence(
    env: dict[str, str], args: list[str], sentence: str
) -> None:
    assert refused(env, "webhooks", "add", *args) == sentence
