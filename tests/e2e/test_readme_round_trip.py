"""The README's curl round trip, pasted as one block: the block is taken from README.md as it
stands and run with bash against `attest-gateway serve --dev-tls` (what `make run` starts).
Every call prints its HTTP status, and the conversation ends acknowledged: the block waits for
the mailbox and the inbox itself (the long-poll) and needs no shell alias."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_mtls import TlsServer, tls_server  # noqa: F401 - the fixture
from tests.support.processes import CLI

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("jq") is None or shutil.which("curl") is None,
        reason="the README's round trip needs jq and curl",
    ),
]

README = Path(__file__).resolve().parents[2] / "README.md"


def round_trip_block() -> str:
    text = README.read_text("utf-8")
    section = text.split("## A round trip with curl", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the section has no sh block"
    return match.group(1)


def test_the_block_needs_no_alias() -> None:
    block = round_trip_block()
    assert "alias " not in block
    assert "?wait=" in block  # it waits for the mail instead of racing the delivery


def test_the_readme_round_trip_works_pasted_as_one_block(
    tls_server: TlsServer,  # noqa: F811 - the fixture
) -> None:
    # Where `make run` is started: var/ and .venv/ are below it.
    where = tls_server.var_dir.parent
    (where / ".venv" / "bin").mkdir(parents=True)
    for command in ("attest-gateway", "attest-client"):  # the installation's entry points
        (where / ".venv" / "bin" / command).symlink_to(Path(CLI).with_name(command))
    env = {**os.environ, "GW": tls_server.base_url}  # the test server's port
    result = subprocess.run(
        ["bash", "-c", round_trip_block()],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)
    statuses = re.findall(r"^(\w+(?: \w+)?): (\d{3})$", out, re.MULTILINE)
    assert statuses == [
        ("request", "202"),
        ("mailbox", "200"),
        ("acknowledgement", "202"),
        ("reply", "202"),
        ("inbox", "200"),
        ("ack", "200"),
        ("status", "200"),
    ], (out, result.stderr)
    stages = json.loads(out[out.index("{") :])
    assert "reply_acknowledged" in stages
    assert result.stderr == ""
