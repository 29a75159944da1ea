"""Parse a MedCom message Bundle from JSON.

:func:`parse_bundle` raises only :class:`BundleError`, whose detail names locations and error
types, never input values (the input carries CPR numbers and health text). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

import orjson
from pydantic import (
    ValidationError,
)

from attest_gateway.core.errors import ErrorCode
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.rules import check_medcom_rules

_SAFE_LOC = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-\[\]\(\)\., ]{0,80}$")


_MAX_REPORTED_ERRORS: Final = 5


def _describe(exc: ValidationError) -> str:
    """Locations and error types of a ValidationError, no input values."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for err in errors[:_MAX_REPORTED_ERRORS]:
        loc = ".".join(
            str(p) if isinstance(p, int) or _SAFE_LOC.match(p) else "?" for p in err["loc"]
        )
        parts.append(f"{loc or '<root>'}: {err['type']}")
    more = len(errors) - _MAX_REPORTED_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


MAX_JSON_DEPTH: Final = 64


"""The deepest nesting of objects and arrays a message may have. A MedCom message nests about
a dozen levels (Bundle → entry → resource → extension → extension → value → coding); the
limit leaves room for that and stops a hostile document long before a JSON encoder's or a
validator's own recursion limit (orjson's is 254)."""


def json_depth_exceeds(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether decoded JSON nests objects and arrays more than `limit` levels deep.
    Iterative, so that the check itself cannot hit Python's recursion limit."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_bundle(data: object) -> Bundle:
    """Validate a FHIR message Bundle (decoded JSON) and the MedCom rules; raise BundleError."""
    if json_depth_exceeds(data):
        raise BundleError(
            ErrorCode.TOO_DEEPLY_NESTED, f"the Bundle nests more than {MAX_JSON_DEPTH} levels deep"
        )
    try:
        bundle = Bundle.model_validate(data)
    except ValidationError as exc:
        raise BundleError(ErrorCode.INVALID_BUNDLE, _describe(exc)) from exc
    check_medcom_rules(bundle)
    return bundle


def parse_bundle_json(raw: str | bytes) -> Bundle:
    """Like :func:`parse_bundle`, from JSON text (decoded first, so that the depth limit
    holds for both)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BundleError(ErrorCode.INVALID_BUNDLE, "<root>: json_invalid") from exc
    return parse_bundle(data)
