"""The bounds on what clients send (schemas/bounds.py): each check accepts exactly what the
pattern the OpenAPI document states accepts."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from attest_gateway.schemas import bounds
from attest_gateway.schemas.bounds import InputDate

DATE = TypeAdapter(InputDate)


def error_type(adapter: TypeAdapter[Any], value: object) -> str:
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python(value)
    return str(caught.value.errors()[0]["type"])


@given(st.dates())
def test_a_date_is_accepted_exactly_when_the_pattern_matches(day: dt.date) -> None:
    text = day.isoformat()
    in_pattern = re.search(bounds.DATE_PATTERN, text) is not None
    assert in_pattern == (bounds.DATE_MIN <= day <= bounds.DATE_MAX)
    if in_pattern:
        assert DATE.validate_python(text) == day
    else:
        assert error_type(DATE, text) == "date_out_of_range"


@pytest.mark.parametrize(
    "value", [1_767_225_600, "2026-01-05T00:00:00", "2026-1-5", "20260105", "2026-02-30", None]
)
def test_a_date_is_written_yyyy_mm_dd(value: object) -> None:
    assert error_type(DATE, value) == "date_parsing"


def test_a_year_ahead() -> None:
    assert bounds.a_year_after(dt.date(2026, 12, 6)) == dt.date(2027, 12, 6)
    assert bounds.a_year_after(dt.date(2028, 2, 29)) == dt.date(2029, 2, 28)
