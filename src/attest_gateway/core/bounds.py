"""Bounds on what clients send: dates, text, ids.

Every rule here is a check that raises `pydantic_core.PydanticCustomError` with a stable error
type (entrypoints/http/problems.py maps it to a problem code), and a JSON Schema ``pattern``
that the OpenAPI document states, so that the document and the validator accept exactly the
same values.

**Dates** a client sends are written ``YYYY-MM-DD`` and lie between 2000-01-01 and 2099-12-31
(`date-out-of-range`). The range is wide on purpose: a first day of absence, a contact or a
reply deadline outside it is a typing error, and the tracker's date arithmetic stays far from
the calendar's ends. The rules relative to today (a first day of absence or a reply deadline
at most a year ahead, a contact not in advance) are the services', on the gateway's clock.

**Text** (`control-character`). PostgreSQL text cannot hold NUL, UTF-8 cannot encode a lone
UTF-16 surrogate (which a JSON escape can carry), and no field of ours needs a control
character: a reference, a code or an id (`LINE`) holds none of U+0000–U+001F and U+007F; free
text (`TEXT`) may also hold tab, line feed and carriage return, as a FHIR string may. A FHIR
Bundle submitted to the gateway is held to the free-text rule in every string
(`control_character_in`). **Ids** in a path (`ID_PATTERN`) are FHIR ids, as every message and
conversation id the gateway hands out is; another value names nothing (404).

**A reference a client writes** (`REFERENCE`: the caseworker's case reference, an
Idempotency-Key), stored in clear, must not hold a CPR number (`cpr-in-reference`): six digits
that read as a date (DDMMYY, day 01–31, month 01–12), an optional hyphen and four digits, not
next to another digit nor to a hexadecimal letter (a–f), so that a longer number, a UUID or a
hash never counts as one ("sag-0101901234" and "sag0101901234" are refused, a UUID never is).
The day and month are checked by range only, not against the calendar: a pattern can state
that exactly, and a reference that looks like the 31st of February is refused with no loss.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from dateutil.relativedelta import relativedelta
from pydantic import BeforeValidator, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

DATE_MIN: Final = dt.date(2000, 1, 1)
DATE_MAX: Final = dt.date(2099, 12, 31)
# The same range as a pattern (the calendar check is the schema's `format: date`).
DATE_PATTERN: Final = r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_date(value: object) -> object:
    """A date as a client writes it: ``YYYY-MM-DD`` from 2000-01-01 to 2099-12-31 (a
    `datetime.date` from our own code passes as it is, if in range)."""
    if isinstance(value, str) and _DATE_TEXT.fullmatch(value):
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("date_parsing", "not a date of the calendar") from None
    elif type(value) is dt.date:
        day = value
    else:
        raise PydanticCustomError("date_parsing", "a date is written YYYY-MM-DD")
    if not DATE_MIN <= day <= DATE_MAX:
        raise PydanticCustomError(
            "date_out_of_range",
            f"a date lies between {DATE_MIN.isoformat()} and {DATE_MAX.isoformat()}",
        )
    return day


InputDate = Annotated[
    dt.date,
    BeforeValidator(check_date),
    Field(json_schema_extra={"pattern": DATE_PATTERN}),
]
"""A date in a request: ``YYYY-MM-DD``, 2000-01-01 to 2099-12-31."""


def a_year_after(today: dt.date) -> dt.date:
    """The last day a client may name ahead of `today`: a first day of absence or a reply
    deadline further ahead is a typing error (the services' rule, on the gateway's clock)."""
    day: dt.date = today + relativedelta(years=1)
    return day


# --- text -------------------------------------------------------------------------------------

# C0 controls and DEL, written as regex escapes, so that a pattern reads the same in Python, in
# ECMA-262 (JSON Schema) and in a JSON document. Lone surrogates are refused too, but only by the
# checks: no JSON Schema validator's strings can hold one (and Rust's regex refuses to name one).
_LINE_CLASS: Final = r"\x00-\x1f\x7f"
_TEXT_CLASS: Final = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"  # tab, line feed, carriage return allowed
_SURROGATES: Final = r"\ud800-\udfff"
LINE_PATTERN: Final = rf"^[^{_LINE_CLASS}]*$"
TEXT_PATTERN: Final = rf"^[^{_TEXT_CLASS}]*$"
_IN_LINE: Final = re.compile(rf"[{_LINE_CLASS}{_SURROGATES}]")
_IN_TEXT: Final = re.compile(rf"[{_TEXT_CLASS}{_SURROGATES}]")
ID_PATTERN: Final = r"^[A-Za-z0-9\-.]{1,64}$"
"""A FHIR id: every message and conversation id a client may name in a path is one."""


def check_line(value: str) -> str:
    """A reference, code or id: no control character, no lone surrogate."""
    if _IN_LINE.search(value):
        raise PydanticCustomError(
            "control_character",
            "control characters (and lone surrogates) are not allowed in a reference or id",
        )
    return value


def check_text(value: str) -> str:
    """Free text: no control character but tab, line feed and carriage return."""
    if _IN_TEXT.search(value):
        raise PydanticCustomError(
            "control_character",
            "control characters other than tab, line feed and carriage return (and lone "
            "surrogates) are not allowed",
        )
    return value


def control_character_in(data: object) -> bool:
    """Whether a string or object key anywhere in decoded JSON breaks the free-text rule (a
    FHIR string holds no character below U+0020 but tab, line feed and carriage return).
    Iterative: a deeply nested document costs no recursion."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _IN_TEXT.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@dataclass(frozen=True, slots=True)
