"""The clocks: the manual one tests set by hand, the simulated one the simulator runs on, and
the choice the composition root makes from the settings."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from attest_gateway.bootstrap import clock_from_settings
from attest_gateway.config import load_settings
from attest_gateway.core.clock import ManualClock, SimulatedClock, SystemClock
from attest_gateway.devtools.simulate import gateway_environment

START = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


class Counter:
    """A monotonic counter moved by hand, in seconds."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def test_the_system_clock_is_the_machine_s_in_utc() -> None:
    before = dt.datetime.now(dt.UTC)
    now = SystemClock().now()
    assert now.tzinfo is dt.UTC
    assert before <= now <= dt.datetime.now(dt.UTC)


def test_a_manual_clock_stands_still_until_set_or_advanced() -> None:
    clock = ManualClock(START.astimezone(ZoneInfo("Europe/Copenhagen")))
    assert clock.now() == START
    assert clock.now().tzinfo is dt.UTC
    assert clock.now() == clock.now()
    clock.advance(dt.timedelta(days=3, hours=2))
    assert clock.now() == START + dt.timedelta(days=3, hours=2)
    clock.set(START)
    assert clock.now() == START


def test_clocks_refuse_a_naive_time() -> None:
    naive = dt.datetime(2026, 3, 2, 8, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(START).set(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        SimulatedClock(naive, 10)


def test_a_simulated_clock_starts_at_its_start_and_runs_speed_times_faster() -> None:
    counter = Counter()
    clock = SimulatedClock(START, 8100, monotonic=counter)
    assert clock.now() == START
    counter.seconds += 480  # eight real minutes
    assert clock.now() == START + dt.timedelta(days=45)
    counter.seconds += 0.5
    assert clock.now() == START + dt.timedelta(days=45, seconds=4050)
    assert clock.now().tzinfo is dt.UTC


def test_a_simulated_clock_at_speed_one_keeps_real_time_from_its_start() -> None:
    counter = Counter()
    clock = SimulatedClock(START, monotonic=counter)
    counter.seconds += 90
    assert clock.now() == START + dt.timedelta(seconds=90)


@pytest.mark.parametrize("speed", [0, -2])
def test_a_simulated_clock_runs_forward(speed: float) -> None:
    with pytest.raises(ValueError, match="forward"):
        SimulatedClock(START, speed)


def test_the_settings_choose_the_clock() -> None:
    assert isinstance(clock_from_settings(load_settings()), SystemClock)
    clock = clock_from_settings(
        load_settings(simulated_clock_start="2026-03-02T09:00:00+01:00", simulated_clock_speed=60)
    )
    assert isinstance(clock, SimulatedClock)
    assert clock.start == START
    assert clock.speed == 60
    assert START <= clock.now() < START + dt.timedelta(hours=1)


def test_the_simulator_s_gateway_gets_its_clock_through_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `attest-gateway simulate --serve` hands its gateway: the history's start and speed
    on the way in, the machine's clock for the live part (an inherited setting dropped)."""
    start = START.astimezone(ZoneInfo("Europe/Copenhagen"))
    history = gateway_environment({"VAR_DIR": "var/demo"}, clock_start=start, speed=8100.0)
    assert history["VAR_DIR"] == "var/demo"
    for name, value in history.items():
        monkeypatch.setenv(name, value)
    clock = clock_from_settings(load_settings())
    assert isinstance(clock, SimulatedClock)
    assert (clock.start, clock.speed) == (START, 8100.0)

    live = gateway_environment(history, clock_start=None, speed=1)
    assert live == {"VAR_DIR": "var/demo"}
    for name in history.keys() - live.keys():
        monkeypatch.delenv(name)
    assert isinstance(clock_from_settings(load_settings()), SystemClock)
