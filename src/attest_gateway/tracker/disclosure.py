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
the shown cells and totals is tested by exact elimination over random tables. No set of a
cube holds cells of two years, so `decide_cube` decides each year on its own: a year is
decided alike whatever run of years is asked.

How it is computed: the cells are numbered once (`_Problem`; ties go by the order of the
keys' repr, as the rule states), the rule of two visits only the sets whose cells changed
since their last visit, in the order a pass over every set would, and the audit (`_Audit`)
keeps its echelon form from round to round, eliminating only what the cells suppressed
since the last round add. The result is the same as deciding set by set in full passes
and row-reducing every equation anew each round; a property test compares the two over
random cubes.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import heapq
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Generic, ParamSpec, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")
Params = ParamSpec("Params")
CellKey = tuple[str | None, str]  # (period start, group)


Set = tuple[Sequence[K], K | None]  # the parts, and the total they add up to (if known)


def _without_cycle_collection(call: Callable[Params, R]) -> Callable[Params, R]:
    """Runs `call` with the cyclic garbage collector paused (and resumed after, if it ran).
    A decision allocates many small dicts, lists and sets, none in a cycle, and the
    collector's passes over them would cost a good part of its time; reference counting
    still frees them."""

    @functools.wraps(call)
    def paused(*args: Params.args, **kwargs: Params.kwargs) -> R:
        was = gc.isenabled()
        gc.disable()
        try:
            return call(*args, **kwargs)
        finally:
            if was:
                gc.enable()

    return paused


class _Problem(Generic[K]):
    """The cells and sets of one decision as integers: cell `i` is `keys[i]` with weight
    `weight[i]` and `rank[i]` its place in the order of the keys' repr (equal reprs, equal
    ranks); set `g` has its parts `parts[g]` (only cells with a weight, in the set's order)
    and its total `totals[g]` (-1: none, or one without a weight)."""

    def __init__(
        self,
        keys: list[K],
        weight: list[int],
        parts: list[list[int]],
        totals: list[int],
        rank: list[int] | None = None,
    ) -> None:
        self.keys, self.weight, self.parts, self.totals = keys, weight, parts, totals
        if rank is not None:
            self.rank = rank
        # the sets each cell is a member of, once per time it is a member
        self.member_of: list[list[int]] = [[] for _ in keys]
        for g, members in enumerate(parts):
            for k in members:
                self.member_of[k].append(g)
            total = totals[g]
            if total >= 0:
                self.member_of[total].append(g)

    @classmethod
    def of(cls, weights: Mapping[K, int], sets: Iterable[Set[K]]) -> _Problem[K]:
        keys = list(weights)
        index = {k: i for i, k in enumerate(keys)}
        parts: list[list[int]] = []
        totals: list[int] = []
        for members, total in sets:
            parts.append([index[k] for k in members if k in index])
            totals.append(index.get(total, -1) if total is not None else -1)
        return cls(keys, [weights[k] for k in keys], parts, totals)

    @functools.cached_property
    def rank(self) -> list[int]:
        texts = [repr(k) for k in self.keys]
        order = sorted(range(len(texts)), key=texts.__getitem__)
        rank = [0] * len(texts)
        previous: str | None = None
        place = 0
        for position, i in enumerate(order):
            if texts[i] != previous:
                place, previous = position, texts[i]
            rank[i] = place
        return rank

    def order_key(self, weight: Sequence[int]) -> list[int]:
        """One integer per cell that orders by weight, then rank."""
        n = len(self.keys)
        return [w * n + r for w, r in zip(weight, self.rank, strict=True)]

    @functools.cached_property
    def key(self) -> list[int]:
        return self.order_key(self.weight)

    @functools.cached_property
    def smallest_first(self) -> list[list[int]]:
        """Each set's parts by weight, then rank (then the set's order: a stable sort)."""
        return self.ordered(self.key)

    def ordered(self, key: list[int]) -> list[list[int]]:
        return [sorted(parts, key=key.__getitem__) for parts in self.parts]

    def members(self, g: int) -> list[int]:
        total = self.totals[g]
        return [*self.parts[g], total] if total >= 0 else self.parts[g]

    def primary(self, weight: Sequence[int], threshold: int) -> bytearray:
        return bytearray(1 if w < threshold else 0 for w in weight)

    def suppress(
        self,
        weight: Sequence[int],
        threshold: int,
        hidden: bytearray,
        ordered_by: Sequence[int] | None = None,
    ) -> None:
        """The rule of two over every set, from `hidden` (changed in place), with `weight`
        summed for the suppressed cells of a set; the smallest shown part by `ordered_by`
        (None: the cells' own weights). The sets are visited as passes over all of them in
        order would visit them, until a pass changes nothing, but a set none of whose cells
        changed since its last visit (which left it holding) is skipped: it would change
        nothing."""
        count = [0] * len(self.parts)  # suppressed members (counted as often as they are)
        mass = [0] * len(self.parts)  # their weights
        for k, member in enumerate(hidden):
            if member:
                w = weight[k]
                for g in self.member_of[k]:
                    count[g] += 1
                    mass[g] += w
        order = (
            self.smallest_first if ordered_by is None else self.ordered(self.order_key(ordered_by))
        )
        totals, member_of = self.totals, self.member_of
        start = [0] * len(self.parts)  # order[g][:start[g]] is suppressed
        now = [g for g, c in enumerate(count) if c]  # this pass's sets to visit, a heap
        queued = bytearray(len(self.parts))
        for g in now:
            queued[g] = 1
        later: list[int] = []  # the next pass's
        while now:
            while now:
                g = heapq.heappop(now)
                queued[g] = 0
                while True:
                    c = count[g]
                    if c == 0 or (c >= 2 and mass[g] >= threshold):
                        break
                    parts = order[g]
                    i = start[g]
                    while i < len(parts) and hidden[parts[i]]:
                        i += 1
                    start[g] = i
                    if i < len(parts):
                        k = parts[i]
                    else:
                        k = totals[g]
                        if k < 0 or hidden[k]:
                            break  # every part is suppressed, the total too or unknown
                        # the total is its one suppressed part: hide it too
                    hidden[k] = 1
                    w = weight[k]
                    for h in member_of[k]:
                        count[h] += 1
                        mass[h] += w
                        if h != g and not queued[h]:
                            queued[h] = 1
                            if h > g:
                                heapq.heappush(now, h)
                            else:
                                later.append(h)
            later.sort()
            now, later = later, []


def suppress(weights: Mapping[K, int], sets: Iterable[Set[K]], threshold: int) -> set[K]:
    """The cells to suppress: primary (weight below `threshold`), then secondary until in every
    set (its parts and its total, the unknowns of one equation) the suppressed cells are none
    or at least two weighing together at least `threshold`. Parts are suppressed for
    another's sake, the smallest shown one first (then the smallest key: deterministic); a
    total only when no part is left to suppress (it then equals its one suppressed part)."""
    problem = _Problem.of(weights, sets)
    hidden = problem.primary(problem.weight, threshold)
    problem.suppress(problem.weight, threshold, hidden)
    return {problem.keys[k] for k, member in enumerate(hidden) if member}


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
    kinds are in the cube). A total present in the cube is a member of its set. The sets
    in the order of their keys, each one's parts in the order of the coordinates."""
    keys, parts, totals = _cube_sets(set(coords), region_of)
    return [
        ([keys[k] for k in members], keys[total] if total >= 0 else None)
        for members, total in zip(parts, totals, strict=True)
    ]


