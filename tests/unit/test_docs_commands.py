"""The documentation names commands that exist: every `attest-gateway <command> [<sub>]` in a
code span or code block of README.md and docs/ is a command of the CLI (`a|b|c` names several),
and the README's shell examples run the project's own installation (`.venv/bin/`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from attest_gateway.entrypoints.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")
# The program, then words of lower-case letters and hyphens, each maybe `a|b|c`.
_CALL = re.compile(r"(?<![\w/-])(?:\.venv/bin/)?attest-gateway((?:[ \t]+[a-z][a-z|-]*)*)")
_COMMAND_LINE = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*(?:[A-Z_]+=)?((?:[^\s=]*/)?attest-gateway)\b")


def _code(text: str) -> list[str]:
    """The code blocks and the code spans (one may break across a line) of a Markdown text."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    prose = _FENCE.sub("", text)
    return blocks + [m.group(1).replace("\n", " ") for m in _SPAN.finditer(prose)]


def calls_in(text: str) -> list[tuple[str, ...]]:
    """Every command path named after `attest-gateway` in the code of a Markdown text: the
    words up to the first option or argument, alternatives (`a|b`) spelled out."""
    found: list[tuple[str, ...]] = []
    for code in _code(text):
        for match in _CALL.finditer(code):
            paths: list[tuple[str, ...]] = [()]
            for word in match.group(1).split():
                paths = [(*p, alt) for p in paths for alt in word.split("|") if alt]
            found += [p for p in paths if p]
    return found


def _tree(command: Any) -> dict[str, Any]:
    commands = getattr(command, "commands", {})
    return {name: _tree(sub) for name, sub in commands.items()}


COMMANDS = _tree(typer.main.get_command(cli.app))


def unknown_calls(calls: list[tuple[str, ...]], tree: dict[str, Any]) -> list[str]:
    """The calls that name no command: the first word must be a command; a word after a group
    must be one of its commands; a word after a command is its argument."""
    unknown = []
    for call in calls:
        node: dict[str, Any] | None = tree
        for word in call:
            if not node:  # a command, not a group: the rest are its arguments
                break
            if word not in node:
                unknown.append(" ".join(call))
                break
            node = node[word]
    return unknown


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_command_the_docs_name_exists(doc: Path) -> None:
    assert unknown_calls(calls_in(doc.read_text("utf-8")), COMMANDS) == []


def test_the_check_finds_a_command_that_does_not_exist() -> None:
    text = (
        "Run `attest-gateway keys rotate --org x` or `attest-gateway keys\n"
        "generate|add|vanish`, then\n\n```sh\n.venv/bin/attest-gateway serve --dev-tls\n"
        "X=1 attest-gateway fly away\n```\nthe `attest-gateway` entry point.\n"
    )
    calls = calls_in(text)
    assert ("keys", "rotate") in calls
    assert ("keys", "vanish") in calls
    assert ("serve",) in calls
    assert sorted(unknown_calls(calls, COMMANDS)) == ["fly away", "keys vanish"]


def test_the_readme_s_examples_run_the_project_s_installation() -> None:
    """`make run` and `make test` install into .venv/, not onto the PATH: a command line of
    the README's shell examples names `.venv/bin/attest-gateway`."""
    text = (ROOT / "README.md").read_text("utf-8")
    blocks = [m.group(0) for m in _FENCE.finditer(text) if m.group(0).startswith("```sh")]
    bare = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if (m := _COMMAND_LINE.match(line)) and m.group(1) != ".venv/bin/attest-gateway"
    ]
    assert bare == []
