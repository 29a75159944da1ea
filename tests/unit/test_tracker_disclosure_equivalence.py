"""The disclosure decision (tracker/disclosure.py) suppresses exactly the cells its earlier,
plainer implementation did (tests/support/disclosure_reference.py): over random cubes of
varied shapes, weights and thresholds, and over random nested tables per period."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest_gateway.tracker import disclosure as d
from tests.support import disclosure_reference as ref

REGION_OF = {"101": "1084", "147": "1084", "259": "1085", "265": "1085", "400": "1081"}
MONTHS = ["2025-11-01", "2025-12-01", "2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01"]
# type names whose repr does not sort as they do ("LÆ" before "LÆ 1" by value, after by
# repr; a quote changes the repr's quotes), so ties by key are tested on both orders
TYPES = ["LÆ 125", "LÆ 155", "LÆ", "LÆ 1", "a'b", "Z"]


@st.composite
def cubes(draw: st.DrawFn) -> tuple[dict[d.Coord, int], int]:
    """A cube of stored months rolled up into quarters and years, over the geography or the
    receiving units, with weights summed, maxed (the rollups' lower bound) or drawn apart."""
    receivers = draw(st.booleans())
    names = ["gp-1", "gp-2", "gp-3", "psy-1"] if receivers else sorted(REGION_OF)
    places = draw(st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True))
    types = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=4, unique=True))
    months = draw(st.lists(st.sampled_from(MONTHS), min_size=1, max_size=4, unique=True))
    grid = [(m, p, t) for m in months for p in places for t in types]
    counts = draw(  # a cell of the grid stored with its weight, or not (below 0)
        st.lists(st.integers(min_value=-4, max_value=12), min_size=len(grid), max_size=len(grid))
    )
    stored = {cell: w for cell, w in zip(grid, counts, strict=True) if w >= 0}
    how = draw(st.sampled_from(["sum", "max", "random"]))
    out: dict[d.Coord, int] = {}
    for (month, place, kind), w in stored.items():
        if receivers:
            where = [("national", "DK"), ("receiver", place)]
        else:
            where = [("national", "DK"), ("region", REGION_OF[place]), ("municipality", place)]
        for period_kind, start in d.months_up("month", dt.date.fromisoformat(month)):
            for grain, dim in where:
                for t in (kind, d.ALL):
                    c = (period_kind, start, grain, dim, t)
                    if how == "sum":
                        out[c] = out.get(c, 0) + w
                    elif how == "max":
                        out[c] = max(out.get(c, 0), w)
                    else:
                        out.setdefault(c, draw(st.integers(min_value=0, max_value=12)))
    threshold = draw(st.integers(min_value=1, max_value=9))
    return out, threshold


@settings(max_examples=400, deadline=None)
@given(cube=cubes())
def test_a_cube_is_decided_as_before(cube: tuple[dict[d.Coord, int], int]) -> None:
    weights, threshold = cube
    assert d.cube_sets(weights, REGION_OF) == ref.cube_sets(weights, REGION_OF)
    assert d.decide_cube(weights, REGION_OF, threshold) == ref.decide_cube(
        weights, REGION_OF, threshold
    )


@settings(max_examples=200, deadline=None)
@given(cube=cubes())
def test_each_step_is_as_before(cube: tuple[dict[d.Coord, int], int]) -> None:
    """The steps on their own, over the cube's sets given as any sets are: the rule of two,
    the audit of a suppression, and the settled decision."""
    weights, threshold = cube
    sets = ref.cube_sets(weights, REGION_OF)
    hidden = ref.suppress(weights, sets, threshold)
    assert d.suppress(weights, sets, threshold) == hidden
    assert d.determined(sets, hidden) == ref.determined(sets, hidden)
    assert d.settle(weights, sets, threshold) == ref.settle(weights, sets, threshold)
    every = set(weights)  # everything suppressed: nothing is fixed but what is
    assert d.determined(sets, every) == ref.determined(sets, every)


