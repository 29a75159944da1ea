"""Danish identifier checks: CPR, GLN, SOR, ydernummer, kommunekode and the municipality table."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from attest_gateway.core.identifiers import (
    Cpr,
    CprNumber,
    Gln,
    check_cpr,
    check_gln,
    check_kommunekode,
    check_sor,
    check_ydernummer,
    cpr_birth_date,
    gln_check_digit,
    municipalities,
)

_MOD11_WEIGHTS = (4, 3, 2, 7, 6, 5, 4, 3, 2, 1)


def _passes_mod11(cpr: str) -> bool:
    return sum(int(d) * w for d, w in zip(cpr, _MOD11_WEIGHTS, strict=True)) % 11 == 0


# --- CPR -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0101901234", "010190-1234", " 010190-1234 "])
def test_check_cpr_accepts_with_and_without_dash(value: str) -> None:
    result = check_cpr(value)
    assert result == "0101901234"
    assert isinstance(result, CprNumber)


@pytest.mark.parametrize(
    "value",
    [
        "010190123",  # 9 digits
        "01019012345",  # 11 digits
        "010190-123",  # 9 digits with dash
        "01019A1234",  # a letter
        "abcdefghij",
        "0101９01234",  # a non-ASCII digit
        "",
    ],
)
def test_check_cpr_rejects_wrong_shape(value: str) -> None:
    with pytest.raises(PydanticCustomError) as info:
        check_cpr(value)
    assert info.value.type == "invalid_cpr"


@pytest.mark.parametrize(
    "value",
    [
        "3102901234",  # 31 February
        "3104901234",  # 31 April
        "0013901234",  # month 13
        "0001901234",  # day 0
        "2902000123",  # 29 Feb 1900 (7th digit 0 → 1900, not a leap year)
        "2902013123",  # 29 Feb 1901
    ],
)
def test_check_cpr_rejects_first_six_not_a_date(value: str) -> None:
    with pytest.raises(PydanticCustomError) as info:
        check_cpr(value)
    assert info.value.type == "invalid_cpr"


def test_leap_day_depends_on_the_century_digit() -> None:
    # 290200 with 7th digit 0 is 29 Feb 1900 (no leap day), with 7th digit 4 it is 29 Feb 2000.
    with pytest.raises(PydanticCustomError):
        check_cpr("2902000123")
    assert check_cpr("2902004123") == "2902004123"
    assert cpr_birth_date("2902004123") == dt.date(2000, 2, 29)


def test_cpr_failing_modulus_11_is_accepted() -> None:
    value = "0101901234"
    assert not _passes_mod11(value)
    assert check_cpr(value) == value


def test_cpr_repr_is_masked() -> None:
    result = check_cpr("010190-1234")
    assert repr(result) == "CprNumber('******-****')"
    assert "0101901234" not in repr(result)
    assert "1234" not in repr([result])
    assert str(result) == "0101901234"


@pytest.mark.parametrize(
    "value", ["3102901234", "310290-1234", "01019012345", "0101901234567", "31029O1234"]
)
def test_cpr_error_message_never_contains_the_input(value: str) -> None:
    with pytest.raises(PydanticCustomError) as info:
        check_cpr(value)
    text = f"{info.value} {info.value.message()} {info.value!r}"
    assert value not in text
    assert value.replace("-", "") not in text
    assert value[:6] not in text


def test_cpr_validation_error_through_the_annotated_type() -> None:
    adapter: TypeAdapter[str] = TypeAdapter(Cpr)
    assert adapter.validate_python("010190-1234") == "0101901234"
    with pytest.raises(ValidationError) as info:
        adapter.validate_python("3102901234")
    assert [e["type"] for e in info.value.errors()] == ["invalid_cpr"]


@pytest.mark.parametrize(
    ("cpr", "expected"),
    [
        ("0101000123", dt.date(1900, 1, 1)),
        ("3112993123", dt.date(1999, 12, 31)),
        ("1506552123", dt.date(1955, 6, 15)),
        ("0101364123", dt.date(2036, 1, 1)),
        ("0101374123", dt.date(1937, 1, 1)),
        ("0101369123", dt.date(2036, 1, 1)),
        ("0101379123", dt.date(1937, 1, 1)),
        ("0101575123", dt.date(2057, 1, 1)),
        ("0101585123", dt.date(1858, 1, 1)),
        ("0101578123", dt.date(2057, 1, 1)),
        ("0101588123", dt.date(1858, 1, 1)),
        ("0101006123", dt.date(2000, 1, 1)),
        ("3112997123", dt.date(1899, 12, 31)),
    ],
)
def test_cpr_birth_date_century_rules(cpr: str, expected: dt.date) -> None:
    assert cpr_birth_date(cpr) == expected


def _century_digits(year: int) -> list[int]:
    """The 7th digits that put `year` in its century, from the CPR office's table."""
    yy = year % 100
    if 1900 <= year <= 1999:
        return [0, 1, 2, 3] + ([4, 9] if yy >= 37 else [])
    if 2000 <= year <= 2036:
        return [4, 9, 5, 6, 7, 8]
    if 2037 <= year <= 2057:
        return [5, 6, 7, 8]
    return [5, 6, 7, 8]  # 1858-1899


