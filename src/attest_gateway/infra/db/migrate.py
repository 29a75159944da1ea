"""Run the Alembic migrations programmatically (no alembic.ini needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str, connect_args: dict[str, Any] | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connect_args"] = connect_args or {}
    return cfg


def upgrade(url: str, connect_args: dict[str, Any] | None = None) -> None:
    """Bring the database at `url` to the newest schema. Blocking; call outside an event loop."""
    # "heads": independent branches (e.g. tracker and reliability tables) all apply.
    command.upgrade(alembic_config(url, connect_args), "heads")


async def upgrade_async(url: str, connect_args: dict[str, Any] | None = None) -> None:
    """The same from inside an event loop (Alembic's env runs its own loop in a worker thread)."""
    await asyncio.to_thread(upgrade, url, connect_args)
