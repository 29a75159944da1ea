"""The ministry dashboard in a real headless browser (Debian's chromium through Playwright).

`attest-gateway serve` runs as a subprocess with the simulation's organisations; the
simulator's driver plays traffic through the HTTP API (delays of seconds, so the test takes
well under a minute); then the page is loaded with the ministry's key and every figure it
shows is checked against `/ministry/v1/report`. A screenshot is saved under
`test-artifacts/`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from attest_gateway.devtools.simulate import ClinicProfile, Delay, Driver, Profile, plan
from attest_gateway.devtools.simulate import simulation_orgs as sim_orgs
from attest_gateway.infra.kafka.embedded import free_port
from tests.support.harness import fresh_database
from tests.support.kafka import KAFKA_ENV, gateway_env

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("attest-gateway"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SECOND = 1 / 86400  # a delay of one second, in days


@dataclass
class Served:
    base_url: str
    var_dir: Path
    creds: dict[str, dict[str, str]]


def _fast_profile() -> Profile:
    """The default mix, with delays of seconds instead of days."""
    clinic = ClinicProfile(
        fetch=Delay(1 * SECOND, 0.3),
        ack=Delay(0.5 * SECOND, 0.3),
        reply=Delay(4 * SECOND, 0.5),
        never_replies=0.05,
    )
    return replace(
        Profile(),
        requests_per_day=86400 / 0.4,  # one request every 0.4 s
        gp=clinic,
        psychiatry=replace(clinic, reply=Delay(8 * SECOND, 0.5)),
        jobcenter_read=Delay(1 * SECOND, 0.3),
        registered_contact_share=0.3,
        contact_after=Delay(3 * SECOND, 0.3),
    )


@pytest_asyncio.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    async with fresh_database(request.param, tmp_path) as url:
        env = {k: v for k, v in os.environ.items() if k not in KAFKA_ENV}
        env |= gateway_env()  # the external broker, when the suite runs on one
        port = free_port()
        env |= {"VAR_DIR": str(tmp_path / "var"), "API_PORT": str(port), "LOG_FORMAT": "json"}
        env |= {"RELAY_POLL_SECONDS": "0.1", "TRACKER_SWEEP_SECONDS": "2"}
        if request.param == "postgres":
            env["DATABASE_URL"] = url
        else:
            env.pop("DATABASE_URL", None)
        setup = await asyncio.to_thread(
            subprocess.run,
            [CLI, "simulate", "--setup"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
        )
        assert setup.returncode == 0, setup.stderr.decode()
        log_path = tmp_path / "serve.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 - starting it is instant; we poll after
                [CLI, "serve"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base) as client:
                deadline = time.monotonic() + 90
                while True:
                    assert proc.poll() is None, log_path.read_text()
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, log_path.read_text()
                    await asyncio.sleep(0.2)
            var = tmp_path / "var"
            creds = json.loads((var / "sim-credentials.json").read_text("utf-8"))
            creds |= json.loads((var / "demo-credentials.json").read_text("utf-8"))
            yield Served(base, var, creds)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _simulate(s: Served, n_requests: int) -> Any:
    async with httpx.AsyncClient(base_url=s.base_url, timeout=30) as client:
        driver = Driver(client, s.creds, retry_after=dt.timedelta(seconds=1))
        start = await driver.clock()
        cases = plan(
            _fast_profile(),
            sim_orgs(),
            start=start,
            end=start + dt.timedelta(seconds=n_requests * 0.4),
            rng=random.Random(7),
        )
        driver.add(cases)
        deadline = time.monotonic() + 240
        await driver.run_until(lambda _: driver.pending() == 0 or time.monotonic() > deadline)
        assert driver.pending() == 0, driver.pending_steps()
        assert driver.stats.errors == 0, driver.stats
        return driver.stats


def _fmt_duration(seconds: float | None) -> str:
    """The page's formatting (app.js fmtDuration), in Python."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{round(seconds)} s"
    for limit, per, unit in ((3600, 60, "min"), (86400, 3600, "t")):
        if seconds < limit:
            return f"{seconds / per:.1f} {unit}".replace(".", ",")
    return f"{seconds / 86400:.1f} d".replace(".", ",")


def _fmt_rate(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f} %".replace(".", ",")


def _fmt_count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}".replace(",", ".")


def _same(shown: str | None, expected: float | None) -> bool:
    if expected is None:
        return shown in (None, "")
    return shown not in (None, "") and abs(float(shown) - expected) <= 1e-9 * max(1, expected)


