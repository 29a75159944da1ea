"""Bounds on what clients send: dates.

Every rule here is a check that raises `pydantic_core.PydanticCustomError` with a stable error
type (gateway/http.py maps it to a problem code), and a JSON Schema ``pattern`` that the
OpenAPI document states, so that the document and the validator accept exactly the same
values.

**Dates** a client sends are written ``YYYY-MM-DD`` and lie between 2000-01-01 and 2099-12-31
(`date-out-of-range`). The range is wide on purpose: a first day of absence, a contact or a
reply deadline outside it is a typing error, and the tracker's date arithmetic stays far from
the calendar's ends. The rules relative to today (a first day of absence or a reply deadline
at most a year ahead, a contact not in advance) are the services', on the gateway's clock.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Final

from dateutil.relativedelta import relativedelta
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

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
