"""Where the gateway's CPU goes under load: py-spy attached to the real gateway process.

    .venv/bin/python -m bench.profile                      # SQLite, 20 s of closed-loop load
    .venv/bin/python -m bench.profile --db postgres --seconds 30
    .venv/bin/python -m bench.profile --load roundtrip     # whole conversations
    .venv/bin/python -m bench.profile --load roundtrip --sql --concurrency 1
    .venv/bin/python -m bench.profile --load roundtrip --concurrency 1 --wait 20  # long-poll
    .venv/bin/python -m bench.profile --db postgres --split  # API and worker processes
    .venv/bin/python -m bench.profile --db postgres --perf   # and the server, with perf

Starts its own embedded broker and a gateway exactly as `bench/gateway_ingest.py` does, drives
it with the load generator (its own process, closed loop) or, with `--load roundtrip`, with
bench/roundtrip.py's clients (whole conversations: mailbox, acknowledgement, reply, inbox;
`--concurrency` conversations in flight), samples the gateway with `py-spy record` (all
threads, including aiosqlite's worker threads and idle time excluded), and prints the
functions with the largest share of samples: inclusive (the function or anything it calls)
and self (the function's own code). The raw collapsed stacks are kept in the work directory
for a flame graph (e.g. speedscope). `--split` runs the gateway as two processes (`serve
--role api` and `serve --role worker`, as `bench/gateway_ingest.py` does) and profiles each.
It also prints the CPU seconds of each process's main thread and of its other threads during
the load. `--sql` counts the statements the gateway sent, by statement and by the gateway
functions that sent it (bench/sqltrace). `--perf` also samples the whole machine with `perf
record -e cpu-clock -a` during the load (Debian's linux-perf; needs root or a permissive
perf_event_paranoid) and prints the samples by command and the database server's and the
broker's (`tokio-rt-worker`) top native functions. Not a test, not part of `make bench`.

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

from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from bench import roundtrip
from bench.common import SEED, BenchContext, console
from bench.gateway_ingest import (
    API_AND_WORKER,
    ATTEST_PATH,
    CONCURRENCY,
    JOBCENTER,
    ONE_PROCESS,
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


def sql_census(paths: list[Path], top: int) -> str:
    """The statements the gateway sent, most frequent first (bench/sqltrace)."""
    rows = sorted(
        (row for path in paths for row in json.loads(path.read_text())),
        key=lambda r: -int(r["count"]),
    )
    total = sum(r["count"] for r in rows) or 1
    lines = [
        f"{total} SQL statements, {len(rows)} distinct; most frequent (count, share, wall time "
        "from send to result, distinct texts: each is prepared anew on PostgreSQL):"
    ]
    for r in rows[:top]:
        count, wall, texts = r["count"], r["wall_s"], r["texts"]
        share = 100 * count / total
        lines.append(f"  {count:7d} {share:5.1f} % {wall:7.2f} s {texts:5d}  {r['statement']}")
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
        creds = json.loads((gw.var_dir / "demo-credentials.json").read_text())
        run = await roundtrip.one_run(
            gw,
            creds,
            roundtrip.Requests(SEED),
            args.seconds,
            concurrency=args.concurrency or roundtrip.CONCURRENCY,
            wait_s=args.wait,
        )
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
    if args.perf and shutil.which("perf") is None:
        console.print("perf is not installed (Debian's linux-perf)")
        return 2
    if args.sql:  # bench/sqltrace/sitecustomize.py, loaded by the gateway process only
        os.environ["BENCH_SQL_TRACE"] = str(workdir / "sql-{pid}.json")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parent / "sqltrace"), os.environ.get("PYTHONPATH", "")]
        )
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    roles = API_AND_WORKER if args.split else ONE_PROCESS
    try:
        ctx = BenchContext(bootstrap=broker.bootstrap, workdir=workdir)
        async with gateway(ctx, args.db, "profile", roles) as gw:
            spies = {
                p.role: await _spy(
                    py_spy, p.proc.pid, workdir / f"{args.db}-{p.role}.txt", args.seconds
                )
                for p in gw.processes
            }
            cpu0 = {p.role: thread_cpu(p.proc.pid) for p in gw.processes}
            machine = await _perf(workdir / "perf.data", args.seconds) if args.perf else None
            sent = await drive(gw, args, workdir)
            if machine is not None:
                await machine.wait()
            for p in gw.processes:
                cpu = {
                    tid: t - cpu0[p.role].get(tid, 0.0) for tid, t in thread_cpu(p.proc.pid).items()
                }
                main_s = cpu.pop(p.proc.pid, 0.0)
                console.print(
                    f"{p.role} process CPU during the load: main thread {main_s:.1f} s, other "
                    f"threads {sum(cpu.values()):.1f} s ({len(cpu)} threads; aiosqlite's, the "
                    "executor's)"
                )
            for role, (spy, _) in spies.items():
                _, err = await spy.communicate()
                if spy.returncode != 0:
                    console.print(f"py-spy failed on the {role} process: {err.decode()[-500:]}")
                    return 1
        console.print(f"{sent} sent; profiles in {workdir}")
        for role, (_, collapsed) in spies.items():
            print(f"\n== {role} process ({collapsed.name})")
            print(summarise(collapsed, args.top))
        if args.sql:
            print(sql_census(sorted(workdir.glob("sql-*.json")), args.top))
        if machine is not None:
            print(await perf_summary(workdir / "perf.data", args.top))
    finally:
        broker.stop()
    return 0


async def _perf(data: Path, seconds: float) -> asyncio.subprocess.Process:
    """`perf record` of the whole machine (every process: the gateway's, PostgreSQL's, the
    broker's) for the load's duration. The software clock event: it works where the machine
    has no hardware counters (perf stat shows them "not supported" here)."""
    return await asyncio.create_subprocess_exec(
        "perf", "record", "-e", "cpu-clock", "-F", "499", "-a", "-g", "-o", str(data),
        "--", "sleep", str(max(1, round(seconds))),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def perf_summary(data: Path, top: int) -> str:
    """The machine's samples by command, then the top native functions of the database
    server and the broker (what py-spy cannot see)."""

    async def report(*options: str) -> list[str]:
        proc = await asyncio.create_subprocess_exec(
            "perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
            *options, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        lines = [line for line in out.decode().splitlines() if line and not line.startswith("#")]
        return lines[:top]

    parts = ["", f"== perf, the whole machine ({data.name}): samples by command"]
    parts += await report("--sort", "comm")
    for command in ("postgres", "tokio-rt-worker"):
        parts += ["", f"== perf: {command} by function (share of all samples)"]
        parts += await report("--comm", command, "--sort", "dso,sym")
    return "\n".join(parts)


async def _spy(
    py_spy: Path, pid: int, collapsed: Path, seconds: float
) -> tuple[asyncio.subprocess.Process, Path]:
    spy = await asyncio.create_subprocess_exec(
        str(py_spy), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", "200", "--threads", "--format", "raw", "--output", str(collapsed),
        "--nonblocking", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return spy, collapsed


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--load", choices=["ingest", "roundtrip"], default="ingest")
    p.add_argument("--sql", action="store_true", help="also count the gateway's statements")
    p.add_argument(
        "--split", action="store_true", help="API and worker as two processes, each profiled"
    )
    p.add_argument("--concurrency", type=int, default=0, help="roundtrip: conversations in flight")
    p.add_argument("--wait", type=int, default=0, help="roundtrip: the clients long-poll (?wait=)")
    p.add_argument(
        "--perf",
        action="store_true",
        help="also sample the whole machine with perf (PostgreSQL's and the broker's functions)",
    )
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--workdir", default="var/bench-profile")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
