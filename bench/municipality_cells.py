"""How many municipality cells the ministry can show at national volume, per period kind,
with primary suppression only and with the secondary suppression (tracker/disclosure.py).

Pure: the simulator's plan (devtools/simulate.py: its default profile, a year of requests at
`--rate` a day nationally, job centres picked uniformly) counted into the same cube the
reports decide (tracker/coverage.py `publish`), for two figures: the requests (distinct
citizens asked about) and contact coverage's denominator (citizens with a psychiatric course,
with as many again registered without any request, as the simulator registers them; counted
in the month their 8-week window ends). No gateway, no database.

    python -m bench.municipality_cells [--rate 60] [--seed 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from dataclasses import replace

from attest_gateway.devtools.simulate import Profile, plan, simulation_orgs, synthetic_cpr
from attest_gateway.tracker import disclosure
from attest_gateway.tracker.coverage import Item, publish
from attest_gateway.tracker.report import Filters, region_of_municipalities
from attest_gateway.tracker.rules import TrackerRules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=60.0, help="requests a day, nationally")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    profile = replace(Profile(), requests_per_day=args.rate)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cases = plan(profile, simulation_orgs(), start=start, end=start.replace(year=2027), rng=rng)
    requests = [
        Item(None, c.request_at.date(), c.jobcenter.region_code, str(c.jobcenter.kommunekode),
             None, c.cpr)
        for c in cases
    ]  # fmt: skip
    citizens = {(c.jobcenter.id, c.cpr): c for c in cases if c.psychiatric}
    psychiatric = []
    for c in citizens.values():
        for cpr in (c.cpr, synthetic_cpr(rng)):  # and one registered without a request
            window_end = c.first_day + dt.timedelta(weeks=8)
            if window_end.year == 2026:
                psychiatric.append(
                    Item(None, window_end, c.jobcenter.region_code,
                         str(c.jobcenter.kommunekode), None, cpr)
                )  # fmt: skip
    print(f"{len(cases):,} requests a year ({args.rate:g} a day), "
          f"{len(psychiatric):,} psychiatric cases with a window ending in the year")  # fmt: skip
    print("| figure | period | municipality cells | shown, primary only | shown, with secondary |")
    print("|---|---|---:|---:|---:|")
    for name, items in (("requests", requests), ("psychiatric cases", psychiatric)):
        for kind in ("month", "quarter", "year"):
            f = Filters(kind, dt.date(2026, 1, 1), dt.date(2026, 12, 31))
            rows = publish(items, f, "municipality", TrackerRules.build(), series=True)
            primary = sum(1 for r in rows if r.citizens >= 5)
            shown = sum(1 for r in rows if r.shown)
            print(f"| {name} | {kind} | {len(rows)} | {primary} ({primary / len(rows):.0%}) "
                  f"| {shown} ({shown / len(rows):.0%}) |")  # fmt: skip

    # The time one decision takes over the rollups' cube of the year: months, quarters and
    # the year; country, regions, municipalities; every attest type and all types.
    per_cell: dict[disclosure.Coord, set[str]] = {}
    for c in cases:
        for kind, start_day in disclosure.months_up("month", c.request_at.date()):
            for grain, place in (("national", "DK"), ("region", c.jobcenter.region_code),
                                 ("municipality", str(c.jobcenter.kommunekode))):  # fmt: skip
                for t in (disclosure.ALL, c.attest_type):
                    per_cell.setdefault((kind, start_day, grain, place, t), set()).add(c.cpr)
    weights = {k: len(v) for k, v in per_cell.items()}
    began = time.perf_counter()
    hidden = disclosure.decide_cube(weights, region_of_municipalities(), 5)
    took = time.perf_counter() - began
    print(f"\nthe year's cube by attest type: {len(weights):,} cells, {len(hidden):,} "
          f"suppressed, decided in {took:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
