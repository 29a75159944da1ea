"""`attest-gateway simulate`: realistic national traffic through the real HTTP API.

The 98 municipalities' job centres request LÆ attests at a configurable national rate; GP
clinics and regional psychiatry fetch, acknowledge and reply after delays drawn from
log-normal distributions whose defaults reflect the National Audit Office's findings (many
late psychiatry attests, job centres often asking late, most psychiatric cases without direct
contact). Every step is an HTTP call to a running gateway, exactly as a case system or a
clinic system would make it; the clinics open their sealed envelopes with their own keys.

The simulated clock. The driver never reads its own clock: it reads the gateway's (the HTTP
`Date` header, stamped from the gateway's clock) and performs every step whose scheduled time
has come. Run against a normal gateway, time is real. With `--serve` the command starts its
own gateway on a simulated clock (`core.clock.SimulatedClock`, chosen by the settings
`SIMULATED_CLOCK_START` and `SIMULATED_CLOCK_SPEED`) that starts `--days` days in the past and
runs `speed` times faster than real time, so months of traffic play out in minutes and every
timestamp the gateway records is simulated time; its timers and timeouts (the event loop's,
Kafka's) stay real. When the history has caught up with the present the gateway is restarted
on the machine's clock on the same store and broker, and traffic goes on live. What it costs: at
speed N one real second is N simulated seconds, so the gateway's own sub-second hand-offs
(delivery into a mailbox, into the job centre's inbox) look N times slower in the history;
the human delays (days, weeks) are what the history is for.

Pure parts (the profile, the plan of cases) are unit-tested; the driver is exercised end to
end by the dashboard's browser test.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import heapq
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog

from attest_gateway.bootstrap import database
from attest_gateway.config import Settings, custodial_keys_dir
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.core.attests import DEFAULT_CATALOGUE
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.directory import Organisation, Role, new_api_key
from attest_gateway.core.identifiers import gln_check_digit, municipalities
from attest_gateway.crypto.sealing import OrgKeys, open_envelope
from attest_gateway.devtools.demo import ensure_demo_orgs
from attest_gateway.infra.db import directory
from attest_gateway.medcom.build import (
    PersonName,
    SegmentAuthor,
    build_acknowledgement,
    build_attest_reply,
)
from attest_gateway.medcom.parse import parse_bundle

log = structlog.get_logger(__name__)

SIMULATED_CLINICIAN = SegmentAuthor(
    name=PersonName(family="Læge", given=("Simuleret",)),
    phone="+4570000001",
    role="Læge",
    role_code="laege",
    authorisation_id="0SM1L",
)
"""The author of the simulated replies."""

REGIONS = ("1081", "1082", "1083", "1084", "1085")
GP_PER_REGION = 2

# --- the profile --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delay:
    """A log-normal delay: `median` days, spread `sigma` (σ of the log)."""

    median: float
    sigma: float

    def draw(self, rng: random.Random) -> float:
        return self.median * math.exp(rng.gauss(0.0, self.sigma))


@dataclass(frozen=True, slots=True)
class ClinicProfile:
    fetch: Delay  # request delivered → clinic system fetches its mailbox
    ack: Delay  # fetched → MedCom acknowledgement
    reply: Delay  # request → attest sent
    never_replies: float  # share of requests never answered


@dataclass(frozen=True, slots=True)
class Profile:
    requests_per_day: float = 60.0
    # LÆ type → share of requests (GP forms dominate; psychiatry gets LÆ 155, 105, 275, some 125).
    attest_mix: dict[str, float] = field(
        default_factory=lambda: {
            "LÆ 265": 0.30,
            "LÆ 285": 0.20,
            "LÆ 155": 0.14,
            "LÆ 125": 0.10,
            "LÆ 105": 0.05,
            "LÆ 275": 0.05,
            "LÆ 135": 0.06,
            "LÆ 145": 0.05,
            "LÆ 225": 0.05,
        }
    )
    case_kind_mix: dict[str, float] = field(
        default_factory=lambda: {
            "sygedagpenge": 0.70,
            "jobafklaringsforloeb": 0.20,
            "ressourceforloeb": 0.10,
        }
    )
    psychiatric_share: float = 0.25  # citizens with a psychiatric course
    psychiatric_asks_psychiatry: float = 0.35  # of those, requests go to psychiatry this often
    registered_contact_share: float = 0.06  # job centre registers a meeting with psychiatry
    repeat_citizen_share: float = 0.15  # a second request about a citizen already asked about
    request_week: Delay = field(default_factory=lambda: Delay(6.0, 0.6))  # week of absence
    gp: ClinicProfile = field(
        default_factory=lambda: ClinicProfile(
            fetch=Delay(0.15, 1.0), ack=Delay(0.05, 1.0), reply=Delay(9.0, 0.7), never_replies=0.03
        )
    )
    psychiatry: ClinicProfile = field(
        default_factory=lambda: ClinicProfile(
            fetch=Delay(1.0, 1.0), ack=Delay(0.5, 1.0), reply=Delay(35.0, 0.7), never_replies=0.10
        )
    )
    jobcenter_read: Delay = field(default_factory=lambda: Delay(1.0, 0.8))
    contact_after: Delay = field(default_factory=lambda: Delay(10.0, 0.6))  # request → meeting
    # The sickness cases job centres register (the denominator of contact coverage): every
    # citizen a request is made for, and this many more per such citizen with no request at
    # all; psychiatry registers this share of the citizens with a psychiatric course as in its
    # treatment, and a contact with the job centre for this share of them.
    cases_without_request: float = 1.0
    treatment_registered_share: float = 0.5
    psychiatry_contact_share: float = 0.08
    # A ressourceforløb citizen's GP attest (LÆ 265) is followed by a request for the
    # specialist's (LÆ 155, to psychiatry) this often, `rehab_specialist_after` days later.
    rehab_specialist_share: float = 0.7
    rehab_specialist_after: Delay = field(default_factory=lambda: Delay(3.5, 0.5))

    @classmethod
    def load(cls, path: Path | None) -> Profile:
        """The defaults, overridden by a JSON file with the same field names."""
        if path is None:
            return cls()
        data = json.loads(path.read_text("utf-8"))
        base = cls()
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            current = getattr(base, f.name)
            if isinstance(current, Delay):
                value = Delay(**value)
            elif isinstance(current, ClinicProfile):
                value = ClinicProfile(
                    fetch=Delay(**value["fetch"]),
                    ack=Delay(**value["ack"]),
                    reply=Delay(**value["reply"]),
                    never_replies=value["never_replies"],
                )
            kwargs[f.name] = value
        return replace(base, **kwargs)


# --- organisations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimOrg:
    id: str
    name: str
    role: str  # jobcenter | psychiatry | gp
    region_code: str
    kommunekode: str | None
    sor: str
    gln: str
    ydernummer: str | None


def _gln(kind: int, code: int) -> str:
    first12 = f"57909{kind}{code:06d}"
    return first12 + str(gln_check_digit(first12))


def simulation_orgs() -> list[SimOrg]:
    """98 job centres, one psychiatry unit per region, a few GP clinics per region."""
    orgs = [
        SimOrg(
            id=f"sim-jc-{m.kommunekode}",
            name=f"Jobcenter {m.name}",
            role="jobcenter",
            region_code=m.region_code,
            kommunekode=m.kommunekode,
            sor=f"91{int(m.kommunekode):06d}000016",
            gln=_gln(1, int(m.kommunekode)),
            ydernummer=None,
        )
        for m in sorted(municipalities().values(), key=lambda m: m.kommunekode)
    ]
    names = dict(
        zip(
            REGIONS,
            ("Nordjylland", "Midtjylland", "Syddanmark", "Hovedstaden", "Sjælland"),
            strict=True,
        )
    )
    for region in REGIONS:
        orgs.append(
            SimOrg(
                id=f"sim-psyk-{region}",
                name=f"Psykiatrien i Region {names[region]}",
                role="psychiatry",
                region_code=region,
                kommunekode=None,
                sor=f"92{int(region):06d}000016",
                gln=_gln(2, int(region)),
                ydernummer=None,
            )
        )
        for n in range(GP_PER_REGION):
            orgs.append(
                SimOrg(
                    id=f"sim-gp-{region}-{n}",
                    name=f"Lægehuset {names[region]} {n + 1}",
                    role="gp",
                    region_code=region,
                    kommunekode=None,
                    sor=f"93{int(region):06d}{n:02d}0016",
                    gln=_gln(3, int(region) * 10 + n),
                    ydernummer=f"9{region[-1]}{n:04d}",
                )
            )
    return orgs


def credentials_path(settings: Settings) -> Path:
    return settings.var_dir / "sim-credentials.json"


async def ensure_simulation_orgs(settings: Settings) -> dict[str, dict[str, str]]:
    """Register the simulation organisations (keys, API keys) unless present; their
    credentials are kept in `VAR_DIR/sim-credentials.json` (mode 0600)."""
    path = credentials_path(settings)
    creds: dict[str, dict[str, str]] = json.loads(path.read_text("utf-8")) if path.exists() else {}
    async with database(settings) as engine:
        await ensure_demo_orgs(engine, settings)
        async with engine.begin() as conn:
            for o in simulation_orgs():
                if await directory.org_by_id(conn, o.id) is not None:
                    continue
                custodial = o.role == "jobcenter"
                org = Organisation(
                    o.id,
                    o.name,
                    Role(o.role),
                    o.sor,
                    o.gln,
                    o.kommunekode,
                    o.ydernummer,
                    o.region_code,
                    custodial,
                    True,
                )
                keys = OrgKeys.generate(o.id, settings.hpke_suite)
                api_key = new_api_key(o.id)
                await directory.add_organisation(
                    conn, org, keys, api_key=api_key, now=SystemClock().now()
                )
                key_path = (
                    custodial_keys_dir(settings) / f"{o.id}.json"
                    if custodial
                    else settings.effective_keys_dir / "clients" / f"{o.id}.json"
                )
                keys.save(key_path)
                creds[o.id] = {"api_key": api_key, "private_keys": str(key_path)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(creds, indent=2))
    return creds


# --- the plan -------------------------------------------------------------------------------------


@dataclass
class Case:
    """One conversation to play, with the simulated times of each step (None: never)."""

    n: int
    jobcenter: SimOrg
    receiver: SimOrg
    attest_type: str
    case_kind: str
    psychiatric: bool
    cpr: str
    first_day: dt.date
    request_at: dt.datetime
    fetch_at: dt.datetime
    ack_at: dt.datetime
    reply_at: dt.datetime | None
    read_at: dt.datetime | None
    contact_at: dt.datetime | None = None
    psychiatry: SimOrg | None = None
    requested: bool = True  # False: a sickness case registered with no request


def _pick(rng: random.Random, mix: dict[str, float]) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


_GP_TYPES = frozenset({"LÆ 265", "LÆ 285", "LÆ 135", "LÆ 145", "LÆ 225"})


def synthetic_cpr(rng: random.Random) -> str:
    """A CPR-shaped number with a valid date and serial 9xxx: a test citizen, never a person's."""
    born = dt.date(1960, 1, 1) + dt.timedelta(days=rng.randrange(40 * 365))
    return born.strftime("%d%m%y") + f"9{rng.randrange(1000):03d}"


