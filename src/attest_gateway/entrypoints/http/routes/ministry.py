"""`/ministry/v1`: the tracker's figures, JSON or CSV, for the ministry (everything) and for a
region's or a municipality's analysts (their own place's: tracker/scope.py narrows the filters
server-side and refuses others' with 403 `outside-scope`); `/ministry/` serves the dashboard
page (static; it calls this API with the analyst's key).

Everything here reads aggregates: no endpoint returns a CPR number, a case ref, a
conversation id or any message text, and small cells are suppressed, with secondary
suppression over the whole country (tracker/disclosure.py).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.core.bounds import LINE, InputDate
from attest_gateway.core.directory import ANALYST_ROLES, Organisation
from attest_gateway.core.errors import ErrorCode, InvalidInput, Unknown
from attest_gateway.core.identifiers import Kommunekode, municipalities
from attest_gateway.entrypoints.http.auth import (
    authenticated,
    authenticated_first,
    gateway_of,
    require_role,
)
from attest_gateway.tracker import coverage as cov
from attest_gateway.tracker import latency as lat
from attest_gateway.tracker import overdue as ovd
from attest_gateway.tracker import rehabilitation as rehab
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r
from attest_gateway.tracker import timing
from attest_gateway.tracker.scope import scope_of, within

STATIC_DIR = Path(__file__).parent.parent / "static"

router = APIRouter(
    prefix="/ministry/v1", tags=["ministry"], route_class=authenticated_first(*ANALYST_ROLES)
)
dashboard_router = APIRouter(tags=["ministry"])


async def analyst(org: Annotated[Organisation, Depends(authenticated)]) -> Organisation:
    return require_role(org, *ANALYST_ROLES)


Ministry = Annotated[Organisation, Depends(analyst)]
Format = Literal["json", "csv"]


def _filters(
    period: Annotated[
        Literal["week", "month", "quarter", "year"],
        Query(description="week, month, quarter or year (summed from the months)"),
    ] = "month",
    date_from: Annotated[InputDate | None, Query(alias="from")] = None,
    date_to: Annotated[InputDate | None, Query(alias="to")] = None,
    attest_type: Annotated[Annotated[str, Field(max_length=16), LINE] | None, Query()] = None,
    region: Annotated[str | None, Query(pattern=r"^108[1-5]$")] = None,
    municipality: Annotated[
        Kommunekode | None, Query(description="a municipality code (kommunekode)")
    ] = None,
) -> rep.Filters:
    if date_from and date_to and date_from > date_to:
        raise InvalidInput(ErrorCode.INVALID_PERIOD, "'from' is after 'to'")
    return rep.Filters(period, date_from, date_to, attest_type or None, region, municipality)


Filters = Annotated[rep.Filters, Depends(_filters)]
ByParam = Annotated[
    Literal["national", "region", "municipality", "receiver", "attest_type"], Query()
]


def _engine(request: Request) -> AsyncEngine:
    return gateway_of(request).engine


def _rules(request: Request) -> r.TrackerRules:
    """The tracker's rules, built once by `create_app` from its settings."""
    rules: r.TrackerRules = request.app.state.tracker_rules
    return rules


def _answer(name: str, rows: list[dict[str, Any]], fmt: Format, extra: dict[str, Any]) -> Any:
    if fmt == "json":
        return extra | {"rows": rows}
    columns, values = rep.to_csv_rows(rows, seconds_as_days=extra.get("unit") == "seconds")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(["" if v is None else v for v in row] for row in values)
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


@router.get("/report")
async def report(request: Request, org: Ministry, f: Filters) -> dict[str, Any]:
    """The overview the dashboard shows: national figures, series, by region, type, municipality
    (for a municipality's analysts: their municipality's, no regions)."""
    f = within(f, scope_of(org), "national", rollup=True)
    async with _engine(request).connect() as conn:
        return await rep.report(conn, _rules(request), f) | {"scope": scope_of(org).describe()}


