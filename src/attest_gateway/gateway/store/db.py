"""Engine creation and the few dialect differences (SQLite pragmas, insert-or-ignore)."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and foreign keys. Every statement it
    sends counts in `attest_gateway_db_statements_total` (metrics.py)."""
    from attest_gateway.gateway.metrics import db_statement  # metrics imports this module

    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    else:
        engine = create_async_engine(url, pool_size=10, max_overflow=10, **kwargs)
        event.listen(engine.sync_engine, "checkout", _replace_if_closed)
    event.listen(engine.sync_engine, "before_cursor_execute", db_statement)
    return engine


def _replace_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pessimistic disconnect handling without a round trip. A pooled connection that the
    server closed (a restart, a terminated backend, a failover) is closed for asyncpg as soon
    as the event loop has seen the socket close: the pool then replaces it before it is used.
    SQLAlchemy's `pool_pre_ping` would instead send BEGIN, an empty query and ROLLBACK at
    every checkout. A connection lost silently still fails its first statement, which
    invalidates the pool (SQLAlchemy's optimistic handling); callers retry or answer 503."""
    if dbapi_connection.driver_connection.is_closed():
        raise sa.exc.DisconnectionError("the database server closed the connection")


async def autocommit(conn: AsyncConnection) -> AsyncConnection:
    """Reads that need no transaction of their own (authentication, gauges): on PostgreSQL the
    connection runs in autocommit, which spares the BEGIN and ROLLBACK round trips around a
    lookup. SQLite opens no transaction for reads anyway, so its connection is left as is."""
    if conn.dialect.name == "postgresql":
        await conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing/do_update` on both."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect}")  # pragma: no cover


@functools.cache
def _insert_ignore(dialect: str, table: sa.Table) -> Any:
    return dialect_insert(dialect, table).on_conflict_do_nothing()


async def insert_ignore(conn: AsyncConnection, table: sa.Table, values: dict[str, Any]) -> bool:
    """Insert one row unless its key exists already. True when the row is new. (The statement
    is built once per table; the row goes as parameters.)"""
    result = await conn.execute(_insert_ignore(conn.dialect.name, table), values)
    return bool(result.rowcount == 1)


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
