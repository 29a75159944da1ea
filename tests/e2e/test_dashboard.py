"""The ministry dashboard in a real headless browser (Debian's chromium through Playwright).

`attest-gateway serve` runs as a subprocess with the simulation's organisations; the
simulator's driver plays traffic through the HTTP API (delays of seconds, so the test takes
well under a minute); then the page is loaded with the ministry's key and every figure it
shows is checked against `/ministry/v1/report`. A screenshot is saved under
`test-artifacts/`.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
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
        rehab_specialist_after=Delay(2 * SECOND, 0.3),
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
        profile = _fast_profile()  # the driver's too: it times the registrations it adds
        driver = Driver(client, s.creds, retry_after=dt.timedelta(seconds=1), profile=profile)
        start = await driver.clock()
        cases = plan(
            profile,
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


# --- the page's formatting (app.js), in Python --------------------------------------------

WORDS: dict[str, dict[str, Any]] = {
    "da": {
        "decimal": ",",
        "thousands": ".",
        "pct": " %",
        "of": "af",
        "days": "dage",
        "units": {
            "d": ("dag", "dage"),
            "wd": ("arbejdsdag", "arbejdsdage"),
            "w": ("uge", "uger"),
            "m": ("måned", "måneder"),
        },
        "anchor": {"request": "fra anmodning", "receipt": "fra modtagelse"},
        "header": "Anmodninger",
        "switch": "English",
        "cases_none": (
            "Ingen registrerede sager med lukket vindue i perioden "
            "(eller for få til at blive vist)."
        ),
    },
    "en": {
        "decimal": ".",
        "thousands": ",",
        "pct": "%",
        "of": "of",
        "days": "days",
        "units": {
            "d": ("day", "days"),
            "wd": ("working day", "working days"),
            "w": ("week", "weeks"),
            "m": ("month", "months"),
        },
        "anchor": {"request": "from the request", "receipt": "from receipt"},
        "header": "Requests",
        "switch": "Dansk",
        "cases_none": (
            "No registered cases with a closed window in the period (or too few to be shown)."
        ),
    },
}


def _one(x: float, lang: str) -> str:
    """One decimal as JavaScript's toFixed(1) gives it: the exact binary value, ties up."""
    text = str(Decimal(x).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))
    return text.replace(".", WORDS[lang]["decimal"])


def _fmt_days(seconds: float | None, lang: str) -> str:
    return "–" if seconds is None else f"{_one(seconds / 86400, lang)} {WORDS[lang]['days']}"


def _fmt_rate(rate: float | None, lang: str) -> str:
    return "–" if rate is None else _one(rate * 100, lang) + WORDS[lang]["pct"]


def _fmt_count(n: int | None, lang: str) -> str:
    return "–" if n is None else f"{n:,}".replace(",", WORDS[lang]["thousands"])


def _fmt_share(k: int | None, n: int | None, lang: str) -> str:
    """A share beside its denominator: "4 af 15 (26,7 %)"."""
    if k is None or not n:
        return "–"
    of = WORDS[lang]["of"]
    return f"{_fmt_count(k, lang)} {of} {_fmt_count(n, lang)} ({_fmt_rate(k / n, lang)})"


def _fmt_deadline(rule: str, lang: str) -> str:
    match = re.fullmatch(r"(\d+)(wd|d|w|m)(@receipt)?", rule)
    assert match is not None, rule
    n = int(match[1])
    singular, plural = WORDS[lang]["units"][match[2]]
    anchor = WORDS[lang]["anchor"]["receipt" if match[3] else "request"]
    return f"{n} {singular if n == 1 else plural} {anchor}"


def _share(row: dict[str, Any], part: str, whole: str) -> float | None:
    if row["suppressed"] or not row[whole]:
        return None
    return float(row[part] / row[whole])


def _same(shown: str | None, expected: float | None) -> bool:
    if expected is None:
        return shown in (None, "")
    return shown not in (None, "") and abs(float(shown) - expected) <= 1e-9 * max(1, expected)


# The contrast of every visible text against the background it is drawn on (WCAG 2.x relative
# luminance); SVG text is drawn in its fill colour.
CONTRASTS_JS = """() => {
  const parse = (c) => {
    const m = /rgba?\\(([^)]+)\\)/.exec(c);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lum = ({ r, g, b }) => {
    const f = (v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (node) => {
    for (let n = node; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor);
      if (c && c.a > 0) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const out = [];
  const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode.parentElement;
    if (!walker.currentNode.textContent.trim() || seen.has(node)) continue;
    seen.add(node);
    if (node.closest("title, option, script") || !node.checkVisibility()) continue;
    const style = getComputedStyle(node);
    const fg = parse(node instanceof SVGElement ? style.fill : style.color);
    const bg = background(node);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    out.push({ text: node.textContent.trim().slice(0, 40), ratio: (hi + 0.05) / (lo + 0.05),
               fg: style.color, fill: style.fill, alpha: fg.a });
  }
  return out;
}"""


