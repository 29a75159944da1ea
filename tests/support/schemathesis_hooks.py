"""Schemathesis checks of our own (loaded through SCHEMATHESIS_HOOKS by the e2e test)."""

from __future__ import annotations

from typing import Any

import schemathesis


def _header(response: Any, name: str) -> str:
    value = response.headers.get(name) or response.headers.get(name.title()) or ""
    return value[0] if isinstance(value, list) else str(value)


@schemathesis.check
def problem_json_with_a_code(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is RFC 9457 problem+json with a stable code."""
    if response.status_code < 400:
        return None
    content_type = _header(response, "content-type")
    if not content_type.startswith("application/problem+json"):
        raise AssertionError(f"{response.status_code} answered with {content_type!r}")
    body = response.json()
    if not (
        isinstance(body, dict) and body.get("code") and body.get("status") == response.status_code
    ):
        raise AssertionError("the problem document lacks a code or the right status")
    return None
