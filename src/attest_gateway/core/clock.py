"""The gateway's clock: every "now" comes from a `Clock` the composition root hands out.

`SystemClock` in service; `ManualClock` in tests (set and advance by hand).
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that stands still until told otherwise (tests)."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a clock's time is timezone-aware")
        self._now = start.astimezone(dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def set(self, at: dt.datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("a clock's time is timezone-aware")
        self._now = at.astimezone(dt.UTC)

    def advance(self, delta: dt.timedelta) -> None:
        self._now += delta


_SYSTEM = SystemClock()


def utcnow() -> dt.datetime:
    """The system clock's time, for code not yet handed a `Clock` (being replaced)."""
    return _SYSTEM.now()
