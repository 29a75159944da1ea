"""`make demo` as its user sees it: the dashboard's address on a line of its own that no
console folds into the key, and a recipe with no side effects outside the project (nothing
installed, no database dropped by name). The database it creates and drops is tested on the
real server in tests/integration/test_demo_database.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attest_gateway.entrypoints.cli import tracker

ROOT = Path(__file__).resolve().parents[2]
KEY = "agw_ministry_" + "k" * 43  # as long as a real key


def test_the_dashboard_address_is_one_whole_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal: a folding console breaks the key
    base = "http://127.0.0.1:8001"
    tracker.announce_dashboard(base, KEY)
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert f"{base}/ministry/#key={KEY}" in lines


def _recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text("utf-8")
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"no {target} target"
    return match.group(1)


def test_make_demo_installs_nothing_and_drops_no_database_by_name() -> None:
    recipe = _recipe("demo")
    assert "apt-get" not in recipe
    assert "apt " not in recipe
    assert "DROP DATABASE" not in recipe.upper()
    assert "psql" not in recipe
    assert "--own-database" in recipe  # the simulator makes, and drops, a database of its own
