"""One abusive client against another organisation's latency: ``python -m bench.abuse``.

A `serve` process (SQLite, or with ``--database postgres`` a scratch PostgreSQL database of
its own on ``BENCH_POSTGRES_DSN``'s server, dropped after; embedded broker, demo organisations)
on a free port. Organisation
B (`gp-noerrebro`) reads its mailbox at a steady rate (open loop, ``--rate`` a second) for
``--window`` seconds, once with nobody else calling (quiet) and once while organisation A
(`psyk-kbh`) floods ``GET /medcom/v1/mailbox?limit=500`` from ``--flood`` concurrent
connections in a separate process (flood); quiet and flood alternate ``--runs`` times. This
is done for each of ``--configurations``: the gateway's default limits, strict ones (5 reads
a second and 2 at once per organisation), and every limit off. Printed: B's p50 and p99 per
window, A's answers by status; ``--out`` keeps them as JSON. Not a test: the figures go to
bench/RESULTS.md.

With ``--before SRC`` (the ``src`` directory of another checkout, e.g. a worktree of main)
each configuration runs two gateways side by side, one on that code and one on this, both
filled the same way, and their windows interleave (before quiet, before flood, after quiet,
after flood, each run), so that the machine's other load falls on both alike. Each window
also records the machine's 1-minute load average at its end.

    python -m bench.abuse --runs 3 --window 15 --out /tmp/abuse.json
    python -m bench.abuse --before ../wt-main/src --configurations defaults --runs 5
    python -m bench.abuse --database postgres --configurations defaults --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from attest_gateway.devtools.demo import DEMO_ORGS
from bench.common import cpu_seconds, percentile
from bench.gateway_ingest import scratch_postgres
from bench.loadgen import GatewayBody, free_port, stop_process, wait_http

ABUSER = "psyk-kbh"
VICTIM = "gp-noerrebro"
JOBCENTER = "jc-koebenhavn"
WAITING = 200  # attest requests waiting in A's mailbox: each of its reads hands them all out
NO_LIMITS = {
    "RATE_LIMIT_READS_PER_SECOND": "0",
    "RATE_LIMIT_WRITES_PER_SECOND": "0",
    "RATE_LIMIT_REPORTS_PER_SECOND": "0",
    "CONCURRENT_REQUESTS_PER_ORG": "0",
    "CONCURRENT_REQUESTS_PER_ORG_TOTAL": "0",
}


async def flood(
    url: str, api_key: str, connections: int, seconds: float, out: Path, cpu: int
) -> None:
    """The abusive client (run in its own process): `connections` workers, each sending the
    next request as soon as the last is answered, for `seconds`. On CPU `cpu` alone (-1: any),
    as if on a machine of its own: its own work (about a core here) is not the gateway's."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    cpu0 = time.process_time()
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {api_key}"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        end = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                try:
                    statuses[(await client.get(url, headers=headers)).status_code] += 1
                except httpx.HTTPError:
                    statuses[0] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    found: dict[str, Any] = {str(k): v for k, v in statuses.items()}
    found["cpu_s"] = round(time.process_time() - cpu0, 2)
    await asyncio.to_thread(out.write_text, json.dumps(found))