async def _register_cases(s: Served, n: int) -> list[str]:
    """`n` sickness cases of a job centre, a psychiatric course each, their contact window
    closed without contact: the denominator of coverage over registered cases."""
    first_day = (dt.date.today() - dt.timedelta(days=70)).isoformat()
    jc = s.creds["jc-koebenhavn"]["api_key"]
    cprs = []
    async with httpx.AsyncClient(base_url=s.base_url, timeout=30) as client:
        for i in range(n):
            citizen = f"{1 + i:02d}0185{7400 + i:04d}"
            cprs.append(citizen)
            answer = await client.post(
                "/jobcenter/v1/cases",
                json={
                    "municipality": "101",
                    "case_id": f"sag-{uuid.uuid4().hex[:12]}",
                    "citizen_cpr": citizen,
                    "case_kind": "sygedagpenge",
                    "psychiatric_course": True,
                    "first_day_of_absence": first_day,
                },
                headers={"Authorization": f"Bearer {jc}"},
            )
            assert answer.status_code == 201, answer.text
    return cprs


async def _check_page(
    page: Any,
    lang: str,
    rep: dict[str, Any],
    meta: dict[str, Any],
    rows: dict[str, dict[str, Any]],
) -> None:
    """Every figure the page shows is the API's, formatted in `lang`, with its denominator."""
    assert await page.get_attribute("html", "lang") == lang
    assert await page.locator("#table-attest th").nth(2).inner_text() == WORDS[lang]["header"]
    assert await page.locator("#lang-switch").inner_text() == WORDS[lang]["switch"]
    under = f"under {meta['min_cell_citizens']}"
    nat = rep["national"]
    head = next(r for r in nat["durations"] if r["metric"] == "request_to_attest")
    (dl,) = nat["deadlines"]
    (ct,) = nat["contacts"]
    overdue, late = _share(dl, "overdue", "decided"), _share(dl, "late_requests", "requests")
    no_contact = _share(ct, "without_contact", "settled")
    of = WORDS[lang]["of"]
    expected: dict[str, tuple[str, float | None]] = {
        "kpi-requests": (_fmt_count(dl["requests"], lang), dl["requests"]),
        "kpi-median": (_fmt_days(head["median"], lang), head["median"]),
        "kpi-p90": (_fmt_days(head["p90"], lang), head["p90"]),
        "kpi-overdue-rate": (_fmt_rate(overdue, lang), overdue),
        "kpi-late-rate": (_fmt_rate(late, lang), late),
        "kpi-no-contact": (_fmt_rate(no_contact, lang), no_contact),
    }
    for testid, (text, value) in expected.items():
        node = page.locator(f'[data-testid="{testid}"]')
        assert await node.inner_text() == text, testid
        assert _same(await node.get_attribute("data-value"), value), testid
    # Beside every share, what it is a share of.
    dens = {
        "kpi-overdue-rate-den": f"{_fmt_count(dl['overdue'], lang)} {of} "
        f"{_fmt_count(dl['decided'], lang)} ",
        "kpi-late-rate-den": f"{_fmt_count(dl['late_requests'], lang)} {of} "
        f"{_fmt_count(dl['requests'], lang)} ",
        "kpi-median-den": f"{of} {_fmt_count(head['count'], lang)} ",
    }
    if not ct["suppressed"]:
        dens["kpi-no-contact-den"] = (
            f"{_fmt_count(ct['without_contact'], lang)} {of} {_fmt_count(ct['settled'], lang)} "
        )
    for testid, start in dens.items():
        assert (await page.locator(f'[data-testid="{testid}"]').inner_text()).startswith(start)
    baseline = await page.locator('[data-testid="kpi-baseline"]').inner_text()
    assert _fmt_rate(meta["no_contact_baseline"], lang) in baseline  # the audit's 75 %
    assert _fmt_rate(meta["no_contact_target"], lang) in baseline

    # Provisional while requests are open, and saying how many.
    note = page.locator('[data-testid="provisional"]')
    if dl["open"]:
        assert await note.is_visible()
        assert _fmt_share(dl["open"], dl["requests"], lang).split(" (")[0] in (
            await note.inner_text()
        )
    else:
        assert not await note.is_visible()

    # The latency chart: one point per period not suppressed, at its median; hollow where
    # the period still has open requests.
    points = page.locator('[data-testid="latency-point"]')
    shown = [r for r in rep["series"]["durations"] if not r["suppressed"]]
    open_in = {r["period_start"]: r["open"] for r in rep["series"]["deadlines"]}
    assert await points.count() == len(shown)
    for i, row in enumerate(shown):
        assert await points.nth(i).get_attribute("data-period") == row["period_start"]
        assert _same(await points.nth(i).get_attribute("data-median"), row["median"])
        provisional = bool(open_in.get(row["period_start"]))
        assert await points.nth(i).get_attribute("data-provisional") == str(provisional).lower()

    # Bars by region: the share with its denominator; suppressed stays hidden; on the
    # no-contact chart the audit's baseline and the target.
    for testid, brows, part, whole in (
        ("chart-overdue-region", rep["by_region"]["deadlines"], "overdue", "decided"),
        ("chart-coverage-region", rep["by_region"]["contacts"], "without_contact", "settled"),
        ("chart-cases-region", rows["cases_region"]["rows"], "without_contact", "cases"),
    ):
        bars = page.locator(f'[data-testid="{testid}"] .row')
        assert await bars.count() == len(brows), testid
        for row in brows:
            bar = page.locator(f'[data-testid="{testid}"] .row[data-group="{row["group"]}"]')
            value = bar.locator(".val")
            if row["suppressed"]:
                assert await value.inner_text() == under
            else:
                assert await value.inner_text() == _fmt_share(row[part], row[whole], lang)
                assert _same(await value.get_attribute("data-value"), _share(row, part, whole))
            if testid != "chart-overdue-region":
                assert await bar.locator(".mark.baseline").count() == 1
                assert await bar.locator(".mark.target").count() == 1

    # By attest type: the deadline in words, durations in days, overdue of settled.
    for row in rep["by_attest_type"]["deadlines"]:
        cells = page.locator(f'#table-attest tr[data-group="{row["group"]}"] td')
        assert await cells.nth(0).inner_text() == row["group"]
        assert await cells.nth(1).inner_text() == _fmt_deadline(
            meta["deadlines"][row["group"]], lang
        )
        want = under if row["suppressed"] else _fmt_count(row["requests"], lang)
        assert await cells.nth(2).inner_text() == want
        want = "–" if row["suppressed"] else _fmt_share(row["overdue"], row["decided"], lang)
        assert await cells.nth(5).inner_text() == want
    municipalities = rep["by_municipality"]["deadlines"]
    assert await page.locator("#table-municipality tbody tr").count() == len(municipalities)
    assert any(r["suppressed"] for r in municipalities)  # small cells exist, and ...
    for row in municipalities:
        cells = page.locator(f'#table-municipality tr[data-group="{row["group"]}"] td')
        want = under if row["suppressed"] else _fmt_count(row["requests"], lang)
        assert await cells.nth(1).inner_text() == want  # ... stay hidden
        want = "–" if row["suppressed"] else _fmt_share(row["late_requests"], row["requests"], lang)
        assert await cells.nth(3).inner_text() == want

    # Over registered cases, and latency counting the open requests (Kaplan–Meier).
    (cases,) = rows["cases"]["rows"]
    national_cases = await page.locator('[data-testid="cases-national"]').inner_text()
    if cases["suppressed"]:  # the page says none, or too few to show
        assert WORDS[lang]["cases_none"] == national_cases
    else:
        without, total = (_fmt_count(cases[k], lang) for k in ("without_contact", "cases"))
        assert f"{without} {of} {total}" in national_cases
    km = [*rows["latency"]["rows"], *rows["latency_type"]["rows"]]
    assert await page.locator("#table-latency tbody tr").count() == len(km)
    for i, row in enumerate(km):
        cells = page.locator("#table-latency tbody tr").nth(i).locator("td")
        if row["suppressed"]:
            assert await cells.nth(1).inner_text() == under
            continue
        assert await cells.nth(1).inner_text() == _fmt_share(row["open"], row["requests"], lang)
        assert await cells.nth(2).inner_text() == _fmt_days(row["median"], lang)
        assert _same(await cells.nth(2).get_attribute("data-value"), row["median"])
        assert await cells.nth(4).inner_text() == _fmt_days(row["answered_only_median"], lang)

    # No raw deadline syntax anywhere.
    assert "@receipt" not in await page.locator("body").inner_text()