async def test_dashboard_shows_the_apis_figures(served: Served) -> None:
    from playwright.async_api import async_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            "Debian's chromium is missing: make test installs it (apt-get install chromium)"
        )
    stats = await _simulate(served, 40)
    assert stats.reads > 15
    key = served.creds["ministry"]["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=served.base_url) as client:
        # Wait until the tracker has taken in what the job centres read.
        async def report() -> dict[str, Any]:
            data: dict[str, Any] = (await client.get("/ministry/v1/report", headers=auth)).json()
            return data

        deadline = time.monotonic() + 60
        while True:
            rep = await report()
            headline = next(
                r for r in rep["national"]["durations"] if r["metric"] == "request_to_read"
            )
            if headline["count"] is not None and headline["count"] >= stats.reads:
                break
            assert time.monotonic() < deadline, (headline, stats)
            await asyncio.sleep(0.5)
        rep = await report()
        meta = (await client.get("/ministry/v1/meta", headers=auth)).json()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1700})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # Whatever the Content-Security-Policy blocks is reported on the page.
            await page.add_init_script(
                "window.__blocked = [];"
                "document.addEventListener('securitypolicyviolation', e =>"
                " window.__blocked.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            page_answer = await page.goto(f"{served.base_url}/ministry/#key={key}")
            assert page_answer is not None
            assert "frame-ancestors 'none'" in page_answer.headers["content-security-policy"]
            await page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert errors == []
            assert key not in page.url  # the key leaves the address bar

            # The key figures.
            nat = rep["national"]
            head = next(r for r in nat["durations"] if r["metric"] == "request_to_attest")
            (dl,) = nat["deadlines"]
            (ct,) = nat["contacts"]
            expected = {
                "kpi-requests": (_fmt_count(dl["requests"]), dl["requests"]),
                "kpi-median": (_fmt_duration(head["median"]), head["median"]),
                "kpi-p90": (_fmt_duration(head["p90"]), head["p90"]),
                "kpi-overdue-rate": (_fmt_rate(dl["overdue_rate"]), dl["overdue_rate"]),
                "kpi-late-rate": (_fmt_rate(dl["late_request_rate"]), dl["late_request_rate"]),
                "kpi-coverage": (_fmt_rate(ct["coverage"]), ct["coverage"]),
            }
            assert dl["requests"] >= 35
            assert head["suppressed"] is False
            for testid, (text, value) in expected.items():
                node = page.locator(f'[data-testid="{testid}"]')
                assert await node.inner_text() == text, testid
                assert _same(await node.get_attribute("data-value"), value), testid

            # The latency chart: one point per period that is not suppressed, at its median.
            points = page.locator('[data-testid="latency-point"]')
            shown = [r for r in rep["series"]["durations"] if not r["suppressed"]]
            assert await points.count() == len(shown)
            for i, row in enumerate(shown):
                assert await points.nth(i).get_attribute("data-period") == row["period_start"]
                assert _same(await points.nth(i).get_attribute("data-median"), row["median"])

            # Overdue rate and contact coverage by region: bar values and suppression.
            for testid, rows, field in (
                ("chart-overdue-region", rep["by_region"]["deadlines"], "overdue_rate"),
                ("chart-coverage-region", rep["by_region"]["contacts"], "coverage"),
            ):
                bars = page.locator(f'[data-testid="{testid}"] .row')
                assert await bars.count() == len(rows)
                for row in rows:
                    bar = page.locator(
                        f'[data-testid="{testid}"] .row[data-group="{row["group"]}"]'
                    )
                    value = bar.locator(".val")
                    if row["suppressed"]:
                        assert await value.inner_text() == "under 5"
                    else:
                        assert await value.inner_text() == _fmt_rate(row[field])
                        assert _same(await value.get_attribute("data-value"), row[field])

            # The table by attest type and by municipality.
            for row in rep["by_attest_type"]["deadlines"]:
                tr = page.locator(f'#table-attest tr[data-group="{row["group"]}"]')
                cells = tr.locator("td")
                assert await cells.nth(0).inner_text() == row["group"]
                assert await cells.nth(1).inner_text() == meta["deadlines"][row["group"]]
                want = "under 5" if row["suppressed"] else _fmt_count(row["requests"])
                assert await cells.nth(2).inner_text() == want
            municipalities = rep["by_municipality"]["deadlines"]
            assert await page.locator("#table-municipality tbody tr").count() == len(municipalities)
            assert any(r["suppressed"] for r in municipalities)  # small cells exist, and ...
            for row in municipalities:
                tr = page.locator(f'#table-municipality tr[data-group="{row["group"]}"]')
                want = "under 5" if row["suppressed"] else _fmt_count(row["requests"])
                assert await tr.locator("td").nth(1).inner_text() == want  # ... stay hidden

            # A filter: one attest type; the page asks the API again and shows its answer.
            attest = max(
                (r for r in rep["by_attest_type"]["deadlines"] if not r["suppressed"]),
                key=lambda r: r["requests"],
            )["group"]
            await page.select_option("#f-attest", attest)
            await page.click("#filters button[type=submit]")
            await page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            async with httpx.AsyncClient(base_url=served.base_url) as client:
                filtered = (
                    await client.get(
                        "/ministry/v1/report", params={"attest_type": attest}, headers=auth
                    )
                ).json()
            (fdl,) = filtered["national"]["deadlines"]
            assert await page.locator('[data-testid="kpi-requests"]').inner_text() == _fmt_count(
                fdl["requests"]
            )

            ARTIFACTS.mkdir(exist_ok=True)
            await page.select_option("#f-attest", "")
            await page.click("#filters button[type=submit]")
            await page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            shot = ARTIFACTS / f"dashboard-{served.base_url.rsplit(':', 1)[1]}.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert await page.evaluate("window.__blocked") == []  # nothing the policy blocked
            shutil.copy(shot, ARTIFACTS / "dashboard.png")
        finally:
            await browser.close()


async def test_dashboard_asks_for_a_key_and_refuses_a_wrong_one(served: Served) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{served.base_url}/ministry/")
            assert await page.locator("#login").is_visible()
            jc_key = served.creds["jc-koebenhavn"]["api_key"]
            await page.fill("#api-key", jc_key)  # a job centre's key is not the ministry's
            await page.click("#login-form button")
            await page.wait_for_selector("body[data-ready=error]", timeout=30_000)
            assert await page.locator("#login").is_visible()
            assert not await page.locator("#main").is_visible()
        finally:
            await browser.close()
