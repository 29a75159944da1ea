"""Published disclosure decisions (tracker/decisions.py) on both databases: generated
conversations go through the real tracker; a report that reads a published decision answers
exactly what deciding its cube when asked answers (every grouping, period, range and filter,
the receiver drill-down included), the published decision is `decide_cube`'s over the same
cube and leaves no suppressed cell determined; cells that appear after a decision are
suppressed until the next one, which is made only when the weights changed."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import upgrade_async
from attest_gateway.infra.db.tables import (
    tracker_decision_cells,
    tracker_decision_histograms,
    tracker_decisions,
    tracker_durations,
)
from attest_gateway.tracker import decisions as pub
from attest_gateway.tracker import disclosure
from attest_gateway.tracker import report as rep
from attest_gateway.tracker import rules as r
from attest_gateway.tracker.consumer import TrackerState
from attest_gateway.tracker.report import Filters
from attest_gateway.tracker.rules import TrackerRules
from tests.support.harness import fresh_database

NOW = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)
PLACES = (("101", "1084"), ("147", "1084"), ("461", "1083"), ("751", "1082"), ("851", "1081"))
TYPES = ("LÆ 155", "LÆ 265", "LÆ 125", "LÆ 285", "LÆ 105")
RECEIVERS = tuple(f"unit-{i:02d}" for i in range(24))
RULES = TrackerRules.build()


@pytest_asyncio.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with fresh_database(request.param, tmp_path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        try:
            yield engine
        finally:
            await engine.dispose()


def _events(rng: random.Random, n: int, *, since: dt.datetime, receivers: tuple[str, ...]
            ) -> list[StageEvent]:  # fmt: skip
    """n conversations between `since` and NOW, to receivers of very different sizes (so
    many receiver cells are small), most answered."""
    events = []
    weights = [1.0 / (1 + i) for i in range(len(receivers))]
    span = (NOW - since).total_seconds()
    for _ in range(n):
        municipality, region = rng.choice(PLACES)
        receiver = rng.choices(receivers, weights)[0]
        submitted = since + dt.timedelta(seconds=rng.uniform(0, span))
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
            "case_ref": f"a1b2c3.{rng.randrange(n):032x}",
            "psychiatric_course": rng.random() < 0.4,
            "first_day_of_absence": submitted.date() - dt.timedelta(days=20),
            "reply_deadline": submitted.date() + dt.timedelta(days=30),
        }
        events.append(StageEvent(event_id=str(uuid.uuid4()), stage=Stage.SUBMITTED,
                                 at=submitted, **meta))  # fmt: skip
        replied = submitted + dt.timedelta(days=rng.lognormvariate(2.5, 0.8))
        if rng.random() < 0.85 and replied < NOW:
            events.append(StageEvent(event_id=str(uuid.uuid4()), stage=Stage.REPLIED,
                                     at=replied, **meta))  # fmt: skip
    return events


async def _track(engine: AsyncEngine, events: list[StageEvent]) -> None:
    state = TrackerState(RULES)
    for start in range(0, len(events), 100):  # a poll's events in one transaction, as consumed
        async with engine.begin() as conn:
            for event in events[start : start + 100]:
                await state.apply_stage(conn, event)


FILTERS = [
    Filters("month"),
    Filters("quarter", region="1084"),
    Filters("month", date_from=dt.date(2025, 3, 1), date_to=dt.date(2025, 9, 30)),
    Filters("month", date_from=dt.date(2026, 2, 1), attest_type="LÆ 155"),
    Filters("year", municipality="461", region="1083"),
    Filters("week"),
    Filters("week", date_from=dt.date(2026, 6, 3), date_to=dt.date(2026, 9, 20)),
    Filters("week", date_from=dt.date(2025, 12, 31), region="1084"),
]
BY: tuple[rep.By, ...] = ("receiver", "municipality", "region", "national", "attest_type")


async def _answers(engine: AsyncEngine) -> tuple[dict[str, Any], dict[str, dt.datetime | None]]:
    """Every report's rows, and the `decided_at` of each answer."""
    out: dict[str, Any] = {}
    as_of: dict[str, dt.datetime | None] = {}
    async with engine.connect() as conn:
        for f in FILTERS:
            for by in BY:
                for series in (False, True):
                    for name in ("durations", "deadlines", "contacts"):
                        if (name == "durations" and f.period == "week"
                                and by in r.WEEKLY_HISTOGRAMS_NOT_KEPT):  # fmt: skip
                            continue  # refused: not kept weekly
                        memo = rep.Memo()
                        if name == "durations":
                            rows = await rep.durations(conn, RULES, "request_to_attest", f, by,
                                                       series=series, memo=memo)  # fmt: skip
                        elif name == "deadlines":
                            rows = await rep.deadlines(conn, RULES, f, by, series=series,
                                                       memo=memo)  # fmt: skip
                        else:
                            rows = await rep.contacts(conn, RULES, f, by, series=series,
                                                      memo=memo)  # fmt: skip
                        out[f"{name} {by} {series} {f}"] = rows
                        as_of[f"{name} {by} {series} {f}"] = memo.decided_at
            report = await rep.report(conn, RULES, f)
            as_of[f"report {f}"] = (
                None if report["decisions_as_of"] is None
                else dt.datetime.fromisoformat(report["decisions_as_of"])
            )  # fmt: skip
            out[f"report {f}"] = {k: v for k, v in report.items() if k != "decisions_as_of"}
    return out, as_of


