"""The tracker's commands: `attest-gateway simulate`, `attest-gateway report`,
`attest-gateway coverage-rebuild`, `attest-gateway overdue-rebuild` and
`attest-gateway rehabilitation-rebuild`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.bootstrap import database, tracker_rules
from attest_gateway.config import Settings, load_settings
from attest_gateway.core.clock import SystemClock
from attest_gateway.devtools.demo_database import create_own_database, drop_own_database
from attest_gateway.devtools.simulate import (
    Driver,
    Profile,
    _rng,
    ensure_simulation_orgs,
    gateway_process,
    plan,
    simulation_orgs,
    wait_healthy,
)
from attest_gateway.infra.db import coverage as coverage_rollup
from attest_gateway.infra.db import overdue as overdue_rollup
from attest_gateway.infra.db import rehabilitation as rehab_rollup
from attest_gateway.infra.db.migrate import upgrade
from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from attest_gateway.observability.logging import configure_logging
from attest_gateway.tracker import report as rep

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(report)
    app.command("coverage-rebuild")(coverage_rebuild)
    app.command("overdue-rebuild")(overdue_rebuild)
    app.command("rehabilitation-rebuild")(rehabilitation_rebuild)


def _in_one_transaction(
    settings: Settings, rebuild: Callable[[AsyncConnection], Awaitable[int]]
) -> int:
    """A rollup's rebuild in one transaction on the configured database; its count."""

    async def run() -> int:
        async with database(settings) as engine, engine.begin() as conn:
            return await rebuild(conn)

    return asyncio.run(run())


def coverage_rebuild() -> None:
    """Write the contact-coverage rollup again from the registered cases, for the contact rules
    configured now: after changing TRACKER_CONTACT_WINDOW_WEEKS, TRACKER_CONTACT_CASE_KINDS,
    TRACKER_CONTACT_COUNTS or TRACKER_TIMEZONE, with the gateway's processes stopped (one
    transaction; minutes at national volume).

    Example: attest-gateway coverage-rebuild
    """
    settings = load_settings()
    rules = coverage_rollup.CoverageRules.of(tracker_rules(settings))
    cases = _in_one_transaction(settings, lambda conn: coverage_rollup.rebuild(conn, rules))
    console.print(f"coverage rollup written again from {cases:,} registered cases")


def overdue_rebuild() -> None:
    """Write the rollup of the requests open and overdue now again from the tracked requests:
    after changing TRACKER_TIMEZONE (the days requests are counted on), with the gateway's
    processes stopped (one transaction; about ten minutes at national volume).

    Example: attest-gateway overdue-rebuild
    """
    settings = load_settings()
    timezone = settings.tracker_timezone
    requests = _in_one_transaction(settings, lambda conn: overdue_rollup.rebuild(conn, timezone))
    console.print(f"open overdue rollup written again from {requests:,} open overdue requests")


def rehabilitation_rebuild() -> None:
    """Write the rollup of ressourceforløb cases' wait for their health information again
    from the tracked requests: after changing TRACKER_REHAB_HEALTH_INFORMATION or
    TRACKER_TIMEZONE, with the gateway's processes stopped (one transaction). Cases whose
    requests retention has pruned are no longer counted.

    Example: attest-gateway rehabilitation-rebuild
    """
    settings = load_settings()
    rules = rehab_rollup.RehabRules.of(tracker_rules(settings))
    cases = _in_one_transaction(settings, lambda conn: rehab_rollup.rebuild(conn, rules))
    console.print(f"rehabilitation rollup written again from {cases:,} ressourceforløb cases")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 3600:.1f} h" if seconds < 86400 else f"{seconds / 86400:.1f} d"


def _fmt_rate(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f} %"


