"""How many tracker consumers a process runs (`TRACKER_CONSUMERS`)."""

from __future__ import annotations

import pytest

from attest_gateway.gateway.config import load_settings
from attest_gateway.gateway.tracker.service import tracker_consumer_count


@pytest.mark.parametrize(("dialect", "expected"), [("postgresql", 2), ("sqlite", 1)])
def test_unset_it_is_two_on_postgresql_and_one_on_sqlite(dialect: str, expected: int) -> None:
    assert tracker_consumer_count(load_settings(), dialect) == expected


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_set_it_is_what_it_says_on_either_database(dialect: str) -> None:
    assert tracker_consumer_count(load_settings(tracker_consumers=3), dialect) == 3


def test_zero_consumers_is_refused() -> None:
    with pytest.raises(ValueError, match="tracker_consumers"):
        load_settings(tracker_consumers=0)