async def _published(engine: AsyncEngine, name: str) -> dict[disclosure.Coord, bool]:
    """The cells of a published decision, shown or not."""
    c = tracker_decision_cells.c
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(c.period_kind, c.grain, c.attest_type, c.cells)
                                  .where(c.cube == name))  # fmt: skip
        return {(kind, cell[0], grain, cell[1], t): bool(cell[2]) for kind, grain, t, cells in rows
                for cell in orjson.loads(cells)}  # fmt: skip


async def test_a_published_decision_answers_as_deciding_when_asked(engine: AsyncEngine) -> None:
    rng = random.Random(29)
    since = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)
    await _track(engine, _events(rng, 300, since=since, receivers=RECEIVERS))
    asked, asked_as_of = await _answers(engine)
    assert set(asked_as_of.values()) == {None}  # nothing published: all decided when asked
    receivers = [row for key, rows in asked.items() if key.startswith("deadlines receiver True")
                 for row in rows]  # fmt: skip
    assert any(row["suppressed"] for row in receivers)
    assert any(not row["suppressed"] for row in receivers)

    done = await pub.publish(engine, RULES, now=NOW)
    # six cubes (three of months, three of weeks) × (2025, 2026); a run reads its years
    assert len(done) == 12
    assert await pub.publish(engine, RULES, now=NOW) == []  # nothing changed: nothing decided

    read, read_as_of = await _answers(engine)
    assert read == asked
    # every answer read a published decision, the receiving units' weeks included
    weekly_units = {k for k in read_as_of if k.startswith("deadlines receiver")
                    and "period='week'" in k}  # fmt: skip
    assert weekly_units
    assert set(read_as_of.values()) == {NOW}

    # the published decisions of the years are decide_cube's over the cube of both, and hold
    for grains, contact, kind in pub.CUBES:
        async with engine.connect() as conn:
            cube = await rep.cube_of(conn, Filters(kind, dt.date(2025, 1, 6),
                                                   dt.date(2026, 12, 31)),
                                     grains, rep._types(contact=contact))  # fmt: skip
        assert cube or contact, (grains, kind)
        weights = {c: v["citizens_lb"] for c, v in cube.items()}
        hidden = disclosure.decide_cube(weights, rep.region_of_municipalities(), 5)
        published = {
            cell: shown
            for year in (2025, 2026)
            for cell, shown in (await _published(engine, rep.cube_name(
                grains, contact=contact, year=year, threshold=5, kind=kind))).items()
        }  # fmt: skip
        assert set(published) == set(cube)
        assert {c for c, shown in published.items() if not shown} == hidden
        if not contact and "receiver" in grains:
            assert len(hidden) > 50
        sets = disclosure.cube_sets(weights, rep.region_of_municipalities())
        assert disclosure.determined(sets, hidden) == set()

    # the distributions are read from what was published, not from the rollup: of every type
    # or of one, by type or by place, at every grain (receiving units' and municipalities' of
    # one type from a row per type)
    async with engine.begin() as conn:
        await conn.execute(tracker_durations.delete())
    async with engine.connect() as conn:
        for f in FILTERS:
            if f.period == "week":  # weekly distributions are read from the rollup
                continue
            for by in BY:
                for series in (False, True):
                    key = f"durations {by} {series} {f}"
                    assert await rep.durations(conn, RULES, "request_to_attest", f, by,
                                               series=series) == asked[key], key  # fmt: skip


