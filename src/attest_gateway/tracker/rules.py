"""The tracker's pure rules: deadlines, late requests, contact windows, periods, histograms.

No I/O here: every function takes plain values and returns plain values, so each rule is
unit-tested alone. Defaults come from the project's domain notes (`shared/domain`); every
rule is configuration (`TrackerRules.from_settings`).

Deadlines. A rule is ``<amount><unit>[@receipt]``: ``d`` calendar days, ``wd`` Danish
working days (Monday to Friday except public holidays), ``w`` weeks, ``m`` months; counted
from the date of the request, or with ``@receipt`` from the date the request reached the
receiver's mailbox ("14 days after the doctor receives the request"). Public holidays come
from the ``holidays`` package (Denmark), plus the days Danish deadline rules treat as
holidays although they are not public holidays (Constitution Day, Christmas Eve, New Year's
Eve; retsplejeloven § 148, stk. 2). A deadline that falls on a non-working day moves to the
next working day (configurable). A request that names its own deadline (e.g. an LÆ 285 whose
deadline the municipality sets) keeps it, moved off a non-working day the same way.

Dates near the calendar's ends. The API bounds the dates it accepts, but rows and events
stored before it did may hold any date (a first day of absence of 9999-12-31, say). Date
arithmetic here is held at the calendar's ends instead of overflowing (`add_days`): a
deadline, follow-up limit or contact window that would fall past 9999-12-31 is 9999-12-31.
Such a conversation is then never overdue, never a late request, and its contact window never
closes, instead of every one of its events going to the dead letters.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Final, Literal
from zoneinfo import ZoneInfo

import holidays
from dateutil.relativedelta import relativedelta

from attest_gateway.contracts.stages import Stage
from attest_gateway.core.attests import ReplyKind

# --- deadlines ------------------------------------------------------------------------------


def add_days(day: dt.date, days: int) -> dt.date:
    """`day` + `days`, held at `date.min` / `date.max` instead of raising OverflowError."""
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        return dt.date.max if days > 0 else dt.date.min


class Unit(StrEnum):
    DAYS = "d"
    WORKING_DAYS = "wd"
    WEEKS = "w"
    MONTHS = "m"


Anchor = Literal["request", "receipt"]

_RULE = re.compile(r"^\s*(\d{1,4})\s*(wd|d|w|m)\s*(?:@\s*(request|receipt))?\s*$")

# Days that Danish deadline rules treat as holidays although `holidays` files them as
# optional (names as the library gives them in en_US).
EXTRA_CLOSED_DAYS: Final = frozenset({"Constitution Day", "Christmas Eve", "New Year's Eve"})


@lru_cache(maxsize=64)
def _closed_days(year: int, extra: frozenset[str]) -> frozenset[dt.date]:
    public = holidays.country_holidays("DK", years=year, language="en_US")
    days = set(public)
    if extra:
        optional = holidays.country_holidays(
            "DK", years=year, language="en_US", categories=("optional",)
        )
        days |= {day for day, name in optional.items() if name in extra}
    return frozenset(days)


@dataclass(frozen=True, slots=True)
class WorkingCalendar:
    """Danish working days: Monday to Friday, except public holidays (and `extra` days)."""

    extra_closed: frozenset[str] = EXTRA_CLOSED_DAYS

    def is_working_day(self, day: dt.date) -> bool:
        return day.weekday() < 5 and day not in _closed_days(day.year, self.extra_closed)

    def next_working_day(self, day: dt.date) -> dt.date:
        """`day` itself if it is a working day, else the first working day after it (the
        calendar's last day if there is none)."""
        while not self.is_working_day(day) and day < dt.date.max:
            day += dt.timedelta(days=1)
        return day

    def add_working_days(self, start: dt.date, n: int) -> dt.date:
        """The n-th working day after `start` (start itself does not count; the calendar's
        last day if it ends first)."""
        day = start
        while n > 0 and day < dt.date.max:
            day += dt.timedelta(days=1)
            if self.is_working_day(day):
                n -= 1
        return day


@dataclass(frozen=True, slots=True)
class DeadlineRule:
    amount: int
    unit: Unit
    anchor: Anchor = "request"

    @classmethod
    def parse(cls, text: str) -> DeadlineRule:
        match = _RULE.match(text)
        if match is None:
            raise ValueError(f"not a deadline rule: {text!r} (e.g. '14d', '10wd', '2m@receipt')")
        amount, unit, anchor = match.groups()
        return cls(int(amount), Unit(unit), "receipt" if anchor == "receipt" else "request")

    def __str__(self) -> str:
        suffix = "@receipt" if self.anchor == "receipt" else ""
        return f"{self.amount}{self.unit.value}{suffix}"

    def due(self, start: dt.date, calendar: WorkingCalendar) -> dt.date:
        """The last day on which the reply is still in time (before any moving)."""
        match self.unit:
            case Unit.DAYS:
                return add_days(start, self.amount)
            case Unit.WEEKS:
                return add_days(start, 7 * self.amount)
            case Unit.MONTHS:
                try:
                    due: dt.date = start + relativedelta(months=self.amount)
                except (OverflowError, ValueError):  # past year 9999
                    return dt.date.max
                return due
            case Unit.WORKING_DAYS:
                return calendar.add_working_days(start, self.amount)


# Defaults from `shared/domain/README.md` (KL/Lægeforeningen, the sickness-benefit order).
# Where a form has two deadlines (after consultation / after the request), the gateway only
# sees the request, so the deadline after the request applies.
DEFAULT_DEADLINES: Final[Mapping[str, str]] = {
    "LÆ 105": "14d",
    "LÆ 115": "14d",
    "LÆ 125": "14d@receipt",  # 14 days after the doctor receives the request
    "LÆ 135": "30d",
    "LÆ 145": "30d",
    "LÆ 155": "2m",
    "LÆ 225": "14d",
    "LÆ 265": "30d",
    "LÆ 275": "30d",
    "LÆ 285": "14d",  # set by the municipality (at least 8 days): a request's own date wins
}


# --- the rules as configured ------------------------------------------------------------------


CONTACT_SOURCES: Final = frozenset(
    {"meeting", "phone", "video", "written", "other", "attest", "request"}
)
CONTACT_COUNTS_DEFAULT: Final = CONTACT_SOURCES - {"request"}
# The health information a ressourceforløb case's rehabilitation team needs: every group
# answered by an attest of one of its types (the GP's LÆ 265; a specialist's or hospital's:
# the speciallægeattest LÆ 155 or record extracts, LÆ 105 and LÆ 115).
REHAB_HEALTH_INFORMATION_DEFAULT: Final = (("LÆ 265",), ("LÆ 155", "LÆ 105", "LÆ 115"))


@dataclass(frozen=True, slots=True)
class TrackerRules:
    deadlines: Mapping[str, DeadlineRule]
    calendar: WorkingCalendar = field(default_factory=WorkingCalendar)
    next_working_day: bool = True
    late_request_weeks: Mapping[str, int] = field(default_factory=lambda: {"sygedagpenge": 8})
    contact_window_weeks: int = 8
    contact_case_kinds: frozenset[str] = frozenset({"sygedagpenge", "jobafklaringsforloeb"})
    contact_baseline: float = 0.25
    # What counts as direct contact over registered cases (tracker/coverage.py): registered
    # contact channels, `attest` (a request answered with an attest) and `request` (any
    # request sent to psychiatry, answered or not: the definition before cases, off by default)
    contact_counts: frozenset[str] = CONTACT_COUNTS_DEFAULT
    no_contact_baseline: float = 0.75
    no_contact_target: float = 0.5
    rehab_health_information: tuple[tuple[str, ...], ...] = REHAB_HEALTH_INFORMATION_DEFAULT
    reminder_max: int = 2
    reminder_interval_days: int = 7
    min_cell_citizens: int = 5
    timezone: str = "Europe/Copenhagen"

    @classmethod
    def build(cls, overrides: Mapping[str, str] | None = None, **kwargs: object) -> TrackerRules:
        texts = dict(DEFAULT_DEADLINES) | dict(overrides or {})
        rules = {code: DeadlineRule.parse(text) for code, text in texts.items()}
        return cls(deadlines=rules, **kwargs)  # type: ignore[arg-type]

    @property
    def tz(self) -> ZoneInfo:
        return _zone(self.timezone)

    def local_date(self, at: dt.datetime) -> dt.date:
        return at.astimezone(self.tz).date()

    def rule_for(self, attest_type: str) -> DeadlineRule | None:
        return self.deadlines.get(attest_type)

    def due_date(
        self,
        attest_type: str,
        *,
        requested: dt.date,
        received: dt.date | None,
        request_deadline: dt.date | None,
        catalogue_deadline: dt.date | None,
    ) -> dt.date | None:
        """The tracker's deadline for a request.

        `request_deadline` is the deadline the request carried; `catalogue_deadline` is what the
        gateway's catalogue would have given it by default. If they differ, the job centre set
        the deadline itself and it wins. Otherwise the configured rule applies, from the request
        date or (for `@receipt` rules) the date the request reached the receiver's mailbox.
        """
        explicit = request_deadline is not None and request_deadline != catalogue_deadline
        rule = self.rule_for(attest_type)
        if explicit or rule is None:
            due = request_deadline
        else:
            start = received if rule.anchor == "receipt" and received is not None else requested
            due = rule.due(start, self.calendar)
        if due is not None and self.next_working_day:
            due = self.calendar.next_working_day(due)
        return due

    def is_overdue(self, due: dt.date | None, today: dt.date, replied: bool) -> bool:
        """A request is overdue once its last day has passed without an attest."""
        return due is not None and not replied and today > due

    def first_follow_up_deadline(self, case_kind: str, first_day: dt.date) -> dt.date | None:
        """The last day of week N of absence (first day of absence = day 1 of week 1)."""
        weeks = self.late_request_weeks.get(case_kind)
        if weeks is None:
            return None
        return add_days(first_day, 7 * weeks - 1)

    def requested_late(self, case_kind: str, first_day: dt.date, requested: dt.date) -> bool:
        limit = self.first_follow_up_deadline(case_kind, first_day)
        return limit is not None and requested > limit

    def in_contact_scope(self, case_kind: str, psychiatric_course: bool) -> bool:
        return psychiatric_course and case_kind in self.contact_case_kinds

    def contact_window_end(self, first_day: dt.date) -> dt.date:
        """The last day on which a contact still counts (N weeks from the first day)."""
        return add_days(first_day, 7 * self.contact_window_weeks - 1)

    def reminder_due(
        self,
        *,
        sent: int,
        overdue_at: dt.datetime,
        last_reminded_at: dt.datetime | None,
        now: dt.datetime,
    ) -> bool:
        """Whether the next reminder is due: the first when the request becomes overdue,
        each further one `reminder_interval_days` after the last, at most `reminder_max`."""
        if sent >= self.reminder_max:
            return False
        if sent == 0 or last_reminded_at is None:
            return now >= overdue_at
        return now >= last_reminded_at + dt.timedelta(days=self.reminder_interval_days)


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# --- periods ----------------------------------------------------------------------------------

PeriodKind = Literal["week", "month"]
PERIOD_KINDS: Final[tuple[PeriodKind, ...]] = ("week", "month")


# The periods the ministry's figures are given per: the kept ones, and quarters and years
# (summed from the months), in which small municipalities have enough citizens to be shown.
ReportPeriod = Literal["week", "month", "quarter", "year"]
REPORT_PERIODS: Final[tuple[ReportPeriod, ...]] = ("week", "month", "quarter", "year")


def period_start(day: dt.date, kind: ReportPeriod) -> dt.date:
    """Monday of the ISO week, or the first day of the month, quarter or year."""
    if kind == "week":
        return day - dt.timedelta(days=day.weekday())
    if kind == "quarter":
        return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    if kind == "year":
        return dt.date(day.year, 1, 1)
    return day.replace(day=1)


# --- durations --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    start: Stage
    end: Stage
    title: str


METRICS: Final[tuple[Metric, ...]] = (
    Metric("request_to_delivery", Stage.SUBMITTED, Stage.IN_MAILBOX, "request → in mailbox"),
    Metric("delivery_to_fetch", Stage.IN_MAILBOX, Stage.FETCHED, "in mailbox → fetched"),
    Metric("fetch_to_ack", Stage.FETCHED, Stage.ACKNOWLEDGED, "fetched → acknowledged"),
    Metric("request_to_ack", Stage.SUBMITTED, Stage.ACKNOWLEDGED, "request → acknowledged"),
    Metric("fetch_to_attest", Stage.FETCHED, Stage.REPLIED, "fetched → attest sent"),
    Metric("request_to_attest", Stage.SUBMITTED, Stage.REPLIED, "request → attest"),
    Metric("attest_to_inbox", Stage.REPLIED, Stage.REPLY_IN_INBOX, "attest → job centre inbox"),
    Metric("inbox_to_read", Stage.REPLY_IN_INBOX, Stage.REPLY_FETCHED, "inbox → read"),
    Metric("request_to_read", Stage.SUBMITTED, Stage.REPLY_FETCHED, "request → attest read"),
)
METRIC_NAMES: Final = frozenset(m.name for m in METRICS)

# The `replied` details of an answer without the attest (services/health.py: the reply kinds
# other than `attest`). Such a reply ends the request without counting as an attest.
ANSWERS_WITHOUT_ATTEST: Final = frozenset(k.value for k in ReplyKind if k is not ReplyKind.ATTEST)

# The stages the tracker keeps a first time for (column `<stage>_at`).
TIMED_STAGES: Final[tuple[Stage, ...]] = (
    Stage.SUBMITTED,
    Stage.PUBLISHED,
    Stage.IN_MAILBOX,
    Stage.FETCHED,
    Stage.ACKNOWLEDGED,
    Stage.REPLIED,
    Stage.REPLY_IN_INBOX,
    Stage.REPLY_FETCHED,
    Stage.REPLY_ACKNOWLEDGED,
    Stage.OVERDUE,
)


# Per stage, the metrics it is an end of, and the stages whose times those need.
METRICS_OF: Final[dict[Stage, tuple[Metric, ...]]] = {
    s: tuple(m for m in METRICS if s in (m.start, m.end)) for s in TIMED_STAGES
}
ENDS_OF: Final[dict[Stage, tuple[Stage, ...]]] = {
    s: tuple(dict.fromkeys(end for m in metrics for end in (m.start, m.end)))
    for s, metrics in METRICS_OF.items()
}


def completed_metrics(
    stage: Stage, times: Mapping[Stage, dt.datetime | None]
) -> list[tuple[Metric, float]]:
    """The durations (seconds) that `stage`, just reached, completes given the other times
    (`times` needs at least the stages `ENDS_OF[stage]`).

    Each duration is completed exactly once: by whichever of its two ends arrives second.
    A negative duration (clock skew across replicas) counts as zero.
    """
    out: list[tuple[Metric, float]] = []
    for metric in METRICS_OF.get(stage, ()):
        start, end = times.get(metric.start), times.get(metric.end)
        if start is None or end is None:
            continue
        out.append((metric, max(0.0, (end - start).total_seconds())))
    return out


# Histogram: bucket 0 is under one minute; bucket b >= 1 is [60·2^((b-1)/8), 60·2^(b/8)) s,
# so a bucket is 9 % wide and a percentile read from it is within ±4.5 % of the true value.
BUCKETS_PER_DOUBLING: Final = 8
_BASE_SECONDS: Final = 60.0
MAX_BUCKET: Final = 255


def bucket_of(seconds: float) -> int:
    if seconds < _BASE_SECONDS:
        return 0
    b = 1 + math.floor(BUCKETS_PER_DOUBLING * math.log2(seconds / _BASE_SECONDS))
    return min(b, MAX_BUCKET)


def bucket_bounds(bucket: int) -> tuple[float, float]:
    if bucket == 0:
        return 0.0, _BASE_SECONDS
    lo = _BASE_SECONDS * 2 ** ((bucket - 1) / BUCKETS_PER_DOUBLING)
    return lo, lo * 2 ** (1 / BUCKETS_PER_DOUBLING)


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a bucket histogram, by nearest rank, interpolated
    geometrically inside its bucket. None for an empty histogram."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(histogram):
        n = histogram[bucket]
        if n <= 0:
            continue
        if seen + n >= rank:
            lo, hi = bucket_bounds(bucket)
            frac = (rank - seen - 0.5) / n
            if bucket == 0:
                return lo + (hi - lo) * frac
            return float(lo * (hi / lo) ** frac)
        seen += n
    return bucket_bounds(max(histogram))[1]  # pragma: no cover - unreachable by construction


def summarise(histogram: Mapping[int, int]) -> dict[str, float | int | None]:
    """count, median, p90, p99 (seconds) of a histogram: each as `percentile` gives it, the
    buckets sorted once for the three (a drill-down summarises tens of thousands)."""
    total = sum(histogram.values())
    out: dict[str, float | int | None] = {"count": total}
    if total <= 0:
        return out | {"median": None, "p90": None, "p99": None}
    buckets = [(b, n) for b, n in sorted(histogram.items()) if n > 0]
    for name, q in (("median", 0.5), ("p90", 0.9), ("p99", 0.99)):
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket, n in buckets:
            if seen + n >= rank:
                lo, hi = bucket_bounds(bucket)
                frac = (rank - seen - 0.5) / n
                out[name] = lo + (hi - lo) * frac if bucket == 0 else float(lo * (hi / lo) ** frac)
                break
            seen += n
        else:  # pragma: no cover - unreachable by construction
            out[name] = bucket_bounds(max(histogram))[1]
    return out


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in histograms:
        for b, n in h.items():
            out[b] = out.get(b, 0) + n
    return out


# --- disclosure control -------------------------------------------------------------------------


def publishable(citizens_lower_bound: int, rules: TrackerRules) -> bool:
    """A cell may be shown only if it certainly counts at least `min_cell_citizens` citizens."""
    return citizens_lower_bound >= rules.min_cell_citizens


def rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


ALL_TYPES: Final = "*"  # attest-type key of cells that count every type


@lru_cache(maxsize=65_536)  # a batch's events share few days, types and places
def cells_for(
    *,
    day: dt.date,
    attest_type: str,
    region: str,
    municipality: str,
    receiver: str | None,
    durations: bool = False,
) -> tuple[tuple[str, str, dt.date, str, str], ...]:
    """The rollup cells an observation on `day` falls into: per period kind, per grain
    (national, region, municipality, receiver), for its own attest type and for all types.
    Citizen-level observations (attest type `-`) are not split by type or receiver.
    (Cached: a tuple, shared by every caller.)

    Duration histograms (`durations=True`) are kept per week only for the national and
    regional grains; municipality and receiver histograms are monthly (a weekly histogram
    per receiver organisation would be mostly empty buckets at national scale). They are kept
    per attest type only: a histogram over all types is the sum of the types' (summed when
    read, `report.py`), and a `*` cell of its own doubled the rows every duration writes."""
    grains: Sequence[tuple[str, str]] = [
        ("national", "DK"),
        ("region", region),
        ("municipality", municipality),
    ]
    if receiver is not None:
        grains = [*grains, ("receiver", receiver)]
    types = [attest_type] if attest_type == "-" or durations else [attest_type, ALL_TYPES]
    return tuple(
        (grain, kind, period_start(day, kind), t, dim)
        for kind in PERIOD_KINDS
        for grain, dim in grains
        for t in types
        if not (durations and kind == "week" and grain in WEEKLY_HISTOGRAMS_NOT_KEPT)
    )


WEEKLY_HISTOGRAMS_NOT_KEPT: Final = frozenset({"municipality", "receiver"})

LAST_WEEK: Final = 27  # weeks of absence counted one by one; 27 stands for week 27 or later


def absence_week(first_day: dt.date, requested: dt.date) -> int:
    """The week of absence a request was made in (the first day of absence is day 1 of week
    1); 0 before the absence, `LAST_WEEK` for week 27 or later."""
    days = (requested - first_day).days
    if days < 0:
        return 0
    return min(days // 7 + 1, LAST_WEEK)


# The grains of the receiver-kind cells, one per place grain: a request counted by its
# receiver's kind (dim `<place>/<kind>`), for latency by receiver kind; and of the case-kind
# cells (dim `<place>/<case kind>`), for request timing by case kind. They count requests and
# distinct citizens only, and the reports of the other rollups never read them.
KIND_GRAINS: Final = {
    "national": "rk:national",
    "region": "rk:region",
    "municipality": "rk:municipality",
}
CASE_KIND_GRAINS: Final = {
    "national": "ck:national",
    "region": "ck:region",
    "municipality": "ck:municipality",
}


@lru_cache(maxsize=65_536)
def kind_cells(
    *, day: dt.date, attest_type: str, region: str, municipality: str, receiver_kind: str
) -> tuple[tuple[str, str, dt.date, str, str], ...]:
    """The receiver-kind cells a request made on `day` counts in: per period kind and place
    grain, for its own attest type and for all types. (Cached: a tuple.)"""
    return _breakdown_cells(KIND_GRAINS, day, attest_type, region, municipality, receiver_kind)


@lru_cache(maxsize=65_536)
def case_kind_cells(
    *, day: dt.date, attest_type: str, region: str, municipality: str, case_kind: str
) -> tuple[tuple[str, str, dt.date, str, str], ...]:
    """The case-kind cells a request made on `day` counts in, as :func:`kind_cells`."""
    return _breakdown_cells(CASE_KIND_GRAINS, day, attest_type, region, municipality, case_kind)


def _breakdown_cells(
    grains: Mapping[str, str],
    day: dt.date,
    attest_type: str,
    region: str,
    municipality: str,
    value: str,
) -> tuple[tuple[str, str, dt.date, str, str], ...]:
    places = (("national", "DK"), ("region", region), ("municipality", municipality))
    return tuple(
        (grains[grain], kind, period_start(day, kind), t, f"{where}/{value}")
        for kind in PERIOD_KINDS
        for grain, where in places
        for t in (attest_type, ALL_TYPES)
    )