def plan(
    profile: Profile,
    orgs: list[SimOrg],
    *,
    start: dt.datetime,
    end: dt.datetime,
    rng: random.Random,
) -> list[Case]:
    """The cases whose request falls in [start, end): Poisson arrivals at the national rate,
    weighted to office hours, each with its own delays. Pure (given the generator)."""
    jobcentres = [o for o in orgs if o.role == "jobcenter"]
    psych = {o.region_code: o for o in orgs if o.role == "psychiatry"}
    gps: dict[str, list[SimOrg]] = {}
    for o in orgs:
        if o.role == "gp":
            gps.setdefault(o.region_code, []).append(o)
    cases: list[Case] = []
    seen: dict[str, list[tuple[str, dt.date, bool, str]]] = {}
    t = start
    rate_per_second = profile.requests_per_day / 86400
    while True:
        t += dt.timedelta(seconds=rng.expovariate(rate_per_second))
        if t >= end:
            return cases
        jc = rng.choice(jobcentres)
        previous = seen.get(jc.id, [])
        if previous and rng.random() < profile.repeat_citizen_share:
            cpr, first_day, psychiatric, case_kind = rng.choice(previous)
        else:
            cpr = synthetic_cpr(rng)
            weeks = max(0.1, profile.request_week.draw(rng))
            first_day = t.date() - dt.timedelta(days=int(weeks * 7))
            psychiatric = rng.random() < profile.psychiatric_share
            case_kind = _pick(rng, profile.case_kind_mix)
            seen.setdefault(jc.id, []).append((cpr, first_day, psychiatric, case_kind))
        attest = _pick(rng, profile.attest_mix)
        to_psychiatry = attest not in _GP_TYPES and (attest != "LÆ 125" or rng.random() < 0.3)
        if psychiatric and attest in ("LÆ 125", "LÆ 155"):
            to_psychiatry = rng.random() < profile.psychiatric_asks_psychiatry or attest == "LÆ 155"
        if not to_psychiatry and attest not in _GP_TYPES and attest != "LÆ 125":
            to_psychiatry = True
        receiver = psych[jc.region_code] if to_psychiatry else rng.choice(gps[jc.region_code])
        clinic = profile.psychiatry if to_psychiatry else profile.gp
        fetch = t + _days(clinic.fetch.draw(rng))
        ack = fetch + _days(clinic.ack.draw(rng))
        reply = None if rng.random() < clinic.never_replies else t + _days(clinic.reply.draw(rng))
        if reply is not None and reply < ack:
            reply = ack + dt.timedelta(seconds=1)  # answered right after acknowledging
        read = reply + _days(profile.jobcenter_read.draw(rng)) if reply is not None else None
        contact = None
        if psychiatric and not to_psychiatry and rng.random() < profile.registered_contact_share:
            contact = t + _days(profile.contact_after.draw(rng))
        cases.append(
            Case(
                n=len(cases),
                jobcenter=jc,
                receiver=receiver,
                attest_type=attest,
                case_kind=case_kind,
                psychiatric=psychiatric,
                cpr=cpr,
                first_day=first_day,
                request_at=t,
                fetch_at=fetch,
                ack_at=ack,
                reply_at=reply,
                read_at=read,
                contact_at=contact,
                psychiatry=psych[jc.region_code],
            )
        )