async def steady(url: str, api_key: str, rate: float, seconds: float) -> dict[str, Any]:
    """The other organisation: one request every 1/rate seconds (open loop), latencies in ms."""
    headers = {"Authorization": f"Bearer {api_key}"}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> None:
            started = time.perf_counter()
            response = await client.get(url, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] += 1

        start = time.monotonic()
        tasks = []
        for i in range(round(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return {
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "requests": len(latencies),
        "statuses": dict(statuses),
    }


async def fill_mailbox(base: str, creds: dict[str, Any]) -> None:
    """WAITING attest requests from the job centre into A's mailbox, delivered."""
    jc = next(o for o in DEMO_ORGS if o.id == JOBCENTER)
    psy = next(o for o in DEMO_ORGS if o.id == ABUSER)
    body = GatewayBody(
        jobcenter_gln=jc.gln or "", municipality=jc.kommunekode or "", receiver_sor=psy.sor or ""
    )
    headers = {"Authorization": f"Bearer {creds[JOBCENTER]['api_key']}"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for i in range(WAITING):
            response = await client.post(
                "/jobcenter/v1/attest-requests",
                content=body(i),
                headers={**headers, "Content-Type": "application/json", "Idempotency-Key": f"a{i}"},
            )
            response.raise_for_status()
        reader = {"Authorization": f"Bearer {creds[ABUSER]['api_key']}"}
        for _ in range(600):
            response = await client.get("/medcom/v1/mailbox?limit=500", headers=reader)
            if response.status_code == 429:  # over the read rate: as Retry-After says
                await asyncio.sleep(int(response.headers["retry-after"]))
                continue
            if len(response.json()["items"]) >= WAITING:
                return
            await asyncio.sleep(0.5)
    raise RuntimeError("the attest requests did not reach the mailbox")


async def window(
    running: tuple[str, dict[str, Any], int],
    args: argparse.Namespace,
    *,
    flooded: bool,
    tmp: Path,
) -> dict[str, Any]:
    base, creds, pid = running
    flooder = None
    out = tmp / f"flood-{time.monotonic_ns()}.json"
    if flooded:
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.abuse", "--flood-url",
            f"{base}/medcom/v1/mailbox?limit=500", "--flood-key", creds[ABUSER]["api_key"],
            "--flood", str(args.flood), "--window", str(args.window + 2), "--flood-out", str(out),
            "--flood-cpu", str(args.flood_cpu),
        )  # fmt: skip
        await asyncio.sleep(2)  # the flood under way before B is measured
    gateway0, bench0 = cpu_seconds(pid), time.process_time()
    result = await steady(
        f"{base}/medcom/v1/mailbox", creds[VICTIM]["api_key"], args.rate, args.window
    )
    # CPU seconds in B's window: the gateway's, and this process's (B's client)
    result["cpu_s"] = {
        "gateway": round(cpu_seconds(pid) - gateway0, 2),
        "b_client": round(time.process_time() - bench0, 2),
    }
    if flooder is not None:
        await asyncio.wait_for(flooder.wait(), args.window + 120)
        result["abuser"] = json.loads(out.read_text())
        result["cpu_s"]["a_client"] = result["abuser"].pop("cpu_s")
    return result


@contextlib.asynccontextmanager
async def scratch_database(kind: str) -> AsyncIterator[str | None]:
    """None for SQLite (the gateway's default under its VAR_DIR); else the URL of a fresh
    PostgreSQL database, dropped after."""
    if kind == "sqlite":
        yield None
        return
    dsn = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    async with scratch_postgres(dsn) as url:
        yield url


@contextlib.asynccontextmanager
async def gateway(
    tmp: Path, extra_env: dict[str, str], src: str | None, database: str = "sqlite"
) -> AsyncIterator[tuple[str, dict[str, Any], int]]:
    """A filled `serve` process under `tmp` (on the code in `src`, else this checkout's; on
    `database`): its base URL, the demo credentials and its pid."""
    port = free_port()
    env = os.environ | {"VAR_DIR": str(tmp / "var"), "LOG_LEVEL": "WARNING"} | extra_env
    env.pop("DATABASE_URL", None)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    if src is not None:
        env["PYTHONPATH"] = src  # absolute: see parse
    exe = Path(sys.executable).parent / "attest-gateway"
    async with scratch_database(database) as url:
        if url is not None:
            env["DATABASE_URL"] = url
        with (tmp / "gateway.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                str(exe), "serve", "--port", str(port), env=env, stdout=log, stderr=log
            )
            try:
                base = f"http://127.0.0.1:{port}"
                await wait_http(f"{base}/readyz", proc)
                creds = json.loads((tmp / "var" / "demo-credentials.json").read_text())
                await fill_mailbox(base, creds)
                yield base, creds, proc.pid
            finally:
                await stop_process(proc)


async def configuration(name: str, extra_env: dict[str, str], args: argparse.Namespace) -> Any:
    codes = ["before", "after"] if args.before else ["this"]
    with tempfile.TemporaryDirectory(prefix="abuse-") as tmp_dir:
        tmp = Path(tmp_dir)
        async with contextlib.AsyncExitStack() as stack:
            gateways = {}
            for code in codes:
                (tmp / code).mkdir()
                src = args.before if code == "before" else None
                gateways[code] = await stack.enter_async_context(
                    gateway(tmp / code, extra_env, src, args.database)
                )
            windows = []
            for run in range(args.runs):
                for code, running in gateways.items():
                    for flooded in (False, True):
                        found = await window(running, args, flooded=flooded, tmp=tmp)
                        found |= {
                            "run": run,
                            "flooded": flooded,
                            "code": code,
                            "load_1m": round(os.getloadavg()[0], 2),
                        }
                        windows.append(found)
                        what = "flood" if flooded else "quiet"
                        print(
                            f"{name:>10} {code:>6} run {run} {what:>5}: "
                            f"B p50 {found['p50_ms']:7.2f} ms  p99 {found['p99_ms']:7.2f} ms  "
                            f"load {found['load_1m']:4.2f}  B {found['statuses']}  "
                            f"CPU s {found['cpu_s']}"
                            + (f"  A {found['abuser']}" if flooded else ""),
                            flush=True,
                        )
            return {"configuration": name, "windows": windows}


#: A partner's real traffic (a clinic polling its mailbox every few seconds) fits these too.
STRICT = {"RATE_LIMIT_READS_PER_SECOND": "5", "CONCURRENT_REQUESTS_PER_ORG": "2"}
CONFIGURATIONS = {"defaults": {}, "strict": STRICT, "none": NO_LIMITS}


async def main(args: argparse.Namespace) -> None:
    if args.flood_cpu >= 0:  # the gateway, the broker and B on the other CPUs (inherited)
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {args.flood_cpu})
    results = [
        await configuration(name, CONFIGURATIONS[name], args) for name in args.configurations
    ]
    for config in results:
        for code in dict.fromkeys(w["code"] for w in config["windows"]):
            for flooded in (False, True):
                chosen = [
                    w for w in config["windows"] if w["flooded"] is flooded and w["code"] == code
                ]
                p99s = [w["p99_ms"] for w in chosen]
                p50s = [w["p50_ms"] for w in chosen]
                what = "flood" if flooded else "quiet"
                print(
                    f"{config['configuration']:>10} {code:>6} {what:>5}: "
                    f"B p99 median {statistics.median(p99s):.2f} ms, "
                    f"spread {min(p99s):.2f}–{max(p99s):.2f} ms; "
                    f"p50 median {statistics.median(p50s):.2f} ms"
                )
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, json.dumps(results, indent=2))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="quiet and flooded windows, each")
    p.add_argument("--window", type=float, default=15.0, help="seconds B is measured")
    p.add_argument("--rate", type=float, default=10.0, help="B's requests a second")
    p.add_argument("--flood", type=int, default=64, help="A's concurrent connections")
    p.add_argument("--out", default="", help="JSON results file")
    p.add_argument(
        "--before",
        default="",
        help="the src directory of other code (e.g. main's): run it side by side, interleaved",
    )
    p.add_argument(
        "--configurations",
        nargs="+",
        choices=sorted(CONFIGURATIONS),
        default=["defaults", "strict", "none"],
        help="the gateway's limits: its defaults, strict (5 reads a second, 2 at once), none",
    )
    p.add_argument(
        "--database", choices=["sqlite", "postgres"], default="sqlite", help="the gateway's store"
    )
    p.add_argument("--flood-url", default="", help=argparse.SUPPRESS)
    p.add_argument("--flood-key", default="", help=argparse.SUPPRESS)
    p.add_argument("--flood-out", default="", help=argparse.SUPPRESS)
    p.add_argument(
        "--flood-cpu",
        type=int,
        default=(os.cpu_count() or 1) - 1 if (os.cpu_count() or 1) > 1 else -1,
        help="the CPU the abusive client runs on alone, everything else on the others (default: "
        "the last; -1: all share every CPU; with --before, -1 unless given). On one machine "
        "its own work (about half a core here) would otherwise be taken from the gateway's "
        "and B's",
    )
    args = p.parse_args(argv)
    args.before = os.path.abspath(args.before) if args.before else ""
    if args.before and "--flood-cpu" not in (argv if argv is not None else sys.argv):
        # two gateways and B on one CPU overload it (load 1.3-2.1 on two cores): all share
        args.flood_cpu = -1
    return args


if __name__ == "__main__":
    parsed = parse()
    with contextlib.suppress(KeyboardInterrupt):
        if parsed.flood_url:
            asyncio.run(
                flood(
                    parsed.flood_url,
                    parsed.flood_key,
                    parsed.flood,
                    parsed.window,
                    Path(parsed.flood_out),
                    parsed.flood_cpu,
                )
            )
        else:
            asyncio.run(main(parsed))