class Checked:
    """`Annotated` metadata for a string: `check` after pydantic's own validation (the type,
    and the length constraints placed before it, which keep their own error types), and
    `pattern` in the JSON Schema."""

    check: Callable[[str], str]
    pattern: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out["pattern"] = self.pattern
        return out


LINE: Final = Checked(check_line, LINE_PATTERN)
"""A reference, code or id in a request: ``Annotated[str, Field(max_length=…), LINE]``."""
TEXT: Final = Checked(check_text, TEXT_PATTERN)
"""Free text in a request: ``Annotated[str, Field(max_length=…), TEXT]``."""


NAME: Final = Field(min_length=1, max_length=100)
"""The length of a person's name part (a given name, a family name): with `LINE`."""

# --- contact points ---------------------------------------------------------------------------

PHONE_PATTERN: Final = r"^\+?[0-9]{8,15}$"
"""A phone number: 8 to 15 digits, optionally after a ``+`` (no spaces). MedCom's author
contact holds a phone number (invariant medcom-core-contact)."""
_EMAIL_PART: Final = r"[^@\s\x00-\x1f\x7f-\x9f\ufeff]+"
EMAIL_PATTERN: Final = rf"^{_EMAIL_PART}@{_EMAIL_PART}\.{_EMAIL_PART}$"
"""An e-mail address, loosely: one ``@``, a dot after it, no space or control character.
The space class differs between regex engines (Python's and Rust's take U+0085 and U+001C–U+001F,
ECMAScript's takes U+FEFF), so the characters on which they disagree are named: the
pattern accepts the same strings for the gateway and for a client reading the OpenAPI."""
Phone = Annotated[str, Field(max_length=16, pattern=PHONE_PATTERN)]
Email = Annotated[str, Field(max_length=254, pattern=EMAIL_PATTERN)]


# --- CPR numbers in references ----------------------------------------------------------------

_CPR_SHAPED: Final = r"(?:0[1-9]|[12][0-9]|3[01])(?:0[1-9]|1[0-2])[0-9]{2}-?[0-9]{4}"
_NOT_HEX: Final = "[^0-9A-Fa-f]"  # a CPR number's neighbours: no digit, no hexadecimal letter
_CPR_IN: Final = re.compile(rf"(?<![0-9A-Fa-f]){_CPR_SHAPED}(?![0-9A-Fa-f])")
REFERENCE_PATTERN: Final = (
    rf"^(?!(?:[\s\S]*{_NOT_HEX})?{_CPR_SHAPED}(?![0-9A-Fa-f]))[^{_LINE_CLASS}]*$"
)


def check_reference(value: str) -> str:
    """A reference a client writes: one line of text (`check_line`) holding no CPR number."""
    check_line(value)
    if _CPR_IN.search(value):
        raise PydanticCustomError(
            "cpr_in_reference", "a reference must not hold a CPR number (DDMMYY-SSSS)"
        )
    return value


REFERENCE: Final = Checked(check_reference, REFERENCE_PATTERN)
"""A reference a client writes and the gateway stores in clear: a line with no CPR number
(``Annotated[str, Field(max_length=…), REFERENCE]``)."""