def _citizen_key(prefix: str, case: Case) -> str:
    """An id for the citizen's case that holds no CPR number (the API refuses one)."""
    digest = hashlib.sha256(f"{case.jobcenter.id}{case.cpr}{case.first_day}".encode()).hexdigest()
    return f"{prefix}-{digest[:20]}"


def _days(days: float) -> dt.timedelta:
    return dt.timedelta(days=max(0.0, days))


# --- the driver ---------------------------------------------------------------------------------


@dataclass
class Stats:
    requests: int = 0
    fetches: int = 0
    acks: int = 0
    replies: int = 0
    reads: int = 0
    contacts: int = 0
    cases: int = 0
    treatments: int = 0
    errors: int = 0
    retries: int = 0


class Driver:
    """Plays cases against a gateway over HTTP, step by step, on the gateway's clock."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        creds: dict[str, dict[str, str]],
        *,
        concurrency: int = 6,
        retry_after: dt.timedelta = dt.timedelta(minutes=10),
        profile: Profile | None = None,
    ) -> None:
        self.client = client
        self.retry_after = retry_after  # look again after this when a message has not arrived
        self.creds = creds
        self.stats = Stats()
        self._queue: list[tuple[dt.datetime, int, str, Case]] = []
        self._seq = 0
        self._sem = asyncio.Semaphore(concurrency)
        self._requests: dict[int, tuple[str, str, Any]] = {}  # case → (cid, message id, bundle)
        self._keys: dict[str, OrgKeys] = {}
        self._taken_in: set[str] = set()  # conversations whose reply a job centre took in
        self._registered: set[tuple[str, str, dt.date]] = set()  # (job centre, CPR, first day)
        self.profile = profile or Profile()
        self.server_now: dt.datetime | None = None

    def add(self, cases: list[Case]) -> None:
        """Play the cases: each request; the sickness case of each citizen seen first (and
        cases with no request at all beside them), psychiatry's treatments and contacts, and
        a ressourceforløb citizen's specialist attest after the GP's (`Profile`)."""
        for case in cases:
            self._push(case.request_at, "request", case)
            if case.contact_at is not None:
                self._push(case.contact_at, "contact", case)
            self._add_registrations(case)

    def _add_registrations(self, case: Case) -> None:
        key = (case.jobcenter.id, case.cpr, case.first_day)
        if key in self._registered:
            return
        self._registered.add(key)
        # decided per citizen, the same on every run of the same plan
        rng = random.Random(f"{case.cpr}{case.first_day}{case.n}")  # noqa: S311 - simulation
        p = self.profile
        self._push(case.request_at, "register", case)
        if case.psychiatric and rng.random() < p.treatment_registered_share:
            self._push(case.request_at, "treatment", case)
        if case.psychiatric and rng.random() < p.psychiatry_contact_share:
            self._push(case.request_at + _days(p.contact_after.draw(rng)), "psych_contact", case)
        if (
            case.requested
            and case.case_kind == "ressourceforloeb"
            and case.attest_type == "LÆ 265"
            and case.psychiatry is not None
            and rng.random() < p.rehab_specialist_share
        ):
            at = case.request_at + _days(p.rehab_specialist_after.draw(rng))
            fetch = at + _days(p.psychiatry.fetch.draw(rng))
            ack = fetch + _days(p.psychiatry.ack.draw(rng))
            reply = (
                None
                if rng.random() < p.psychiatry.never_replies
                else (max(ack, at + _days(p.psychiatry.reply.draw(rng))) + dt.timedelta(seconds=1))
            )
            follow = replace(
                case, n=-case.n - 1, receiver=case.psychiatry, attest_type="LÆ 155",
                request_at=at, fetch_at=fetch, ack_at=ack, reply_at=reply,
                read_at=reply + _days(p.jobcenter_read.draw(rng)) if reply else None,
                contact_at=None,
            )  # fmt: skip
            self._push(at, "request", follow)
        if case.requested:
            whole, part = divmod(p.cases_without_request, 1.0)
            for k in range(int(whole) + (rng.random() < part)):
                weeks = max(0.1, p.request_week.draw(rng))
                alone = replace(
                    case, n=-(case.n + 1) * 1000 - k, cpr=synthetic_cpr(rng),
                    first_day=case.request_at.date() - dt.timedelta(days=int(weeks * 7)),
                    psychiatric=rng.random() < p.psychiatric_share,
                    case_kind=_pick(rng, p.case_kind_mix), contact_at=None, requested=False,
                )  # fmt: skip
                self._add_registrations(alone)

    def _push(self, at: dt.datetime, step: str, case: Case) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, step, case))

    def pending(self) -> int:
        return len(self._queue)

    def pending_steps(self) -> list[tuple[str, int, str]]:
        """(step, case number, due time) of what is still to do, for diagnostics."""
        return [(step, case.n, at.isoformat()) for at, _, step, case in sorted(self._queue)]

    def _auth(self, org_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds[org_id]['api_key']}"}

    def _org_keys(self, org_id: str) -> OrgKeys:
        if org_id not in self._keys:
            self._keys[org_id] = OrgKeys.load(Path(self.creds[org_id]["private_keys"]))
        return self._keys[org_id]

    async def clock(self) -> dt.datetime:
        """The gateway's clock (its `Date` header, one-second resolution)."""
        response = await self.client.get("/healthz")
        self.server_now = parsedate_to_datetime(response.headers["date"]).astimezone(dt.UTC)
        return self.server_now

    async def step_due(self, now: dt.datetime) -> int:
        """Perform every step due by `now` (concurrently, bounded). Returns how many."""
        due: list[tuple[str, Case]] = []
        while self._queue and self._queue[0][0] <= now:
            _, _, step, case = heapq.heappop(self._queue)
            due.append((step, case))
        await asyncio.gather(*(self._guarded(step, case, now) for step, case in due))
        return len(due)

    async def _guarded(self, step: str, case: Case, now: dt.datetime) -> None:
        async with self._sem:
            try:
                await getattr(self, f"_{step}")(case, now)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                self.stats.errors += 1
                log.warning("simulate.step_failed", step=step, case=case.n, error=str(exc)[:200])

    async def _request(self, case: Case, now: dt.datetime) -> None:
        jc = case.jobcenter
        body = {
            "municipality": jc.kommunekode,
            "jobcenter_gln": jc.gln,
            "caseworker_ref": f"sim-{case.n}",
            "citizen_cpr": case.cpr,
            "citizen_name": {"given": ["Simuleret"], "family": f"Borger {case.n}"},
            "caseworker": {"given": ["Sim"], "family": "Sagsbehandler", "phone": "+4570000000"},
            "attest_type": case.attest_type,
            "receiver": {"sor": case.receiver.sor},
            "case_kind": case.case_kind,
            "first_day_of_absence": case.first_day.isoformat(),
            "psychiatric_course": case.psychiatric,
            "questions": "Hvad er borgerens aktuelle funktionsevne? (simuleret anmodning)",
            "consent": consent_for(case.attest_type, min(case.first_day, now.date())),
        }
        response = await self.client.post(
            "/jobcenter/v1/attest-requests",
            json=body,
            headers={**self._auth(jc.id), "Idempotency-Key": f"sim-{case.n}-{case.cpr[-4:]}"},
        )
        response.raise_for_status()
        accepted = response.json()
        self._requests[case.n] = (accepted["conversation_id"], accepted["message_id"], None)
        self.stats.requests += 1
        self._push(max(case.fetch_at, now), "fetch", case)

    async def _fetch(self, case: Case, now: dt.datetime) -> None:
        cid, message_id, _ = self._requests[case.n]
        org = case.receiver.id
        response = await self.client.get(
            "/medcom/v1/mailbox", params={"limit": 500}, headers=self._auth(org)
        )
        response.raise_for_status()
        found = None
        for item in response.json()["items"]:
            if item["message_id"] == message_id:
                found = item
            elif item["message_type"] != "attest-request":  # reminders, acknowledgements
                await self.client.post(
                    f"/medcom/v1/mailbox/{item['message_id']}/collected", headers=self._auth(org)
                )
        if found is None:  # not delivered yet: look again a little later
            self.stats.retries += 1
            self._push(now + self.retry_after, "fetch", case)
            return
        envelope = SealedEnvelope.model_validate(found["envelope"])
        keys = self._org_keys(org)
        key = next(k for k in keys.hpke_keys if k.key_id == envelope.header.recipient_key_id)
        bundle = parse_bundle(orjson.loads(open_envelope(envelope, key)))
        self._requests[case.n] = (cid, message_id, bundle)
        self.stats.fetches += 1
        self._push(max(case.ack_at, now), "ack", case)

    async def _submit(self, org: str, bundle: dict[str, Any]) -> None:
        response = await self.client.post(
            "/medcom/v1/messages",
            content=orjson.dumps(bundle),
            headers={**self._auth(org), "Content-Type": "application/fhir+json"},
        )
        response.raise_for_status()

    async def _ack(self, case: Case, now: dt.datetime) -> None:
        _, _, bundle = self._requests[case.n]
        ack = build_acknowledgement(
            acked=bundle,
            message_id=str(uuid.uuid4()),
            bundle_id=str(uuid.uuid4()),
            sent_at=now,
            code="ok",
        )
        await self._submit(case.receiver.id, ack)
        self.stats.acks += 1
        if case.reply_at is not None:
            self._push(max(case.reply_at, now), "reply", case)

    async def _reply(self, case: Case, now: dt.datetime) -> None:
        _, _, bundle = self._requests[case.n]
        reply = build_attest_reply(
            request=bundle,
            message_id=str(uuid.uuid4()),
            bundle_id=str(uuid.uuid4()),
            sent_at=now,
            author=SIMULATED_CLINICIAN,
            text="Simuleret attest: borgeren er i behandling.",
            pdf=None,
        )
        await self._submit(case.receiver.id, reply)
        self.stats.replies += 1
        if case.read_at is not None:
            self._push(max(case.read_at, now), "read", case)

    async def _read(self, case: Case, now: dt.datetime) -> None:
        jc = case.jobcenter.id
        cid, _, _ = self._requests[case.n]
        if cid in self._taken_in:  # an earlier read of this job centre's inbox took it in
            self.stats.reads += 1
            return
        response = await self.client.get(
            "/jobcenter/v1/inbox", params={"limit": 500}, headers=self._auth(jc)
        )
        response.raise_for_status()
        items = response.json()["items"]
        if not any(i["conversation_id"] == cid for i in items):
            self.stats.retries += 1
            self._push(now + self.retry_after, "read", case)
            return
        for item in items:  # the case system takes in everything waiting
            await self.client.post(
                f"/jobcenter/v1/inbox/{item['message_id']}/ack", headers=self._auth(jc)
            )
            self._taken_in.add(item["conversation_id"])
        self.stats.reads += 1

    async def _register(self, case: Case, now: dt.datetime) -> None:
        """The job centre registers the citizen's sickness case (with or without a request)."""
        jc = case.jobcenter
        body = {
            "municipality": jc.kommunekode,
            "case_id": _citizen_key("sim-case", case),
            "citizen_cpr": case.cpr,
            "case_kind": case.case_kind,
            "psychiatric_course": case.psychiatric,
            "first_day_of_absence": case.first_day.isoformat(),
        }
        response = await self.client.post(
            "/jobcenter/v1/cases", json=body, headers=self._auth(jc.id)
        )
        response.raise_for_status()
        self.stats.cases += 1

    async def _treatment(self, case: Case, now: dt.datetime) -> None:
        """The region's psychiatry registers the citizen as in its treatment."""
        assert case.psychiatry is not None
        body = {"citizen_cpr": case.cpr, "start_date": case.first_day.isoformat()}
        response = await self.client.post(
            "/psychiatry/v1/treatments",
            json=body,
            headers={
                **self._auth(case.psychiatry.id),
                "Idempotency-Key": _citizen_key("sim-treatment", case),
            },
        )
        response.raise_for_status()
        self.stats.treatments += 1

    async def _psych_contact(self, case: Case, now: dt.datetime) -> None:
        """Psychiatry registers a contact with the citizen's job centre."""
        assert case.psychiatry is not None
        body = {
            "municipality": case.jobcenter.kommunekode,
            "citizen_cpr": case.cpr,
            "case_kind": case.case_kind,
            "first_day_of_absence": case.first_day.isoformat(),
            "contact_date": now.date().isoformat(),
            "channel": "phone",
        }
        response = await self.client.post(
            "/psychiatry/v1/contacts",
            json=body,
            headers={
                **self._auth(case.psychiatry.id),
                "Idempotency-Key": _citizen_key("sim-contact", case),
            },
        )
        response.raise_for_status()
        self.stats.contacts += 1

    async def _contact(self, case: Case, now: dt.datetime) -> None:
        assert case.psychiatry is not None
        body = {
            "municipality": case.jobcenter.kommunekode,
            "citizen_cpr": case.cpr,
            "psychiatry_sor": case.psychiatry.sor,
            "case_kind": case.case_kind,
            "first_day_of_absence": case.first_day.isoformat(),
            "contact_date": now.date().isoformat(),
            "channel": "meeting",
        }
        response = await self.client.post(
            "/jobcenter/v1/contacts", json=body, headers=self._auth(case.jobcenter.id)
        )
        response.raise_for_status()
        self.stats.contacts += 1

    async def run_until(
        self,
        stop: Callable[[dt.datetime], bool],
        on_tick: Callable[[dt.datetime], None] | None = None,
        *,
        poll: float = 0.2,
    ) -> None:
        """Follow the gateway's clock, performing due steps, until `stop(now)` is true."""
        while True:
            now = await self.clock()
            if on_tick is not None:
                on_tick(now)
            if stop(now):
                return
            if await self.step_due(now) == 0:
                await asyncio.sleep(poll)