async def _check_layout(page: Any) -> None:
    """Numbers right-aligned under right-aligned headers; the chart's legend inside the page;
    every visible text at least 4.5:1 against its background (WCAG AA)."""
    for table in ("#table-attest", "#table-municipality", "#table-latency"):
        aligned = await page.evaluate(
            """(sel) => {
              const heads = [...document.querySelectorAll(sel + " thead th")];
              const row = document.querySelector(sel + " tbody tr");
              return heads.map((th, i) => [getComputedStyle(th).textAlign,
                getComputedStyle(row.children[i]).textAlign, row.children[i].className]);
            }""",
            table,
        )
        assert aligned, table
        for head, body, cls in aligned:
            assert head == body, (table, aligned)  # a header stands over its column
            assert (head == "right") == ("num" in cls), (table, aligned)
        assert any(head == "right" for head, _, _ in aligned)
    legend = page.locator('[data-testid="latency-legend"] li')
    box = await page.locator('[data-testid="chart-latency"]').bounding_box()
    assert box is not None
    card = await page.locator('[data-testid="chart-latency"]').locator("xpath=..").bounding_box()
    assert card is not None
    for i in range(await legend.count()):
        item = await legend.nth(i).bounding_box()
        if item is None or not item["width"]:
            continue
        assert item["y"] >= box["y"] + box["height"] - 1  # under the chart, not on it
        assert item["x"] + item["width"] <= card["x"] + card["width"] + 0.5
        assert item["y"] + item["height"] <= card["y"] + card["height"] + 0.5
    contrasts = await page.evaluate(CONTRASTS_JS)
    assert len(contrasts) > 50
    low = [c for c in contrasts if c["ratio"] < 4.5 or c["alpha"] < 1]
    assert low == [], low