@functools.lru_cache(maxsize=1024)
def _outer(kind: str, period: str) -> tuple[str, str] | None:
    """The period kind and start of the period a month or a quarter adds up to."""
    outer = _UP.get(kind)
    if outer is None:
        return None
    start = dt.date.fromisoformat(period)
    first = (
        dt.date(start.year, 3 * ((start.month - 1) // 3) + 1, 1)
        if outer == "quarter"
        else dt.date(start.year, 1, 1)
    ).isoformat()
    return outer, first


def _cube_sets(
    present: Iterable[Coord], region_of: Mapping[str, str]
) -> tuple[list[Coord], list[list[int]], list[int]]:
    """`cube_sets` over the cells numbered in their sorted order (so the parts of a set,
    appended in that order, are sorted): the cells, each set's parts and total (-1:
    none)."""
    keys = sorted(present)
    index = {c: i for i, c in enumerate(keys)}
    where = {
        (c[0], c[1], "DK" if c[2] == "national" else c[3], c[4]): i for i, c in enumerate(keys)
    }
    sets: dict[tuple[str, ...], list[int]] = defaultdict(list)
    run: tuple[str, str, str, str] | None = None  # the cells in a row of one place and period
    outer: tuple[str, str] | None = None
    types: list[int] | None = None  # that run's set of types
    for i, c in enumerate(keys):
        kind, period, grain, dim, kind_of = c
        if run is None or dim != run[3] or period != run[1] or grain != run[2] or kind != run[0]:
            if run is None or period != run[1] or kind != run[0]:
                outer = _outer(kind, period)
            run, types = (kind, period, grain, dim), None
        if grain != "national":
            up = region_of.get(dim, "DK") if grain == "municipality" else "DK"
            sets[("place", kind, period, up, kind_of)].append(i)
        if kind_of != ALL:
            if types is None:
                types = sets[("type", kind, period, "DK" if grain == "national" else dim)]
            types.append(i)
        if outer is not None:
            sets[("time", outer[0], outer[1], grain, dim, kind_of)].append(i)
    order = sorted(sets)
    totals: list[int] = []
    for key in order:
        if key[0] == "place":
            total = where.get((key[1], key[2], key[3], key[4]), -1)
        elif key[0] == "type":
            total = where.get((key[1], key[2], key[3], ALL), -1)
        else:
            total = index.get((key[1], key[2], key[3], key[4], key[5]), -1)
        totals.append(total)
    return keys, [sets[key] for key in order], totals


def present_or_none(present: set[Coord], coord: Coord) -> Coord | None:
    return coord if coord in present else None


def year_of(coord: Coord) -> str:
    """The year a cube cell belongs to: its period's start's (a week's is the year it starts
    in). No set of `cube_sets` holds cells of two years."""
    return coord[1][:4]


@_without_cycle_collection
def decide_cube(
    weights: Mapping[Coord, int], region_of: Mapping[str, str], threshold: int
) -> set[Coord]:
    """The suppressed cells of a cube: primary, then secondary over `cube_sets`, then
    audited (`settle`), each year's cells on their own. No equation holds cells of two
    years, so a year is decided alike in every cube that holds it (a run of years is
    decided as its years are, and a published year serves every run that holds it); decided
    together, a round of the audit that a fixed cell of one year starts would suppress
    more in the others."""
    years: dict[str, dict[Coord, int]] = defaultdict(dict)
    for coord, weight in weights.items():
        years[year_of(coord)][coord] = weight
    hidden: set[Coord] = set()
    for year in sorted(years):
        hidden |= _decide_year(years[year], region_of, threshold)
    return hidden


def _decide_year(
    weights: Mapping[Coord, int], region_of: Mapping[str, str], threshold: int
) -> set[Coord]:
    keys, parts, totals = _cube_sets(weights, region_of)
    problem = _Problem(keys, [weights[k] for k in keys], parts, totals, _cube_rank(keys))
    return _settle(problem, threshold)


def _cube_rank(keys: list[Coord]) -> list[int] | None:
    """The ranks of sorted cells by repr when the coordinates' own order is their repr's
    order: for tuples of strings of one length the reprs compare as their coordinates'
    reprs do, one after the other, so when every coordinate's values sort alike by value
    and by repr, the sorted position is the rank. None (ranks from the reprs) otherwise."""
    if not keys or any(type(k) is not tuple or len(k) != 5 for k in keys):
        return None
    for position in range(5):
        values = {k[position] for k in keys}
        if any(type(v) is not str for v in values):
            return None
        if sorted(values) != sorted(values, key=repr):
            return None
    return list(range(len(keys)))


@_without_cycle_collection
def settle(weights: Mapping[K, int], sets: Sequence[Set[K]], threshold: int) -> set[K]:
    """`suppress`, then an audit: where the sets cross (places × types × periods), the rule
    of two per set is not enough, as several equations together can fix one cell. The
    equations of the suppressed cells are row-reduced exactly (modulo a 61-bit prime: a
    cell fixed over the rationals is fixed there too); each fixed cell takes the
    smallest shown part of one of its sets with it (else a shown total of them, else a shown
    cell of any equation with an unknown), and the whole is decided again, until no
    suppressed cell is fixed."""
    return _settle(_Problem.of(weights, sets), threshold)


def _settle(problem: _Problem[K], threshold: int) -> set[K]:
    """`settle` over a numbered problem."""
    hidden = problem.primary(problem.weight, threshold)
    problem.suppress(problem.weight, threshold, hidden)
    audit = _Audit(problem)
    while True:
        fixed = audit.fixed(hidden)
        if not fixed or all(hidden):
            break
        for cell in sorted(fixed, key=problem.rank.__getitem__):  # one more for each, at once
            candidates = _candidates(problem, cell, hidden)
            if candidates:
                hidden[min(candidates, key=problem.key.__getitem__)] = 1
        # `suppress_more`: the cells suppressed so far weigh nothing, the others their weight
        extra = [0 if member else w for member, w in zip(hidden, problem.weight, strict=True)]
        more = problem.primary(extra, threshold)
        # (with a threshold above 0 the cells weighing nothing start suppressed, so the
        # shown ones are ordered by their own weights, as `smallest_first`)
        problem.suppress(extra, threshold, more, None if threshold > 0 else extra)
        hidden = bytearray(a | b for a, b in zip(more, hidden, strict=True))
    return {problem.keys[k] for k, member in enumerate(hidden) if member}


def _candidates(problem: _Problem[K], cell: int, hidden: bytearray) -> list[int]:
    """The shown cells one fixed cell may take with it, by preference: the parts of its sets,
    their totals, the cells of any equation with an unknown, any cell."""
    mine = problem.member_of[cell]
    parts, totals = problem.parts, problem.totals
    out = [k for g in mine for k in parts[g] if not hidden[k]]
    if out:
        return out
    out = [t for g in mine if (t := totals[g]) >= 0 and not hidden[t]]
    if out:
        return out
    out = [
        k
        for g in range(len(parts))
        if any(hidden[m] for m in problem.members(g))
        for k in problem.members(g)
        if not hidden[k]
    ]
    if out:
        return out
    return [k for k, member in enumerate(hidden) if not member]


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
    """The suppressed cells that the sets' equations (parts − total = shown cells) fix: those
    whose unit vector lies in the span of the equations' rows over GF(P) (`_Audit`)."""
    problem = _Problem.of(dict.fromkeys(hidden, 0), sets)  # its cells: the suppressed ones
    found = _Audit(problem).fixed(bytearray([1]) * len(problem.keys))
    return {problem.keys[k] for k in found}


class _Audit(Generic[K]):
    """The audit of one decision, round after round, over the equations of every set with a
    suppressed cell (rows over GF(P): a part's coefficient 1, the total's −1; the shown
    cells are constants).

    The first round brings them to echelon form (`_eliminate`) and keeps the row operations
    done. A later round only adds suppressed cells: their columns, in the rows of their sets,
    go through the same operations (so the rows are what eliminating everything anew would
    have made of them before the new columns are touched), the rows left empty then and the
    sets new to the audit are eliminated in turn over the new columns, and the pivots so far
    stay pivots.

    A cell is fixed exactly when its unit vector lies in the span of the rows. An unknown
    that is not a pivot is free, so not fixed. For the pivots, one solution of the
    homogeneous system with random free values (seeded) is computed by back-substitution
    (`_solution`): a pivot nonzero there is not fixed (that solution moves it while every
    equation holds); one that is zero is fixed exactly when its unit vector reduces to
    nothing by the pivot rows (`_in_span`), which is checked. So the answer is exact;
    chance only decides how many checks run."""

    def __init__(self, problem: _Problem[K]) -> None:
        self.problem = problem
        self.before: bytearray | None = None  # the suppressed cells of the last round
        self.rows: dict[int, dict[int, int]] = {}  # set → its row as reduced so far
        self.ops: list[tuple[int, int, int]] = []  # (o, n, f): row o −= f·row n; o = n: ×f
        self.pivots: list[tuple[int, int]] = []  # (unknown, set of its row), in order taken
        self.rng = random.Random(0x5EED)  # noqa: S311 - no secret: the answer is checked

    def _equation(self, g: int, new: bytearray) -> dict[int, int]:
        eq = {k: 1 for k in self.problem.parts[g] if new[k]}
        total = self.problem.totals[g]
        if total >= 0 and new[total]:
            eq[total] = _P - 1
        return eq

    def fixed(self, hidden: bytearray) -> list[int]:
        rows, before = self.rows, self.before
        new = (
            hidden
            if before is None
            else bytearray(a & ~b for a, b in zip(hidden, before, strict=True))
        )
        touched = {g for k, member in enumerate(new) if member for g in self.problem.member_of[k]}
        fresh: dict[int, dict[int, int]] = {}  # set → its row over the new columns
        for g in sorted(touched):
            eq = self._equation(g, new)
            if eq:
                fresh[g] = eq
        _replay(self.ops, fresh)
        pivoted = {g for _, g in self.pivots}
        left: dict[int, dict[int, int]] = {}  # rows with no pivot: over the new columns only
        for g, part in fresh.items():
            if g in pivoted:
                rows[g].update(part)
            elif part:
                left[g] = part
        taken = _eliminate(left, self.ops)
        rows.update(left)
        self.pivots.extend(taken)
        self.before = bytearray(hidden)
        echelon = [(col, rows[g]) for col, g in self.pivots]
        value = _solution(echelon, self.rng)
        position = {col: i for i, (col, _) in enumerate(echelon)}
        return [col for col, _ in echelon if value[col] == 0 and _in_span(col, position, echelon)]


def _replay(ops: list[tuple[int, int, int]], rows: dict[int, dict[int, int]]) -> None:
    """The row operations `ops`, in order, on `rows` (set → row; the rows not there are
    empty)."""
    for o, n, f in ops:
        source = rows.get(n)
        if not source:
            continue
        if o == n:
            rows[n] = {k: v * f % _P for k, v in source.items()}
            continue
        target = rows.get(o)
        if target is None:
            target = rows[o] = {}
        for k, v in source.items():
            after = (target.get(k, 0) - f * v) % _P
            if after:
                target[k] = after
            else:
                target.pop(k, None)


def _eliminate(
    rows: dict[int, dict[int, int]], ops: list[tuple[int, int, int]]
) -> list[tuple[int, int]]:
    """Row echelon form of `rows` (changed in place; the row operations appended to `ops`):
    the pivots in the order taken, each an unknown and its row, whose coefficient there is
    1 and which holds besides only unknowns pivoted later or free; the other rows end empty.
    The pivot each time an unknown held by the fewest rows left (kept in buckets by that
    number), in the shortest of them."""
    holders: dict[int, set[int]] = defaultdict(set)  # unknown → the rows left holding it
    for n, row in rows.items():
        for k in row:
            holders[k].add(n)
    bucket: dict[int, set[int]] = defaultdict(set)  # rows holding → the unknowns so held
    for k, h in holders.items():
        bucket[len(h)].add(k)
    lowest, top = 1, max(bucket, default=0)
    pivots: list[tuple[int, int]] = []
    while True:
        while lowest <= top and not bucket.get(lowest):
            lowest += 1
        if lowest > top:
            return pivots
        col = bucket[lowest].pop()
        h = holders.pop(col)
        n = next(iter(h)) if len(h) == 1 else min(h, key=lambda r: (len(rows[r]), r))
        row = rows[n]
        c = row[col]
        if c != 1:
            scale = _P - 1 if c == _P - 1 else pow(c, _P - 2, _P)
            row = rows[n] = {k: v * scale % _P for k, v in row.items()}
            ops.append((n, n, scale))
        h.discard(n)
        held: dict[int, int] = {}  # unknown → rows holding it before this step
        for k in row:
            if k != col:
                hk = holders[k]
                held.setdefault(k, len(hk))
                hk.discard(n)
        for other in h:
            target = rows[other]
            factor = target.pop(col)
            ops.append((other, n, factor))
            for k, v in row.items():
                if k == col:
                    continue
                before = target.get(k)
                if before is None:
                    target[k] = -factor * v % _P
                    hk = holders[k]
                    held.setdefault(k, len(hk))
                    hk.add(other)
                else:
                    after = (before - factor * v) % _P
                    if after:
                        target[k] = after
                    else:
                        del target[k]
                        hk = holders[k]
                        held.setdefault(k, len(hk))
                        hk.discard(other)
        for k, was in held.items():
            now = len(holders[k])
            if now != was:
                bucket[was].discard(k)
                if now:
                    bucket[now].add(k)
                    lowest = min(lowest, now)
                    top = max(top, now)
        pivots.append((col, n))


def _solution(pivots: list[tuple[int, dict[int, int]]], rng: random.Random) -> dict[int, int]:
    """A solution of the homogeneous system in echelon form `pivots` (`_eliminate`): the
    free unknowns random (1 … 2**60), each pivot from the later ones (back-substitution)."""
    value: dict[int, int] = {}
    for col, row in reversed(pivots):
        total = 0
        for k, v in row.items():
            if k != col:
                x = value.get(k)
                if x is None:
                    x = value[k] = rng.getrandbits(60) + 1
                total += v * x
        value[col] = -total % _P
    return value


def _in_span(col: int, position: dict[int, int], pivots: list[tuple[int, dict[int, int]]]) -> bool:
    """Whether the unit vector of `col` reduces to nothing by the pivot rows (each taken in
    the order of elimination: a row holds only its own pivot, later pivots and free
    unknowns)."""
    vector = {col: 1}
    heap = [position[col]]
    while heap:
        pivot, row = pivots[heapq.heappop(heap)]
        factor = vector.get(pivot, 0)
        if not factor:
            continue
        for k, v in row.items():
            before = vector.get(k, 0)
            after = (before - factor * v) % _P
            if after:
                vector[k] = after
                if not before and k in position:
                    heapq.heappush(heap, position[k])
            else:
                vector.pop(k, None)
    return not vector


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


@functools.lru_cache(maxsize=4096)  # a few hundred periods per read, tens of thousands of rows
def stored_periods(kind: str, start: dt.date) -> tuple[tuple[str, str], ...]:
    """The cube's (period kind, period start) cells a stored rollup cell (a week or a month)
    adds into: a week itself; a month itself, its quarter and its year. (Cached: a tuple.)"""
    if kind == "week":
        return (("week", start.isoformat()),)
    return tuple(months_up("month", start))
