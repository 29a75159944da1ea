"""The simulator's pure parts: organisations, the profile, the plan of cases."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
from collections import Counter
from pathlib import Path

import httpx

from attest_gateway.core.attests import DEFAULT_CATALOGUE
from attest_gateway.core.directory import Role
from attest_gateway.core.identifiers import check_cpr, check_gln, check_sor, municipalities
from attest_gateway.devtools.simulate import (
    Case,
    Delay,
    Driver,
    Profile,
    plan,
    simulation_orgs,
    synthetic_cpr,
)

START = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


def _plan(days: float = 30, seed: int = 3, profile: Profile | None = None) -> list[Case]:
    return plan(
        profile or Profile(),
        simulation_orgs(),
        start=START,
        end=START + dt.timedelta(days=days),
        rng=random.Random(seed),
    )


def test_every_municipality_has_a_job_centre_and_identifiers_are_valid() -> None:
    orgs = simulation_orgs()
    jobcentres = [o for o in orgs if o.role == "jobcenter"]
    assert {o.kommunekode for o in jobcentres} == set(municipalities())
    assert len({o.sor for o in orgs}) == len({o.gln for o in orgs}) == len(orgs)
    for o in orgs:
        assert check_gln(o.gln) == o.gln
        assert check_sor(o.sor) == o.sor
    assert {o.region_code for o in orgs if o.role == "psychiatry"} == {
        "1081", "1082", "1083", "1084", "1085",
    }  # fmt: skip


def test_the_plan_is_reproducible_and_near_the_rate() -> None:
    a, b = _plan(), _plan()
    assert [(c.cpr, c.request_at, c.receiver.id) for c in a] == [
        (c.cpr, c.request_at, c.receiver.id) for c in b
    ]
    assert 30 * 60 * 0.8 < len(a) < 30 * 60 * 1.2
    assert all(START <= c.request_at < START + dt.timedelta(days=30) for c in a)


def test_each_case_goes_to_someone_who_issues_its_attest_and_steps_are_in_order() -> None:
    for case in _plan():
        issuers = DEFAULT_CATALOGUE[case.attest_type].issuers
        assert Role(case.receiver.role) in issuers
        assert case.receiver.region_code == case.jobcenter.region_code
        assert case.request_at <= case.fetch_at <= case.ack_at
        if case.reply_at is not None:
            assert case.ack_at <= case.reply_at
            assert case.read_at is not None
            assert case.reply_at <= case.read_at
        assert check_cpr(case.cpr)
        assert case.first_day <= case.request_at.date()


def test_defaults_reflect_the_audit() -> None:
    cases = _plan(days=120)
    psych = [c for c in cases if c.receiver.role == "psychiatry" and c.reply_at]
    gp = [c for c in cases if c.receiver.role == "gp" and c.reply_at]
    psych_days = statistics.median((c.reply_at - c.request_at).days for c in psych if c.reply_at)
    gp_days = statistics.median((c.reply_at - c.request_at).days for c in gp if c.reply_at)
    assert psych_days > 2 * gp_days  # psychiatry is much slower
    late = sum(c.request_at.date() > c.first_day + dt.timedelta(days=55) for c in cases)
    assert 0.2 < late / len(cases) < 0.6  # job centres often ask late


def test_a_profile_file_overrides_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps(
            {
                "requests_per_day": 5,
                "jobcenter_read": {"median": 3, "sigma": 0.1},
                "psychiatry": {
                    "fetch": {"median": 2, "sigma": 0.1},
                    "ack": {"median": 1, "sigma": 0.1},
                    "reply": {"median": 50, "sigma": 0.1},
                    "never_replies": 0.5,
                },
            }
        )
    )
    profile = Profile.load(path)
    assert profile.requests_per_day == 5
    assert profile.jobcenter_read == Delay(3, 0.1)
    assert profile.psychiatry.never_replies == 0.5
    assert profile.gp == Profile().gp


def test_synthetic_cpr_numbers_are_test_numbers() -> None:
    rng = random.Random(1)
    for _ in range(200):
        cpr = synthetic_cpr(rng)
        assert check_cpr(cpr) == cpr
        assert cpr[6] == "9"


async def test_the_driver_registers_cases_treatments_and_the_rehabilitation_attests() -> None:
    cases = _plan(days=20)
    async with httpx.AsyncClient() as client:  # never called: only the queue is read
        driver = Driver(client, {})
        driver.add(cases)
    steps = Counter(step for step, _, _ in driver.pending_steps())
    citizens = {(c.jobcenter.id, c.cpr, c.first_day) for c in cases}
    # every citizen asked about, and about as many with no request at all (the profile: 1.0)
    assert 1.6 * len(citizens) < steps["register"] < 2.4 * len(citizens)
    psychiatric = sum(1 for c in cases if c.psychiatric) / len(cases)
    assert 0 < steps["treatment"] < psychiatric * steps["register"]
    assert steps["psych_contact"] > 0
    rehab_gp = sum(
        1 for c in cases if c.case_kind == "ressourceforloeb" and c.attest_type == "LÆ 265"
    )
    assert 0 < steps["request"] - len(cases) <= rehab_gp  # the specialist's LÆ 155 after LÆ 265
