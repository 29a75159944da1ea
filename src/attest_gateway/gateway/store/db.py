"""Engine creation and the few dialect differences (SQLite pragmas, insert-or-ignore)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class RowsInsert:
    """An INSERT that takes many rows as tuples in its columns' order. On PostgreSQL it is one
    statement whose parameters are one array per column (`INSERT … SELECT FROM unnest(…)`):
    SQLAlchemy then processes a handful of parameters instead of one per value, and the
    server parses and plans one statement, however many the rows. On SQLite it is the plain
    insert, sent with a list of rows.

    Add the conflict clause to `statement` (`rows_insert(…).on(lambda i: …)`), then
    `await conn.execute(ri.statement, ri.params(rows))`."""

    statement: Any
    columns: tuple[str, ...]
    arrays: bool

    def on(self, clause: Callable[[Any], Any]) -> RowsInsert:
        """This insert with `clause(insert)` as its statement (ON CONFLICT, RETURNING)."""
        return replace(self, statement=clause(self.statement))

    def params(
        self, rows: Sequence[tuple[Any, ...]]
    ) -> dict[str, list[Any]] | list[dict[str, Any]]:
        """The rows as this statement takes them: arrays by column, or a list of dicts."""
        if not self.arrays:
            return [dict(zip(self.columns, row, strict=True)) for row in rows]
        by_column = zip(*rows, strict=True) if rows else (() for _ in self.columns)
        return {f"a_{c}": list(v) for c, v in zip(self.columns, by_column, strict=True)}


def rows_insert(dialect: str, table: sa.Table, *, order_by: Sequence[str] = ()) -> RowsInsert:
    """The INSERT of many rows into all of `table`'s columns (see RowsInsert).

    `order_by`: on PostgreSQL the rows are inserted (and their row locks taken) in this
    order, sorted by the server, so that concurrent transactions writing the same rows wait
    for each other instead of deadlocking. SQLite has one writer at a time and needs none."""
    columns = tuple(c.name for c in table.c)
    if dialect != "postgresql":
        return RowsInsert(dialect_insert(dialect, table), columns, arrays=False)
    source = (
        sa.func.unnest(
            *(sa.bindparam(f"a_{c.name}", type_=postgresql.ARRAY(c.type)) for c in table.c)
        )
        .table_valued(*columns)
        .render_derived()
    )
    # Byte order ("C"): cheaper than the database's collation, and as deterministic.
    rows = sa.select(*source.c).order_by(
        *(
            source.c[name].collate("C")
            if isinstance(table.c[name].type, sa.String)
            else source.c[name]
            for name in order_by
        )
    )
    statement = postgresql.insert(table).from_select(list(columns), rows)
    return RowsInsert(statement, columns, arrays=True)


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
