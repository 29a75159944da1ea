"""The documentation's relative links lead somewhere: every Markdown link in README.md and
docs/ that is not a URL points at a file or folder of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(doc: Path) -> list[str]:
    links = [m.group(1).split("#", 1)[0] for m in _LINK.finditer(doc.read_text("utf-8"))]
    return [link for link in links if link and not re.match(r"[a-z][a-z0-9+.-]*:", link)]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_relative_link_leads_to_a_file_of_the_repository(doc: Path) -> None:
    broken = [
        link
        for link in _relative_links(doc)
        if not (doc.parent / link).resolve().exists()
        or not (doc.parent / link).resolve().is_relative_to(ROOT)
    ]
    assert broken == []


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_no_link_names_a_local_file_by_its_absolute_place(doc: Path) -> None:
    """A `file:` URL or an absolute path works on one machine only."""
    links = [m.group(1) for m in _LINK.finditer(doc.read_text("utf-8"))]
    assert [link for link in links if link.startswith(("file:", "/"))] == []


def test_the_check_finds_a_broken_link(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("[here](here.md), [there](https://example.org), [gone](gone.md#part)\n")
    (tmp_path / "here.md").write_text("")
    assert _relative_links(doc) == ["here.md", "gone.md"]
    assert not (tmp_path / "gone.md").exists()
