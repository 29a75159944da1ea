"""Disclosure control (tracker/disclosure.py): primary and secondary suppression, and that no
suppressed cell can be recomputed from what is shown, by exact elimination over random
tables of municipalities within regions within the country, per period."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from attest_gateway.tracker import disclosure as d

T = 5


def test_one_small_cell_takes_the_next_smallest_with_it() -> None:
    weights: dict[d.CellKey, int] = {
        (None, "a"): 2,
        (None, "b"): 7,
        (None, "c"): 9,
        (None, "DK"): 18,
    }
    hidden = d.decide(weights, d.parent_of("attest_type", {}), T)
    assert hidden == {(None, "a"), (None, "b")}


def test_two_small_cells_that_are_small_together_take_a_third() -> None:
    weights: dict[d.CellKey, int] = {
        (None, "a"): 1,
        (None, "b"): 2,
        (None, "c"): 9,
        (None, "d"): 30,
        (None, "DK"): 42,
    }
    hidden = d.decide(weights, d.parent_of("attest_type", {}), T)
    assert hidden == {(None, "a"), (None, "b"), (None, "c")}


def test_nothing_small_nothing_hidden_and_sets_are_per_period() -> None:
    jan, feb = "2026-01-01", "2026-02-01"
    weights: dict[d.CellKey, int] = {(jan, "a"): 5, (jan, "b"): 6, (feb, "a"): 1, (feb, "b"): 8}
    hidden = d.decide(weights, d.parent_of("attest_type", {}), T)
    assert hidden == {("2026-02-01", "a"), ("2026-02-01", "b")}


def test_a_suppressed_region_needs_a_second_unknown_among_its_municipalities() -> None:
    # Region R2 is suppressed to protect the small R1; its municipalities are all large, so
    # R2 would be their sum: one of them is suppressed as well.
    regions = {"m1": "R1", "m2": "R2", "m3": "R2", "m4": "R3"}
    sizes = {"DK": 60, "R1": 3, "R2": 12, "R3": 45, "m1": 3, "m2": 6, "m3": 6, "m4": 45}
    weights: dict[d.CellKey, int] = {(None, k): w for k, w in sizes.items()}
    hidden = d.decide(weights, d.parent_of("municipality", regions), T)
    assert (None, "R2") in hidden
    assert {(None, "m2"), (None, "m3")} & hidden


def test_a_range_figure_is_shown_only_if_all_its_periods_are() -> None:
    hidden: set[d.CellKey] = {("2026-02-01", "a")}
    keys: list[d.CellKey] = [("2026-01-01", "a"), ("2026-02-01", "a"), ("2026-01-01", "b")]
    assert not d.range_shown("a", keys, hidden, 40, T)
    assert d.range_shown("b", keys, hidden, 40, T)
    assert not d.range_shown("b", keys, hidden, 4, T)


def _determined(equations: list[dict[str, int]], unknowns: list[str]) -> set[str]:
    """The unknowns fixed by the equations (each its unknowns' coefficients; the shown cells
    are constants): row-reduce exactly, an unknown is fixed iff a reduced row is its unit
    vector."""
    col = {u: i for i, u in enumerate(unknowns)}
    rows = [[Fraction(0)] * len(unknowns) for _ in equations]
    for row, eq in zip(rows, equations, strict=True):
        for u, coefficient in eq.items():
            row[col[u]] += coefficient
    pivot_row = 0
    for c in range(len(unknowns)):
        pivot = next((r for r in range(pivot_row, len(rows)) if rows[r][c] != 0), None)
        if pivot is None:
            continue
        rows[pivot_row], rows[pivot] = rows[pivot], rows[pivot_row]
        lead = rows[pivot_row][c]
        rows[pivot_row] = [v / lead for v in rows[pivot_row]]
        for r in range(len(rows)):
            if r != pivot_row and rows[r][c] != 0:
                factor = rows[r][c]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[pivot_row], strict=True)]
        pivot_row += 1
    return {
        unknowns[next(i for i, v in enumerate(row) if v != 0)]
        for row in rows
        if sum(1 for v in row if v != 0) == 1
    }


tables = st.lists(  # regions → municipalities → weights, per period
    st.lists(st.integers(min_value=0, max_value=14), min_size=1, max_size=5),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(periods=st.lists(tables, min_size=1, max_size=3))
def test_no_suppressed_cell_can_be_recomputed_from_the_published_totals(
    periods: list[list[list[int]]],
) -> None:
    weights: dict[d.CellKey, int] = {}
    region_of: dict[str, str] = {}
    for p, regions in enumerate(periods):
        period = f"p{p}"
        for r, munis in enumerate(regions):
            region = f"R{r}"
            for m, w in enumerate(munis):
                muni = f"m{r}.{m}"
                region_of[muni] = region
                weights[(period, muni)] = w
            weights[(period, region)] = sum(munis)
        weights[(period, "DK")] = sum(map(sum, regions))
    hidden = d.decide(weights, d.parent_of("municipality", region_of), T)
    assert {k for k, w in weights.items() if w < T} <= hidden
    # every equation of each period, built here from the table: the sum of the parts minus
    # the total is 0; its unknowns are the suppressed cells, the shown ones are constants
    equations: list[dict[str, int]] = []
    for p, regions in enumerate(periods):
        period = f"p{p}"
        country: dict[d.CellKey, int] = {(period, "DK"): -1}
        for r, munis in enumerate(regions):
            country[(period, f"R{r}")] = 1
            equation: dict[d.CellKey, int] = {(period, f"R{r}"): -1}
            equation |= {(period, f"m{r}.{m}"): 1 for m in range(len(munis))}
            equations.append({repr(k): c for k, c in equation.items() if k in hidden})
        equations.append({repr(k): c for k, c in country.items() if k in hidden})
    for parts, total in d.period_sets(weights, d.parent_of("municipality", region_of)):
        members = [*parts, total] if total is not None else list(parts)
        gone = [k for k in members if k in hidden]
        assert len(gone) != 1
        if gone and len(gone) < len(members):
            assert sum(weights[k] for k in gone) >= T
    names = sorted(repr(k) for k in hidden)
    fixed = _determined([eq for eq in equations if eq], names)
    # the country as a whole may be small; everything else suppressed stays unknown
    assert fixed <= {repr(k) for k in hidden if k[1] == "DK"}


cubes = st.dictionaries(  # (month, region, municipality, type) → citizens
    st.tuples(
        st.sampled_from(["2026-01-01", "2026-02-01", "2026-04-01"]),
        st.sampled_from(["1084", "1085"]),
        st.sampled_from(["101", "147", "259", "265"]),
        st.sampled_from(["LÆ 125", "LÆ 155", "LÆ 265"]),
    ),
    st.integers(min_value=0, max_value=9),
    min_size=1,
    max_size=8,
)
REGION_OF = {"101": "1084", "147": "1084", "259": "1085", "265": "1085"}


def _cube(stored: dict[tuple[str, str, str, str], int]) -> dict[d.Coord, int]:
    """Every cell the stored months add into (sums as weights, for the test)."""
    import datetime as dt

    out: dict[d.Coord, int] = {}
    for (month, _, muni, kind), w in stored.items():
        for period_kind, start in d.months_up("month", dt.date.fromisoformat(month)):
            for grain, dim in (("national", "DK"), ("region", REGION_OF[muni]),
                               ("municipality", muni)):  # fmt: skip
                for t in (kind, d.ALL):
                    c = (period_kind, start, grain, dim, t)
                    out[c] = out.get(c, 0) + w
    return out


@settings(max_examples=40, deadline=None)
@given(stored=cubes)
def test_no_suppressed_cell_of_a_cube_can_be_recomputed(
    stored: dict[tuple[str, str, str, str], int],
) -> None:
    """Months within quarters within the year, municipalities within regions within the
    country, attest types within all types: every equation at once."""
    full = _cube(stored)
    hidden = d.decide_cube(full, REGION_OF, T)
    assert {k for k, w in full.items() if w < T} <= hidden
    equations: list[dict[str, int]] = []
    for parts, total in d.cube_sets(full, REGION_OF):
        eq = {repr(k): 1 for k in parts if k in hidden}
        if total is not None and total in hidden:
            eq[repr(total)] = -1
        assert len(eq) != 1
        if eq:
            equations.append(eq)
    fixed = _determined(equations, sorted(repr(k) for k in hidden))
    assert fixed <= {repr(k) for k in hidden if k[2] == "national" and k[4] == d.ALL}
