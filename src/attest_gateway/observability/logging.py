"""structlog, configured once: JSON lines when not on a terminal, console output on one.

Standard-library records (aiokafka, uvicorn, alembic) go through the same processors. A
redaction processor masks anything shaped like a CPR number in every string value, as a
last line of defence: the code itself never logs payloads or CPR numbers. UUIDs (conversation,
message and correlation ids) are left whole: about one in 300 random UUIDs has a CPR-shaped
run across its first dash ("8f673264-9048-…"), and masking it would cut the id out of the log.

A database error's text is never written: the statement's parameters are hidden by the engines
(infra.db.engine.make_engine), but the database repeats values in its own messages too (PostgreSQL's
`invalid input syntax for type uuid: "…"` and a unique violation's `Key (…)=(…)`, asyncpg's
`invalid input for query argument $1: '…'`). A traceback or a value that involves one is
written with the exception's class, SQLSTATE, constraint and SQL text instead of its message.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

_HEX = "[0-9a-fA-F]"
# A whole UUID (kept, group 1) or a CPR-shaped run: six digits, an optional dash, four digits.
_CPR_LIKE = re.compile(
    rf"(?<!{_HEX})({_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}})(?!{_HEX})"
    r"|(?<!\d)\d{6}-?\d{4}(?!\d)"
)
_MASK = "******-****"


def _keep_uuid(match: re.Match[str]) -> str:
    return match.group(1) or _MASK


def _mask_str(value: str) -> str:
    return _CPR_LIKE.sub(_keep_uuid, value)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_mask(v) for v in value))
    if isinstance(value, tuple):
        return tuple(_mask(v) for v in value)
    if isinstance(value, list | set | frozenset):
        return [_mask(v) for v in value]
    # Anything else would be rendered with its repr/str later, after this processor.
    return _mask_str(str(value))


def redact_cpr(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    return {k: _mask(v) for k, v in event_dict.items()}


#: The database drivers (top-level modules) whose exceptions carry the database's messages.
_DRIVERS = frozenset({"asyncpg", "aiosqlite", "sqlite3", "psycopg", "psycopg2"})
#: Longest SQL text written for a failed statement (a many-row INSERT can be far longer).
_SQL_CHARS = 1000


def _is_database_error(exc: BaseException) -> bool:
    """SQLAlchemy's statement errors (DBAPIError …) and the drivers' own exceptions, including
    SQLAlchemy's adapters of them (`sqlalchemy.dialects.postgresql.asyncpg.Error`)."""
    sa_exc = sys.modules.get("sqlalchemy.exc")  # none of its errors exist before it is imported
    if sa_exc is not None and isinstance(exc, sa_exc.StatementError):
        return True
    module = type(exc).__module__
    return module.partition(".")[0] in _DRIVERS or module.startswith("sqlalchemy.dialects.")


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, its cause or context, theirs …, and the members of exception groups, each once."""
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if any(e is f for f in found):
            continue
        found.append(e)
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
        if isinstance(e, BaseExceptionGroup):
            todo += e.exceptions
    return found


def involves_database_error(exc: BaseException) -> bool:
    return any(_is_database_error(e) for e in _chain(exc))


def database_error_text(exc: BaseException) -> str:
    """What is written of a database error: its class, the SQLSTATE, constraint, table and
    column names where the driver gives them, and the SQL text; never its message."""
    orig = getattr(exc, "orig", None)
    facts = []
    for source in (exc, orig):
        for attribute, label in (
            ("sqlstate", "SQLSTATE"),
            ("sqlite_errorname", "SQLite"),
            ("constraint_name", "constraint"),
            ("table_name", "table"),
            ("column_name", "column"),
        ):
            value = getattr(source, attribute, None)
            if isinstance(value, str) and value and f"{label} {value}" not in facts:
                facts.append(f"{label} {value}")
    if orig is not None:
        facts.insert(0, f"from {type(orig).__module__}.{type(orig).__qualname__}")
    statement = getattr(exc, "statement", None)
    sql = ""
    if isinstance(statement, str):
        cut = statement[:_SQL_CHARS] + ("…" if len(statement) > _SQL_CHARS else "")
        sql = f" [SQL: {cut}]"
    about = f" ({', '.join(facts)})" if facts else ""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return f"{name}{about}{sql}: the database's message and parameters are not logged"


def _render(
    exc: BaseException, out: list[str], seen: list[BaseException], *, hide: bool = False
) -> None:
    """The standard library's traceback layout (causes first), with the text of a database
    error and of whatever led to it (`hide`: the driver's own ValueError that names the
    value, say) replaced by `database_error_text` or the class alone."""
    seen.append(exc)
    hide = hide or _is_database_error(exc)
    cause = exc.__cause__
    context = None if exc.__suppress_context__ else exc.__context__
    if cause is not None and not any(cause is s for s in seen):
        _render(cause, out, seen, hide=hide)
        out.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif context is not None and not any(context is s for s in seen):
        _render(context, out, seen, hide=hide)
        out.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if exc.__traceback__ is not None:
        out.append("Traceback (most recent call last):\n")
        out += traceback.format_tb(exc.__traceback__)
    if _is_database_error(exc):
        out.append(database_error_text(exc) + "\n")
    elif hide:
        out.append(f"{type(exc).__module__}.{type(exc).__qualname__}: (not logged)\n")
    else:
        out += traceback.format_exception_only(type(exc), exc)
    if isinstance(exc, BaseExceptionGroup):
        for n, member in enumerate(exc.exceptions, 1):
            inner: list[str] = []
            _render(member, inner, seen, hide=hide)
            out.append(f"+---------------- {n} ----------------\n")
            out += [f"| {line}" for line in "".join(inner).splitlines(keepends=True)]


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    return sys.exc_info()[1] if exc_info else None


def hide_database_errors(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """Before `format_exc_info`: a traceback that involves a database error is written here,
    without the database's messages; a database error logged as a value becomes its
    `database_error_text`. Anything else is left to the usual processors."""
    for key, value in list(event_dict.items()):
        if key != "exc_info" and isinstance(value, BaseException) and _is_database_error(value):
            event_dict[key] = database_error_text(value)
    exc = _exception_of(event_dict.get("exc_info"))
    if exc is not None and involves_database_error(exc):
        out: list[str] = []
        _render(exc, out, [])
        event_dict.pop("exc_info")
        event_dict["exception"] = "".join(out).rstrip("\n")
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # filter_by_level first: a debug call below the level costs one level check, not the
        # whole chain (time stamp, logger name) before the standard library drops it
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            hide_database_errors,
            structlog.processors.format_exc_info,
            redact_cpr,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # we log one line per request
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