@settings(max_examples=200)
@given(
    birth=st.dates(min_value=dt.date(1858, 1, 1), max_value=dt.date(2057, 12, 31)),
    data=st.data(),
)
def test_cpr_built_from_a_date_round_trips(birth: dt.date, data: st.DataObject) -> None:
    digit7 = data.draw(st.sampled_from(_century_digits(birth.year)))
    serial = data.draw(st.integers(min_value=0, max_value=999))
    cpr = f"{birth:%d%m}{birth.year % 100:02d}{digit7}{serial:03d}"
    assert check_cpr(cpr) == cpr
    assert check_cpr(f"{cpr[:6]}-{cpr[6:]}") == cpr
    assert cpr_birth_date(cpr) == birth


# --- GLN -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gln", ["5790001348120", "5790000209354"])
def test_real_medcom_glns_are_valid(gln: str) -> None:
    assert check_gln(gln) == gln
    assert gln_check_digit(gln[:12]) == int(gln[12])


@pytest.mark.parametrize("gln", ["5790001348120", "5790000209354"])
def test_changing_the_last_gln_digit_invalidates(gln: str) -> None:
    for digit in "0123456789":
        if digit == gln[12]:
            continue
        with pytest.raises(PydanticCustomError) as info:
            check_gln(gln[:12] + digit)
        assert info.value.type == "invalid_gln"


@pytest.mark.parametrize(
    "value", ["579000134812", "57900013481200", "579000134812X", "", "5790001348120 "]
)
def test_check_gln_rejects_wrong_shape(value: str) -> None:
    with pytest.raises(PydanticCustomError) as info:
        check_gln(value)
    assert info.value.type == "invalid_gln"


def test_gln_known_check_digits() -> None:
    assert gln_check_digit("579000134812") == 0
    assert gln_check_digit("579000020935") == 4
    assert gln_check_digit("000000000000") == 0
    assert gln_check_digit("000000000001") == 7  # weight 3 on the rightmost digit


@settings(max_examples=200)
@given(first12=st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_gln_check_digit_property(first12: str) -> None:
    digit = gln_check_digit(first12)
    assert 0 <= digit <= 9
    assert check_gln(f"{first12}{digit}") == f"{first12}{digit}"
    for other in range(10):
        if other != digit:
            with pytest.raises(PydanticCustomError):
                check_gln(f"{first12}{other}")


def test_gln_annotated_type_error_type() -> None:
    adapter: TypeAdapter[str] = TypeAdapter(Gln)
    with pytest.raises(ValidationError) as info:
        adapter.validate_python("5790001348121")
    assert [e["type"] for e in info.value.errors()] == ["invalid_gln"]


def test_gln_with_trailing_newline_raises_the_custom_error() -> None:
    with pytest.raises(PydanticCustomError):
        check_gln("579000134812\n")


# --- SOR, ydernummer, kommunekode -------------------------------------------------------------


@pytest.mark.parametrize("value", ["123456", "715381000016006", "123456789012345678"])
def test_check_sor_accepts(value: str) -> None:
    assert check_sor(value) == value


@pytest.mark.parametrize(
    "value", ["12345", "1234567890123456789", "71538100001600A", "", " 123456"]
)
def test_check_sor_rejects(value: str) -> None:
    with pytest.raises(PydanticCustomError) as info:
        check_sor(value)
    assert info.value.type == "invalid_sor"


def test_check_sor_rejects_trailing_newline() -> None:
    with pytest.raises(PydanticCustomError):
        check_sor("123456\n")


@pytest.mark.parametrize("value", ["12345", "123456"])
def test_check_ydernummer_accepts(value: str) -> None:
    assert check_ydernummer(value) == value


@pytest.mark.parametrize("value", ["1234", "1234567", "12345A", ""])
def test_check_ydernummer_rejects(value: str) -> None:
    with pytest.raises(PydanticCustomError) as info:
        check_ydernummer(value)
    assert info.value.type == "invalid_ydernummer"


def test_check_ydernummer_rejects_trailing_newline() -> None:
    with pytest.raises(PydanticCustomError):
        check_ydernummer("12345\n")


def test_check_kommunekode_accepts_copenhagen() -> None:
    assert check_kommunekode("101") == "101"
    assert municipalities()["101"].name == "København"
    assert municipalities()["101"].region_code == "1084"


@pytest.mark.parametrize("value", ["999", "0101", "10", "", "101 "])
def test_check_kommunekode_rejects(value: str) -> None:
    with pytest.raises(PydanticCustomError) as info:
        check_kommunekode(value)
    assert info.value.type == "invalid_kommunekode"


def test_municipalities_table() -> None:
    table = municipalities()
    assert len(table) == 98
    assert {m.region_code for m in table.values()} == {"1081", "1082", "1083", "1084", "1085"}
    assert len({m.region_name for m in table.values()}) == 5
    for code, municipality in table.items():
        assert municipality.kommunekode == code
        assert len(code) == 3
        assert code.isdigit()
        assert municipality.name
        assert check_kommunekode(code) == code
