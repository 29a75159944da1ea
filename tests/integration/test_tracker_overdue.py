"""The open overdue requests read from their rollup (tracker/overdue.py, infra/db/overdue.py)
on both databases: generated conversations go through the real tracker, out of order and
replayed, requests flagged overdue then answered with or without the attest, their deadline
moved, or left open; the rollup is always what a rebuild from the rows gives, every grouping
and filter answers what the rows give (`open_overdue_rows`), retention and the erasure of a
closed case take their requests out, and migration 0027 fills it as the tracker wrote it."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest_asyncio
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from attest_gateway.config import load_settings
from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.core.attests import ReplyKind
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.infra.db import overdue as ov
from attest_gateway.infra.db.engine import aware, make_engine
from attest_gateway.infra.db.migrate import alembic_config, upgrade_async
from attest_gateway.infra.db.tables import (
    case_closures,
    organisations,
    tracker_conversations,
    tracker_overdue,
    tracker_overdue_cells,
    tracker_overdue_citizens,
)
from attest_gateway.infra.housekeeping.retention import prune_store
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.tracker import decisions
from attest_gateway.tracker.consumer import TrackerState
from attest_gateway.tracker.overdue import open_overdue, open_overdue_rows
from attest_gateway.tracker.report import Filters, Memo
from attest_gateway.tracker.rules import TrackerRules
from attest_gateway.tracker.store import buffered_rollups

NOW = dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)
PLACES = (("101", "1084"), ("147", "1084"), ("461", "1083"), ("751", "1082"))
TYPES = ("LÆ 155", "LÆ 265")
RECEIVERS = (("gp-1", "Lægehuset Test", "gp"), ("psy-1", "Psykiatrien Test", "psychiatry"))
TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
RULES = TrackerRules.build()


@pytest_asyncio.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            organisations.insert(),
            [{"id": i, "name": name, "role": role, "custodial": False, "enabled": True,
              "created_at": NOW} for i, name, role in RECEIVERS],
        )  # fmt: skip
    try:
        yield engine
    finally:
        await engine.dispose()


def _events(rng: random.Random, n: int, citizens: int, span: float) -> list[StageEvent]:
    """n conversations made over `span` days, the last 16 days before NOW. Most past their
    deadline are flagged overdue (the sweep's event, two days after); of those some are then
    answered with the attest or without it, or their deadline moved, and the rest stay open."""
    events = []
    for _ in range(n):
        municipality, region = rng.choice(PLACES)
        submitted = NOW - dt.timedelta(days=16 + rng.uniform(0, span))
        deadline = submitted.date() + dt.timedelta(days=14)
        meta: dict[str, Any] = {
            "conversation_id": str(uuid.uuid4()),
            "message_id": str(uuid.uuid4()),
            "message_type": MessageType.ATTEST_REQUEST,
            "attest_type": rng.choice(TYPES),
            "case_kind": "sygedagpenge",
            "municipality": municipality,
            "region_code": region,
            "jobcenter_org": f"jc-{municipality}",
            "receiver_org": rng.choice(RECEIVERS)[0],
            "case_ref": f"a1b2c3.{rng.randrange(citizens):032x}",
            "psychiatric_course": False,
            "first_day_of_absence": submitted.date() - dt.timedelta(days=20),
            "reply_deadline": deadline,
        }

        def event(
            stage: Stage, at: dt.datetime, detail: str | None = None, meta: Any = meta
        ) -> None:
            events.append(
                StageEvent(event_id=str(uuid.uuid4()), stage=stage, at=at, detail=detail, **meta)
            )

        event(Stage.SUBMITTED, submitted)
        flagged = dt.datetime.combine(deadline + dt.timedelta(days=2), dt.time(8), dt.UTC)
        fate = rng.random()
        if flagged < NOW and fate < 0.75:
            event(Stage.OVERDUE, flagged, f"due {deadline.isoformat()}")
            later = flagged + dt.timedelta(days=rng.uniform(0.5, 15))
            then = rng.random()
            if later >= NOW or then < 0.45:
                continue  # open and overdue
            if then < 0.65:
                event(Stage.REPLIED, later)  # the attest, late
            elif then < 0.8:
                event(Stage.REPLIED, later, ReplyKind.NOT_IN_TREATMENT.value)
            else:  # the job centre gives more time (the request stays flagged)
                moved = (deadline + dt.timedelta(days=rng.randint(5, 60))).isoformat()
                event(Stage.DEADLINE_EXTENDED, later, moved)
        elif fate < 0.9:
            answered = submitted + dt.timedelta(days=rng.uniform(1, 12))
            if answered < NOW:
                event(Stage.REPLIED, answered)
        else:
            event(Stage.CANCELLED, submitted + dt.timedelta(days=1))
    return events


async def _apply(engine: AsyncEngine, state: TrackerState, events: Sequence[StageEvent]) -> None:
    """The events in one transaction, as the tracker's consumer applies a batch."""
    async with engine.begin() as conn:
        with buffered_rollups(state.cells) as rollups:
            batch = await state.conversations(conn, events)
            for e in events:
                await state.apply_stage(conn, e, batch)
            await batch.write(conn)
            await rollups.flush(conn)


async def _track(
    engine: AsyncEngine, seed: int, n: int, citizens: int, span: float = 200
) -> list[StageEvent]:
    rng = random.Random(seed)
    events = _events(rng, n, citizens, span)
    rng.shuffle(events)  # in any order: an overdue or a reply before its request
    replayed = events + events[: len(events) // 3]  # and some again
    state = TrackerState(RULES)
    for start in range(0, len(replayed), 40):  # batches: one request's events may share one
        await _apply(engine, state, replayed[start : start + 40])
    return events


async def _rollup(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in await conn.execute(sa.select(t).order_by(*t.primary_key))]
            for t in (tracker_overdue_cells, tracker_overdue, tracker_overdue_citizens)
        }


async def _rebuilt(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.begin() as conn:
        await ov.rebuild(conn, RULES.timezone, chunk=7)  # several chunks
    return await _rollup(engine)


async def _open_overdue_rows(engine: AsyncEngine) -> int:
    tc = tracker_conversations.c
    async with engine.connect() as conn:
        stmt = sa.select(sa.func.count()).where(
            tc.outcome == "overdue", tc.replied_at.is_(None), tc.submitted_at.is_not(None)
        )
        return int((await conn.execute(stmt)).scalar_one())


def _national(state: dict[str, list[tuple[Any, ...]]]) -> int:
    """The open overdue requests the rollup counts (its national monthly cells of all)."""
    return sum(
        row[-2]
        for row in state["tracker_overdue_cells"]
        if row[1] == "month" and row[3] == "national" and row[5] == "" and row[6] == "*"
    )


async def test_the_tracker_keeps_the_rollup_to_what_the_rows_give(engine: AsyncEngine) -> None:
    await _track(engine, seed=27, n=300, citizens=120)
    kept = await _rollup(engine)
    open_now = await _open_overdue_rows(engine)
    assert open_now > 20  # the data holds what the test is about
    assert _national(kept) == open_now
    tc = tracker_conversations.c
    async with engine.connect() as conn:
        moved = await conn.scalar(  # flagged, then given more time: still counted
            sa.select(sa.func.count()).where(
                tc.outcome == "overdue", tc.replied_at.is_(None), tc.due_date > NOW.date()
            )
        )
        unknown = await conn.scalar(  # flagged before its request's own event came
            sa.select(sa.func.count()).where(
                tc.outcome == "overdue", tc.replied_at.is_(None), tc.due_date.is_(None)
            )
        )
    assert moved
    assert unknown
    assert kept == await _rebuilt(engine)


async def _both(
    engine: AsyncEngine, rules: TrackerRules, f: Filters, by: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    async with engine.connect() as conn:
        rolled = await open_overdue(conn, rules, f, by, now=NOW)
        rows = await open_overdue_rows(conn, rules, f, by, now=NOW)
    return rolled, rows


FILTERS = [
    Filters("month"),
    Filters("week"),
    Filters("quarter"),
    Filters("year", region="1084"),
    Filters("month", attest_type="LÆ 155"),
    Filters("month", municipality="461", date_from=dt.date(2026, 3, 1)),
    Filters("week", date_from=dt.date(2026, 4, 1), date_to=dt.date(2026, 5, 20)),
]


async def test_the_rollup_answers_what_the_rows_give(engine: AsyncEngine) -> None:
    await _track(engine, seed=29, n=400, citizens=150)
    every = TrackerRules.build(min_cell_citizens=1)  # nothing suppressed: every figure
    for f in FILTERS:
        for by in ("receiver", "municipality"):
            rolled, rows = await _both(engine, every, f, by)
            assert rolled == rows, (f, by)
            assert rows, (f, by)
    [unit, *_] = (await _both(engine, every, Filters("year"), "receiver"))[0]
    assert unit["label"] in {name for _, name, _ in RECEIVERS}
    assert unit["most_days_overdue"] > 30


async def test_with_the_threshold_it_suppresses_what_the_rows_suppress(
    engine: AsyncEngine,
) -> None:
    """Weeks and months weigh their exact citizens with an open overdue request, as the rows
    do (a quarter or a year the most of its months': a lower bound, so the rollup may
    suppress more there, never less)."""
    await _track(engine, seed=30, n=500, citizens=400, span=35)
    rules = TrackerRules.build(min_cell_citizens=11)
    weeks = Filters("week", date_from=dt.date(2026, 5, 4), date_to=dt.date(2026, 5, 24))
    seen = []
    for f in (weeks, Filters("month", date_from=dt.date(2026, 5, 1))):
        for by in ("receiver", "municipality"):
            rolled, rows = await _both(engine, rules, f, by)
            assert rolled == rows, (f, by)
            seen += rolled
    assert any(row["suppressed"] for row in seen)
    assert not all(row["suppressed"] for row in seen)


async def test_the_list_by_unit_reads_its_published_decision(engine: AsyncEngine) -> None:
    """The publisher's round decides the cube by receiving unit per year, of months and of
    weeks, of every attest type and of each, and stores its figures; the list then reads the
    years it asks and answers as when it decides its cube itself, until the requests change
    (published again) or the decision is older than what it shows."""
    events = await _track(engine, seed=33, n=300, citizens=120)
    rules = TrackerRules.build(min_cell_citizens=3)
    done = await decisions.publish(engine, rules, now=NOW)
    mine = sorted(name for name in done if name.startswith("overdue:"))
    assert mine == sorted(
        f"overdue:receiver:{kind}:{attest_type}:{year}:3"
        for kind in ("month", "week")
        for attest_type in ("*", *TYPES)
        for year in (2025, 2026)
    )
    for f in (Filters("month"), Filters("year"), Filters("quarter", region="1084"),
              Filters("month", date_from=dt.date(2026, 3, 1)), Filters("week"),
              Filters("week", date_from=dt.date(2026, 3, 2), municipality="101"),
              Filters("month", attest_type="LÆ 265"),
              Filters("week", date_to=dt.date(2025, 12, 31), attest_type="LÆ 155"),
              Filters("year", attest_type="LÆ 155", date_from=dt.date(2026, 1, 1))):  # fmt: skip
        async with engine.connect() as conn:
            memo = Memo()
            published = await open_overdue(conn, rules, f, "receiver", now=NOW, memo=memo)
            assert memo.decided_at == NOW, f
            asked = await open_overdue(conn, rules, f, "receiver", now=NOW,
                                       memo=Memo(use_published=False))  # fmt: skip
            rows = await open_overdue_rows(conn, rules, f, "receiver", now=NOW)
        assert published == asked == rows, f
        assert published, f
        # a range is shown only where every period cell is: at this volume no week's, and
        # no single type's (the next test shows them all)
        if f.period != "week" and f.attest_type is None:
            assert any(not row["suppressed"] for row in published), f
    # nothing changed: nothing decided again; an open overdue request answered since: the
    # year cubes of its month and its week, of all types and of its own, again
    assert not [n for n in await decisions.publish(engine, rules, now=NOW) if "overdue" in n]
    tc = tracker_conversations.c
    async with engine.connect() as conn:
        cid, submitted, attest_type = (
            await conn.execute(
                sa.select(tc.conversation_id, tc.submitted_at, tc.attest_type)
                .where(tc.outcome == "overdue", tc.replied_at.is_(None))
                .order_by(tc.conversation_id)
                .limit(1)
            )
        ).one()
    day = RULES.local_date(aware(submitted))
    week = (day - dt.timedelta(days=day.weekday())).year
    touched = {
        f"overdue:receiver:{kind}:{t}:{year}:3"
        for kind, year in (("month", day.year), ("week", week))
        for t in ("*", attest_type)
    }
    [event, *_] = [e for e in events if e.conversation_id == cid]
    at = NOW - dt.timedelta(hours=1)
    answer = event.model_copy(
        update={"event_id": str(uuid.uuid4()), "stage": Stage.REPLIED, "detail": None, "at": at}
    )
    await _apply(engine, TrackerState(RULES), [answer])
    again = await decisions.publish(engine, rules, now=NOW + dt.timedelta(minutes=5))
    assert {n for n in again if n.startswith("overdue:")} == touched
    # the years not decided again stand as of the round: a run of years answers as of it
    async with engine.connect() as conn:
        for f in (Filters("month"), Filters("week", attest_type=attest_type)):
            memo = Memo()
            await open_overdue(conn, rules, f, "receiver", now=NOW, memo=memo)
            assert memo.decided_at == NOW + dt.timedelta(minutes=5), f


async def test_weekly_lists_by_unit_read_their_published_years(engine: AsyncEngine) -> None:
    """With every cell shown (threshold 1), the weekly and per-type lists read from the
    published year cubes give the figures the rows give."""
    await _track(engine, seed=34, n=200, citizens=80)
    rules = TrackerRules.build(min_cell_citizens=1)
    await decisions.publish(engine, rules, now=NOW)
    for f in (Filters("week"), Filters("week", date_from=dt.date(2026, 1, 5), region="1084"),
              Filters("week", attest_type="LÆ 265"),
              Filters("quarter", attest_type="LÆ 155")):  # fmt: skip
        async with engine.connect() as conn:
            memo = Memo()
            published = await open_overdue(conn, rules, f, "receiver", now=NOW, memo=memo)
            assert memo.decided_at == NOW, f
            rows = await open_overdue_rows(conn, rules, f, "receiver", now=NOW)
        assert published == rows, f
        assert any(row["open_overdue"] for row in published), f


async def test_retention_and_erasure_take_their_requests_out(url: str, engine: AsyncEngine) -> None:
    events = await _track(engine, seed=31, n=240, citizens=90)
    before = await _open_overdue_rows(engine)
    settings = load_settings(
        database_url=url, prune_batch_size=7, retention_pause_seconds=0, retention_duty=1
    )
    # the decided timelines of more than 90 days ago go, open overdue requests with them
    report = await prune_store(
        engine, settings.model_copy(update={"tracker_timeline_retention_days": 90}), TOPICS, NOW
    )
    assert report.counts["tracker_conversations"] > 0
    after_prune = await _open_overdue_rows(engine)
    assert 0 < after_prune < before
    kept = await _rollup(engine)
    assert _national(kept) == after_prune
    assert kept == await _rebuilt(engine)
    # a closed case whose time for erasure has come: its citizen's requests go
    tc = tracker_conversations.c
    async with engine.connect() as conn:
        ref, jobcenter = (
            await conn.execute(
                sa.select(tc.case_ref, tc.jobcenter_org)
                .where(tc.outcome == "overdue", tc.replied_at.is_(None))
                .order_by(tc.case_ref)
                .limit(1)
            )
        ).one()
    async with engine.begin() as conn:
        await conn.execute(
            case_closures.insert().values(
                id=str(uuid.uuid4()), jobcenter_org_id=jobcenter, case_kind="sygedagpenge",
                case_ref=ref, conversations=0, closed_at=NOW, erase_after=NOW - dt.timedelta(1),
            )
        )  # fmt: skip
    report = await prune_store(engine, settings, TOPICS, NOW)
    assert report.counts["cases_erased"] == 1
    async with engine.connect() as conn:
        of_case = (tc.case_ref == ref, tc.jobcenter_org == jobcenter)
        assert not await conn.scalar(sa.select(sa.func.count()).where(*of_case))
    assert _national(await _rollup(engine)) == await _open_overdue_rows(engine) < after_prune
    assert await _rollup(engine) == await _rebuilt(engine)
    assert events


async def test_the_migration_fills_the_rollup_as_the_tracker_wrote_it(
    url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    await _track(engine, seed=8, n=150, citizens=60)
    tracked = await _rollup(engine)
    assert tracked["tracker_overdue_cells"]
    await engine.dispose()
    # an upgraded gateway: the rollup gone with its migration, then made again
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0026")
    async with engine.connect() as conn:
        assert not await conn.run_sync(
            lambda sync: sa.inspect(sync).has_table("tracker_overdue_cells")
        )
    await upgrade_async(url)
    assert await _rollup(engine) == tracked
    # and the command an operator runs after changing TRACKER_TIMEZONE writes it again
    async with engine.begin() as conn:
        for table in (tracker_overdue_cells, tracker_overdue, tracker_overdue_citizens):
            await conn.execute(table.delete())
    await engine.dispose()
    env = {"DATABASE_URL": url, "VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    result = await asyncio.to_thread(CliRunner().invoke, cli.app, ["overdue-rebuild"], env=env)
    assert result.exit_code == 0, result.output
    assert "written again" in result.output
    assert await _rollup(engine) == tracked
