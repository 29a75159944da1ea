"""The tracker's pure rules: deadlines (Danish working days), late requests, contact windows,
reminders, durations, histograms and disclosure control."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attest_gateway.contracts.stages import Stage
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.rules import DeadlineRule, TrackerRules, Unit, WorkingCalendar

CAL = WorkingCalendar()
RULES = TrackerRules.build()
D = dt.date


# --- the working calendar ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "why"),
    [
        (D(2026, 4, 2), "skærtorsdag"),
        (D(2026, 4, 3), "langfredag"),
        (D(2026, 4, 6), "2. påskedag"),
        (D(2026, 5, 14), "Kristi himmelfartsdag"),
        (D(2026, 5, 25), "2. pinsedag"),
        (D(2026, 6, 5), "grundlovsdag"),
        (D(2026, 12, 24), "juleaftensdag"),
        (D(2026, 12, 25), "juledag"),
        (D(2026, 12, 31), "nytårsaftensdag"),
        (D(2027, 1, 1), "nytårsdag"),
        (D(2023, 5, 5), "store bededag (until 2023)"),
        (D(2026, 4, 4), "a Saturday"),
    ],
)
def test_days_that_are_not_working_days(day: dt.date, why: str) -> None:
    assert not CAL.is_working_day(day), why


def test_store_bededag_is_a_working_day_since_2024() -> None:
    # The holidays library knows the abolition; a hand-written table would not keep up.
    assert CAL.is_working_day(D(2024, 4, 26))
    assert CAL.is_working_day(D(2026, 5, 1))  # 1 May is not a public holiday in Denmark


def test_working_days_across_easter() -> None:
    # From Monday 30 March 2026: 31/3, 1/4, (2-6/4 Easter), 7, 8, 9, 10, (weekend), 13-16/4.
    assert DeadlineRule.parse("10wd").due(D(2026, 3, 30), CAL) == D(2026, 4, 16)


def test_working_days_across_christmas_and_new_year() -> None:
    # From Monday 21 December 2026: 22, 23, (24-27), 28, 29, 30, (31/12, 1/1, 2-3/1), 4, 5 Jan.
    assert DeadlineRule.parse("5wd").due(D(2026, 12, 21), CAL) == D(2026, 12, 30)
    assert DeadlineRule.parse("7wd").due(D(2026, 12, 21), CAL) == D(2027, 1, 5)


def test_a_long_working_day_deadline_across_easter_and_christmas() -> None:
    # Counted by hand: weekdays from 2 March 2026 to 8 January 2027 minus the closed weekdays
    # in that span (2, 3, 6 April; 14, 25 May; 5 June; 24, 25, 31 December; 1 January).
    start, due = D(2026, 3, 2), D(2027, 1, 8)
    weekdays = sum(
        1 for i in range(1, (due - start).days + 1) if (start + dt.timedelta(i)).weekday() < 5
    )
    assert weekdays - 10 == 214
    assert DeadlineRule.parse("214wd").due(start, CAL) == due


def test_calendar_deadline_on_good_friday_moves_past_easter() -> None:
    rules = TrackerRules.build({"LÆ 265": "14d"})
    due = rules.due_date(
        "LÆ 265",
        requested=D(2026, 3, 20),
        received=None,
        request_deadline=D(2026, 4, 3),
        catalogue_deadline=D(2026, 4, 3),
    )
    assert due == D(2026, 4, 7)  # Fri 3/4 Good Friday → Sat, Sun, Easter Monday → Tue 7/4


def test_calendar_deadline_on_new_years_eve_moves_to_the_first_working_day() -> None:
    rules = TrackerRules.build()
    due = rules.due_date(
        "LÆ 225",
        requested=D(2026, 12, 17),
        received=None,
        request_deadline=D(2026, 12, 31),
        catalogue_deadline=D(2026, 12, 31),
    )
    assert due == D(2027, 1, 4)


def test_moving_off_non_working_days_can_be_turned_off() -> None:
    rules = TrackerRules.build(next_working_day=False)
    due = rules.due_date(
        "LÆ 225",
        requested=D(2026, 12, 17),
        received=None,
        request_deadline=D(2026, 12, 31),
        catalogue_deadline=D(2026, 12, 31),
    )
    assert due == D(2026, 12, 31)


# --- deadline rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("14d", DeadlineRule(14, Unit.DAYS)),
        ("10wd", DeadlineRule(10, Unit.WORKING_DAYS)),
        ("2m", DeadlineRule(2, Unit.MONTHS)),
        ("3w", DeadlineRule(3, Unit.WEEKS)),
        ("14d@receipt", DeadlineRule(14, Unit.DAYS, "receipt")),
    ],
)
def test_rules_parse_and_print(text: str, rule: DeadlineRule) -> None:
    assert DeadlineRule.parse(text) == rule
    assert str(rule) == text


@pytest.mark.parametrize("text", ["", "14", "d14", "14 days", "-3d", "14d@later"])
def test_bad_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a deadline rule"):
        DeadlineRule.parse(text)


def test_defaults_follow_the_domain_notes() -> None:
    assert str(RULES.deadlines["LÆ 155"]) == "2m"
    assert str(RULES.deadlines["LÆ 265"]) == "30d"
    assert str(RULES.deadlines["LÆ 125"]) == "14d@receipt"
    assert set(RULES.deadlines) == {
        "LÆ 105",
        "LÆ 115",
        "LÆ 125",
        "LÆ 135",
        "LÆ 145",
        "LÆ 155",
        "LÆ 225",
        "LÆ 265",
        "LÆ 275",
        "LÆ 285",
    }


def test_configuration_overrides_a_default() -> None:
    rules = TrackerRules.build({"LÆ 285": "10wd"})
    assert rules.deadlines["LÆ 285"] == DeadlineRule(10, Unit.WORKING_DAYS)
    assert rules.deadlines["LÆ 155"] == DeadlineRule(2, Unit.MONTHS)


def test_months_follow_the_calendar() -> None:
    assert DeadlineRule.parse("2m").due(D(2026, 12, 31), CAL) == D(2027, 2, 28)


def test_receipt_rules_count_from_delivery() -> None:
    due = RULES.due_date(
        "LÆ 125",
        requested=D(2026, 9, 1),
        received=D(2026, 9, 3),
        request_deadline=D(2026, 9, 15),
        catalogue_deadline=D(2026, 9, 15),
    )
    assert due == D(2026, 9, 17)


def test_a_deadline_the_job_centre_set_wins() -> None:
    # LÆ 285: the municipality sets the deadline (at least 8 days); the catalogue says 14.
    due = RULES.due_date(
        "LÆ 285",
        requested=D(2026, 9, 1),
        received=None,
        request_deadline=D(2026, 9, 9),
        catalogue_deadline=D(2026, 9, 15),
    )
    assert due == D(2026, 9, 9)


def test_overdue_only_after_the_last_day_and_without_attest() -> None:
    due = D(2026, 9, 15)
    assert not RULES.is_overdue(due, D(2026, 9, 15), replied=False)
    assert RULES.is_overdue(due, D(2026, 9, 16), replied=False)
    assert not RULES.is_overdue(due, D(2026, 9, 16), replied=True)


# --- late requests and contact windows --------------------------------------------------------


def test_late_request_after_the_end_of_week_eight() -> None:
    first = D(2026, 1, 5)  # a Monday: week 8 ends Sunday 1 March
    assert RULES.first_follow_up_deadline("sygedagpenge", first) == D(2026, 3, 1)
    assert not RULES.requested_late("sygedagpenge", first, D(2026, 3, 1))
    assert RULES.requested_late("sygedagpenge", first, D(2026, 3, 2))


def test_late_requests_only_for_configured_case_kinds() -> None:
    first = D(2026, 1, 5)
    assert not RULES.requested_late("jobafklaringsforloeb", first, D(2026, 12, 1))
    rules = TrackerRules.build(late_request_weeks={"jobafklaringsforloeb": 4})
    assert rules.requested_late("jobafklaringsforloeb", first, D(2026, 2, 2))


def test_contact_scope_and_window() -> None:
    assert RULES.in_contact_scope("sygedagpenge", True)
    assert RULES.in_contact_scope("jobafklaringsforloeb", True)
    assert not RULES.in_contact_scope("sygedagpenge", False)
    assert not RULES.in_contact_scope("ressourceforloeb", True)
    assert RULES.contact_window_end(D(2026, 1, 5)) == D(2026, 3, 1)
    assert TrackerRules.build(contact_window_weeks=4).contact_window_end(D(2026, 1, 5)) == D(
        2026, 2, 1
    )


# --- dates near the calendar's ends ------------------------------------------------------------
# Rows and events stored before the API bounded its dates may hold any date: the rules hold
# their arithmetic at 9999-12-31 instead of raising OverflowError.

LAST = dt.date.max


@pytest.mark.parametrize("text", ["14d", "10wd", "2w", "2m", "9999wd", "9999m"])
@pytest.mark.parametrize("start", [LAST, LAST - dt.timedelta(days=3), D(9999, 12, 20)])
def test_a_deadline_past_the_calendar_s_end_is_its_last_day(text: str, start: dt.date) -> None:
    assert DeadlineRule.parse(text).due(start, CAL) == LAST


@pytest.mark.parametrize("attest_type", ["LÆ 105", "LÆ 125", "LÆ 155", "LÆ 285", "LÆ 999"])
def test_the_tracker_s_deadline_for_dates_at_the_calendar_s_ends(attest_type: str) -> None:
    for requested, deadline in [(LAST, None), (D(2026, 9, 1), LAST), (LAST, LAST)]:
        due = RULES.due_date(
            attest_type,
            requested=requested,
            received=requested,
            request_deadline=deadline,
            catalogue_deadline=None,
        )
        assert due in (None, LAST)
        assert not RULES.is_overdue(due, LAST, replied=False)
    assert CAL.next_working_day(LAST) == LAST
    assert CAL.add_working_days(LAST - dt.timedelta(days=1), 5) == LAST


def test_late_request_and_contact_window_at_the_calendar_s_ends() -> None:
    assert RULES.first_follow_up_deadline("sygedagpenge", LAST) == LAST
    assert not RULES.requested_late("sygedagpenge", LAST, D(2026, 9, 1))
    assert RULES.contact_window_end(LAST) == LAST
    assert RULES.contact_window_end(LAST - dt.timedelta(days=10)) == LAST
    first = dt.date.min
    assert RULES.requested_late("sygedagpenge", first, D(2026, 9, 1))
    assert RULES.contact_window_end(first) == first + dt.timedelta(days=55)
    assert TrackerRules.build(contact_window_weeks=0).contact_window_end(first) == first
    assert r.period_start(first, "week") == first
    assert r.period_start(LAST, "week") == D(9999, 12, 27)


# --- reminders ----------------------------------------------------------------------------------


def test_reminders_at_most_max_and_spaced() -> None:
    t0 = dt.datetime(2026, 9, 16, 6, tzinfo=dt.UTC)
    assert RULES.reminder_due(sent=0, overdue_at=t0, last_reminded_at=None, now=t0)
    later = t0 + dt.timedelta(days=6)
    assert not RULES.reminder_due(sent=1, overdue_at=t0, last_reminded_at=t0, now=later)
    assert RULES.reminder_due(
        sent=1, overdue_at=t0, last_reminded_at=t0, now=t0 + dt.timedelta(days=7)
    )
    assert not RULES.reminder_due(
        sent=2, overdue_at=t0, last_reminded_at=t0, now=t0 + dt.timedelta(days=70)
    )


# --- periods, durations, histograms -------------------------------------------------------------


def test_periods() -> None:
    assert r.period_start(D(2026, 1, 1), "week") == D(2025, 12, 29)
    assert r.period_start(D(2026, 1, 31), "month") == D(2026, 1, 1)


def test_local_date_is_danish_time() -> None:
    late_evening_utc = dt.datetime(2026, 6, 30, 22, 30, tzinfo=dt.UTC)  # 00:30 on 1 July in DK
    assert RULES.local_date(late_evening_utc) == D(2026, 7, 1)


def test_each_duration_completes_once_whichever_end_comes_second() -> None:
    t0 = dt.datetime(2026, 9, 1, 8, tzinfo=dt.UTC)
    times: dict[Stage, dt.datetime | None] = {Stage.REPLIED: t0 + dt.timedelta(days=10)}
    assert r.completed_metrics(Stage.REPLIED, times) == []  # the request is not known yet
    times[Stage.SUBMITTED] = t0
    done = {m.name: s for m, s in r.completed_metrics(Stage.SUBMITTED, times)}
    assert done == {"request_to_attest": 10 * 86400.0}


@given(st.floats(min_value=0, max_value=400 * 86400))
def test_a_bucket_holds_its_value(seconds: float) -> None:
    lo, hi = r.bucket_bounds(r.bucket_of(seconds))
    assert lo <= seconds < hi * (1 + 1e-9)


@given(st.lists(st.floats(min_value=60, max_value=200 * 86400), min_size=1, max_size=300))
def test_percentiles_from_the_histogram_are_within_the_bucket_width(values: list[float]) -> None:
    hist: dict[int, int] = {}
    for v in values:
        hist[r.bucket_of(v)] = hist.get(r.bucket_of(v), 0) + 1
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[max(1, -(-int(q * 1e9) * len(ordered) // int(1e9))) - 1]
        estimate = r.percentile(hist, q)
        assert estimate is not None
        assert abs(estimate - exact) / exact <= 2 ** (1 / 8) - 1 + 1e-9


def test_summary_of_an_empty_histogram() -> None:
    assert r.summarise({}) == {"count": 0, "median": None, "p90": None, "p99": None}


def test_cells_cover_both_period_kinds_every_grain_and_all_types() -> None:
    cells = r.cells_for(
        day=D(2026, 9, 2), attest_type="LÆ 155", region="1084", municipality="101", receiver="x"
    )
    assert len(cells) == 2 * 4 * 2
    assert {(c[0], c[1]) for c in cells} == {
        (g, k)
        for g in ("national", "region", "municipality", "receiver")
        for k in ("week", "month")
    }
    assert {c[2] for c in cells} == {D(2026, 8, 31), D(2026, 9, 1)}
    assert {c[3] for c in cells} == {"LÆ 155", r.ALL_TYPES}
    hist = r.cells_for(
        day=D(2026, 9, 2),
        attest_type="LÆ 155",
        region="1084",
        municipality="101",
        receiver="x",
        durations=True,
    )
    assert {(c[0], c[1]) for c in hist if c[1] == "week"} == {
        ("national", "week"),
        ("region", "week"),
    }
    assert {c[3] for c in hist} == {"LÆ 155"}  # all types: summed when read
    assert len(hist) == 6
    contact = r.cells_for(
        day=D(2026, 9, 2), attest_type="-", region="1084", municipality="101", receiver=None
    )
    assert {c[3] for c in contact} == {"-"}
    assert {c[0] for c in contact} == {"national", "region", "municipality"}


def test_suppression_threshold() -> None:
    assert not r.publishable(4, RULES)
    assert r.publishable(5, RULES)
    assert r.rate(1, 0) is None
    assert r.rate(1, 4) == 0.25


@given(
    st.dictionaries(
        st.integers(min_value=0, max_value=r.MAX_BUCKET),
        st.integers(min_value=0, max_value=50),
        max_size=30,
    )
)
def test_summarise_gives_each_quantile_as_percentile_does(histogram: dict[int, int]) -> None:
    # summarise sorts the buckets once for the three quantiles; percentile is the definition
    assert r.summarise(histogram) == {
        "count": sum(histogram.values()),
        "median": r.percentile(histogram, 0.5),
        "p90": r.percentile(histogram, 0.9),
        "p99": r.percentile(histogram, 0.99),
    }
