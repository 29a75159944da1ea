"""Contact over registered cases read from its rollup (infra/db/coverage.py,
tracker/coverage.py `coverage`) on both databases: generated cases, treatments, contacts of
either side, changes and closings go through the store's repositories and the coverage
refresh in one transaction each (as the services do), requests to psychiatry and their
replies through the tracker's consumer (batches, some redelivered), in any order; then every
grouping, series or not, a few filters and three moments (windows closing as time passes)
answer what the rows give (`coverage_rows`), suppression included. Rebuilding the rollup
from the rows (`attest-gateway coverage-rebuild`), and migration 0022, give the rollup the
incremental path kept."""

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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from typer.testing import CliRunner

from attest_gateway.contracts.stages import MessageType, Stage, StageEvent
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.infra.db import coverage as cr
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.infra.db.migrate import alembic_config, upgrade_async
from attest_gateway.infra.db.tables import organisations, tracker_coverage, tracker_coverage_cases
from attest_gateway.infra.db.uow import SqlCases, SqlContacts, SqlCoverage, SqlTreatments
from attest_gateway.ports.records import CaseRecord, ContactRecord, TreatmentRecord
from attest_gateway.tracker.consumer import TrackerHandler, TrackerState
from attest_gateway.tracker.coverage import CoverageBy, coverage, coverage_rows
from attest_gateway.tracker.report import Filters
from attest_gateway.tracker.rules import TrackerRules
from tests.support.harness import fresh_database

NOW = dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)
PLACES = (("101", "1084"), ("147", "1084"), ("461", "1083"), ("751", "1082"), ("851", "1081"))
RECEIVERS = {"psy-1": "psychiatry", "psy-2": "psychiatry", "gp-1": "gp"}
KINDS = ("sygedagpenge", "sygedagpenge", "jobafklaringsforloeb", "ledighedsydelse")
CHANNELS = ("meeting", "phone", "video", "written", "other")
RULES = TrackerRules.build()


@pytest_asyncio.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


def _ref(n: int) -> str:
    return f"a1b2c3.{n:032x}"


class World:
    """The generated traffic: operations, each applied in a transaction of its own."""

    def __init__(self, rng: random.Random, citizens: int) -> None:
        self.rng = rng
        self.ops: list[tuple[str, Any]] = []
        self.cases: list[CaseRecord] = []
        for n in range(citizens):
            self._citizen(n)

    def _citizen(self, n: int) -> None:
        rng = self.rng
        municipality, region = rng.choice(PLACES)
        ref = _ref(n)
        for k in range(1 if rng.random() < 0.8 else 2):
            # windows ending from last summer to after the later moments
            first = NOW.date() - dt.timedelta(days=rng.randrange(-20, 400))
            if k == 1 and rng.random() < 0.5:  # a second case in the same weeks
                first = self.cases[-1].first_day_of_absence + dt.timedelta(days=rng.randrange(7))
            jc = f"jc-{municipality}"
            case = CaseRecord(
                case_id=str(uuid.uuid4()), jobcenter_org=jc, jobcenter_case_id=f"sag-{n}-{k}",
                case_ref=ref, municipality=municipality, region_code=region,
                case_kind=rng.choice(KINDS), psychiatric_course=rng.random() < 0.6,
                first_day_of_absence=first, closed_on=None, created_at=NOW, updated_at=NOW,
                citizen_sealed=None,
            )  # fmt: skip
            self.cases.append(case)
            self.ops.append(("case", case))
            end = first + dt.timedelta(days=55)
            if rng.random() < 0.25:
                self.ops.append(("course", (case, not case.psychiatric_course)))
            if rng.random() < 0.15:
                self.ops.append(("close", (case, first + dt.timedelta(days=rng.randrange(80)))))
            if rng.random() < 0.3:
                start = first + dt.timedelta(days=rng.randrange(-120, 70))
                stop = start + dt.timedelta(days=rng.randrange(10, 100))
                self.ops.append(("treatment", (ref, start, stop if rng.random() < 0.5 else None)))
            for _ in range(rng.choice((0, 0, 1, 1, 2))):
                day = first + dt.timedelta(days=rng.randrange(-10, 70))
                other_jc = rng.random() < 0.1  # with another job centre: not this case's
                self.ops.append(
                    ("contact", (case, day, rng.choice(CHANNELS), rng.random() < 0.4, other_jc))
                )
            for _ in range(rng.choice((0, 1, 1, 2))):
                sent = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
                    days=rng.randrange(-5, 60), hours=rng.randrange(24)
                )
                self.ops.append(("request", (case, sent, end)))

    def events(self, case: CaseRecord, sent: dt.datetime, end: dt.date) -> list[StageEvent]:
        rng = self.rng
        receiver = rng.choice(list(RECEIVERS))
        meta: dict[str, Any] = {
            "conversation_id": str(uuid.uuid4()),
            "message_id": str(uuid.uuid4()),
            "message_type": MessageType.ATTEST_REQUEST,
            "attest_type": "LÆ 125",
            "case_kind": case.case_kind,
            "municipality": case.municipality,
            "region_code": case.region_code,
            "jobcenter_org": case.jobcenter_org,
            "receiver_org": receiver,
            "case_ref": case.case_ref,
            "psychiatric_course": case.psychiatric_course,
            "first_day_of_absence": case.first_day_of_absence,
            "reply_deadline": sent.date() + dt.timedelta(days=30),
        }
        out = [StageEvent(event_id=str(uuid.uuid4()), stage=Stage.SUBMITTED, at=sent, **meta)]
        # answered with the attest before or after the window's end (at 23:30 UTC, the next
        # day in Danish time: the window is in local days), or without it, or not at all
        roll = rng.random()
        if roll < 0.6:
            replied = dt.datetime.combine(
                sent.date() + dt.timedelta(days=rng.randrange(0, 40)), dt.time(23, 30),
                tzinfo=dt.UTC,
            )  # fmt: skip
            out.append(
                StageEvent(event_id=str(uuid.uuid4()), stage=Stage.REPLIED, at=replied, **meta)
            )
        elif roll < 0.75:
            out.append(
                StageEvent(event_id=str(uuid.uuid4()), stage=Stage.REPLIED,
                           detail="not-in-treatment", at=sent + dt.timedelta(days=3), **meta)
            )  # fmt: skip
        return out


