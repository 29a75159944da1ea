"""Shared pieces of the benchmarks: figures, repeated runs, process memory, results files.

Every benchmark module exposes ``async def run(ctx: BenchContext) -> list[Figure]`` and is
driven by ``bench/run.py`` (``make bench``). A figure is the median over ``ctx.runs`` runs
(after ``ctx.warmup`` unrecorded ones) with its spread (min, max), and, for gateway figures,
the name of the baseline figure it is compared with.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)

SEED = 20261122


@dataclass
class Figure:
    """One measured quantity: median of the runs, with the spread."""

    name: str  # stable key, e.g. "transport.passthrough"
    label: str  # what a reader sees
    unit: str  # "records/s", "ms", "MiB", ...
    runs: list[float]
    baseline: str | None = None  # the `name` of the figure this one is a ratio to
    higher_is_better: bool = True
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.runs), max(self.runs)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"median": self.median, "min": self.spread[0], "max": self.spread[1]}


@dataclass
class BenchContext:
    bootstrap: str  # the broker every benchmark of the run shares
    runs: int = 3
    warmup: int = 1
    quick: bool = False  # smaller sizes: for smoke-testing the benchmarks themselves
    postgres_dsn: str = os.environ.get(
        "BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
    )
    workdir: Path = Path("var/bench")
    broker_pid: int | None = None  # the shared embedded broker's process, for the CPU census

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


async def repeat(
    ctx: BenchContext, label: str, once: Callable[[int], Awaitable[float]]
) -> list[float]:
    """Run `once(i)` warm-up + recorded times; return the recorded values. Prints each."""
    values: list[float] = []
    total = ctx.warmup + ctx.runs
    for i in range(total):
        value = await once(i)
        recorded = i >= ctx.warmup
        if recorded:
            values.append(value)
        tag = "" if recorded else " (warm-up)"
        console.print(f"  {label} run {i + 1}/{total}: {value:,.1f}{tag}")
    return values


def progress() -> Progress:
    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak resident set size (VmHWM) of a live process, in MiB (Linux)."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def reset_peak_rss(pid: int | None = None) -> bool:
    """Start a live process's VmHWM again from its present RSS (Linux: "5" written to
    /proc/<pid>/clear_refs). False where that is not allowed or not supported."""
    try:
        Path(f"/proc/{pid or os.getpid()}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU time of a live process (Linux /proc/<pid>/stat); with `reaped`,
    also that of its children that exited and were waited for (cutime + cstime)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(command: str = "postgres") -> float:
    """CPU time of every live process named `command` (a local database server's postmaster,
    backends and background workers), summed, with that of their children that exited: a
    backend whose connection closed, an autovacuum worker (the postmaster reaps them)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == command:
                total += cpu_seconds(int(entry.name), reaped=True)
        except OSError:  # gone, or not ours to read
            continue
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, summed over its cores
    (/proc/stat: all = user + nice + system + idle + iowait + irq + softirq + steal; busy =
    all - idle - iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields)
    return (total - fields[3] - fields[4]) / tick, total / tick


class CpuCensus:
    """Where the machine's CPU went during a window: named processes (pids), the PostgreSQL
    server's processes, and the whole machine (the rest is "other": this process, the kernel,
    anything else running). `stop()` gives CPU ms per unit of work (e.g. per request) and the
    machine's busy share."""

    def __init__(self, pids: dict[str, int], *, postgres: bool) -> None:
        self.pids = pids
        self.postgres = postgres
        self._start: dict[str, float] = {}
        self._machine: tuple[float, float] = (0.0, 0.0)

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        values["bench"] = cpu_seconds(os.getpid())
        if self.postgres:
            values["postgres"] = server_cpu_seconds()
        return values

    def start(self) -> None:
        self._start = self._read()
        self._machine = machine_cpu_seconds()

    def stop(self, units: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """CPU ms per unit by part, plus "other" (the machine's busy time not in a part),
        "machine" (all busy time) and "busy_share" (busy / all, 0..1). `extra`: CPU seconds
        measured elsewhere for parts that are not live processes here (a finished child)."""
        now = self._read()
        busy1, all1 = machine_cpu_seconds()
        busy = busy1 - self._machine[0]
        parts = {name: now[name] - self._start[name] for name in now} | (extra or {})
        per = max(1, units)
        census = {name: seconds * 1000 / per for name, seconds in parts.items()}
        census["other"] = max(0.0, busy - sum(parts.values())) * 1000 / per
        census["machine"] = busy * 1000 / per
        census["busy_share"] = busy / max(1e-9, all1 - self._machine[1])
        return census


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