async def _check_keyboard(page: Any, base_url: str, auth: dict[str, str]) -> None:
    """Tab reaches the language switch, every filter, the submit button and the CSV links,
    each with a visible focus; a filter chosen and submitted by keyboard shows its figures."""
    await page.locator("body").focus()
    await page.evaluate("document.activeElement.blur()")
    order: list[str] = []
    for _ in range(60):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            """() => { const e = document.activeElement; const s = getComputedStyle(e);
              return [e.id || e.tagName, s.outlineStyle, parseFloat(s.outlineWidth)]; }"""
        )
        name, outline, width = focused
        if name != "BODY":
            assert outline != "none", focused  # the focus is visible
            assert width >= 2, focused
        if not order or order[-1] != name:
            order.append(name)
        if name == "csv-latency":
            break
    wanted = ["lang-switch", "f-period", "f-from", "f-to", "f-attest", "f-submit",
              "rows-load", "csv-deadlines", "csv-durations", "csv-latency"]  # fmt: skip
    assert [n for n in order if n in wanted] == wanted, order

    await page.focus("#f-attest")
    await page.keyboard.press("ArrowDown")
    attest = await page.input_value("#f-attest")
    assert attest != ""
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "f-submit"
    await page.keyboard.press("Enter")
    await page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    async with httpx.AsyncClient(base_url=base_url) as client:
        filtered = (
            await client.get("/ministry/v1/report", params={"attest_type": attest}, headers=auth)
        ).json()
    (fdl,) = filtered["national"]["deadlines"]
    lang = await page.get_attribute("html", "lang")
    assert lang is not None
    shown = await page.locator('[data-testid="kpi-requests"]').inner_text()
    assert shown == (_fmt_count(fdl["requests"], lang) if not fdl["suppressed"] else "–")
    await page.select_option("#f-attest", "")
    await page.click("#filters button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]", timeout=30_000)