@router.get("/durations", response_model=None)
async def durations(
    request: Request,
    org: Ministry,
    f: Filters,
    metric: Annotated[
        str, Query(json_schema_extra={"enum": sorted(r.METRIC_NAMES)})
    ] = "request_to_attest",
    by: ByParam = "national",
    series: bool = False,
    format: Format = "json",
) -> Any:
    """count, median, p90, p99 (seconds) of a stage duration or of request→attest."""
    if metric not in r.METRIC_NAMES:
        raise InvalidInput(ErrorCode.UNKNOWN_METRIC, f"metric is one of {sorted(r.METRIC_NAMES)}")
    f = within(f, scope_of(org), by, rollup=True)
    rules = _rules(request)
    memo = rep.Memo()
    async with _engine(request).connect() as conn:
        rows = await rep.durations(conn, rules, metric, f, by, series=series, memo=memo)
    extra = _meta(f, rules, unit="seconds") | memo.describe()
    return _answer(f"durations-{metric}-{by}", rows, format, extra)


@router.get("/deadlines", response_model=None)
async def deadlines(
    request: Request,
    org: Ministry,
    f: Filters,
    by: ByParam = "national",
    series: bool = False,
    format: Format = "json",
) -> Any:
    """Requests, late requests, overdue count and rate, reminders."""
    f = within(f, scope_of(org), by, rollup=True)
    rules = _rules(request)
    memo = rep.Memo()
    async with _engine(request).connect() as conn:
        rows = await rep.deadlines(conn, rules, f, by, series=series, memo=memo)
    return _answer(f"deadlines-{by}", rows, format, _meta(f, rules) | memo.describe())


@router.get("/contacts", response_model=None)
async def contacts(
    request: Request,
    org: Ministry,
    f: Filters,
    by: Annotated[Literal["national", "region", "municipality"], Query()] = "national",
    series: bool = False,
    format: Format = "json",
) -> Any:
    """Contact coverage of sick-listed citizens with a psychiatric course, against the baseline."""
    f = within(f, scope_of(org), by, rollup=True)
    rules = _rules(request)
    memo = rep.Memo()
    async with _engine(request).connect() as conn:
        rows = await rep.contacts(conn, rules, f, by, series=series, memo=memo)
    extra = _meta(f, rules) | {"baseline": rules.contact_baseline} | memo.describe()
    return _answer(f"contacts-{by}", rows, format, extra)


@router.get("/coverage", response_model=None)
async def coverage(
    request: Request,
    org: Ministry,
    f: Filters,
    by: Annotated[Literal["national", "region", "municipality", "case_kind"], Query()] = "national",
    series: bool = False,
    format: Format = "json",
) -> Any:
    """Registered sickness cases with a psychiatric course and no direct contact in the
    window: the share, its denominator, against the audit's 75 % baseline and the target."""
    f = within(f, scope_of(org), by)
    rules = _rules(request)
    gw = gateway_of(request)
    async with gw.engine.connect() as conn:
        rows = await cov.coverage(conn, rules, f, by, series=series, now=gw.clock.now())
    extra = {
        "baseline": rules.no_contact_baseline,
        "target": rules.no_contact_target,
        "window_weeks": rules.contact_window_weeks,
        "contact_counts": sorted(rules.contact_counts),
    }
    return _answer(f"coverage-{by}", rows, format, _meta(f, rules) | extra)


@router.get("/latency", response_model=None)
async def latency(
    request: Request,
    org: Ministry,
    f: Filters,
    by: Annotated[
        Literal["national", "region", "attest_type", "receiver_kind"], Query()
    ] = "national",
    series: bool = False,
    format: Format = "json",
) -> Any:
    """Request → attest (seconds) counting the open requests (Kaplan–Meier: open = censored at
    its age now): median and p90 from the survival curve, the share still open beside them."""
    f = within(f, scope_of(org), by)
    rules = _rules(request)
    gw = gateway_of(request)
    async with gw.engine.connect() as conn:
        rows = await lat.latency(conn, rules, f, by, series=series, now=gw.clock.now())
    return _answer(f"latency-{by}", rows, format, _meta(f, rules, unit="seconds"))


@router.get("/request-timing", response_model=None)
async def request_timing(
    request: Request,
    org: Ministry,
    f: Filters,
    by: Annotated[Literal["national", "region", "municipality", "case_kind"], Query()] = "national",
    series: bool = False,
    format: Format = "json",
) -> Any:
    """Requests by the week of absence they were made in (0: before the absence; 27: week 27
    or later), against the first follow-up at the end of week 8."""
    f = within(f, scope_of(org), by)
    rules = _rules(request)
    async with _engine(request).connect() as conn:
        rows = await timing.request_timing(conn, rules, f, by, series=series)
    extra = {"follow_up_weeks": dict(rules.late_request_weeks)}
    return _answer(f"request-timing-{by}", rows, format, _meta(f, rules) | extra)


