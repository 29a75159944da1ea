"""Engine creation and the few dialect differences (SQLite pragmas, insert-or-ignore)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from attest_gateway.config import DB_MAX_OVERFLOW, DB_POOL_SIZE, DB_POOL_TIMEOUT_SECONDS, Settings
from attest_gateway.infra.db.sqlite_driver import OneHopDBAPI
from attest_gateway.observability.metrics import db_statement

#: Store errors a retry may cure: the driver's (a lost connection, a restart, a deadlock; a
#: caller that knows better looks closer) and a checkout that found every pooled connection
#: busy for the pool's timeout (`sqlalchemy.exc.TimeoutError`, not a driver error).
STORE_ERRORS: tuple[type[Exception], ...] = (sa.exc.DBAPIError, sa.exc.TimeoutError)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Every engine of the project is made here (`make_engine`, the migrations' env.py).
    `hide_parameters`: SQLAlchemy leaves a statement's parameters out of its errors' text,
    which is logged; a parameter may be a case ref, or a caseworker_ref that a client filled
    with a CPR number. (The database's own message can still repeat a value, so the log
    chain never writes a database error's text either: observability/logging.py.) SQLite
    through aiosqlite gets a cursor that runs each statement in one call in its connection's
    thread (infra/db/sqlite_driver.py)."""
    if sa.make_url(url).drivername == "sqlite+aiosqlite":
        kwargs.setdefault("module", OneHopDBAPI())
    return create_async_engine(url, hide_parameters=True, **kwargs)


