"""Who sees which of the ministry's figures: the ministry everything, a region's analysts
their region's, a municipality's analysts their municipality's. Pure.

The scope narrows the filters before anything is read, server-side; asking for another
region or municipality, or for a grouping that shows others' figures (a municipality's
analysts by region; any analyst by receiving unit in the rollups, whose cells know no
place), is refused with 403 `outside-scope`. The cells are decided over the whole country
whatever the scope (tracker/disclosure.py), so an analyst sees a cell exactly as the
ministry does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import ErrorCode, InvalidInput, NotPermitted
from attest_gateway.core.identifiers import municipalities
from attest_gateway.tracker.report import Filters


@dataclass(frozen=True, slots=True)
class Scope:
    """None: the whole country (the ministry)."""

    region: str | None = None
    municipality: str | None = None

    def describe(self) -> dict[str, str | None]:
        kind = "municipality" if self.municipality else "region" if self.region else "national"
        return {"kind": kind, "region": self.region, "municipality": self.municipality}


def scope_of(org: Organisation) -> Scope:
    """The organisation's scope; an analyst organisation without its place is refused (the
    directory should not hold one: `orgs add` checks)."""
    if org.role is Role.MINISTRY:
        return Scope()
    if org.role is Role.REGION_ANALYST and org.region_code:
        return Scope(region=org.region_code)
    if org.role is Role.MUNICIPALITY_ANALYST and org.kommunekode and org.region_code:
        return Scope(region=org.region_code, municipality=org.kommunekode)
    raise NotPermitted(ErrorCode.FORBIDDEN, "this organisation's role may not use this endpoint")


def _outside(what: str) -> NotPermitted:
    return NotPermitted(ErrorCode.OUTSIDE_SCOPE, f"{what} is outside this organisation's scope")


def within(f: Filters, scope: Scope, by: str, *, rollup: bool = False) -> Filters:
    """The filters narrowed to `scope`, or NotPermitted(`outside-scope`) when they ask for
    another region or municipality or a grouping that shows others' figures. A municipality
    named in the filters sets its region as well."""
    if f.municipality is not None:
        m = municipalities().get(f.municipality)
        if m is None:
            raise InvalidInput(
                ErrorCode.INVALID_KOMMUNEKODE, f"{f.municipality!r} is not a municipality code"
            )
        if f.region is not None and f.region != m.region_code:
            raise InvalidInput(
                ErrorCode.INVALID_KOMMUNEKODE,
                f"municipality {f.municipality} lies in region {m.region_code}, not {f.region}",
            )
        f = replace(f, region=m.region_code)
    if scope.region is not None and f.region not in (None, scope.region):
        raise _outside(f"region {f.region}")
    if scope.municipality is not None and f.municipality not in (None, scope.municipality):
        raise _outside(f"municipality {f.municipality}")
    if scope.municipality is not None and by == "region":
        raise _outside("the figures by region")
    if rollup and scope.region is not None and by == "receiver":
        raise _outside("the rollups by receiving unit (use /ministry/v1/overdue)")
    return replace(
        f,
        region=scope.region or f.region,
        municipality=scope.municipality or f.municipality,
    )
