"""What a partner route refuses before its handler runs, whatever the route: a query parameter
it does not declare (422 `unknown-parameter`) and a body of a media type it does not take (415
`unsupported-media-type`). The route class of the partner routers (`authenticated_first` in
auth.py) calls these after the caller is known, before the body is read.

An unknown query parameter is refused rather than ignored: `?region_code=1084` on a ministry
report, or `?since=…` on a list, would otherwise answer the national figures or the whole list
as if the filter had been applied.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request

from attest_gateway.core.errors import ErrorCode, InvalidInput, Malformed

JSON = "application/json"
#: A parameter name that is named back in the answer: a word, never a run of digits (a name
#: is the caller's input, and the answer never repeats input that may carry a CPR number).
_NAMEABLE = re.compile(r"[A-Za-z][A-Za-z_.-]{0,63}")


def declared_query_parameters(route: APIRoute) -> frozenset[str]:
    """The query parameters a route takes, by the names a client sends (aliases), its
    dependencies' included."""

    def walk(dependant: Dependant) -> set[str]:
        names = {param.alias for param in dependant.query_params}
        for sub in dependant.dependencies:
            names |= walk(sub)
        return names

    return frozenset(walk(route.dependant))


def refuse_unknown_query_parameters(request: Request, declared: Collection[str]) -> None:
    """422 `unknown-parameter` for a query parameter the route does not declare."""
    unknown = sorted({name for name in request.query_params if name not in declared})
    if not unknown:
        return
    named = [name for name in unknown if _NAMEABLE.fullmatch(name)]
    takes = ", ".join(sorted(declared)) if declared else "none"
    which = ", ".join(named) if len(named) == len(unknown) else "a query parameter"
    raise InvalidInput(
        ErrorCode.UNKNOWN_PARAMETER,
        f"this endpoint does not take {which} (it takes: {takes})",
        extra={"parameters": named} if len(named) == len(unknown) else None,
    )


def media_type_of(request: Request) -> str:
    """The request's media type without its parameters (`; charset=utf-8`), lower case."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def refuse_other_media_types(request: Request, accepted: Collection[str]) -> None:
    """415 `unsupported-media-type` for a body of another media type, or of none."""
    if media_type_of(request) not in accepted:
        raise Malformed(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"send {' or '.join(sorted(accepted))}")