# --- running a gateway for the simulation --------------------------------------------------------


def gateway_environment(
    env: dict[str, str], *, clock_start: dt.datetime | None, speed: float
) -> dict[str, str]:
    """`env` with the settings of a gateway whose clock reads `clock_start` when it starts and
    runs `speed` times faster than real time; with None, of one on the machine's clock."""
    child_env = {k: v for k, v in env.items() if not k.startswith("SIMULATED_CLOCK_")}
    if clock_start is not None:
        child_env["SIMULATED_CLOCK_START"] = clock_start.astimezone(dt.UTC).isoformat()
        child_env["SIMULATED_CLOCK_SPEED"] = repr(float(speed))
    return child_env


@contextlib.contextmanager
def gateway_process(
    env: dict[str, str], log_path: Path, *, clock_start: dt.datetime | None, speed: float
) -> Iterator[subprocess.Popen[bytes]]:
    """`attest-gateway serve` as a child: on a simulated clock from `clock_start` at `speed`,
    or (None) on the machine's clock."""
    child_env = gateway_environment(env, clock_start=clock_start, speed=speed)
    # One driver plays every clinic, and each fetch reads the clinic's whole mailbox (up to
    # 500 items): counted by its items, that is over the default read rate at high speeds.
    child_env.setdefault("RATE_LIMIT_ITEMS_PER_READ", "0")
    command = [sys.executable, "-m", "attest_gateway.entrypoints.cli.simulated", "serve"]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(command, env=child_env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_healthy(client: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.3)
    raise RuntimeError(f"the gateway did not start within two minutes; see {log}")


def _rng(seed: int | None) -> random.Random:
    return random.Random(seed)  # noqa: S311 - simulation, not security


def consent_for(attest_type: str, given_on: dt.date) -> dict[str, object]:
    """A simulated request's `consent`: the legal basis where the catalogue allows asking
    without consent, else the citizen's consent given on `given_on`."""
    kind = DEFAULT_CATALOGUE.get(attest_type)
    if kind is not None and kind.legal_bases:
        return {"legal_basis": sorted(kind.legal_bases)[0]}
    return {"given": True, "date": given_on.isoformat()}
