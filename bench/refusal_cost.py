"""What one refused request costs the gateway: ``python -m bench.refusal_cost``.

A `serve` process (SQLite, embedded broker, demo organisations; bench/abuse.py's) with
`RATE_LIMIT_REFUSAL_DELAY_SECONDS=0`; organisation A's mailbox holds attest requests, and A
reads it with `?limit=500` until its read rate is spent. Then for ``--seconds``: the gateway's
CPU (user + system, /proc) while idle, and while ``--connections`` clients send A's read again
as soon as they are answered (all but a few refused, 429). Printed: CPU ms per request, with
the idle process's own CPU (its consumers and pollers) taken off, per run.

With ``--before SRC`` (the ``src`` of another checkout) the runs alternate between that code
and this, so that the machine's other load falls on both alike.

    python -m bench.refusal_cost --before ../wt-main/src --runs 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.abuse import ABUSER, gateway
from bench.common import cpu_seconds

URL = "/medcom/v1/mailbox?limit=500"


async def one_run(src: str | None, seconds: float, connections: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="refusal-") as tmp:
        settings = {"RATE_LIMIT_REFUSAL_DELAY_SECONDS": "0"}
        async with gateway(Path(tmp), settings, src) as (base, creds, pid):
            headers = {"Authorization": f"Bearer {creds[ABUSER]['api_key']}"}
            limits = httpx.Limits(max_connections=connections)
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
                while (await client.get(URL, headers=headers)).status_code != 429:
                    pass  # the read rate spent: what follows is refused
                idle0 = cpu_seconds(pid)
                await asyncio.sleep(seconds)
                idle = (cpu_seconds(pid) - idle0) / seconds
                statuses: dict[int, int] = {}

                async def worker(end: float) -> None:
                    while time.monotonic() < end:
                        status = (await client.get(URL, headers=headers)).status_code
                        statuses[status] = statuses.get(status, 0) + 1

                busy0, t0 = cpu_seconds(pid), time.monotonic()
                await asyncio.gather(*(worker(t0 + seconds) for _ in range(connections)))
                elapsed = time.monotonic() - t0
                busy = cpu_seconds(pid) - busy0 - idle * elapsed
                n = sum(statuses.values())
                return {
                    "requests": n,
                    "refused": statuses.get(429, 0),
                    "per_second": round(n / elapsed),
                    "idle_cpu_ms_per_s": round(idle * 1000, 1),
                    "cpu_ms_per_request": round(busy / n * 1000, 3),
                }


async def main(args: argparse.Namespace) -> None:
    codes = {"before": args.before, "after": None} if args.before else {"this": None}
    found: dict[str, list[float]] = {code: [] for code in codes}
    for run in range(args.runs):
        for code, src in codes.items():
            result = await one_run(src, args.seconds, args.connections)
            found[code].append(result["cpu_ms_per_request"])
            print(f"run {run} {code:>6}: {result}", flush=True)
    for code, values in found.items():
        print(
            f"{code:>6}: CPU ms per request median {statistics.median(values):.3f} "
            f"({min(values):.3f}–{max(values):.3f})"
        )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="idle, then refused, each run")
    p.add_argument("--connections", type=int, default=4, help="clients sending at once")
    p.add_argument("--before", default="", help="the src directory of other code (e.g. main's)")
    args = p.parse_args()
    args.before = os.path.abspath(args.before) if args.before else ""
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
