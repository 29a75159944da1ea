"""Where the gateway's CPU goes under load: py-spy attached to the real gateway process.

    .venv/bin/python -m bench.profile                      # SQLite, 20 s of closed-loop load
    .venv/bin/python -m bench.profile --db postgres --seconds 30

Starts its own embedded broker and a gateway exactly as `bench/gateway_ingest.py` does, drives
it with the load generator (its own process, closed loop), samples the gateway with
`py-spy record` (all threads, including aiosqlite's worker threads and idle time excluded),
and prints the functions with the largest share of samples: inclusive (the function or
anything it calls) and self (the function's own code). The raw collapsed stacks are kept in
the work directory for a flame graph (e.g. speedscope). Not a test, not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path

from attest_gateway.gateway.broker import EmbeddedBroker
from bench.common import BenchContext, console
from bench.gateway_ingest import ATTEST_PATH, CONCURRENCY, JOBCENTER, RECEIVER, gateway
from bench.loadgen import run_loadgen

OWN_CODE = ("attest_gateway", "bench")


def summarise(collapsed: Path, top: int) -> str:
    """Inclusive and self shares of the samples, from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "inclusive (the function and what it calls):"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "self (the function's own code):"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def prepare(workdir_arg: str) -> tuple[Path, Path | None]:
    py_spy = Path(sys.executable).parent / "py-spy"
    workdir = Path(workdir_arg).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir, py_spy if py_spy.exists() else None


async def main(args: argparse.Namespace) -> int:
    workdir, py_spy = prepare(args.workdir)
    if py_spy is None:
        console.print("py-spy is not installed (it is a dev dependency: make install)")
        return 2
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    try:
        ctx = BenchContext(bootstrap=broker.bootstrap, workdir=workdir)
        async with gateway(ctx, args.db, "profile") as gw:
            collapsed = workdir / f"gateway-{args.db}.collapsed.txt"
            spy = await asyncio.create_subprocess_exec(
                str(py_spy), "record", "--pid", str(gw.proc.pid), "--duration",
                str(max(1, round(args.seconds))), "--rate", "200", "--threads", "--format", "raw",
                "--output", str(collapsed), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            extra = [
                "--body", "gateway", "--jobcenter-gln", JOBCENTER.gln or "",
                "--municipality", JOBCENTER.kommunekode or "", "--receiver-sor",
                RECEIVER.sor or "", "--api-key", gw.api_key,
            ]  # fmt: skip
            load = await run_loadgen(
                workdir / "load.json", url=gw.base_url + ATTEST_PATH, mode="closed",
                duration=args.seconds, concurrency=CONCURRENCY, extra=extra,
            )  # fmt: skip
            _, err = await spy.communicate()
            if spy.returncode != 0:
                console.print(f"py-spy failed: {err.decode()[-500:]}")
                return 1
        console.print(f"{len(load.records)} requests sent; profile in {collapsed}")
        print(summarise(collapsed, args.top))
    finally:
        broker.stop()
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--workdir", default="var/bench-profile")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
