"""Every import of the gateway's own modules is at the top of its module: none inside a
function, none under `if TYPE_CHECKING:`. Such imports used to hold import cycles apart;
the layers are now import-linter contracts (pyproject.toml, `make test`), and a late import
would hide a dependency from them. (An optional heavy third-party dependency may still be
imported late, with a comment saying why.)"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TREES = ("src/attest_gateway", "tests", "bench")


def _ours(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in ("attest_gateway", "tests")
    return any(alias.name.split(".")[0] in ("attest_gateway", "tests") for alias in node.names)


def late_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, where) of each import of our modules below the module's top level: inside a
    function, or in an `if TYPE_CHECKING:` block."""

    def visit(node: ast.AST, where: str | None) -> Iterator[tuple[int, str]]:
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "in a function"
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = "under TYPE_CHECKING"
            if isinstance(child, ast.Import | ast.ImportFrom) and where and _ours(child):
                yield child.lineno, where
            yield from visit(child, inner)

    yield from visit(tree, None)


def test_the_check_finds_late_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import attest_gateway.core\n"
        "if TYPE_CHECKING:\n"
        "    from attest_gateway.bootstrap import Gateway\n"
        "def f() -> None:\n"
        "    import json\n"
        "    from attest_gateway.infra.db import directory\n"
        "class C:\n"
        "    async def g(self) -> None:\n"
        "        from tests.support.harness import CPR\n"
    )
    assert list(late_imports(ast.parse(source))) == [
        (4, "under TYPE_CHECKING"),
        (7, "in a function"),
        (10, "in a function"),
    ]


@pytest.mark.parametrize("tree", TREES)
def test_our_modules_are_imported_at_the_top(tree: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} ({where})"
        for path in sorted((ROOT / tree).rglob("*.py"))
        for line, where in late_imports(ast.parse(path.read_text("utf-8"), str(path)))
    ]
    assert found == [], "move these imports to the top of their modules:\n" + "\n".join(found)
