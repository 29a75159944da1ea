"""Where health data must not show in clear: the gateway's log output, every table of the
store, every record on every Kafka topic. Helpers that collect each as text or bytes."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
import structlog

from attest_gateway.infra.db import tables
from attest_gateway.observability.logging import configure_logging
from tests.support.harness import Harness, read_topic

_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "aiokafka")


@contextmanager
def json_logs(level: str = "INFO") -> Iterator[io.StringIO]:
    """The gateway's own logging set-up (`configure_logging(fmt="json")`: structlog and the
    standard library through one chain, CPR redaction included) writing into a buffer; all
    logging state is restored afterwards."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {
        name: (
            logging.getLogger(name).handlers[:],
            logging.getLogger(name).propagate,
            logging.getLogger(name).level,
        )
        for name in _LOGGERS
    }
    configure_logging(level=level, fmt="json")
    # Loggers first used now must not keep this configuration after the block.
    structlog.configure(cache_logger_on_first_use=False)
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        root.handlers[:], root_level = saved_root
        root.setLevel(root_level)
        for name, (handlers, propagate, lvl) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.setLevel(lvl)


async def store_dump(h: Harness) -> str:
    """Every column of every row of every table, as text (bytes decoded as UTF-8)."""
    dump: list[str] = []
    async with h.gw.engine.connect() as conn:
        for table in tables.metadata.sorted_tables:
            for row in await conn.execute(sa.select(table)):
                dump.extend(
                    v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row
                )
    return "\n".join(dump)


async def kafka_dump(h: Harness) -> list[bytes]:
    """The raw bytes of every record on every topic: key, value, header names and values."""
    blobs: list[bytes] = []
    for topic in h.gw.topics.all():
        for record in await read_topic(h.bootstrap, topic):
            parts = [record.key or b"", record.value or b""]
            for name, value in record.headers or ():
                parts += [name.encode(), value]
            blobs.append(b"\x00".join(parts))
    return blobs
