"""A database error's text never carries the statement's parameters: every engine the project
makes hides them (a parameter may be a case ref, or a caseworker_ref holding a CPR number)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sqlalchemy as sa

from attest_gateway.infra.db.engine import make_engine

SRC = Path(__file__).resolve().parents[2] / "src" / "attest_gateway"
MARKER = "sag-0101901234-param-marker"


async def test_an_engine_leaves_the_parameters_out_of_its_errors() -> None:
    engine = make_engine("sqlite+aiosqlite://")
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE probe (ref TEXT PRIMARY KEY)"))
            await conn.execute(sa.text("INSERT INTO probe VALUES (:ref)"), {"ref": MARKER})
            with pytest.raises(sa.exc.IntegrityError) as caught:
                await conn.execute(sa.text("INSERT INTO probe VALUES (:ref)"), {"ref": MARKER})
    finally:
        await engine.dispose()
    text = str(caught.value)
    assert "INSERT INTO probe" in text  # the statement is still there to debug with
    assert "parameters hidden" in text
    assert MARKER not in text
    assert "0101901234" not in text


_FACTORIES = {
    "create_async_engine",
    "create_engine",
    "engine_from_config",
    "async_engine_from_config",
}


def _sqlalchemy_engine_factories(path: Path) -> list[int]:
    """Lines in `path` that import SQLAlchemy's engine factories or call one as an attribute
    (`sa.create_engine(…)`)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            lines += [node.lineno for alias in node.names if alias.name in _FACTORIES]
        elif isinstance(node, ast.Attribute) and node.attr in _FACTORIES:
            lines.append(node.lineno)
    return lines


def test_every_engine_is_made_by_store_db() -> None:
    """`infra.db.engine.make_engine` is the one place that calls SQLAlchemy's factory (with
    hide_parameters); everything else, the migrations' env.py included, goes through it."""
    db = SRC / "infra" / "db" / "engine.py"
    elsewhere = [
        f"{path.relative_to(SRC)}:{line}"
        for path in sorted(SRC.rglob("*.py"))
        if path != db
        for line in _sqlalchemy_engine_factories(path)
    ]
    assert elsewhere == []
    assert _sqlalchemy_engine_factories(db)  # the scan does find them
