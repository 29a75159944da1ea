"""A ressourceforløb case's wait for its health information, read from its rollup
(tracker/rehabilitation.py, infra/db/rehabilitation.py), on both databases: generated cases'
requests (the GP's LÆ 265, a specialist's attest, other attests and other case kinds that do
not count) go through the tracker's consumer in batches, out of order and some redelivered;
then every grouping, series or not, a few filters, three moments and a threshold answer what
the rows give (`rehabilitation_rows`). A rebuild from the rows, and migration 0028, give the
rollup the tracker kept; retention keeps the counts of the requests it prunes, and a case
whose first request is gone still counts where it began."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from aiokafka import ConsumerRecord
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from attest_gateway.config import load_settings
from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.core.attests import ReplyKind
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.infra.db import rehabilitation as rh
from attest_gateway.infra.db.engine import aware, make_engine
from attest_gateway.infra.db.migrate import alembic_config, upgrade_async
from attest_gateway.infra.db.tables import (
    case_closures,
    organisations,
    tracker_conversations,
    tracker_rehab,
    tracker_rehab_cases,
)
from attest_gateway.infra.housekeeping.retention import prune_store
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.tracker.consumer import TrackerHandler, TrackerState
from attest_gateway.tracker.coverage import RehabBy
from attest_gateway.tracker.rehabilitation import rehabilitation, rehabilitation_rows
from attest_gateway.tracker.report import Filters
from attest_gateway.tracker.rules import TrackerRules
from tests.support.harness import fresh_database

NOW = dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)
PLACES = (("101", "1084"), ("147", "1084"), ("461", "1083"), ("751", "1082"), ("851", "1081"))
RECEIVERS = {"gp-1": "gp", "spec-1": "specialist", "psy-1": "psychiatry"}
SPECIALIST = ("LÆ 155", "LÆ 105", "LÆ 115")
TOPICS = Topics("medcom.messages", "gateway.tracking", "gateway.dead-letter", "gateway.audit", "c")
RULES = TrackerRules.build()


@pytest_asyncio.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            organisations.insert(),
            [{"id": org, "name": org, "role": role, "custodial": False, "enabled": True,
              "created_at": NOW} for org, role in RECEIVERS.items()],
        )  # fmt: skip
    try:
        yield engine
    finally:
        await engine.dispose()


def _ref(n: int) -> str:
    return f"a1b2c3.{n:032x}"


def _at(day: dt.date, hour: float) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(hours=hour)


def _request(
    case: dict[str, Any], attest_type: str, receiver: str, sent: dt.datetime, fate: str,
    after: float, case_kind: str = rh.CASE_KIND,
) -> list[StageEvent]:  # fmt: skip
    """A request's events: made at `sent`, then answered with the attest `after` days later
    (`attest`), without it (`declined`), or not at all (`open`; also when after NOW)."""
    meta: dict[str, Any] = {
        "conversation_id": str(uuid.uuid4()),
        "message_id": str(uuid.uuid4()),
        "message_type": MessageType.ATTEST_REQUEST,
        "attest_type": attest_type,
        "case_kind": case_kind,
        "receiver_org": receiver,
        "psychiatric_course": False,
        "reply_deadline": sent.date() + dt.timedelta(days=30),
    } | case
    events = [StageEvent(event_id=str(uuid.uuid4()), stage=Stage.SUBMITTED, at=sent, **meta)]
    answered = sent + dt.timedelta(days=after)
    if fate != "open" and answered < NOW:
        detail = None if fate == "attest" else ReplyKind.NOT_IN_TREATMENT.value
        events.append(
            StageEvent(event_id=str(uuid.uuid4()), stage=Stage.REPLIED, at=answered,
                       detail=detail, **meta)
        )  # fmt: skip
    return events


def _citizen(rng: random.Random, n: int) -> list[StageEvent]:
    """A citizen's ressourceforløb case or two (the second with the same or another job
    centre, from another first day of absence) and their requests, first made from January
    2025 to NOW, some around New Year (a week that starts in one year and ends in the next);
    now and then a sygedagpenge case's LÆ 265, which is not the rehabilitation team's."""
    municipality, region = rng.choice(PLACES)
    events: list[StageEvent] = []
    for k in range(1 if rng.random() < 0.8 else 2):
        if rng.random() < 0.08:
            first = dt.date(2025, 12, 27) + dt.timedelta(days=rng.randrange(10))
        else:
            first = NOW.date() - dt.timedelta(days=rng.randrange(0, 520))
        jobcenter = f"jc-{municipality}" if k == 0 or rng.random() < 0.5 else "jc-other"
        case = {
            "case_ref": _ref(n), "jobcenter_org": jobcenter, "municipality": municipality,
            "region_code": region, "first_day_of_absence": first - dt.timedelta(days=40 + k),
        }  # fmt: skip
        sent = _at(first, rng.uniform(0, 24))  # late in the UTC day: the next Danish day
        fate = rng.choices(("attest", "declined", "open"), (0.75, 0.1, 0.15))[0]
        events += _request(case, "LÆ 265", "gp-1", sent, fate, rng.uniform(0, 40))
        if rng.random() < 0.75:  # the specialist's, some days later (or before it)
            later = sent + dt.timedelta(days=rng.uniform(-2, 20))
            fate = rng.choices(("attest", "declined", "open"), (0.65, 0.1, 0.25))[0]
            events += _request(case, rng.choice(SPECIALIST), "spec-1", later, fate,
                               rng.uniform(0, 60))  # fmt: skip
        if rng.random() < 0.2:  # a second GP request: its attest may come first
            again = sent + dt.timedelta(days=rng.uniform(0, 30))
            events += _request(case, "LÆ 265", "gp-1", again, "attest", rng.uniform(0, 20))
        if rng.random() < 0.2:  # another attest: not part of the health information
            events += _request(case, "LÆ 125", "psy-1", sent, "attest", rng.uniform(0, 20))
    if rng.random() < 0.1:
        case = {
            "case_ref": _ref(n), "jobcenter_org": f"jc-{municipality}",
            "municipality": municipality, "region_code": region,
            "first_day_of_absence": NOW.date() - dt.timedelta(days=100),
        }  # fmt: skip
        events += _request(case, "LÆ 265", "gp-1", NOW - dt.timedelta(days=60), "attest", 5,
                           case_kind="sygedagpenge")  # fmt: skip
    return events


def _record(event: StageEvent, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = event.model_dump_json().encode()
    return ConsumerRecord("gateway.tracking", 0, offset, 0, 0, b"k", value, None, 1, len(value), ())


async def _track(engine: AsyncEngine, seed: int, citizens: int) -> list[StageEvent]:
    rng = random.Random(seed)
    events = [e for n in range(citizens) for e in _citizen(rng, n)]
    rng.shuffle(events)  # in any order: a reply before its request
    handler = TrackerHandler(engine, TrackerState(RULES))
    offset = 0
    for start in range(0, len(events), 30):
        batch = events[start : start + 30]
        batch += rng.sample(batch, min(4, len(batch)))  # and some again (redelivery)
        await handler.handle_batch([_record(e, offset + i) for i, e in enumerate(batch)])
        offset += len(batch)
    return events


async def _rollup(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as conn:
        rehab, cases = tracker_rehab, tracker_rehab_cases
        return {
            "rehab": [
                tuple(r)
                for r in await conn.execute(
                    sa.select(rehab).where(rehab.c.n != 0).order_by(*rehab.primary_key)
                )
            ],
            "cases": [
                (*r[:3], aware(r.first_at), *r[4:])
                for r in await conn.execute(sa.select(cases).order_by(*cases.primary_key))
            ],
        }


async def _rebuilt(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.begin() as conn:
        await rh.rebuild(conn, rh.RehabRules.of(RULES), chunk=13)  # several chunks
    return await _rollup(engine)


FILTERS = [
    Filters("year"),
    Filters("month"),
    Filters("quarter"),
    Filters("week"),
    Filters("month", region="1084"),
    Filters("quarter", municipality="461", date_from=dt.date(2026, 1, 1)),
    Filters("week", date_from=dt.date(2025, 12, 1), date_to=dt.date(2026, 1, 20)),
    # the cube of 2025's weeks: its last one ends in 2026
    Filters("week", date_from=dt.date(2025, 11, 1), date_to=dt.date(2025, 12, 31)),
    Filters("month", date_from=dt.date(2025, 9, 1), date_to=dt.date(2026, 2, 28)),
    Filters("quarter", date_from=dt.date(2025, 8, 20), date_to=dt.date(2026, 2, 10)),  # mid-way
]
BY: tuple[RehabBy, ...] = ("national", "region", "municipality")
MOMENTS = (NOW, NOW + dt.timedelta(days=20), NOW + dt.timedelta(days=200))


async def _compare(
    engine: AsyncEngine, rules: TrackerRules, moments: tuple[dt.datetime, ...] = MOMENTS
) -> list[dict[str, Any]]:
    """Every grouping, series or not, filter and moment: the rollup answers what the rows
    give. Returns the rows compared."""
    seen: list[dict[str, Any]] = []
    async with engine.connect() as conn:
        for now in moments:
            for f in FILTERS:
                for by in BY:
                    for series in (False, True):
                        rolled = await rehabilitation(conn, rules, f, by, series=series, now=now)
                        rows = await rehabilitation_rows(conn, rules, f, by, series=series, now=now)
                        assert rolled == rows, (now, f, by, series)
                        seen += rows
    return seen


async def test_the_rollup_answers_what_the_rows_give(engine: AsyncEngine) -> None:
    await _track(engine, seed=28, citizens=150)
    every = await _compare(engine, TrackerRules.build(min_cell_citizens=1))
    shown = [row for row in every if not row["suppressed"]]
    assert len(shown) == len(every) > 1000
    # the data holds what the test is about: complete and open cases, each part missing
    assert sum(row["complete"] for row in shown)
    assert sum(row["incomplete"] for row in shown)
    assert all(sum(row[name] for row in shown) for name in
               ("missing_lae265", "missing_lae155_or_lae105_or_lae115"))  # fmt: skip
    assert any(row["median_days"] is not None for row in shown)
    strict = await _compare(engine, TrackerRules.build(min_cell_citizens=4), (NOW,))
    assert any(row["suppressed"] for row in strict)
    assert not all(row["suppressed"] for row in strict)
    # the rollup rebuilt from the rows is the one kept as the events came; refreshing every
    # citizen again changes nothing
    kept = await _rollup(engine)
    assert kept["cases"]
    assert await _rebuilt(engine) == kept
    async with engine.begin() as conn:
        await rh.refresh(conn, rh.RehabRules.of(RULES), [_ref(n) for n in range(150)])
    assert await _rollup(engine) == kept


async def test_other_health_information_after_a_rebuild(engine: AsyncEngine) -> None:
    await _track(engine, seed=7, citizens=80)
    other = TrackerRules.build(
        min_cell_citizens=1, rehab_health_information=(("LÆ 265",), ("LÆ 155",), ("LÆ 125",))
    )
    async with engine.begin() as conn:
        await rh.rebuild(conn, rh.RehabRules.of(other))
    rows = await _compare(engine, other, (NOW,))
    assert sum(row["missing_lae125"] for row in rows)


async def _national(engine: AsyncEngine, now: dt.datetime) -> dict[str, Any]:
    async with engine.connect() as conn:
        [row] = await rehabilitation(
            conn, TrackerRules.build(min_cell_citizens=1), Filters("year"), "national",
            series=False, now=now,
        )  # fmt: skip
    return row


async def test_retention_keeps_the_counts_and_a_case_where_it_began(
    url: str, engine: AsyncEngine
) -> None:
    await _track(engine, seed=31, citizens=100)
    # a case whose LÆ 265 was made and answered long ago, its specialist's request this year
    # and still open
    case = {
        "case_ref": _ref(999), "jobcenter_org": "jc-101", "municipality": "101",
        "region_code": "1084", "first_day_of_absence": dt.date(2024, 11, 1),
    }  # fmt: skip
    first = _request(case, "LÆ 265", "gp-1", _at(dt.date(2025, 1, 10), 9), "attest", 10)
    pending = _request(case, "LÆ 155", "spec-1", _at(dt.date(2026, 5, 4), 9), "open", 0)
    handler = TrackerHandler(engine, TrackerState(RULES))
    await handler.handle_batch([_record(e, i) for i, e in enumerate(first + pending)])
    kept = await _rollup(engine)
    before = await _national(engine, NOW)
    settings = load_settings(
        database_url=url, prune_batch_size=9, retention_pause_seconds=0, retention_duty=1,
        tracker_timeline_retention_days=200,
    )  # fmt: skip
    report = await prune_store(engine, settings, TOPICS, NOW)
    assert report.counts["tracker_conversations"] > 0
    # the counts stay; the decisions of the cases with no request left go
    after = await _rollup(engine)
    assert after["rehab"] == kept["rehab"]
    assert await _national(engine, NOW) == before
    tc = tracker_conversations.c
    async with engine.connect() as conn:
        left = {
            tuple(r)
            for r in await conn.execute(
                sa.select(tc.case_ref, tc.jobcenter_org, tc.first_day_of_absence).where(
                    tc.case_kind == rh.CASE_KIND
                )
            )
        }
    decided = {row[:3] for row in after["cases"]}
    assert decided == left
    assert len(decided) < len(kept["cases"])
    assert (_ref(999), "jc-101", dt.date(2024, 11, 1)) in decided
    # its specialist's attest comes: complete, counted in January 2025 where it began, its
    # wait from then
    reply = pending[0].model_copy(
        update={"event_id": str(uuid.uuid4()), "stage": Stage.REPLIED, "at": NOW}
    )
    await handler.handle_batch([_record(reply, 100)])
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.select(tracker_rehab.c.n).where(
                tracker_rehab.c.period_kind == "month",
                tracker_rehab.c.period_start == dt.date(2025, 1, 1),
                tracker_rehab.c.grain == "municipality",
                tracker_rehab.c.place == "101",
                tracker_rehab.c.state == rh.COMPLETE,
                tracker_rehab.c.day == (NOW.date() - dt.date(2025, 1, 10)).days,
            )
        )
    assert n == 1
    later = await _national(engine, NOW)
    assert (later["complete"], later["incomplete"]) == (before["complete"] + 1,
                                                       before["incomplete"] - 1)  # fmt: skip


async def test_erasure_drops_a_closed_cases_decision(url: str, engine: AsyncEngine) -> None:
    await _track(engine, seed=32, citizens=40)
    kept = await _rollup(engine)
    ref, jobcenter, first_day = kept["cases"][0][:3]
    async with engine.begin() as conn:
        await conn.execute(
            case_closures.insert().values(
                id=str(uuid.uuid4()), jobcenter_org_id=jobcenter, case_kind=rh.CASE_KIND,
                case_ref=ref, conversations=0, closed_at=NOW + dt.timedelta(days=1),
                erase_after=NOW - dt.timedelta(1),
            )
        )  # fmt: skip
    settings = load_settings(database_url=url, retention_pause_seconds=0, retention_duty=1)
    report = await prune_store(engine, settings, TOPICS, NOW)
    assert report.counts["cases_erased"] == 1
    after = await _rollup(engine)
    assert after["rehab"] == kept["rehab"]  # the counts stay
    assert not [row for row in after["cases"] if row[:2] == (ref, jobcenter)]
    assert len(after["cases"]) < len(kept["cases"])
    assert first_day


async def test_the_migration_fills_the_rollup_as_the_tracker_wrote_it(
    url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    await _track(engine, seed=8, citizens=60)
    tracked = await _rollup(engine)
    assert tracked["rehab"]
    await engine.dispose()
    # an upgraded gateway: the rollup gone with its migration, then made again
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0027")
    async with engine.connect() as conn:
        assert not await conn.run_sync(lambda sync: sa.inspect(sync).has_table("tracker_rehab"))
    await upgrade_async(url)
    assert await _rollup(engine) == tracked
    # and the command an operator runs after changing the rules writes it again
    async with engine.begin() as conn:
        await conn.execute(tracker_rehab.delete())
    await engine.dispose()
    env = {"DATABASE_URL": url, "VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    result = await asyncio.to_thread(
        CliRunner().invoke, cli.app, ["rehabilitation-rebuild"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "written again" in result.output
    assert await _rollup(engine) == tracked


@pytest.mark.postgres
async def test_two_transactions_deciding_one_citizen_take_turns(tmp_path: Path) -> None:
    """Two cases of one citizen decided at once, in the same cells: the second refresh
    waits for the first transaction and reads its case, so the citizen counts once."""
    async with fresh_database("postgres", tmp_path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        rules = rh.RehabRules.of(RULES)
        sent = _at(dt.date(2026, 3, 2), 9)

        def row(k: int) -> dict[str, Any]:
            return {
                "conversation_id": f"c-{k}", "attest_type": "LÆ 265", "case_kind": rh.CASE_KIND,
                "municipality": "101", "region_code": "1084", "jobcenter_org": f"jc-{k}",
                "receiver_org": "gp-1", "receiver_role": "gp", "case_ref": _ref(1),
                "psychiatric_course": False, "first_day_of_absence": dt.date(2026, 1, 5),
                "request_deadline": dt.date(2026, 4, 1), "reminders": 0, "submitted_at": sent,
            }  # fmt: skip

        try:
            async with engine.connect() as one, engine.connect() as two:
                await one.begin()
                await two.begin()
                await one.execute(tracker_conversations.insert(), [row(1)])
                await rh.refresh(one, rules, [_ref(1)])
                await two.execute(tracker_conversations.insert(), [row(2)])
                second = asyncio.create_task(rh.refresh(two, rules, [_ref(1)]))
                await asyncio.sleep(0.5)
                assert not second.done()  # waiting for the citizen's lock
                await one.commit()
                await second
                await two.commit()
            kept = await _rollup(engine)
            assert await _rebuilt(engine) == kept
            year = ("year", dt.date(2026, 1, 1), "national", "DK", rh.CITIZENS, 0, 1)
            assert year in kept["rehab"]
            assert len(kept["cases"]) == 2
        finally:
            await engine.dispose()
