"""The bounds on what clients send (core/bounds.py): each check accepts exactly what the
pattern the OpenAPI document states accepts."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from attest_gateway.core import bounds
from attest_gateway.core.bounds import InputDate

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


LINE = TypeAdapter(Annotated[str, bounds.LINE])
TEXT = TypeAdapter(Annotated[str, bounds.TEXT])


def ecma_matches(pattern: str, text: str) -> bool:
    """`^…$` as JSON Schema (ECMA-262) reads it: the whole string (Python's `$` would also
    match before a final line feed)."""
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), text) is not None


@given(st.text())
def test_a_line_is_accepted_exactly_when_the_pattern_matches(text: str) -> None:
    if ecma_matches(bounds.LINE_PATTERN, text):
        assert LINE.validate_python(text) == text
    else:
        assert error_type(LINE, text) == "control_character"


@given(st.text())
def test_free_text_is_accepted_exactly_when_the_pattern_matches(text: str) -> None:
    if ecma_matches(bounds.TEXT_PATTERN, text):
        assert TEXT.validate_python(text) == text
        assert not bounds.control_character_in({"a": [text]})
    else:
        assert error_type(TEXT, text) == "control_character"
        assert bounds.control_character_in({"a": [text]})


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x0b", "\x1f", "\x7f", chr(0xD800), chr(0xDFFF)])
def test_control_characters_and_lone_surrogates(char: str) -> None:
    assert error_type(LINE, f"sag{char}1") == "control_character"
    assert error_type(TEXT, f"Hvad{char}?") == "control_character"
    assert bounds.control_character_in({"entry": [{"resource": {"id": f"x{char}"}}]})
    assert bounds.control_character_in({f"key{char}": 1})


def test_tabs_and_line_breaks_are_free_text_not_lines() -> None:
    for char in "\t\n\r":
        assert TEXT.validate_python(f"a{char}b") == f"a{char}b"
        assert not bounds.control_character_in([f"a{char}b"])
        assert error_type(LINE, f"a{char}b") == "control_character"


def test_a_deeply_nested_document_is_walked_without_recursion() -> None:
    deep: object = "x\x00"
    for _ in range(100_000):
        deep = [deep]
    assert bounds.control_character_in(deep)


REFERENCE = TypeAdapter(Annotated[str, bounds.REFERENCE])
# Pieces that make CPR-shaped runs, their near misses and their neighbours likely.
PIECES = st.sampled_from(
    ["0101901234", "010190-1234", "310290", "1234", "0", "9", "-", "a", "f", "g", "s", " ", "."]
)


@given(st.lists(PIECES | st.text(max_size=2), max_size=8).map("".join))
def test_a_reference_is_accepted_exactly_when_the_pattern_matches(text: str) -> None:
    if ecma_matches(bounds.REFERENCE_PATTERN, text):
        assert REFERENCE.validate_python(text) == text
    else:
        assert error_type(REFERENCE, text) in ("cpr_in_reference", "control_character")


@pytest.mark.parametrize(
    "text",
    ["sag-0101901234", "sag0101901234", "010190-1234", "cpr: 3112991234.", "x_1502857777_y"],
)
def test_a_cpr_number_in_a_reference(text: str) -> None:
    assert error_type(REFERENCE, text) == "cpr_in_reference"


@pytest.mark.parametrize(
    "text",
    [
        "sag-2026-0042",
        "01019012345",
        "0101901234a",  # next to a hexadecimal letter: read as part of a hexadecimal id
        "3213901234",
        "0100901234",
        "010190 1234",
        "0b6a9a3e-52a4-4d0c-a0a1-5b5c8a2f4e10",
        "contact-8f010190-1234-4aaa-8bbb-cccc0101901f",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ],
)
def test_no_cpr_number_in_a_reference(text: str) -> None:
    assert REFERENCE.validate_python(text) == text
