"""The disclosure decision alone (tracker/disclosure.py `decide_cube`), over cubes of the
shapes the ministry's reports decide, with seeded synthetic weights. No database.

    python -m bench.disclosure [--runs 3] [--only latency-low,receiver] [--profile receiver]

The cubes (months, quarters and years; a quarter's and a year's weight is its largest
month's, the lower bound the rollup reports use):

- `latency-low`, `latency-high`: latency by attest type over two years (tracker/latency.py):
  the country, 5 regions and 98 municipalities (the real region map) × 21 attest types and
  all types, a year of 300,000 (low) or 1,250,000 (high) requests; municipalities of
  log-normal sizes, types of geometric shares (many rare), monthly counts Poisson around a
  season.
- `receiver`: the receiver drill-down (`/ministry/v1/durations?by=receiver`): the country and
  1,990 receiving units (1,960 general practices, 20 per municipality, that receive 10 of 14
  types; 30 psychiatry units, 6 per region, that receive the other 4 and one shared type) ×
  their types and all types, two years of 500,000 requests a year: most cells small.
- `municipality-30`, `municipality-60`: the cube `python -m bench.municipality_cells` times
  (the simulator's plan of a year at 30 or 60 requests a day, distinct citizens per cell).

Each cube is decided by the implementation in tracker/disclosure.py ("new") and by the
reference copy of the earlier one in tests/support/disclosure_reference.py ("reference"),
interleaved (reference, new, reference, new …), and the two answers are compared. A
reference run is cut off after `--reference-limit` seconds (and not run again). `--profile
CUBE` prints a cProfile of one new decision of that cube (by cumulative and own time).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import math
import os
import pstats
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

from tests.support import disclosure_reference as reference

from attest_gateway.devtools.simulate import Profile, plan, simulation_orgs
from attest_gateway.tracker import disclosure
from attest_gateway.tracker.report import region_of_municipalities

Coord = disclosure.Coord
Weights = dict[Coord, int]
THRESHOLD = 5


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 40:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _months(years: int) -> list[dt.date]:
    return [dt.date(2025 + y, m, 1) for y in range(years) for m in range(1, 13)]


def _season(month: dt.date) -> float:
    return 1.0 + 0.25 * math.cos(2 * math.pi * (month.month - 2) / 12)


def _rolled_up(stored: dict[tuple[dt.date, str, str, str], int]) -> Weights:
    """Stored month cells (month, grain, place, type) → the cube: each month itself, its
    quarter and its year, a coarser cell weighing its largest month (as the rollups do)."""
    out: Weights = {}
    for (month, grain, dim, kind), w in stored.items():
        for period_kind, start in disclosure.months_up("month", month):
            c = (period_kind, start, grain, dim, kind)
            if out.get(c, 0) < w:
                out[c] = w
    return out


def _shares(rng: random.Random, n: int, sigma: float) -> list[float]:
    sizes = [rng.lognormvariate(0, sigma) for _ in range(n)]
    total = sum(sizes)
    return [s / total for s in sizes]


def latency_cube(per_year: int, seed: int, types: int = 21) -> Weights:
    """Latency by attest type over two years (see the module's docstring)."""
    rng = random.Random(seed)
    region_of = region_of_municipalities()
    munis = sorted(region_of)
    size = dict(zip(munis, _shares(rng, len(munis), 0.9), strict=True))
    raw = [0.8**i for i in range(types)]
    type_share = {f"LÆ {100 + 5 * i}": s / sum(raw) for i, s in enumerate(raw)}
    stored: dict[tuple[dt.date, str, str, str], int] = {}

    def add(month: dt.date, grain: str, dim: str, kind: str, n: int) -> None:
        key = (month, grain, dim, kind)
        stored[key] = stored.get(key, 0) + n

    for month in _months(2):
        for m in munis:
            for kind, share in type_share.items():
                n = _poisson(rng, per_year / 12 * size[m] * share * _season(month))
                if n == 0:
                    continue
                for grain, dim in (("municipality", m), ("region", region_of[m]),
                                   ("national", "DK")):  # fmt: skip
                    add(month, grain, dim, kind, n)
                    add(month, grain, dim, disclosure.ALL, n)
    return _rolled_up(stored)


def receiver_cube(per_year: int, seed: int) -> Weights:
    """The receiver drill-down over two years (see the module's docstring)."""
    rng = random.Random(seed)
    region_of = region_of_municipalities()
    munis = sorted(region_of)
    regions = sorted(set(region_of.values()))
    types = [f"LÆ {100 + 5 * i}" for i in range(14)]
    gp_types, psy_types, shared = types[:10], types[10:], types[0]
    gp_raw = [0.75**i for i in range(len(gp_types))]
    psy_raw = [0.7**i for i in range(len(psy_types))]
    units: list[tuple[str, float, dict[str, float]]] = []  # unit, share, its types' shares
    muni_share = dict(zip(munis, _shares(rng, len(munis), 0.9), strict=True))
    for m in munis:
        for i, s in enumerate(_shares(rng, 20, 0.6)):
            kinds = {k: 0.85 * w / sum(gp_raw) for k, w in zip(gp_types, gp_raw, strict=True)}
            units.append((f"gp-{m}-{i}", muni_share[m] * s, kinds))
    for region in regions:
        region_share = sum(muni_share[m] for m in munis if region_of[m] == region)
        for i, s in enumerate(_shares(rng, 6, 0.4)):
            kinds = {k: 0.15 * w / sum(psy_raw) for k, w in zip(psy_types, psy_raw, strict=True)}
            kinds[shared] = 0.02
            units.append((f"psy-{region}-{i}", region_share * s, kinds))
    stored: dict[tuple[dt.date, str, str, str], int] = {}

    def add(month: dt.date, grain: str, dim: str, kind: str, n: int) -> None:
        key = (month, grain, dim, kind)
        stored[key] = stored.get(key, 0) + n

    gp_total = sum(s for u, s, _ in units if u.startswith("gp-"))
    psy_total = sum(s for u, s, _ in units if u.startswith("psy-"))
    for month in _months(2):
        for unit, share, kinds in units:
            scale = gp_total if unit.startswith("gp-") else psy_total
            for kind, kind_share in kinds.items():
                mean = per_year / 12 * share / scale * kind_share * _season(month)
                n = _poisson(rng, mean)
                if n == 0:
                    continue
                for grain, dim in (("receiver", unit), ("national", "DK")):
                    add(month, grain, dim, kind, n)
                    add(month, grain, dim, disclosure.ALL, n)
    return _rolled_up(stored)


def municipality_cube(rate: float, seed: int) -> Weights:
    """The cube `python -m bench.municipality_cells --rate RATE --seed SEED` decides."""
    rng = random.Random(seed)
    profile = replace(Profile(), requests_per_day=rate)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cases = plan(profile, simulation_orgs(), start=start, end=start.replace(year=2027), rng=rng)
    per_cell: dict[Coord, set[str]] = {}
    for c in cases:
        for kind, start_day in disclosure.months_up("month", c.request_at.date()):
            for grain, place in (("national", "DK"), ("region", c.jobcenter.region_code),
                                 ("municipality", str(c.jobcenter.kommunekode))):  # fmt: skip
                for t in (disclosure.ALL, c.attest_type):
                    per_cell.setdefault((kind, start_day, grain, place, t), set()).add(c.cpr)
    return {k: len(v) for k, v in per_cell.items()}


CUBES: dict[str, Callable[[int], Weights]] = {
    "latency-low": lambda seed: latency_cube(300_000, seed),
    "latency-high": lambda seed: latency_cube(1_250_000, seed),
    "receiver": lambda seed: receiver_cube(500_000, seed),
    "municipality-30": lambda seed: municipality_cube(30.0, seed),
    "municipality-60": lambda seed: municipality_cube(60.0, seed),
}

Decide = Callable[[Weights, dict[str, str], int], set[Coord]]


class _Late(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Late


def timed(decide: Decide, weights: Weights, limit: float | None) -> tuple[float | None, set[Coord]]:
    """Seconds one decision takes (None when cut off after `limit` seconds) and its answer."""
    region_of = region_of_municipalities()
    if limit is not None:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    began = time.perf_counter()
    try:
        hidden = decide(weights, region_of, THRESHOLD)
    except _Late:
        return None, set()
    finally:
        if limit is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return time.perf_counter() - began, hidden


def _summary(times: list[float | None], limit: float) -> str:
    done = [t for t in times if t is not None]
    if not done:
        return f"> {limit:g}"
    text = f"{statistics.median(done):.2f} ({min(done):.2f}–{max(done):.2f})"
    return text if len(done) == len(times) else f"{text}, {len(times) - len(done)} cut off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs per cube")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default=",".join(CUBES), help="cubes, comma-separated")
    parser.add_argument("--reference-limit", type=float, default=300.0)
    parser.add_argument("--no-reference", action="store_true", help="time the new code only")
    parser.add_argument("--profile", default=None, help="cProfile one new decision of a cube")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)  # fmt: skip
    if args.profile:
        weights = CUBES[args.profile](args.seed)
        profiler = cProfile.Profile()
        profiler.enable()
        disclosure.decide_cube(weights, region_of_municipalities(), THRESHOLD)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(15)
        stats.sort_stats("tottime").print_stats(15)
        return
    print("| cube | cells | suppressed | reference, s | new, s | same cells |")
    print("|---|---:|---:|---:|---:|---|")
    for name in names:
        weights = CUBES[name](args.seed)
        before: list[float | None] = []
        after: list[float | None] = []
        same: set[bool] = set()
        hidden: set[Coord] = set()
        cut_off = False
        for _ in range(args.runs):
            if not args.no_reference and not cut_off:
                took, expected = timed(reference.decide_cube, weights, args.reference_limit)
                before.append(took)
                cut_off = took is None  # once cut off, not run again
            took, hidden = timed(disclosure.decide_cube, weights, None)
            after.append(took)
            if before and before[-1] is not None:
                same.add(hidden == expected)
        verdict = "not compared" if not same else ("yes" if same == {True} else "**no**")
        ref = "not run" if args.no_reference else _summary(before, args.reference_limit)
        print(f"| {name} | {len(weights):,} | {len(hidden):,} | {ref} "
              f"| {_summary(after, 0)} | {verdict} |", flush=True)  # fmt: skip
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