def make_engine(
    url: str,
    *,
    pool_size: int = DB_POOL_SIZE,
    max_overflow: int = DB_MAX_OVERFLOW,
    pool_timeout: float = DB_POOL_TIMEOUT_SECONDS,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and foreign keys. Every statement it
    sends counts in `attest_gateway_db_statements_total` (observability/metrics.py).

    The pool keeps up to `pool_size` connections, opened when first needed, and by default no
    overflow: SQLAlchemy closes an overflow connection when it is returned to a full pool, so
    under sustained load past the pool's size every checkout opened a connection (on
    PostgreSQL a new backend process) instead of waiting a moment for one
    (docs/decisions/0007-fixed-connection-pool.md). A checkout that waits `pool_timeout`
    seconds raises `sqlalchemy.exc.TimeoutError` (the HTTP API answers 503)."""
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if url.startswith("sqlite"):
        if sa.make_url(url).database in (None, "", ":memory:"):
            pool = {}  # one shared in-memory database: SQLAlchemy's static pool, no size
        engine = create_engine(url, connect_args={"timeout": 30}, **pool, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "checkout")
        def _not_left_in_autocommit(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
            # In autocommit pysqlite sends no BEGIN: every statement commits alone, and a
            # transaction's write lock (the audit head's, a conversation's `lock()`) holds
            # nothing. SQLAlchemy resets a switched connection at check-in, but registers that
            # only once the switch has returned: a task cancelled during it (aiosqlite applies
            # it in the connection's thread anyway) left the connection so. Replace it.
            if dbapi_connection.isolation_level is None:
                raise sa.exc.DisconnectionError("connection left in autocommit")

    else:
        engine = create_engine(url, **pool, **kwargs)
        event.listen(engine.sync_engine, "checkout", _replace_if_closed)
    event.listen(engine.sync_engine, "before_cursor_execute", db_statement)
    return engine


def settings_engine(settings: Settings, *, owner: bool = False) -> AsyncEngine:
    """The engine for the configured database, with the configured pool; `owner`: as the
    owner role (DATABASE_OWNER_URL, for the operator's commands), else as the runtime role."""
    return make_engine(
        settings.effective_owner_database_url if owner else settings.effective_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
    )


def _replace_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pessimistic disconnect handling without a round trip. A pooled connection that the
    server closed (a restart, a terminated backend, a failover) is closed for asyncpg as soon
    as the event loop has seen the socket close: the pool then replaces it before it is used.
    SQLAlchemy's `pool_pre_ping` would instead send BEGIN, an empty query and ROLLBACK at
    every checkout. A connection lost silently still fails its first statement, which
    invalidates the pool (SQLAlchemy's optimistic handling); callers retry or answer 503."""
    if dbapi_connection.driver_connection.is_closed():
        raise sa.exc.DisconnectionError("the database server closed the connection")


def has_idle_connection(engine: AsyncEngine) -> bool:
    """Whether a checkout now would not wait: a pooled connection is idle, or the pool may
    still open one. Work that can be left to another path (the early webhook dispatch) asks
    first, so that it never makes the API's requests wait for the pool. A pool without a
    size (SQLite's in-memory static pool) always has one."""
    pool: Any = engine.pool
    if not isinstance(pool, sa.pool.QueuePool):
        return True
    return bool(pool.checkedin() > 0 or pool.checkedout() < pool.size() + pool._max_overflow)


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
    statement with one parameter, the rows as one JSON array of arrays (`INSERT … SELECT FROM
    jsonb_array_elements(…)`, each value cast to its column's type): the rows are serialised
    by orjson in one call, where asyncpg would encode an array per column value by value
    (with Python-level type checks per element, several times the client's work for the same
    server time: docs/decisions/0004-set-based-batch-writes.md), and the server parses and
    plans one statement, however many the rows. On SQLite it is the plain insert, sent with a
    list of rows.

    Values are what orjson writes and PostgreSQL casts back to the column's type: str, int,
    None and `datetime.date` (what the callers write; tested). Add the conflict clause to
    `statement` (`rows_insert(…).on(lambda i: …)`), then
    `await conn.execute(ri.statement, ri.params(rows))`."""

    statement: Any
    columns: tuple[str, ...]
    as_json: bool

    def on(self, clause: Callable[[Any], Any]) -> RowsInsert:
        """This insert with `clause(insert)` as its statement (ON CONFLICT, RETURNING)."""
        return replace(self, statement=clause(self.statement))

    def params(self, rows: Sequence[tuple[Any, ...]]) -> dict[str, str] | list[dict[str, Any]]:
        """The rows as this statement takes them: one JSON text, or a list of dicts."""
        width = len(self.columns)
        if any(len(row) != width for row in rows):
            raise ValueError(f"every row must have {width} values ({', '.join(self.columns)})")
        if not self.as_json:
            return [dict(zip(self.columns, row, strict=True)) for row in rows]
        return {ROWS_PARAM: orjson.dumps(rows).decode()}


ROWS_PARAM = "rows_json"


def _unbounded_type(column: sa.ColumnElement[Any]) -> Any:
    """The type a value is cast to for `column` (from JSON, or as an array's element): strings
    without their length, so that a value too long fails an insert or matches nothing (an
    explicit cast to VARCHAR(n) would cut it short)."""
    return sa.String() if isinstance(column.type, sa.String) else column.type


def rows_insert(dialect: str, table: sa.Table, *, order_by: Sequence[str] = ()) -> RowsInsert:
    """The INSERT of many rows into all of `table`'s columns (see RowsInsert).

    `order_by`: on PostgreSQL the rows are inserted (and their row locks taken) in this
    order, sorted by the server, so that concurrent transactions writing the same rows wait
    for each other instead of deadlocking. SQLite has one writer at a time and needs none."""
    columns = tuple(c.name for c in table.c)
    if dialect != "postgresql":
        return RowsInsert(dialect_insert(dialect, table), columns, as_json=False)
    element = sa.func.jsonb_array_elements(
        sa.cast(sa.bindparam(ROWS_PARAM, type_=sa.Text()), postgresql.JSONB)
    ).column_valued("e")
    values = sa.select(
        *(
            sa.cast(element.op("->>")(sa.literal_column(str(i))), _unbounded_type(c)).label(c.name)
            for i, c in enumerate(table.c)
        )
    ).subquery("r")
    # Byte order ("C"): cheaper than the database's collation, and as deterministic.
    rows = sa.select(*values.c).order_by(
        *(
            values.c[name].collate("C")
            if isinstance(table.c[name].type, sa.String)
            else values.c[name]
            for name in order_by
        )
    )
    statement = postgresql.insert(table).from_select(list(columns), rows)
    return RowsInsert(statement, columns, as_json=True)


def one_of(dialect: str, column: sa.ColumnElement[Any], values: Iterable[Any]) -> Any:
    """`column IN (values)` as SQL whose text does not depend on how many values there are
    (see `one_of_param`)."""
    if dialect != "postgresql":
        return column.in_(list(values))
    array = postgresql.ARRAY(_unbounded_type(column))
    return column == sa.any_(sa.bindparam(None, list(values), type_=array))


def one_of_param(dialect: str, column: sa.ColumnElement[Any], name: str) -> Any:
    """`column IN (…)` with the values given at execution as parameter `name` (a list).

    On PostgreSQL it is `column = ANY($1)`, the values as one array parameter. asyncpg runs
    every statement prepared, and SQLAlchemy keeps 100 prepared statements per connection,
    by text: an IN list of n values is a new text for every n, so batches of varying sizes
    kept preparing statements anew, the server parsing and planning each
    (docs/decisions/0004-set-based-batch-writes.md). The server plans `= ANY(array)` as it
    plans an IN list. On SQLite (no prepared statements to keep) it is the expanding IN."""
    if dialect != "postgresql":
        return column.in_(sa.bindparam(name, expanding=True))
    return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(_unbounded_type(column))))


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


def local_date(value: dt.datetime, timezone: str) -> dt.date:
    """The day of a stored instant in `timezone` (the tracker's, for the rollups' days)."""
    return aware(value).astimezone(_zone(timezone)).date()


@functools.lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)
