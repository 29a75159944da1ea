"""structlog, configured once: JSON lines when not on a terminal, console output on one.

Standard-library records (aiokafka, uvicorn, alembic) go through the same processors. A
redaction processor masks anything shaped like a CPR number in every string value, as a
last line of defence: the code itself never logs payloads or CPR numbers. UUIDs (conversation,
message and correlation ids) are left whole: about one in 300 random UUIDs has a CPR-shaped
run across its first dash ("8f673264-9048-…"), and masking it would cut the id out of the log.
"""

from __future__ import annotations

import logging
import re
import sys
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
