"""Where the gateway's CPU goes under load: py-spy attached to the real gateway process.

    .venv/bin/python -m bench.profile                      # SQLite, 20 s of closed-loop load
    .venv/bin/python -m bench.profile --db postgres --seconds 30
    .venv/bin/python -m bench.profile --load roundtrip     # whole conversations
    .venv/bin/python -m bench.profile --load roundtrip --sql --concurrency 1

Starts its own embedded broker and a gateway exactly as `bench/gateway_ingest.py` does, drives
it with the load generator (its own process, closed loop) or, with `--load roundtrip`, with
bench/roundtrip.py's clients (whole conversations: mailbox, acknowledgement, reply, inbox;
`--concurrency` conversations in flight), samples the gateway with `py-spy record` (all
threads, including aiosqlite's worker threads and idle time excluded), and prints the
functions with the largest share of samples: inclusive (the function or anything it calls)
and self (the function's own code). The raw collapsed stacks are kept in the work directory
for a flame graph (e.g. speedscope). It also prints the CPU seconds of the gateway's main
thread and of its other threads during the load. `--sql` counts the statements the gateway
sent, by statement and by the gateway functions that sent it (bench/sqltrace). Not a test,
not part of `make bench`.

py-spy cannot follow SQLAlchemy's greenlets: time spent executing a statement shows without
the gateway function that awaited it. `--sql` gives that attribution for the statements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from attest_gateway.gateway.broker import EmbeddedBroker
from bench import roundtrip
from bench.common import SEED, BenchContext, console
from bench.gateway_ingest import (
    ATTEST_PATH,
    CONCURRENCY,
    JOBCENTER,
    RECEIVER,
    RunningGateway,
    gateway,
)
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


def sql_census(path: Path, top: int) -> str:
    """The statements the gateway sent, most frequent first (bench/sqltrace)."""
    rows = json.loads(path.read_text())
    total = sum(r["count"] for r in rows) or 1
    lines = [f"{total} SQL statements, {len(rows)} distinct; most frequent:"]
    for r in rows[:top]:
        share = 100 * r["count"] / total
        lines.append(f"  {r['count']:7d} {share:5.1f} % {r['wall_s']:7.2f} s  {r['statement']}")
    return "\n".join(lines)


def thread_cpu(pid: int) -> dict[int, float]:
    """user + system CPU seconds of each thread of the process, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def prepare(workdir_arg: str) -> tuple[Path, Path | None]:
    py_spy = Path(sys.executable).parent / "py-spy"
    workdir = Path(workdir_arg).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir, py_spy if py_spy.exists() else None


async def drive(gw: RunningGateway, args: argparse.Namespace, workdir: Path) -> str:
    """Load the gateway for `args.seconds`; what was sent, for the summary."""
    if args.load == "roundtrip":
        roundtrip.CONCURRENCY = args.concurrency or roundtrip.CONCURRENCY
        creds = json.loads((gw.var_dir / "demo-credentials.json").read_text())
        run = await roundtrip.one_run(gw, creds, roundtrip.Requests(SEED), args.seconds)
        for segment, stats in run.extra["segments_ms"].items():
            console.print(f"  {segment}: " + ", ".join(f"{k} {v:,.0f}" for k, v in stats.items()))
        return f"{len(run.completed())} round trips"
    extra = [
        "--body", "gateway", "--jobcenter-gln", JOBCENTER.gln or "",
        "--municipality", JOBCENTER.kommunekode or "", "--receiver-sor",
        RECEIVER.sor or "", "--api-key", gw.api_key,
    ]  # fmt: skip
    load = await run_loadgen(
        workdir / "load.json", url=gw.base_url + ATTEST_PATH, mode="closed",
        duration=args.seconds, concurrency=CONCURRENCY, extra=extra,
    )  # fmt: skip
    return f"{len(load.records)} requests"


async def main(args: argparse.Namespace) -> int:
    workdir, py_spy = prepare(args.workdir)
    if py_spy is None:
        console.print("py-spy is not installed (it is a dev dependency: make install)")
        return 2
    if args.sql:  # bench/sqltrace/sitecustomize.py, loaded by the gateway process only
        os.environ["BENCH_SQL_TRACE"] = str(workdir / "sql.json")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parent / "sqltrace"), os.environ.get("PYTHONPATH", "")]
        )
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
            cpu0 = thread_cpu(gw.proc.pid)
            sent = await drive(gw, args, workdir)
            cpu = {tid: t - cpu0.get(tid, 0.0) for tid, t in thread_cpu(gw.proc.pid).items()}
            main_s = cpu.pop(gw.proc.pid, 0.0)
            console.print(
                f"gateway CPU during the load: main thread {main_s:.1f} s, other threads "
                f"{sum(cpu.values()):.1f} s ({len(cpu)} threads; aiosqlite's, the executor's)"
            )
            _, err = await spy.communicate()
            if spy.returncode != 0:
                console.print(f"py-spy failed: {err.decode()[-500:]}")
                return 1
        console.print(f"{sent} sent; profile in {collapsed}")
        print(summarise(collapsed, args.top))
        if args.sql:
            print(sql_census(workdir / "sql.json", args.top))
    finally:
        broker.stop()
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--load", choices=["ingest", "roundtrip"], default="ingest")
    p.add_argument("--sql", action="store_true", help="also count the gateway's statements")
    p.add_argument("--concurrency", type=int, default=0, help="roundtrip: conversations in flight")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--workdir", default="var/bench-profile")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
