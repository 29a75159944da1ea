# The reference the property test (tests/unit/test_tracker_disclosure_equivalence.py) compares
# tracker/disclosure.py with: a verbatim copy of the decision as it was before it was made
# faster (integer cell ids, a worklist, the audit per linked group). Do not change it; the
# new implementation must suppress exactly the same cells for the same input.
"""Disclosure control for the ministry's tables: which cells are shown. Pure.

A **cell** is one group in one period (`(period_start, group)`; `period_start` None for a
figure over the whole range asked) with its **weight**: the distinct citizens it counts (or
a lower bound of them). The rule (docs/tracker.md, "Disclosure control"):

1. *Primary*: a cell with fewer than `threshold` citizens is suppressed.
2. *Secondary, within a period*: the groups of one period that add up to a published total
   are a **set** with that total (the five regions add up to the country; a region's
   municipalities to the region; the attest types, case kinds, receiver kinds or receiving
   units to the country; the months of a quarter to the quarter, its quarters to the
   year): one equation, whose unknowns are its suppressed cells. In a set the suppressed
   cells are none, or at least two that together count at least `threshold` citizens;
   otherwise the smallest shown cell of the set is suppressed too (ties by key), until
   every set holds. A suppressed cell can then not be recomputed as a
   total minus the cells shown, and what can be recomputed (the sum of the suppressed cells
   of a set) is itself not a small number.
3. *Across periods*: a figure over a range of periods (`series=false`) is shown only if every
   period cell of its group in the range is shown. So a range figure adds no equation that
   holds a suppressed period cell, and two ranges told apart give only shown cells.

The period cells are decided over all groups of the grain, whatever the filters and the
caller's scope, and the answer's rows are picked afterwards, so a cell is shown or
suppressed alike in every view, grouping, export (JSON and CSV) and for every caller.
Sets nest (municipalities within regions within the country) and are decided together: a
region suppressed in its set (the regions of the country) is an unknown in its
municipalities' set too, so that set then needs another suppressed member. Every equation
that has an unknown has at least two; that no single suppressed cell is then determined by
the shown cells and totals is tested by exact elimination over random tables.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
CellKey = tuple[str | None, str]  # (period start, group)


Set = tuple[Sequence[K], K | None]  # the parts, and the total they add up to (if known)


def suppress(weights: Mapping[K, int], sets: Iterable[Set[K]], threshold: int) -> set[K]:
    """The cells to suppress: primary (weight below `threshold`), then secondary until in every
    set (its parts and its total, the unknowns of one equation) the suppressed cells are none
    or at least two weighing together at least `threshold`. Parts are suppressed for
    another's sake, the smallest shown one first (then the smallest key: deterministic); a
    total only when no part is left to suppress (it then equals its one suppressed part)."""
    hidden = {k for k, w in weights.items() if w < threshold}
    groups = [
        ([k for k in parts if k in weights], total if total in weights else None)
        for parts, total in sets
    ]
    changed = True
    while changed:
        changed = False
        for parts, total in groups:
            members = [*parts, total] if total is not None else parts
            while True:
                gone = [k for k in members if k in hidden]
                if not gone:
                    break
                if len(gone) >= 2 and sum(weights[k] for k in gone) >= threshold:
                    break
                shown = [k for k in parts if k not in hidden]
                if not shown:
                    if total is None or total in hidden:
                        break  # every part is suppressed, the total too or unknown
                    shown = [total]  # the total is its one suppressed part: hide it too
                hidden.add(min(shown, key=lambda k: (weights[k], repr(k))))
                changed = True
    return hidden


def period_sets(keys: Iterable[CellKey], parent: Callable[[str], str | None]) -> list[Set[CellKey]]:
    """The sets of period cells: per period, a total with the groups that add up to it
    (`parent` names a group's total: "DK" for a region or an attest type, the region for a
    municipality; None for the country). A total that is itself among `keys` is a member of
    its set (an unknown of the equation when it is suppressed); one that is not is taken as
    shown."""
    present = set(keys)
    sets: dict[tuple[str | None, str], list[CellKey]] = defaultdict(list)
    for key in present:
        up = parent(key[1])
        if up is not None:
            sets[(key[0], up)].append(key)
    return [
        (sorted(members, key=repr), total if total in present else None)
        for total, members in sorted(sets.items(), key=repr)
    ]


def decide(
    weights: Mapping[CellKey, int],
    parent: Callable[[str], str | None],
    threshold: int,
) -> set[CellKey]:
    """The period cells to suppress (rules 1 and 2)."""
    return suppress(weights, period_sets(weights, parent), threshold)


def range_shown(
    group: str, periods: Iterable[CellKey], hidden: set[CellKey], range_weight: int, threshold: int
) -> bool:
    """Rule 3: a group's figure over the range is shown only if it counts `threshold`
    citizens and none of its period cells (`periods`, the group's keys) is suppressed."""
    return range_weight >= threshold and not any(k in hidden for k in periods if k[1] == group)


GEOGRAPHY = frozenset({"national", "region", "municipality"})


def parent_of(by: str, region_of: Mapping[str, str]) -> Callable[[str], str | None]:
    """The total a group adds up to: for the geography a municipality's region
    (`region_of`), a region's the country ("DK"); for any other grouping the country. The
    country is the top."""

    def geography(group: str) -> str | None:
        if group == "DK":
            return None
        return region_of.get(group, "DK")

    def flat(group: str) -> str | None:
        return None if group == "DK" else "DK"

    return geography if by in GEOGRAPHY else flat


# --- the cube of the ministry's cells ----------------------------------------------------------

ALL = "*"  # the type coordinate of a cell over every type (attest type, case kind, …)
# (period kind, period start, grain, place, type): grain `national` (place "DK"), `region`,
# `municipality` or `receiver`; type a breakdown within the place (an attest type, a case
# kind, a receiving unit …) or ALL.
Coord = tuple[str, str, str, str, str]

_UP = {"month": "quarter", "quarter": "year"}


def place_of(coord: Coord) -> str:
    return "DK" if coord[2] == "national" else coord[3]


def cube_sets(coords: Iterable[Coord], region_of: Mapping[str, str]) -> list[Set[Coord]]:
    """The sets (one equation each) of a cube of cells: per period kind, period and type the
    places within their total (municipalities within their region, regions and receiving
    units within the country); per period and place the types within ALL; per place and
    type the months within their quarter and the quarters within their year (when those
    kinds are in the cube). A total present in the cube is a member of its set."""
    present = set(coords)
    where: dict[tuple[str, str, str, str], Coord] = {
        (c[0], c[1], place_of(c), c[4]): c for c in present
    }
    sets: dict[tuple[str, ...], list[Coord]] = defaultdict(list)
    totals: dict[tuple[str, ...], Coord | None] = {}
    for c in present:
        kind, period, grain, dim, kind_of = c
        key: tuple[str, ...]
        if grain != "national":
            up = region_of.get(dim, "DK") if grain == "municipality" else "DK"
            key = ("place", kind, period, up, kind_of)
            sets[key].append(c)
            totals[key] = where.get((kind, period, up, kind_of))
        if kind_of != ALL:
            key = ("type", kind, period, place_of(c))
            sets[key].append(c)
            totals[key] = where.get((kind, period, place_of(c), ALL))
        if kind in _UP:
            start = dt.date.fromisoformat(period)
            outer = _UP[kind]
            first = (
                dt.date(start.year, 3 * ((start.month - 1) // 3) + 1, 1)
                if outer == "quarter"
                else dt.date(start.year, 1, 1)
            ).isoformat()
            key = ("time", outer, first, grain, dim, kind_of)
            sets[key].append(c)
            totals[key] = present_or_none(present, (outer, first, grain, dim, kind_of))
    return [(sorted(sets[key]), totals.get(key)) for key in sorted(sets)]


def present_or_none(present: set[Coord], coord: Coord) -> Coord | None:
    return coord if coord in present else None


def decide_cube(
    weights: Mapping[Coord, int], region_of: Mapping[str, str], threshold: int
) -> set[Coord]:
    """The suppressed cells of a cube: primary, then secondary over `cube_sets`, then
    audited (`settle`), each year (its periods' start's) on its own."""
    hidden: set[Coord] = set()
    for year in sorted({c[1][:4] for c in weights}):
        part = {c: w for c, w in weights.items() if c[1][:4] == year}
        hidden |= settle(part, cube_sets(part, region_of), threshold)
    return hidden


def settle(weights: Mapping[K, int], sets: Sequence[Set[K]], threshold: int) -> set[K]:
    """`suppress`, then an audit: where the sets cross (places × types × periods), the rule
    of two per set is not enough, as several equations together can fix one cell. Each
    group of suppressed cells linked by equations is row-reduced exactly (modulo a 61-bit
    prime: a cell fixed over the rationals is fixed there too); each fixed cell takes the
    smallest shown part of one of its sets with it (else a shown total of them, else a shown
    cell of any equation with an unknown), and the whole is decided again, until no
    suppressed cell is fixed."""
    hidden = suppress(weights, sets, threshold)
    while True:
        fixed = determined(sets, hidden)
        if not fixed:
            return hidden
        shown = [k for k in weights if k not in hidden]
        if not shown:
            return hidden
        touching: dict[K, list[Set[K]]] = defaultdict(list)
        for parts, total in sets:
            for k in (*parts, total):
                if k in fixed:
                    touching[k].append((parts, total))
        for cell in sorted(fixed, key=repr):  # one more cell for each fixed one, at once
            mine = touching[cell]
            candidates = (
                [k for parts, _ in mine for k in parts if k in weights and k not in hidden]
                or [t for _, t in mine if t is not None and t in weights and t not in hidden]
                or [  # shown cells of any equation with an unknown: the constants that fix it
                    k
                    for parts, total in sets
                    if any(m in hidden for m in (*parts, total))
                    for k in (*parts, total)
                    if k is not None and k in weights and k not in hidden
                ]
                or [k for k in weights if k not in hidden]
            )
            if candidates:
                hidden.add(min(candidates, key=lambda k: (weights[k], repr(k))))
        hidden = suppress_more(weights, sets, threshold, hidden)


def suppress_more(
    weights: Mapping[K, int], sets: Iterable[Set[K]], threshold: int, hidden: set[K]
) -> set[K]:
    """`suppress` starting from cells already suppressed."""
    extra = {k: (0 if k in hidden else w) for k, w in weights.items()}
    # a weight of 0 makes a cell primary-suppressed; the real weights decide the rest
    out = suppress(extra, sets, threshold)
    return out | hidden


_P = (1 << 61) - 1


def determined(sets: Iterable[Set[K]], hidden: set[K]) -> set[K]:
    """The suppressed cells that the sets' equations (parts − total = shown cells) fix.

    Exact, and fast on the cube's sparse equations: an equation with an unknown of its own
    (in no other equation left) is peeled off, as it fixes no other unknown; what is left is
    row-reduced; then, in the reverse order of peeling, the peeled unknown is fixed exactly
    when the rest of its equation lies in the span of the equations left when it was peeled
    (the reduced ones and those peeled after it)."""
    equations: list[dict[K, int]] = []
    for parts, total in sets:
        eq = {k: 1 for k in parts if k in hidden}
        if total is not None and total in hidden:
            eq[total] = _P - 1
        if eq:
            equations.append(eq)
    where: dict[K, set[int]] = defaultdict(set)
    for n, eq in enumerate(equations):
        for k in eq:
            where[k].add(n)
    active = set(range(len(equations)))
    peeled: list[tuple[int, K]] = []
    queue = [n for n, eq in enumerate(equations) if any(len(where[k]) == 1 for k in eq)]
    while queue:
        n = queue.pop()
        if n not in active:
            continue
        own = next((k for k in equations[n] if len(where[k]) == 1), None)
        if own is None:
            continue
        active.discard(n)
        peeled.append((n, own))
        for k in equations[n]:
            where[k].discard(n)
            if len(where[k]) == 1:
                queue.append(next(iter(where[k])))
    basis: _Basis[K] = _Basis()
    fixed: set[K] = set()
    for n in sorted(active):
        basis.add_reduced(equations[n])
    fixed |= basis.fixed()
    for n, own in reversed(peeled):
        rest = {k: v for k, v in equations[n].items() if k != own}
        if not basis.reduce(rest):
            fixed.add(own)
        basis.add_with_pivot(equations[n], own)
    return fixed


class _Basis(Generic[K]):
    """Rows over GF(P) with a pivot each: the first ones fully reduced (row-reduced echelon
    form), each later one pivoted on an unknown no earlier row holds."""

    def __init__(self) -> None:
        self.rows: dict[K, dict[K, int]] = {}  # pivot → row (coefficient 1 at the pivot)
        self.order: dict[K, int] = {}  # pivot → when its row was added
        self.reduced: set[K] = set()  # pivots of the fully reduced rows
        self.holders: dict[K, set[K]] = defaultdict(set)  # unknown → reduced rows holding it

    def add_reduced(self, equation: dict[K, int]) -> None:
        row = self._reduce_by(dict(equation), self.reduced)
        if not row:
            return
        pivot = min(row, key=repr)
        inverse = pow(row[pivot], _P - 2, _P)
        row = {k: v * inverse % _P for k, v in row.items()}
        for other in list(self.holders.get(pivot, ())):
            r = self.rows[other]
            factor = r.get(pivot, 0)
            for k, v in row.items():
                after = (r.get(k, 0) - factor * v) % _P
                if after:
                    r[k] = after
                    self.holders[k].add(other)
                else:
                    r.pop(k, None)
                    self.holders[k].discard(other)
        self._put(pivot, row)
        self.reduced.add(pivot)
        for k in row:
            self.holders[k].add(pivot)

    def fixed(self) -> set[K]:
        return {p for p in self.reduced if len(self.rows[p]) == 1}

    def add_with_pivot(self, equation: dict[K, int], pivot: K) -> None:
        inverse = pow(equation[pivot] % _P, _P - 2, _P)
        self._put(pivot, {k: v * inverse % _P for k, v in equation.items() if v % _P})

    def _put(self, pivot: K, row: dict[K, int]) -> None:
        self.rows[pivot] = row
        self.order[pivot] = len(self.order)

    def _reduce_by(self, row: dict[K, int], pivots: set[K]) -> dict[K, int]:
        for p in [k for k in row if k in pivots]:
            factor = row.get(p, 0)
            if factor:
                for k, v in self.rows[p].items():
                    row[k] = (row.get(k, 0) - factor * v) % _P
        return {k: v for k, v in row.items() if v}

    def reduce(self, vector: dict[K, int]) -> dict[K, int]:
        """`vector` minus its part in the span: empty iff it lies in the span. The newest
        row's pivot first: a row holds only pivots of older rows."""
        row = {k: v % _P for k, v in vector.items() if v % _P}
        heap = [(-self.order[k], repr(k), k) for k in row if k in self.rows]
        heapq.heapify(heap)
        while heap:
            _, _, p = heapq.heappop(heap)
            factor = row.get(p, 0)
            if not factor:
                continue
            for k, v in self.rows[p].items():
                before = row.get(k, 0)
                after = (before - factor * v) % _P
                if after:
                    row[k] = after
                    if not before and k in self.rows and k != p:
                        heapq.heappush(heap, (-self.order[k], repr(k), k))
                else:
                    row.pop(k, None)
        return row


def months_up(kind: str, month: dt.date) -> list[tuple[str, str]]:
    """The (period kind, period start) cells a month adds into, for a cube of `kind` or
    coarser: the month itself, its quarter, its year (weeks: none)."""
    if kind == "week":
        return []
    quarter = dt.date(month.year, 3 * ((month.month - 1) // 3) + 1, 1)
    return [
        ("month", month.replace(day=1).isoformat()),
        ("quarter", quarter.isoformat()),
        ("year", dt.date(month.year, 1, 1).isoformat()),
    ]