NAMES = [f"c{i}" for i in range(9)]
any_sets = st.lists(  # parts (repeats allowed) and a total (maybe a part, maybe weightless)
    st.tuples(
        st.lists(st.sampled_from(NAMES), min_size=0, max_size=6),
        st.none() | st.sampled_from(NAMES),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    sets=any_sets,
    weights=st.dictionaries(st.sampled_from(NAMES), st.integers(0, 9), min_size=1),
    threshold=st.integers(1, 8),
)
def test_any_sets_are_decided_as_before(
    sets: list[tuple[list[str], str | None]], weights: dict[str, int], threshold: int
) -> None:
    """Sets of no particular shape: repeated parts, a total among its parts, cells without
    a weight."""
    hidden = ref.suppress(weights, sets, threshold)
    assert d.suppress(weights, sets, threshold) == hidden
    assert d.determined(sets, hidden) == ref.determined(sets, hidden)
    assert d.settle(weights, sets, threshold) == ref.settle(weights, sets, threshold)
    assert d.suppress_more(weights, sets, threshold, hidden) == ref.suppress_more(
        weights, sets, threshold, hidden
    )


tables = st.lists(  # regions → municipalities → weights, per period
    st.lists(st.integers(min_value=0, max_value=14), min_size=1, max_size=5),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(periods=st.lists(tables, min_size=1, max_size=3), threshold=st.integers(1, 9))
def test_nested_tables_are_decided_as_before(
    periods: list[list[list[int]]], threshold: int
) -> None:
    weights: dict[d.CellKey, int] = {}
    region_of: dict[str, str] = {}
    for p, regions in enumerate(periods):
        for r, munis in enumerate(regions):
            for m, w in enumerate(munis):
                region_of[f"m{r}.{m}"] = f"R{r}"
                weights[(f"p{p}", f"m{r}.{m}")] = w
            weights[(f"p{p}", f"R{r}")] = sum(munis)
        weights[(f"p{p}", "DK")] = sum(map(sum, periods[p]))
    parent = d.parent_of("municipality", region_of)
    assert d.decide(weights, parent, threshold) == ref.decide(weights, parent, threshold)
    sets = d.period_sets(weights, parent)
    assert sets == ref.period_sets(weights, parent)
    assert d.settle(weights, sets, threshold) == ref.settle(weights, sets, threshold)


def _random_cube(rng: random.Random) -> tuple[dict[d.Coord, int], dict[str, str], int]:
    """A cube of a random shape (municipalities in regions, or receiving units; types;
    months of one or two years), rolled up by sum or by largest month, many cells small."""
    receivers = rng.random() < 0.3
    regions = rng.randint(1, 3)
    region_of = {f"{100 + m}": f"R{m % regions}" for m in range(rng.randint(2, 8))}
    types = [f"T{t}" for t in range(rng.randint(1, 5))]
    months = sorted(rng.sample(range(24), rng.randint(2, 12)))
    mean = rng.uniform(2, 12)
    summed = rng.random() < 0.5
    out: dict[d.Coord, int] = {}
    for month in months:
        first = dt.date(2025 + month // 12, month % 12 + 1, 1)
        for muni, region in region_of.items():
            where = (
                [("national", "DK"), ("receiver", f"u{muni}")]
                if receivers
                else [("national", "DK"), ("region", region), ("municipality", muni)]
            )
            for t in types:
                if rng.random() < 0.15:
                    continue  # not stored
                n = int(rng.expovariate(1 / mean))
                for kind, start in d.months_up("month", first):
                    for grain, dim in where:
                        for name in (t, d.ALL):
                            c = (kind, start, grain, dim, name)
                            out[c] = out.get(c, 0) + n if summed else max(out.get(c, 0), n)
    return out, region_of, rng.randint(2, 7)


def test_random_cubes_are_decided_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded cubes of random shapes, some of them with cells the audit finds fixed (so
    decided in more than one round)."""
    audited = ref.determined
    rounds: list[int] = []

    def counted(sets: list[ref.Set[d.Coord]], hidden: set[d.Coord]) -> set[d.Coord]:
        fixed = audited(sets, hidden)
        rounds.append(len(fixed))
        return fixed

    monkeypatch.setattr(ref, "determined", counted)
    rng = random.Random(29)
    for _ in range(300):
        weights, region_of, threshold = _random_cube(rng)
        assert d.decide_cube(weights, region_of, threshold) == ref.decide_cube(
            weights, region_of, threshold
        )
    assert sum(1 for n in rounds if n) >= 10


# seeds of `_random_cube` whose decision takes three rounds of the audit (the cells fixed
# in the first round take others with them, which fixes more in the second)
THREE_ROUNDS = (130, 359, 1353, 1623, 1721, 1853, 1932, 1952, 2242, 2434, 2556)


def test_cubes_of_three_rounds_are_decided_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    audited = ref.determined
    rounds: list[int] = []

    def counted(sets: list[ref.Set[d.Coord]], hidden: set[d.Coord]) -> set[d.Coord]:
        rounds.append(1)
        return audited(sets, hidden)

    monkeypatch.setattr(ref, "determined", counted)
    for seed in THREE_ROUNDS:
        weights, region_of, threshold = _random_cube(random.Random(seed))
        rounds.clear()
        assert d.decide_cube(weights, region_of, threshold) == ref.decide_cube(
            weights, region_of, threshold
        )
        assert len(rounds) >= 3


def _large_cube(rng: random.Random, munis: int, types: int) -> dict[d.Coord, int]:
    """A year of a larger cube, rolled up as the reports do (a quarter and a year weigh their
    largest month), with many small cells."""
    region_of = {f"{100 + m}": f"R{m % 3}" for m in range(munis)}
    out: dict[d.Coord, int] = {}
    for month in range(1, 13):
        for muni, region in region_of.items():
            for t in range(types):
                n = int(rng.expovariate(1 / (1 + 6 * rng.random())))
                if n == 0:
                    continue
                first = dt.date(2026, month, 1)
                for kind, start in d.months_up("month", first):
                    for grain, dim in (("national", "DK"), ("region", region),
                                       ("municipality", muni)):  # fmt: skip
                        for name in (f"T{t}", d.ALL):
                            c = (kind, start, grain, dim, name)
                            out[c] = max(out.get(c, 0), n)
    return out


def test_larger_cubes_are_decided_as_before() -> None:
    """Cubes of a few thousand cells whose audit finds cells fixed, seeded."""
    for seed in range(4):
        rng = random.Random(seed)
        weights = _large_cube(rng, munis=6 + 2 * seed, types=3 + seed)
        region_of = {f"{100 + m}": f"R{m % 3}" for m in range(6 + 2 * seed)}
        for threshold in (3, 5):
            assert d.decide_cube(weights, region_of, threshold) == ref.decide_cube(
                weights, region_of, threshold
            )


def test_the_garbage_collector_is_left_as_it_was() -> None:
    """The decision pauses the cyclic collector while it runs, and only then."""
    import gc

    weights, region_of, threshold = _random_cube(random.Random(1))
    assert gc.isenabled()
    d.decide_cube(weights, region_of, threshold)
    assert gc.isenabled()
    gc.disable()
    try:
        d.decide_cube(weights, region_of, threshold)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_year_is_decided_alike_in_every_cube_that_holds_it() -> None:
    """No equation holds cells of two years: a year's cells are decided as in a cube of
    that year alone, so a run of years shows what its years show. Decided as one problem,
    a fixed cell of one year would suppress more in the other (some seeds here do)."""
    joint_differs = 0
    rng = random.Random(7)
    for _ in range(80):
        weights, region_of, threshold = _random_cube(rng)
        years = {d.year_of(c) for c in weights}
        hidden = d.decide_cube(weights, region_of, threshold)
        for year in years:
            alone = {c: w for c, w in weights.items() if d.year_of(c) == year}
            assert d.decide_cube(alone, region_of, threshold) == {
                c for c in hidden if d.year_of(c) == year
            }
        joint = d.settle(weights, d.cube_sets(weights, region_of), threshold)
        joint_differs += joint != hidden
    assert joint_differs > 0