async def _load_rows(page: Any, base_url: str, auth: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The row-based figures are not read until asked for (by keyboard here); then the API's
    answers for the period the page says it asked."""
    assert await page.get_attribute("body", "data-rows-ready") == "none"
    assert await page.locator("#table-latency tbody tr").count() == 0
    await page.focus("#rows-load")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("body[data-rows-ready=true]", timeout=30_000)
    since = await page.get_attribute('[data-testid="rows-status"]', "data-from")
    assert since is not None
    assert since in await page.locator('[data-testid="rows-status"]').inner_text()
    # Without a from date, the last 13 weeks (the page's clock and ours are the machine's).
    ago = dt.date.today() - dt.date.fromisoformat(since)
    assert dt.timedelta(days=90) <= ago <= dt.timedelta(days=92)
    async with httpx.AsyncClient(base_url=base_url) as client:

        async def get(path: str, **params: str) -> dict[str, Any]:
            answer = await client.get(
                f"/ministry/v1/{path}", params=params | {"from": since}, headers=auth
            )
            assert answer.status_code == 200, answer.text
            data: dict[str, Any] = answer.json()
            return data

        return {
            "cases": await get("coverage"),
            "cases_region": await get("coverage", by="region"),
            "latency": await get("latency"),
            "latency_type": await get("latency", by="attest_type"),
        }


async def test_dashboard_shows_the_apis_figures(served: Served) -> None:
    from playwright.async_api import async_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            "Debian's chromium is missing: make test installs it (apt-get install chromium)"
        )
    stats = await _simulate(served, 40)
    assert stats.reads > 15
    cprs = await _register_cases(served, 6)
    key = served.creds["ministry"]["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=served.base_url) as client:

        async def get(path: str, **params: str) -> dict[str, Any]:
            answer = await client.get(f"/ministry/v1/{path}", params=params, headers=auth)
            assert answer.status_code == 200, answer.text
            data: dict[str, Any] = answer.json()
            return data

        # Wait until the tracker has taken in what the job centres read, and the cases.
        deadline = time.monotonic() + 60
        while True:
            rep = await get("report")
            headline = next(
                r for r in rep["national"]["durations"] if r["metric"] == "request_to_read"
            )
            (cases,) = (await get("coverage"))["rows"] or [{"cases": 0}]
            # (coverage may be suppressed as a whole: the simulator's cases make months with
            # fewer citizens than a cell needs, and a figure over several periods is shown
            # only if each of them is)
            counted = cases["suppressed"] or (cases["cases"] or 0) >= 6
            if (headline["count"] or 0) >= stats.reads and counted:
                break
            assert time.monotonic() < deadline, (headline, cases, stats)
            await asyncio.sleep(0.5)
        rep = await get("report")
        meta = await get("meta")
        # Unknown query parameters are refused on every ministry endpoint.
        for path in ("report", "durations", "deadlines", "contacts", "coverage", "latency",
                     "request-timing", "overdue", "meta"):  # fmt: skip
            answer = await client.get(f"/ministry/v1/{path}", params={"lang": "en"}, headers=auth)
            assert answer.status_code == 422, path
            assert answer.json()["code"] == "unknown-parameter", path
        # Durations in CSV: days with one decimal, under a header that says so.
        for path, params in (("durations", {"by": "region"}), ("latency", {})):
            answer = await client.get(
                f"/ministry/v1/{path}", params=params | {"format": "csv"}, headers=auth
            )
            table = list(csv.DictReader(io.StringIO(answer.text)))
            assert table, path
            assert "median" not in table[0], path
            assert "p90" not in table[0], path
            shown = [r["median_days"] for r in table if r["median_days"]]
            assert shown, path
            assert all(re.fullmatch(r"\d+\.\d", v) for v in shown), shown

    ARTIFACTS.mkdir(exist_ok=True)
    port = served.base_url.rsplit(":", 1)[1]
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
            ready = "body[data-ready=true]"
            await page.wait_for_selector(ready, timeout=30_000)
            assert errors == []
            assert key not in page.url  # the key leaves the address bar

            await _check_keyboard(page, served.base_url, auth)  # from the top of the page
            rows = await _load_rows(page, served.base_url, auth)
            await _check_page(page, "da", rep, meta, rows)
            await _check_layout(page)
            await page.screenshot(path=str(ARTIFACTS / f"dashboard-da-{port}.png"), full_page=True)

            # English, by keyboard; kept in the tab across a reload.
            await page.focus("#lang-switch")
            await page.keyboard.press("Enter")
            await _check_page(page, "en", rep, meta, rows)
            await page.reload()
            await page.wait_for_selector(ready, timeout=30_000)
            rows = await _load_rows(page, served.base_url, auth)
            await _check_page(page, "en", rep, meta, rows)
            await _check_layout(page)
            await page.screenshot(path=str(ARTIFACTS / f"dashboard-en-{port}.png"), full_page=True)

            text = await page.locator("body").inner_text()
            assert not any(c in text for c in cprs)  # no CPR number on the page
            assert await page.evaluate("window.__blocked") == []  # nothing the policy blocked
            assert errors == []
            for lang in ("da", "en"):
                shot = ARTIFACTS / f"dashboard-{lang}-{port}.png"
                assert shot.stat().st_size > 10_000
                shutil.copy(shot, ARTIFACTS / f"dashboard-{lang}.png")
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
