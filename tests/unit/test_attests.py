"""The LÆ catalogue: codes, reply deadlines and who may issue each attest."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from attest_gateway.core.attests import DEFAULT_CATALOGUE, DeadlineUnit, ReplyDeadline
from attest_gateway.core.directory import HEALTH_ROLES, Role

EXPECTED_CODES = {f"LÆ {n}" for n in (105, 115, 125, 135, 145, 155, 225, 265, 275, 285)}


def test_catalogue_contains_exactly_the_le_codes() -> None:
    assert set(DEFAULT_CATALOGUE) == EXPECTED_CODES
    for code, kind in DEFAULT_CATALOGUE.items():
        assert kind.code == code
        assert kind.title
        assert kind.issuers
        assert kind.reply_deadline.amount > 0


@pytest.mark.parametrize(
    ("code", "amount", "unit"),
    [
        ("LÆ 155", 2, DeadlineUnit.MONTHS),
        ("LÆ 265", 30, DeadlineUnit.DAYS),
        ("LÆ 285", 14, DeadlineUnit.DAYS),
        ("LÆ 125", 14, DeadlineUnit.DAYS),
    ],
)
def test_reply_deadline_rules(code: str, amount: int, unit: DeadlineUnit) -> None:
    deadline = DEFAULT_CATALOGUE[code].reply_deadline
    assert deadline.amount == amount
    assert deadline.unit is unit


@pytest.mark.parametrize(
    ("code", "sent", "due"),
    [
        # two calendar months, clamped to the month's last day by relativedelta
        ("LÆ 155", dt.date(2026, 1, 31), dt.date(2026, 3, 31)),
        ("LÆ 155", dt.date(2025, 12, 31), dt.date(2026, 2, 28)),
        ("LÆ 155", dt.date(2027, 12, 31), dt.date(2028, 2, 29)),
        ("LÆ 155", dt.date(2026, 3, 15), dt.date(2026, 5, 15)),
        ("LÆ 265", dt.date(2026, 1, 31), dt.date(2026, 3, 2)),
        ("LÆ 265", dt.date(2026, 12, 15), dt.date(2027, 1, 14)),
        ("LÆ 285", dt.date(2026, 1, 31), dt.date(2026, 2, 14)),
        ("LÆ 285", dt.date(2026, 12, 25), dt.date(2027, 1, 8)),
        ("LÆ 125", dt.date(2026, 1, 31), dt.date(2026, 2, 14)),
        ("LÆ 125", dt.date(2028, 2, 20), dt.date(2028, 3, 5)),
    ],
)
def test_due_dates(code: str, sent: dt.date, due: dt.date) -> None:
    assert DEFAULT_CATALOGUE[code].reply_deadline.due(sent) == due


def test_issuers() -> None:
    assert Role.PSYCHIATRY in DEFAULT_CATALOGUE["LÆ 155"].issuers
    assert Role.GP not in DEFAULT_CATALOGUE["LÆ 155"].issuers
    assert DEFAULT_CATALOGUE["LÆ 265"].issuers == frozenset({Role.GP})
    assert DEFAULT_CATALOGUE["LÆ 125"].issuers == HEALTH_ROLES


def test_catalogue_entries_are_frozen_and_strict() -> None:
    kind = DEFAULT_CATALOGUE["LÆ 265"]
    with pytest.raises(ValidationError):
        kind.code = "LÆ 999"  # type: ignore[misc]
    assert kind.code == "LÆ 265"
    with pytest.raises(ValidationError):
        ReplyDeadline.model_validate({"amount": 1, "unit": "weeks"})
    with pytest.raises(ValidationError):
        ReplyDeadline.model_validate({"amount": 1, "unit": "days", "extra": True})
