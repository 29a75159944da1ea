"""The ministry's CSV rows: durations in days with one decimal under headers that say so."""

from __future__ import annotations

from attest_gateway.tracker.report import to_csv_rows


def test_durations_are_written_in_days_with_one_decimal() -> None:
    rows = [
        {"group": "1084", "suppressed": False, "count": 7, "median": 1_296_000.0, "p90": 90.0},
        {"group": "1085", "suppressed": True, "count": None, "median": None, "p90": None},
    ]
    header, lines = to_csv_rows(rows, seconds_as_days=True)
    assert header == ["group", "suppressed", "count", "median_days", "p90_days"]
    assert lines == [["1084", False, 7, "15.0", "0.0"], ["1085", True, None, None, None]]


def test_other_figures_are_written_as_they_are() -> None:
    rows = [{"group": "DK", "requests": 12, "median": 3.0}]
    assert to_csv_rows(rows) == (["group", "requests", "median"], [["DK", 12, 3.0]])