def report(
    period: Annotated[str, typer.Option(help="week or month")] = "month",
    date_from: Annotated[str | None, typer.Option("--from", help="YYYY-MM-DD")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="YYYY-MM-DD")] = None,
    attest_type: Annotated[str | None, typer.Option(help="e.g. 'LÆ 155'")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Print the ministry report from the store (the same figures as GET /ministry/v1/report).

    Example: attest-gateway report --period month --attest-type "LÆ 155"
    """
    if period not in ("week", "month"):
        raise typer.BadParameter("period is week or month")
    settings = load_settings()
    f = rep.Filters(
        period,  # type: ignore[arg-type]
        dt.date.fromisoformat(date_from) if date_from else None,
        dt.date.fromisoformat(date_to) if date_to else None,
        attest_type,
        None,
    )

    async def fetch() -> dict[str, Any]:
        async with database(settings) as engine, engine.connect() as conn:
            return await rep.report(conn, tracker_rules(settings), f)

    data = asyncio.run(fetch())
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    out = Console()
    national = data["national"]
    table = Table(title="Durations, Denmark (suppressed cells: –)")
    for col in ("metric", "count", "median", "p90", "p99"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in national["durations"]:
        table.add_row(
            row["metric"],
            "–" if row["count"] is None else str(row["count"]),
            _fmt_duration(row["median"]),
            _fmt_duration(row["p90"]),
            _fmt_duration(row["p99"]),
        )
    out.print(table)
    table = Table(title="Deadlines and contact by region")
    for col in ("region", "requests", "overdue", "late requests", "contact coverage"):
        table.add_column(col, justify="left" if col == "region" else "right")
    contacts = {r["group"]: r for r in data["by_region"]["contacts"]}
    for row in [*national["deadlines"], *data["by_region"]["deadlines"]]:
        c = contacts.get(row["group"]) or (national["contacts"] or [{}])[0]
        table.add_row(
            row["label"],
            "–" if row["requests"] is None else str(row["requests"]),
            _fmt_rate(row["overdue_rate"]),
            _fmt_rate(row["late_request_rate"]),
            _fmt_rate(c.get("coverage")),
        )
    out.print(table)
    out.print(f"Contact baseline (Rigsrevisionen): {_fmt_rate(data['contact_baseline'])}")


def simulate(
    serve: Annotated[
        bool,
        typer.Option(help="start a gateway of its own (history on a simulated clock, then live)"),
    ] = False,
    url: Annotated[
        str, typer.Option(help="the gateway to drive (without --serve)")
    ] = "http://127.0.0.1:8000",
    days: Annotated[float, typer.Option(help="days of history to simulate (with --serve)")] = 45,
    minutes: Annotated[float, typer.Option(help="real minutes the history may take")] = 8,
    rate: Annotated[float, typer.Option(help="attest requests per day, nationally")] = 30,
    live: Annotated[bool, typer.Option(help="after the history, go on in real time")] = True,
    live_days: Annotated[float, typer.Option(help="days of live traffic to plan")] = 30,
    profile: Annotated[Path | None, typer.Option(help="JSON overrides of the delays")] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same traffic)")] = 1,
    setup: Annotated[
        bool, typer.Option(help="only register the simulation organisations, then exit")
    ] = False,
    own_database: Annotated[
        str | None,
        typer.Option(
            help="a PostgreSQL server (SQLAlchemy URL of a database to connect to): play into "
            "a database of a new name made there, dropped when the simulation ends"
        ),
    ] = None,
) -> None:
    """Drive realistic traffic (98 job centres, psychiatry, GP clinics) through the HTTP API.

    With --serve (what `make demo` runs) it starts its own gateway, plays --days of history
    in about --minutes on a simulated clock, then keeps the gateway running with live traffic
    and prints the dashboard's address. Without --serve it drives the gateway at --url, which
    must know the simulation organisations (`--setup` registers them; restart that gateway
    afterwards so it loads their keys). With --own-database it never touches an existing
    database: it creates one of a new name and drops only that one.
    Example: attest-gateway simulate --serve --days 90
    """
    configure_logging("WARNING", "console")
    run = functools.partial(
        _simulate,
        serve=serve,
        url=url,
        days=days,
        minutes=minutes,
        rate=rate,
        live=live,
        live_days=live_days,
        profile=profile,
        seed=seed,
        setup=setup,
    )
    if own_database is None:
        run(load_settings())
        return
    own = asyncio.run(create_own_database(own_database))
    console.print(f"database {own.name} created for this run; dropped when it ends")
    try:
        run(load_settings(database_url=own.url))
    finally:
        asyncio.run(drop_own_database(own))
        console.print(f"database {own.name} dropped")


def _simulate(
    settings: Settings,
    *,
    serve: bool,
    url: str,
    days: float,
    minutes: float,
    rate: float,
    live: bool,
    live_days: float,
    profile: Path | None,
    seed: int,
    setup: bool,
) -> None:
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    creds = asyncio.run(ensure_simulation_orgs(settings))
    if setup:
        console.print(f"simulation organisations registered; credentials in {settings.var_dir}")
        return
    prof = Profile.load(profile)
    prof = dataclasses.replace(prof, requests_per_day=rate)
    if serve:
        _serve_and_simulate(
            settings,
            creds,
            prof,
            days=days,
            minutes=minutes,
            live=live,
            live_days=live_days,
            seed=seed,
        )
    else:
        asyncio.run(_drive_url(url, creds, prof, live_days=live_days, seed=seed))


def _about_minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    return "a minute" if minutes <= 1 else f"{minutes} minutes"


def announce_dashboard(base: str, key: str) -> None:
    """The dashboard's address with the ministry key, on a line of its own, printed as it is:
    a console that folds long lines at its width would put a line break into the key, and the
    copied key would be refused."""
    console.print("live: the ministry dashboard, signed in with the demo's ministry key:")
    print(f"{base}/ministry/#key={key}", flush=True)
    print(f"dashboard ready: {base}/ministry/", flush=True)


def _ministry_key(settings: Settings) -> str:
    creds = json.loads((settings.var_dir / "demo-credentials.json").read_text("utf-8"))
    return str(creds["ministry"]["api_key"])


async def _drive_url(
    url: str, creds: dict[str, dict[str, str]], prof: Any, *, live_days: float, seed: int
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        driver = Driver(client, creds)
        start = await driver.clock()
        driver.add(
            plan(
                prof,
                simulation_orgs(),
                start=start,
                end=start + dt.timedelta(days=live_days),
                rng=_rng(seed),
            )
        )
        console.print(f"driving {url}: {driver.pending()} steps planned; Ctrl-C stops")
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            await driver.run_until(lambda now: driver.pending() == 0, poll=1.0)


def _serve_and_simulate(
    settings: Settings,
    creds: dict[str, dict[str, str]],
    prof: Any,
    *,
    days: float,
    minutes: float,
    live: bool,
    live_days: float,
    seed: int,
) -> None:
    port = settings.api_port
    env = {
        **os.environ,
        "VAR_DIR": str(settings.var_dir),
        "API_PORT": str(port),
        "RELAY_POLL_SECONDS": "0.05",
        "LOG_FORMAT": "json",
    }
    if settings.database_url:  # the gateway process plays into the same database
        env["DATABASE_URL"] = settings.database_url
    broker = None
    if not settings.kafka_bootstrap_servers:
        broker = EmbeddedBroker(log_path=settings.var_dir / "broker.log").start()
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    stop = asyncio.Event()
    try:
        asyncio.run(
            _history_then_live(
                settings,
                env,
                creds,
                prof,
                days=days,
                minutes=minutes,
                live=live,
                live_days=live_days,
                seed=seed,
                stop=stop,
            )
        )
    except KeyboardInterrupt:
        pass
    finally:
        if broker is not None:
            broker.stop()


async def _history_then_live(
    settings: Settings,
    env: dict[str, str],
    creds: dict[str, dict[str, str]],
    prof: Any,
    *,
    days: float,
    minutes: float,
    live: bool,
    live_days: float,
    seed: int,
    stop: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    orgs = simulation_orgs()
    rng = _rng(seed)
    base = f"http://127.0.0.1:{settings.api_port}"
    log_path = settings.var_dir / "simulate-gateway.log"
    end = SystemClock().now().replace(microsecond=0)
    start = end - dt.timedelta(days=days)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        driver = Driver(client, creds)
        if days > 0:
            speed = max(1.0, days * 86400 / (minutes * 60))
            console.print(
                f"history: {days:g} days from {start:%Y-%m-%d} at {speed:,.0f}×, which takes "
                f"about {_about_minutes(days * 86400 / speed)} (simulated clock; gateway log "
                f"{log_path}); then the dashboard's address"
            )
            with gateway_process(
                env | {"TRACKER_SWEEP_SECONDS": "1"}, log_path, clock_start=start, speed=speed
            ) as proc:
                await wait_healthy(client, proc, log_path)
                driver.add(plan(prof, orgs, start=await driver.clock(), end=end, rng=rng))
                total = (end - start).total_seconds()
                with Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    TextColumn("{task.percentage:>3.0f}%"),
                    TextColumn("{task.fields[day]}"),
                    TextColumn("{task.fields[stats]}"),
                    TimeElapsedColumn(),
                    console=console,
                ) as progress:
                    task = progress.add_task("history", total=total, day="", stats="")

                    def tick(now: dt.datetime) -> None:
                        s = driver.stats
                        progress.update(
                            task,
                            completed=min(total, (now - start).total_seconds()),
                            day=f"{now:%Y-%m-%d %H:%M}",
                            stats=f"requests {s.requests} replies {s.replies} reads {s.reads} "
                            f"errors {s.errors}",
                        )

                    await driver.run_until(lambda now: now >= end or stop.is_set(), tick)
            console.print(f"history done: {driver.stats}")
        if stop.is_set() or not live:
            return
        with gateway_process(env, log_path, clock_start=None, speed=1) as proc:
            await wait_healthy(client, proc, log_path)
            now = await driver.clock()
            driver.add(plan(prof, orgs, start=now, end=now + dt.timedelta(days=live_days), rng=rng))
            announce_dashboard(base, _ministry_key(settings))
            await driver.run_until(lambda _: stop.is_set(), poll=1.0)
