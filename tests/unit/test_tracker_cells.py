"""Rollup cell ids (a digest of the cell, stored: it must never change) and the bounded set
of cells a tracker knows exist."""

from __future__ import annotations

import datetime as dt
import importlib

from attest_gateway.tracker.store import Cell, KnownCells, cell_id

NATIONAL_WEEK: Cell = ("national", "week", dt.date(2026, 1, 5), "LÆ 155", "DK")


def test_a_cell_id_is_the_first_eight_bytes_of_sha256_over_the_cell_signed() -> None:
    # printf 'national\x1fweek\x1f2026-01-05\x1fLÆ 155\x1fDK' | sha256sum → 9fd864b1442afe32…
    assert cell_id(NATIONAL_WEEK) == 0x9FD864B1442AFE32 - 2**64


def test_cells_that_differ_in_any_column_get_different_ids() -> None:
    variants: list[Cell] = [
        NATIONAL_WEEK,
        ("region", "week", dt.date(2026, 1, 5), "LÆ 155", "DK"),
        ("national", "month", dt.date(2026, 1, 5), "LÆ 155", "DK"),
        ("national", "week", dt.date(2026, 1, 12), "LÆ 155", "DK"),
        ("national", "week", dt.date(2026, 1, 5), "*", "DK"),
        ("national", "week", dt.date(2026, 1, 5), "LÆ 155", "1084"),
        # the separator keeps column boundaries: "ab" + "c" is not "a" + "bc"
        ("national", "week", dt.date(2026, 1, 5), "LÆ 15", "5DK"),
    ]
    assert len({cell_id(c) for c in variants}) == len(variants)
    assert all(-(2**63) <= cell_id(c) < 2**63 for c in variants)  # a PostgreSQL bigint


def test_the_migration_computes_the_ids_the_tracker_computes() -> None:
    migration = importlib.import_module(
        "attest_gateway.infra.db.migrations.versions.0011_rollup_cells"
    )
    cells: list[Cell] = [
        NATIONAL_WEEK,
        ("municipality", "month", dt.date(2026, 1, 1), "*", "101"),
        ("receiver", "month", dt.date(2025, 12, 1), "-", "gp-ærø"),
    ]
    assert [migration.cell_id(c) for c in cells] == [cell_id(c) for c in cells]


def test_known_cells_forget_the_earliest_past_their_limit() -> None:
    known = KnownCells(limit=8)
    cells: list[Cell] = [
        ("municipality", "month", dt.date(2026, 1, 1), "*", str(100 + i)) for i in range(12)
    ]
    known.remember(cells[:8])
    assert len(known) == 8
    assert cells[0] in known
    known.remember(cells[8:9])  # 9 > 8: down to three quarters of the limit, earliest first
    assert len(known) == 6
    assert cells[0] not in known
    assert cells[2] not in known
    assert cells[3] in known
    assert cells[8] in known
    known.forget()
    assert len(known) == 0
    assert cells[8] not in known
