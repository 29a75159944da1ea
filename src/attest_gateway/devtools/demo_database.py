"""The demo's own PostgreSQL database: `make demo` on a machine with a PostgreSQL server plays
its history into a database it creates under a new, unique name, and drops that database, and
no other, when it ends.

A database that exists is never touched: the name is drawn at random (`attest_demo_` and 12 hex
digits), `CREATE DATABASE` fails on a name in use (another name is drawn then), and the drop
names only the database this process created.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

DEMO_PREFIX = "attest_demo_"
#: Names drawn before giving up; a clash of 48 random bits is already unlikely once.
ATTEMPTS = 5


def demo_database_names() -> Iterator[str]:
    """Fresh names for a demo database, without end."""
    while True:
        yield DEMO_PREFIX + secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class OwnDatabase:
    """A database this process created: its name, the gateway's `DATABASE_URL` for it, and
    the server's maintenance URL it was created through (and is dropped through)."""

    name: str
    url: str
    server_url: str


def _dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL (`postgresql+asyncpg://…` → `postgresql://…`)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_own_database(
    server_url: str, names: Iterator[str] | None = None, *, attempts: int = ATTEMPTS
) -> OwnDatabase:
    """Create a database of a new name on the server `server_url` (a SQLAlchemy URL of a
    database to connect to, such as `postgresql+asyncpg://postgres@127.0.0.1:5432/postgres`)."""
    names = names if names is not None else demo_database_names()
    conn = await asyncpg.connect(_dsn(server_url))
    try:
        for _ in range(attempts):
            name = next(names)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                continue  # someone else's: leave it, draw another name
            url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
            return OwnDatabase(name, url, server_url)
    finally:
        await conn.close()
    raise RuntimeError(f"no free database name after {attempts} attempts")


async def drop_own_database(db: OwnDatabase) -> None:
    """Drop the database `create_own_database` made (its sessions closed first)."""
    conn = await asyncpg.connect(_dsn(db.server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
    finally:
        await conn.close()