@router.get("/overdue", response_model=None)
async def overdue(
    request: Request,
    org: Ministry,
    f: Filters,
    by: Annotated[Literal["receiver", "municipality"], Query()] = "receiver",
    format: Format = "json",
) -> Any:
    """Open overdue requests (past the deadline, no attest) per receiving unit, by its
    directory name, or per municipality: who is late."""
    f = within(f, scope_of(org), by)
    rules = _rules(request)
    gw = gateway_of(request)
    memo = rep.Memo()
    async with gw.engine.connect() as conn:
        rows = await ovd.open_overdue(conn, rules, f, by, now=gw.clock.now(), memo=memo)
    return _answer(f"overdue-{by}", rows, format, _meta(f, rules) | memo.describe())


@router.get("/rehabilitation", response_model=None)
async def rehabilitation(
    request: Request,
    org: Ministry,
    f: Filters,
    by: Annotated[Literal["national", "region", "municipality"], Query()] = "national",
    series: bool = False,
    format: Format = "json",
) -> Any:
    """How long ressourceforløb cases wait for all the health information their
    rehabilitation team needs (LÆ 265 and a specialist's attest, by default), from the first
    request for it (days, Kaplan–Meier: a case still missing some is censored at its wait so
    far), with the share not yet complete and how many miss each part."""
    f = within(f, scope_of(org), by)
    rules = _rules(request)
    gw = gateway_of(request)
    async with gw.engine.connect() as conn:
        rows = await rehab.rehabilitation(conn, rules, f, by, series=series, now=gw.clock.now())
    extra = {
        "unit": "days",
        "health_information": [list(group) for group in rules.rehab_health_information],
    }
    return _answer(f"rehabilitation-{by}", rows, format, _meta(f, rules) | extra)


@router.get("/meta")
async def meta(request: Request, org: Ministry) -> dict[str, Any]:
    """What the figures mean: metrics, deadlines, regions, municipalities, thresholds, and the
    caller's scope."""
    rules = _rules(request)
    return {
        "scope": scope_of(org).describe(),
        "metrics": [
            {"name": m.name, "title": m.title, "from": m.start.value, "to": m.end.value}
            for m in r.METRICS
        ],
        "deadlines": {code: str(rule) for code, rule in sorted(rules.deadlines.items())},
        "deadline_days": {
            code: _approx_days(rule) for code, rule in sorted(rules.deadlines.items())
        },
        "regions": [{"code": k, "name": v} for k, v in rep.REGION_NAMES.items()],
        "municipalities": [
            {"code": m.kommunekode, "name": m.name, "region_code": m.region_code}
            for m in sorted(municipalities().values(), key=lambda m: m.kommunekode)
        ],
        "min_cell_citizens": rules.min_cell_citizens,
        "contact_baseline": rules.contact_baseline,
        "no_contact_baseline": rules.no_contact_baseline,
        "no_contact_target": rules.no_contact_target,
        "contact_counts": sorted(rules.contact_counts),
        "contact_window_weeks": rules.contact_window_weeks,
        "late_request_weeks": dict(rules.late_request_weeks),
        "rehab_health_information": [list(group) for group in rules.rehab_health_information],
    }


def _approx_days(rule: r.DeadlineRule) -> float:
    factor = {r.Unit.DAYS: 1.0, r.Unit.WORKING_DAYS: 7 / 5, r.Unit.WEEKS: 7.0, r.Unit.MONTHS: 30.44}
    return round(rule.amount * factor[rule.unit], 1)


def _meta(f: rep.Filters, rules: r.TrackerRules, **extra: Any) -> dict[str, Any]:
    return {"filters": f.describe(), "min_cell_citizens": rules.min_cell_citizens} | extra


@dashboard_router.get("/ministry/", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@dashboard_router.get("/ministry/static/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> FileResponse:
    types = {"app.js": "text/javascript", "style.css": "text/css"}
    if name not in types:
        raise Unknown(ErrorCode.NOT_FOUND, "no such resource")
    return FileResponse(STATIC_DIR / name, media_type=types[name])
