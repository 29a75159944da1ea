"""SQL statement census of a gateway process, for profiling (not a test, not part of `make bench`).

With ``bench/sqltrace`` on ``PYTHONPATH`` and ``BENCH_SQL_TRACE=file`` (``{pid}`` in it is
replaced by the process id), every SQLAlchemy engine of the process counts the statements it
sends, by statement text (parameters are not kept), with the wall time from send to result and
the number of distinct texts it took (the lengths of its VALUES and IN lists: on PostgreSQL
each distinct text is prepared anew), and writes the table as JSON to the file when the
process exits. The wall time includes waiting for the event loop, so it ranks statements, it
does not measure them. Each entry keeps one whole text (``example``), e.g. for the database's
query plan. ``bench/profile.py --sql`` sets this up and prints the table.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import time
from typing import Any

_OUT = os.environ.get("BENCH_SQL_TRACE")

if _OUT is not None:
    _out: str = _OUT.replace("{pid}", str(os.getpid()))  # one file per process
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _stats: dict[str, list[Any]] = {}  # key -> [count, wall seconds, hashes of the texts]
    _space = re.compile(r"\s+")
    _param = r"(?:\?|\$\d+(?:::[A-Z ]+)?)"  # SQLite's ? or PostgreSQL's $1::TYPE
    _rows = re.compile(rf"(\({_param}(?:, {_param})*\))(?:, \({_param}(?:, {_param})*\))+")
    _ins = re.compile(rf"IN \({_param}(?:, {_param})+\)")

    def _key(statement: str) -> str:
        """The statement without its multi-row VALUES and IN lists' lengths."""
        text = _space.sub(" ", statement).strip()
        text = _ins.sub("IN (…)", _rows.sub(r"\1, …", text))
        return text[:240]

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("_trace_t0", []).append(time.perf_counter())

    def _caller() -> str:
        """The gateway's own functions that sent the statement (SQLAlchemy's async layer runs
        it in a greenlet; the awaiting coroutines are on the parent greenlet's stack)."""
        import sys

        import greenlet  # type: ignore[import-untyped]

        parent = greenlet.getcurrent().parent
        frame = parent.gr_frame if parent is not None else sys._getframe()
        names: list[str] = []
        while frame is not None and len(names) < 3:
            code = frame.f_code
            if "attest_gateway" in code.co_filename:
                names.append(f"{code.co_filename.rsplit('/', 1)[-1][:-3]}.{code.co_name}")
            frame = frame.f_back
        return " < ".join(names) or "?"

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        t0 = conn.info["_trace_t0"].pop()
        entry = _stats.setdefault(_caller() + " | " + _key(statement), [0, 0.0, set(), statement])
        entry[0] += 1
        entry[1] += time.perf_counter() - t0
        entry[2].add(hash(statement))

    @atexit.register
    def _dump() -> None:
        rows = [
            {"statement": k, "count": v[0], "wall_s": v[1], "texts": len(v[2]), "example": v[3]}
            for k, v in _stats.items()
        ]
        with open(_out, "w") as f:
            json.dump(sorted(rows, key=lambda r: -r["count"]), f, indent=1)
