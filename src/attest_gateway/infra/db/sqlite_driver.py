"""SQLite through aiosqlite with one hand-over to the connection's thread per statement.

aiosqlite runs each sqlite3 call in a thread of its own connection and hands every result
back to the event loop (a queue put, a thread wake-up, `call_soon_threadsafe`). SQLAlchemy's
adapter makes four such calls for a statement — open a cursor, execute, fetch the rows, close
the cursor — and their hand-overs, not SQLite, were most of a statement's cost: about half a
millisecond of the event loop's time for a primary-key look-up on the development machine
(bench/RESULTS.md, "One hand-over per SQLite statement"). The cursor here runs the four in
one function in the connection's thread and keeps what SQLAlchemy then asks for
(description, rows, rowcount, lastrowid). Everything else — connections, transactions,
errors, the server-side cursor of `stream()` — is SQLAlchemy's aiosqlite adapter unchanged.

`create_engine` (infra/db/engine.py) passes it as the DBAPI module of every `sqlite+aiosqlite`
engine. It relies on aiosqlite's `Connection._execute` and `_conn` and on SQLAlchemy's
adapter classes; tests/integration/test_sqlite_driver.py checks both against the versions
installed.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

_Outcome = tuple[Any, int, int | None, list[Any] | None]  # description, rowcount, lastrowid, rows


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """In the connection's thread: the statement, its rows and what its cursor tells."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description and not many else None
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose every execute is one call in the connection's thread (see the module)."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:  # no aiosqlite cursor is opened
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._call(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._call(operation, seq_of_parameters, many=True)

    async def _call(self, operation: str, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            outcome: _Outcome = await connection._execute(  # type: ignore[no-untyped-call]
                _run, connection._conn, operation, parameters, many
            )
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = collections.deque(rows or ())

    async def _async_soft_close(self) -> None:
        """Nothing to close: the statement's cursor was closed in its thread."""

    def close(self) -> None:
        self._rows.clear()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI adapter, whose connections make `OneHopCursor`s."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)
