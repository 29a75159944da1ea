"""Danish identifiers and their check rules: CPR, GLN/EAN, SOR, kommunekode, ydernummer.

Every check is a pure function that returns the normalised value or raises
`pydantic_core.PydanticCustomError` with a stable error type, so that the same
rule serves pydantic models (via the ``Annotated`` types below) and plain code.
The error message never repeats the rejected value: a CPR number must not reach
an error body or a log line.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

_DIGITS = re.compile(r"[0-9]+\Z")


class CprNumber(str):
    """A CPR number whose ``repr`` is masked, so it does not leak through debug output."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CprNumber('******-****')"


def cpr_birth_date(cpr: str) -> dt.date:
    """The birth date encoded in a CPR number (century from the 7th digit)."""
    day, month, yy, digit7 = int(cpr[0:2]), int(cpr[2:4]), int(cpr[4:6]), int(cpr[6])
    if digit7 <= 3:
        century = 1900
    elif digit7 in (4, 9):
        century = 2000 if yy <= 36 else 1900
    else:  # 5-8
        century = 2000 if yy <= 57 else 1800
    return dt.date(century + yy, month, day)


def check_cpr(value: str) -> CprNumber:
    """10 digits (an optional dash after the sixth, spaces around); the first six must be a
    real date. `CPR_PATTERN` says the same.

    The old modulus-11 check is deliberately not applied: many CPR numbers issued
    since 2007 fail it.
    """
    text = value.strip(" ") if isinstance(value, str) else ""
    compact = text[:6] + text[7:] if len(text) == 11 and text[6] == "-" else text
    if len(compact) != 10 or not _DIGITS.match(compact):
        raise PydanticCustomError("invalid_cpr", "a CPR number has 10 digits (DDMMYY-SSSS)")
    try:
        cpr_birth_date(compact)
    except ValueError:
        raise PydanticCustomError(
            "invalid_cpr", "the first six digits of a CPR number must be a date (DDMMYY)"
        ) from None
    return CprNumber(compact)


def gln_check_digit(first12: str) -> int:
    """GS1 mod-10 check digit for the first 12 digits of a GLN (weights 3,1,3,… from the right)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(first12)))
    return (10 - total % 10) % 10


GLN_CHECK_DIGIT_WRONG = "the GLN's check digit is wrong"


def check_gln(value: str) -> str:
    """A 13-digit GLN/EAN location number with a valid GS1 check digit."""
    if not isinstance(value, str) or len(value) != 13 or not _DIGITS.match(value):
        raise PydanticCustomError("invalid_gln", "a GLN has 13 digits")
    if gln_check_digit(value[:12]) != int(value[12]):
        raise PydanticCustomError("invalid_gln", GLN_CHECK_DIGIT_WRONG)
    return value


def check_sor(value: str) -> str:
    """A SOR code (Sundhedsvæsenets Organisationsregister id): 6 to 18 digits."""
    if not isinstance(value, str) or not _DIGITS.match(value) or not 6 <= len(value) <= 18:
        raise PydanticCustomError("invalid_sor", "a SOR code has 6 to 18 digits")
    return value


def check_ydernummer(value: str) -> str:
    """A GP practice's ydernummer: 5 or 6 digits."""
    if not isinstance(value, str) or not _DIGITS.match(value) or len(value) not in (5, 6):
        raise PydanticCustomError("invalid_ydernummer", "a ydernummer has 5 or 6 digits")
    return value


@dataclass(frozen=True, slots=True)
class Municipality:
    kommunekode: str
    name: str
    region_code: str
    region_name: str


@cache
def municipalities() -> dict[str, Municipality]:
    """The 98 municipalities by kommunekode, with their region (packaged data file)."""
    text = resources.files("attest_gateway.data").joinpath("municipalities.csv").read_text("utf-8")
    rows = csv.DictReader(text.splitlines())
    return {
        row["kommunekode"]: Municipality(
            row["kommunekode"], row["name"], row["region_code"], row["region_name"]
        )
        for row in rows
    }


def check_kommunekode(value: str) -> str:
    """One of the 98 municipalities' three-digit codes."""
    if not isinstance(value, str) or value not in municipalities():
        raise PydanticCustomError("invalid_kommunekode", "not a Danish municipality code")
    return value


# What the checks accept, as JSON Schema states it in the OpenAPI document (ECMA-262 regular
# expressions: `$` is the end of the text), so that a client's schema validation and the
# gateway agree. Only the GLN's check digit is beyond a pattern (`invalid-gln` says so).
_DAY_MONTH = (
    "(?:0[1-9]|1[0-9]|2[0-8])(?:0[1-9]|1[0-2])"  # days 1-28 of any month
    "|(?:29|30)(?:0[13-9]|1[0-2])"  # 29 and 30, except in February
    "|31(?:0[13578]|1[02])"  # 31 in the long months
)
_LEAP_DAY = (
    "2902(?:"
    "(?:[02468][48]|[2468]0|[13579][26])-?[0-9]{4}"  # 29 February of a year divisible by 4 …
    "|00-?[4-9][0-9]{3}"  # … and of 2000 (year 00 is 1900 when the seventh digit is 0-3)
    ")"
)
CPR_PATTERN = f"^ *(?:(?:{_DAY_MONTH})[0-9]{{2}}-?[0-9]{{4}}|{_LEAP_DAY}) *$"
GLN_PATTERN = "^[0-9]{13}$"
SOR_PATTERN = "^[0-9]{6,18}$"
YDERNUMMER_PATTERN = "^[0-9]{5,6}$"


Cpr = Annotated[
    str,
    AfterValidator(check_cpr),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": CPR_PATTERN,
            "description": "CPR number: DDMMYY-SSSS or DDMMYYSSSS, the first six digits a date",
        }
    ),
]
Gln = Annotated[
    str,
    AfterValidator(check_gln),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": GLN_PATTERN,
            "description": "GLN/EAN location number: 13 digits, the last a GS1 check digit",
        }
    ),
]
Sor = Annotated[
    str,
    AfterValidator(check_sor),
    WithJsonSchema({"type": "string", "pattern": SOR_PATTERN, "description": "SOR code"}),
]
Ydernummer = Annotated[
    str,
    AfterValidator(check_ydernummer),
    WithJsonSchema(
        {"type": "string", "pattern": YDERNUMMER_PATTERN, "description": "a GP's ydernummer"}
    ),
]
Kommunekode = Annotated[
    str,
    AfterValidator(check_kommunekode),
    WithJsonSchema(
        {
            "type": "string",
            "enum": sorted(municipalities()),
            "description": "kommunekode of one of the 98 municipalities",
        }
    ),
]
