"""Latency with the open requests read from its rollup (tracker/latency.py) on both databases:
generated conversations go through the real tracker, out of order and replayed, and every
grouping, period and filter answers what the rows give (`latency_rows`); migration 0020 fills
the rollup from the tracked requests exactly as the tracker wrote it."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import alembic_config, upgrade_async
from attest_gateway.infra.db.tables import (
    organisations,
    tracker_cell_citizens,
    tracker_cells,
    tracker_counts,
    tracker_latency,
)
from attest_gateway.tracker.consumer import TrackerState
from attest_gateway.tracker.latency import latency, latency_rows
from attest_gateway.tracker.report import Filters
from attest_gateway.tracker.rules import TrackerRules
from attest_gateway.tracker.store import with_cells

NOW = dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)
PLACES = (("101", "1084"), ("147", "1084"), ("461", "1083"), ("751", "1082"))
RECEIVERS = {"psy-1": "psychiatry", "gp-1": "gp", "gp-2": "gp", "hosp-1": "hospital"}
TYPES = ("LÆ 155", "LÆ 265", "LÆ 125")


@pytest_asyncio.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


def _events(rng: random.Random, n: int) -> list[StageEvent]:
    """n conversations over 200 days before NOW; most answered (some only after NOW: open),
    a few to a receiver the directory does not know (kind `unknown`)."""
    events = []
    for _ in range(n):
        municipality, region = rng.choice(PLACES)
        receiver = rng.choice([*RECEIVERS, "gone-1"] if rng.random() < 0.05 else list(RECEIVERS))
        submitted = NOW - dt.timedelta(seconds=rng.uniform(0, 200 * 86400))
        meta: dict[str, Any] = {
            "conversation_id": str(uuid.uuid4()),
            "message_id": str(uuid.uuid4()),
            "message_type": MessageType.ATTEST_REQUEST,
            "attest_type": rng.choice(TYPES),
            "case_kind": "sygedagpenge",
            "municipality": municipality,
            "region_code": region,
            "jobcenter_org": f"jc-{municipality}",
            "receiver_org": receiver,
            "case_ref": f"a1b2c3.{rng.randrange(n // 2):032x}",
            "psychiatric_course": False,
            "first_day_of_absence": submitted.date() - dt.timedelta(days=20),
            "reply_deadline": submitted.date() + dt.timedelta(days=30),
        }
        events.append(StageEvent(event_id=str(uuid.uuid4()), stage=Stage.SUBMITTED,
                                 at=submitted, **meta))  # fmt: skip
        replied = submitted + dt.timedelta(days=rng.lognormvariate(2.5, 0.8))
        if rng.random() < 0.85 and replied < NOW:
            events.append(StageEvent(event_id=str(uuid.uuid4()), stage=Stage.REPLIED,
                                     at=replied, **meta))  # fmt: skip
        elif rng.random() < 0.3:  # answered without the attest, or cancelled: still open
            stage, detail = rng.choice([(Stage.REPLIED, "not-in-treatment"),
                                        (Stage.CANCELLED, None)])  # fmt: skip
            events.append(StageEvent(event_id=str(uuid.uuid4()), stage=stage, detail=detail,
                                     at=submitted + dt.timedelta(days=3), **meta))  # fmt: skip
    return events


async def _track(engine: AsyncEngine, seed: int, n: int) -> None:
    rng = random.Random(seed)
    async with engine.begin() as conn:
        await conn.execute(
            organisations.insert(),
            [{"id": org, "name": org, "role": role, "custodial": False, "enabled": True,
              "created_at": NOW} for org, role in RECEIVERS.items()],
        )  # fmt: skip
    events = _events(rng, n)
    rng.shuffle(events)  # in any order: a reply may come before its request
    state = TrackerState(TrackerRules.build())
    for event in events + events[: n // 3]:  # and some again
        async with engine.begin() as conn:
            await state.apply_stage(conn, event)


FILTERS = [
    Filters("month"),
    Filters("week"),
    Filters("quarter"),
    Filters("year", region="1084"),
    Filters("month", attest_type="LÆ 155"),
    Filters("month", municipality="461", date_from=dt.date(2026, 3, 1)),
    Filters("week", date_from=dt.date(2026, 5, 1), date_to=dt.date(2026, 6, 14)),
]
BY = ("national", "region", "attest_type", "receiver_kind")


async def _both(engine: AsyncEngine, rules: TrackerRules, f: Filters, by: Any, series: bool
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    async with engine.connect() as conn:
        rolled = await latency(conn, rules, f, by, series=series, now=NOW)
        rows = await latency_rows(conn, rules, f, by, series=series, now=NOW)
    return rolled, rows


async def test_the_rollup_answers_what_the_rows_give(engine: AsyncEngine) -> None:
    await _track(engine, seed=29, n=240)
    every = TrackerRules.build(min_cell_citizens=1)  # nothing suppressed: every figure
    for f in FILTERS:
        for by in BY:
            for series in (False, True):
                rolled, rows = await _both(engine, every, f, by, series)
                assert rolled == rows, (f, by, series)
                assert rows, (f, by, series)
    [national] = (await _both(engine, every, Filters("year"), "national", False))[0]
    assert 0 < national["open"] < national["requests"]  # open ones are in it
    kinds = {row["group"] for row in (await _both(engine, every, Filters("year"),
                                                  "receiver_kind", False))[0]}  # fmt: skip
    assert kinds == {"psychiatry", "gp", "hospital", "unknown"}
    # with the threshold: weeks and months weigh their exact citizens, as the rows do
    rules = TrackerRules.build(min_cell_citizens=5)
    for by in BY:
        rolled, rows = await _both(engine, rules, Filters("week"), by, True)
        assert rolled == rows, by
        assert any(row["suppressed"] for row in rows)
        assert not all(row["suppressed"] for row in rows)


async def _rollup_state(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    kinds = sa.select(tracker_cells.c.id).where(tracker_cells.c.grain.like("rk:%"))
    async with engine.connect() as conn:
        return {
            "latency": [
                tuple(r) for r in await conn.execute(with_cells(tracker_latency)) if r.n != 0
            ],
            "kind_counts": [
                tuple(r)
                for r in await conn.execute(
                    sa.select(
                        tracker_counts.c.cell_id,
                        tracker_counts.c.requests,
                        tracker_counts.c.citizens,
                    )
                    .where(tracker_counts.c.cell_id.in_(kinds))
                    .order_by(tracker_counts.c.cell_id)
                )
            ],
            "kind_members": [
                tuple(r)
                for r in await conn.execute(
                    sa.select(tracker_cell_citizens)
                    .where(tracker_cell_citizens.c.cell_id.in_(kinds))
                    .order_by(*tracker_cell_citizens.c)
                )
            ],
        }


async def test_the_migration_fills_the_rollup_as_the_tracker_wrote_it(
    url: str, engine: AsyncEngine
) -> None:
    await _track(engine, seed=8, n=120)
    tracked = await _rollup_state(engine)
    assert tracked["latency"]
    assert tracked["kind_counts"]
    assert tracked["kind_members"]
    await engine.dispose()
    # an upgraded gateway: the rollup gone with its migration, then made again
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0019")
    await upgrade_async(url)
    assert await _rollup_state(engine) == tracked
