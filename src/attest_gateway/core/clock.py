"""The gateway's clock: every "now" comes from a `Clock` the composition root hands out.

`SystemClock` in service; `ManualClock` in tests (set and advance by hand); `SimulatedClock`
for the simulator and `make demo` (development only), which plays weeks of history in
minutes on a clock that starts in the past and runs faster than real time.

Only wall-clock instants (what is stamped on rows and events, what deadlines and leases are
compared with) come from a `Clock`; timers and timeouts use the event loop's monotonic clock
and stay real whatever the clock says.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware, in UTC."""
        ...


def _utc(at: dt.datetime) -> dt.datetime:
    if at.tzinfo is None:
        raise ValueError("a clock's time is timezone-aware")
    return at.astimezone(dt.UTC)


class SystemClock:
    """The machine's clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that stands still until told otherwise (tests)."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = _utc(start)

    def now(self) -> dt.datetime:
        return self._now

    def set(self, at: dt.datetime) -> None:
        self._now = _utc(at)

    def advance(self, delta: dt.timedelta) -> None:
        self._now += delta


class SimulatedClock:
    """A clock that reads `start` when it is made and then runs `speed` times faster than
    real time: at speed 8100, 45 days pass in 8 real minutes.

    It follows a monotonic counter (by default `time.monotonic`), so it never goes back when
    the machine's clock is set. Development only: the simulator's gateway runs on it
    (`SIMULATED_CLOCK_START`, `SIMULATED_CLOCK_SPEED`); production refuses it.
    """

    def __init__(
        self,
        start: dt.datetime,
        speed: float = 1.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not speed > 0:
            raise ValueError("a simulated clock runs forward: its speed is above 0")
        self.start = _utc(start)
        self.speed = speed
        self._monotonic = monotonic
        self._origin = monotonic()

    def now(self) -> dt.datetime:
        elapsed = (self._monotonic() - self._origin) * self.speed
        return self.start + dt.timedelta(seconds=elapsed)