def _record(event: StageEvent, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = event.model_dump_json().encode()
    return ConsumerRecord("gateway.tracking", 0, offset, 0, 0, b"k", value, None, 1, len(value), ())


async def _apply(conn: AsyncConnection, rules: cr.CoverageRules, op: str, arg: Any) -> None:
    """One change and its refresh, as the services make them."""
    refresh = SqlCoverage(conn, rules).refresh
    if op == "case":
        await SqlCases(conn).add(arg)
        await refresh([arg.case_ref])
    elif op in ("course", "close"):
        case, value = arg
        current = await SqlCases(conn).by_jobcenter_case_id(
            case.jobcenter_org, case.jobcenter_case_id
        )
        assert current is not None
        field = "psychiatric_course" if op == "course" else "closed_on"
        changed = CaseRecord(
            **{f: getattr(current, f) for f in CaseRecord.__dataclass_fields__} | {field: value}
        )
        await SqlCases(conn).update(changed)
        await refresh([case.case_ref])
    elif op == "treatment":
        ref, start, stop = arg
        await SqlTreatments(conn).add(
            TreatmentRecord(
                treatment_id=str(uuid.uuid4()), psychiatry_org="psy-1", case_ref=ref,
                region_code="1084", start_date=start, end_date=stop, idempotency_key=None,
                response="{}", created_at=NOW, citizen_sealed=None,
            )
        )  # fmt: skip
        await refresh([ref])
    elif op == "contact":
        case, day, channel, by_psychiatry, other_jc = arg
        await SqlContacts(conn).add(
            ContactRecord(
                contact_id=str(uuid.uuid4()),
                jobcenter_org="jc-other" if other_jc else case.jobcenter_org,
                psychiatry_org="psy-2", case_ref=case.case_ref, case_kind=case.case_kind,
                first_day_of_absence=case.first_day_of_absence, contact_date=day,
                channel=channel, idempotency_key=None, response="{}", created_at=NOW,
                citizen_sealed=None, registrar_org="psy-2" if by_psychiatry else case.jobcenter_org,
            )
        )  # fmt: skip
        await refresh([case.case_ref])


async def _track(engine: AsyncEngine, seed: int, citizens: int) -> World:
    rng = random.Random(seed)
    world = World(rng, citizens)
    async with engine.begin() as conn:
        await conn.execute(
            organisations.insert(),
            [{"id": org, "name": org, "role": role, "custodial": False, "enabled": True,
              "created_at": NOW} for org, role in RECEIVERS.items()],
        )  # fmt: skip
    ops = world.ops
    rng.shuffle(ops)
    # a case's changes after its registration; anything else in any order (a contact, a
    # treatment or a reply may come before the case is registered)
    registered: set[int] = set()
    ordered: list[tuple[str, Any]] = []
    waiting: list[tuple[str, Any]] = []
    for op, arg in ops:
        if op in ("course", "close") and id(arg[0]) not in registered:
            waiting.append((op, arg))
            continue
        ordered.append((op, arg))
        if op == "case":
            registered.add(id(arg))
            ordered += [w for w in waiting if w[1][0] is arg]
            waiting = [w for w in waiting if w[1][0] is not arg]
    assert not waiting
    state = TrackerState(RULES)
    handler = TrackerHandler(engine, state)
    rules = cr.CoverageRules.of(RULES)
    # each event goes into this batch or one of the next two: a reply may come in a batch
    # before its request's, or after it
    queue: list[list[StageEvent]] = [[], [], []]
    requests = offset = 0
    for op, arg in ordered:
        if op == "request":
            for e in world.events(*arg):
                queue[rng.randrange(3)].append(e)
            requests += 1
            if requests % 5:
                continue
            batch = queue.pop(0)
            queue.append([])
            rng.shuffle(batch)
            batch += rng.sample(batch, min(3, len(batch)))  # and some again (redelivery)
            await handler.handle_batch([_record(e, offset + i) for i, e in enumerate(batch)])
            offset += len(batch)
            continue
        async with engine.begin() as conn:
            await _apply(conn, rules, op, arg)
    for e in [e for events in queue for e in events]:  # the last ones one by one
        async with engine.begin() as conn:
            await state.apply_stage(conn, e)
    return world


FILTERS = [
    Filters("year"),
    Filters("month"),
    Filters("quarter"),
    Filters("week"),
    Filters("month", region="1084"),
    Filters("quarter", municipality="461", date_from=dt.date(2026, 1, 1)),
    Filters("week", date_from=dt.date(2026, 3, 4), date_to=dt.date(2026, 6, 17)),
    Filters("month", date_from=dt.date(2025, 9, 1), date_to=dt.date(2026, 2, 28)),
]
BY: tuple[CoverageBy, ...] = ("national", "region", "municipality", "case_kind")
MOMENTS = (NOW, NOW + dt.timedelta(days=20), NOW + dt.timedelta(days=90))


async def _compare(engine: AsyncEngine, rules: TrackerRules, *, suppressing: bool) -> int:
    """Every grouping, series or not, filter and moment: the rollup answers what the rows
    give. Returns how many rows were compared."""
    compared = suppressed = 0
    async with engine.connect() as conn:
        for now in MOMENTS:
            for f in FILTERS:
                for by in BY:
                    for series in (False, True):
                        rolled = await coverage(conn, rules, f, by, series=series, now=now)
                        rows = await coverage_rows(conn, rules, f, by, series=series, now=now)
                        assert rolled == rows, (now, f, by, series)
                        compared += len(rows)
                        suppressed += sum(row["suppressed"] for row in rows)
    assert compared
    assert bool(suppressed) == suppressing
    return compared


async def _rollup_state(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as conn:
        return {
            "coverage": [
                tuple(r)
                for r in await conn.execute(
                    sa.select(tracker_coverage)
                    .where(tracker_coverage.c.n != 0)
                    .order_by(*tracker_coverage.primary_key.columns)
                )
            ],
            "cases": [
                tuple(r)
                for r in await conn.execute(
                    sa.select(tracker_coverage_cases).order_by(tracker_coverage_cases.c.case_id)
                )
            ],
        }


async def test_the_rollup_answers_what_the_rows_give(engine: AsyncEngine) -> None:
    await _track(engine, seed=29, citizens=160)
    await _compare(engine, TrackerRules.build(min_cell_citizens=1), suppressing=False)
    await _compare(engine, TrackerRules.build(min_cell_citizens=4), suppressing=True)
    [national] = await _national(engine, TrackerRules.build(min_cell_citizens=1))
    # every kind of decision is in it
    for name in ("contact_by_jobcenter", "contact_by_psychiatry", "contact_by_attest",
                 "without_contact", "pending", "closed_early"):  # fmt: skip
        assert national[name] > 0, name
    # the rollup rebuilt from the rows is the one kept as the changes came
    kept = await _rollup_state(engine)
    async with engine.begin() as conn:
        await cr.rebuild(conn, cr.CoverageRules.of(RULES), chunk=37)
    assert await _rollup_state(engine) == kept
    # refreshing every citizen again changes nothing
    async with engine.begin() as conn:
        await cr.refresh(conn, cr.CoverageRules.of(RULES), [_ref(n) for n in range(160)])
    assert await _rollup_state(engine) == kept


async def _national(engine: AsyncEngine, rules: TrackerRules) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return await coverage(conn, rules, Filters("year"), "national", series=False, now=NOW)


async def test_other_contact_rules_after_a_rebuild(engine: AsyncEngine) -> None:
    await _track(engine, seed=7, citizens=80)
    # the old definition: any request to psychiatry counts; a shorter window; one kind
    other = TrackerRules.build(
        min_cell_citizens=1,
        contact_counts=frozenset({"meeting", "written", "request"}),
        contact_window_weeks=6,
        contact_case_kinds=frozenset({"sygedagpenge"}),
    )
    async with engine.begin() as conn:
        await cr.rebuild(conn, cr.CoverageRules.of(other))
    await _compare(engine, other, suppressing=False)
    [national] = await _national(engine, other)
    assert national["contact_by_request"] > 0
    assert national["contact_by_attest"] == 0


async def test_the_migration_fills_the_rollup_as_it_was_kept(
    url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    await _track(engine, seed=8, citizens=60)
    kept = await _rollup_state(engine)
    assert kept["coverage"]
    assert kept["cases"]
    await engine.dispose()
    # an upgraded gateway: the rollup gone with its migration, then made again
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0021")
    await upgrade_async(url)
    assert await _rollup_state(engine) == kept
    # and the command an operator runs after changing the contact rules writes it again
    async with engine.begin() as conn:
        await conn.execute(tracker_coverage.delete())
    await engine.dispose()
    env = {"DATABASE_URL": url, "VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    result = await asyncio.to_thread(CliRunner().invoke, cli.app, ["coverage-rebuild"], env=env)
    assert result.exit_code == 0, result.output
    assert await _rollup_state(engine) == kept


@pytest.mark.postgres
async def test_two_transactions_deciding_one_citizen_take_turns(tmp_path: Path) -> None:
    """Two cases of one citizen registered at once, in the same cells: the second refresh
    waits for the first transaction and reads its case, so the citizen counts once."""
    async with fresh_database("postgres", tmp_path) as url:
        await upgrade_async(url)
        engine = make_engine(url)
        rules = cr.CoverageRules.of(RULES)
        first = NOW.date() - dt.timedelta(days=90)
        cases = [
            CaseRecord(
                case_id=f"case-{k}", jobcenter_org="jc-101", jobcenter_case_id=f"sag-{k}",
                case_ref=_ref(1), municipality="101", region_code="1084",
                case_kind="sygedagpenge", psychiatric_course=True, first_day_of_absence=first,
                closed_on=None, created_at=NOW, updated_at=NOW, citizen_sealed=None,
            )
            for k in (1, 2)
        ]  # fmt: skip
        try:
            async with engine.connect() as one, engine.connect() as two:
                await one.begin()
                await two.begin()
                await _apply(one, rules, "case", cases[0])
                second = asyncio.create_task(_apply(two, rules, "case", cases[1]))
                await asyncio.sleep(0.5)
                assert not second.done()  # waiting for the citizen's lock
                await one.commit()
                await second
                await two.commit()
            kept = await _rollup_state(engine)
            async with engine.begin() as conn:
                await cr.rebuild(conn, rules)
            assert await _rollup_state(engine) == kept
            assert ("year", dt.date(first.year, 1, 1), "national", "DK", "*", "citizens", 0, 1) in (
                kept["coverage"]
            )
        finally:
            await engine.dispose()