async def test_a_report_answers_as_of_its_decision_until_the_next(engine: AsyncEngine) -> None:
    rng = random.Random(7)
    await _track(engine, _events(rng, 250, since=dt.datetime(2025, 1, 2, tzinfo=dt.UTC),
                                 receivers=RECEIVERS))  # fmt: skip
    f = Filters("month")
    async with engine.connect() as conn:
        before = await rep.deadlines(conn, RULES, f, "receiver", series=True)
    await pub.publish(engine, RULES, now=NOW)
    # a new receiving unit, large enough to be shown, after the decision
    late = _events(rng, 40, since=dt.datetime(2026, 11, 2, tzinfo=dt.UTC), receivers=("new-unit",))
    await _track(engine, late)
    async with engine.connect() as conn:
        memo = rep.Memo()
        rows = await rep.deadlines(conn, RULES, f, "receiver", series=True, memo=memo)
    assert memo.decided_at == NOW
    assert rows == before  # as when it was decided: the new unit not yet in it

    later = NOW + dt.timedelta(minutes=5)
    done = await pub.publish(engine, RULES, now=later)
    assert "requests:national+receiver:month:2026:5" in done
    assert "requests:national+receiver:month:2025:5" not in done  # 2025 did not change
    async with engine.connect() as conn:
        memo = rep.Memo()
        rows = await rep.deadlines(conn, RULES, f, "receiver", series=True, memo=memo)
    assert memo.decided_at == later
    assert any(not row["suppressed"] for row in rows if row["group"] == "new-unit")
    assert rows != before
    # and the same as deciding now
    async with engine.begin() as conn:
        await conn.execute(tracker_decision_cells.delete())
        await conn.execute(tracker_decisions.delete())
    async with engine.connect() as conn:
        memo = rep.Memo()
        assert await rep.deadlines(conn, RULES, f, "receiver", series=True, memo=memo) == rows
    assert memo.decided_at is None
    assert memo.at_request


async def test_decisions_of_cubes_no_longer_published_are_removed(engine: AsyncEngine) -> None:
    rng = random.Random(3)
    await _track(engine, _events(rng, 120, since=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
                                 receivers=RECEIVERS[:6]))  # fmt: skip
    assert (
        len(await pub.publish(engine, RULES, now=NOW)) == 6
    )  # three cubes of months, three of weeks
    stricter = TrackerRules.build(min_cell_citizens=7)
    assert len(await pub.publish(engine, stricter, now=NOW)) == 6
    async with engine.connect() as conn:
        names = set((await conn.execute(sa.select(tracker_decisions.c.cube))).scalars())
        parts = set((await conn.execute(sa.select(tracker_decision_cells.c.cube))).scalars())
    assert parts <= names  # (a cube whose cells are all suppressed has no part shown)
    assert names
    assert all(name.endswith(":7") for name in names)
    async with engine.connect() as conn:  # the old threshold's reports decide when asked
        memo = rep.Memo()
        await rep.deadlines(conn, RULES, Filters(), "receiver", series=False, memo=memo)
    assert memo.decided_at is None


async def test_one_publisher_at_a_time(engine: AsyncEngine) -> None:
    rng = random.Random(5)
    await _track(engine, _events(rng, 60, since=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
                                 receivers=RECEIVERS[:4]))  # fmt: skip
    if engine.dialect.name == "postgresql":
        async with engine.connect() as other:  # another replica publishing
            await other.execute(sa.select(sa.func.pg_advisory_lock(pub.LOCK)))
            assert await pub.publish_alone(engine, RULES, now=NOW) is None
            await other.execute(sa.select(sa.func.pg_advisory_unlock(pub.LOCK)))
    assert await pub.publish_alone(engine, RULES, now=NOW)
    assert await pub.publish_alone(engine, RULES, now=NOW) == []


async def test_a_publisher_turned_off_removes_what_was_published(engine: AsyncEngine) -> None:
    rng = random.Random(11)
    await _track(engine, _events(rng, 60, since=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
                                 receivers=RECEIVERS[:4]))  # fmt: skip
    await pub.publish(engine, RULES, now=NOW)
    publisher = pub.Publisher(engine, RULES, lambda: NOW, interval=0)
    publisher.start()
    await publisher.stop()  # (waits for its one task)
    async with engine.connect() as conn:
        for table in (tracker_decisions, tracker_decision_cells, tracker_decision_histograms):
            assert (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() == 0
        memo = rep.Memo()
        await rep.deadlines(conn, RULES, Filters(), "receiver", series=False, memo=memo)
    assert memo.decided_at is None
