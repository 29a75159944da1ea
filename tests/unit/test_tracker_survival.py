"""The Kaplan–Meier estimate (tracker/survival.py) against a hand-worked example and against
lifelines' KaplanMeierFitter on random data with ties and censoring; the estimate from counts
(what the latency rollup keeps) against the one from rows."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lifelines import KaplanMeierFitter

from attest_gateway.tracker.latency import median_of_counts
from attest_gateway.tracker.survival import kaplan_meier, kaplan_meier_counts


def test_a_hand_worked_curve() -> None:
    # durations 1, 2+, 3, 3, 5+, 8: at 1: 5/6; at 3 (4 at risk, 2 events): 5/6 * 2/4
    curve = kaplan_meier([(1, True), (2, False), (3, True), (3, True), (5, False), (8, True)])
    assert curve.times == (1.0, 3.0, 8.0)
    assert curve.survival == pytest.approx((5 / 6, 5 / 12, 0.0))
    assert (curve.n, curve.events, curve.censored) == (6, 4, 2)
    assert curve.at(2.5) == pytest.approx(5 / 6)
    assert curve.quantile(0.5) == 3  # S(3) = 5/12 ≤ 0.5
    assert curve.quantile(0.9) == 8


def test_open_requests_make_the_median_later_than_the_answered_ones_alone() -> None:
    answered = [(float(d), True) for d in (2, 3, 4, 5, 6)]
    assert kaplan_meier(answered).quantile(0.5) == 4
    # five requests open for ten days: S(6) = 5/10, so the median is 6 days, not 4
    five_open = kaplan_meier(answered + [(10.0, False)] * 5)
    assert five_open.at(6) == pytest.approx(0.5)
    assert five_open.quantile(0.5) == 6
    # six open: more than half still without an attest, no median yet
    assert kaplan_meier(answered + [(10.0, False)] * 6).quantile(0.5) is None


def test_no_quantile_when_the_curve_stays_above_it() -> None:
    curve = kaplan_meier([(5, True), (9, False), (9, False), (9, False)])
    assert curve.quantile(0.5) is None
    assert kaplan_meier([]).quantile(0.5) is None


def _lifelines_quantile(kmf: KaplanMeierFitter, q: float) -> float | None:
    sf = kmf.survival_function_.iloc[:, 0]
    below = sf[sf <= 1 - q + 1e-12]
    return None if below.empty else float(below.index[0])


@pytest.mark.parametrize("seed", range(8))
def test_matches_lifelines(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(20, 300)
    # whole days, so that there are ties; a third or so still open
    data = [(float(rng.randint(0, 60)), rng.random() > 0.35) for _ in range(n)]
    ours = kaplan_meier(data)
    kmf = KaplanMeierFitter().fit([t for t, _ in data], [e for _, e in data])
    sf = kmf.survival_function_.iloc[:, 0]
    for t, s in sf.items():
        assert ours.at(float(t)) == pytest.approx(float(s), abs=1e-9), t
    for q in (0.5, 0.9):
        assert ours.quantile(q) == _lifelines_quantile(kmf, q)
    median = kmf.median_survival_time_
    assert (ours.quantile(0.5) is None) == math.isinf(median)
    if not math.isinf(median):
        assert ours.quantile(0.5) == pytest.approx(median)


# --- from counts, as the latency rollup keeps them --------------------------------------------

_observations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=60), st.booleans()), max_size=80
)


@given(_observations)
def test_the_estimate_from_counts_is_the_estimate_from_rows(obs: list[tuple[int, bool]]) -> None:
    rows = kaplan_meier(obs)
    events = Counter(t for t, happened in obs if happened)
    censored = Counter(t for t, happened in obs if not happened)
    counts = kaplan_meier_counts(events, censored)
    assert counts == rows  # the same floats, not just close ones
    # rows that went up and down again (an open request answered later) change nothing
    zeros = dict.fromkeys(range(61), 0)
    assert kaplan_meier_counts(events | {99: 0}, zeros | censored) == rows


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=50))
def test_the_median_of_counts_is_the_median_of_the_values(values: list[int]) -> None:
    ordered = sorted(values)
    if not ordered:
        assert median_of_counts(Counter()) is None
        return
    mid = len(ordered) // 2
    expected = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    assert median_of_counts(Counter(values)) == expected
