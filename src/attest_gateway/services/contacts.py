"""Register a direct contact between a job centre and psychiatry about one citizen, by either
side: `POST /jobcenter/v1/contacts` (the job centre names the psychiatry unit) and
`POST /psychiatry/v1/contacts` (the psychiatry unit names the municipality whose job centre
it spoke with).

A meeting, call, video meeting or written exchange between the job centre and a psychiatry
unit about one citizen counts towards contact coverage as much as an answered request does.
The CPR number is turned into the case ref at once and stored only sealed to the gateway's own
key (to re-key the pseudonym from, infra/db/pseudonyms.py); psychiatry may name the citizen by
the case ref the gateway gave the job centre instead. The registration (case ref,
organisations, dates, channel, who registered it) and its `contact` tracking event are written
in one transaction (the outbox relay publishes the event to `gateway.tracking`, key = case
ref). An `Idempotency-Key` (the registrar's own) makes a retry return the first answer.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from attest_gateway.contracts.cases import ONE_CITIZEN, CaseRef
from attest_gateway.contracts.contacts import ContactChannel, ContactEvent, Registrar
from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.core.bounds import InputDate, a_year_after
from attest_gateway.core.clock import Clock
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import ErrorCode, InvalidInput, NotPermitted, Replay
from attest_gateway.core.identifiers import Cpr, Kommunekode, Sor, municipalities
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.ports.records import CaseRecord, ContactRecord
from attest_gateway.ports.sealing import seal_for_gateway
from attest_gateway.ports.store import Relay, Store


class ContactIn(BaseModel):
    """`POST /jobcenter/v1/contacts`."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    municipality: Kommunekode
    citizen_cpr: Cpr
    psychiatry_sor: Sor = Field(description="SOR code of the psychiatry unit")
    case_kind: CaseKind
    first_day_of_absence: InputDate = Field(description="at most a year ahead")
    contact_date: InputDate = Field(
        description="not after tomorrow, and not more than a year before the first day of absence"
    )
    channel: ContactChannel = ContactChannel.MEETING


class PsychiatryContactIn(BaseModel):
    """`POST /psychiatry/v1/contacts`: the citizen by CPR number or by the case ref the gateway
    gave the job centre; the case kind and first day of absence may be left out when the job
    centre has registered the case (they are then taken from its latest case begun on or
    before the contact)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, json_schema_extra=ONE_CITIZEN
    )

    municipality: Kommunekode = Field(description="the municipality whose job centre it was")
    citizen_cpr: Cpr | None = None
    case_ref: CaseRef | None = Field(
        default=None, description="the citizen's case ref as the gateway gave it"
    )
    case_kind: CaseKind | None = None
    first_day_of_absence: InputDate | None = Field(default=None, description="at most a year ahead")
    contact_date: InputDate = Field(
        description="not after tomorrow, and not more than a year before the first day of absence"
    )
    channel: ContactChannel = ContactChannel.MEETING

    @model_validator(mode="after")
    def _one_citizen(self) -> PsychiatryContactIn:
        if (self.citizen_cpr is None) == (self.case_ref is None):
            raise ValueError("name the citizen by citizen_cpr or by case_ref, one of them")
        return self


class ContactAccepted(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    contact_id: str
    contact_date: dt.date
    psychiatry: Annotated[str, Field(description="the psychiatry unit's name")]
    jobcenter: Annotated[str | None, Field(description="the job centre's name")] = None
    registered_by: Registrar = Registrar.JOBCENTER


@dataclass(frozen=True, slots=True)
class _Contact:
    """A registration as both sides' bodies describe it, the citizen already pseudonymised."""

    jobcenter: Organisation
    psychiatry: Organisation
    registrar: Organisation
    registered_by: Registrar
    municipality: str
    case_ref: str
    cpr: str | None
    case_kind: str
    first_day_of_absence: dt.date
    contact_date: dt.date
    channel: ContactChannel


def _same_contact(row: ContactRecord, c: _Contact) -> bool:
    """Whether a stored registration is the one asked for again (a retry), field by field."""
    return (
        row.case_ref,
        row.case_kind,
        row.channel,
        row.first_day_of_absence,
        row.contact_date,
        row.jobcenter_org,
        row.psychiatry_org,
    ) == (
        c.case_ref,
        c.case_kind,
        c.channel.value,
        c.first_day_of_absence,
        c.contact_date,
        c.jobcenter.id,
        c.psychiatry.id,
    )


def _check_dates(now: dt.datetime, first_day: dt.date, contact_date: dt.date) -> None:
    if first_day > a_year_after(now.date()):
        raise InvalidInput(
            ErrorCode.INVALID_FIRST_DAY_OF_ABSENCE,
            "the first day of absence is more than a year ahead",
        )
    if contact_date > now.date() + dt.timedelta(days=1):
        raise InvalidInput(
            ErrorCode.INVALID_CONTACT_DATE, "a contact cannot be registered in advance"
        )
    if contact_date < first_day - dt.timedelta(days=365):
        raise InvalidInput(ErrorCode.INVALID_CONTACT_DATE, "the contact is long before the absence")


def citizen_ref(cpr: str | None, ref: str | None, pseudonym_key: bytes) -> str:
    """The case ref of a citizen named by CPR number or by a case ref the gateway gave out
    (which must be of the current pseudonym key)."""
    if cpr is not None:
        return pseudonyms.case_ref(cpr, pseudonym_key)
    assert ref is not None
    if pseudonyms.key_id_of(ref) != pseudonyms.key_id(pseudonym_key):
        raise InvalidInput(
            ErrorCode.INVALID_CASE_REF,
            "the case ref was not made with the gateway's current pseudonym key: ask the job "
            "centre for the current one, or send the CPR number",
        )
    return ref


async def register_contact(
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    body: ContactIn,
    *,
    idempotency_key: str | None,
    gateway_org_id: str,
    pseudonym_key: bytes,
) -> tuple[ContactAccepted, bool]:
    """A job centre's registration. Returns (answer, created now)."""
    if body.municipality != org.kommunekode:
        raise NotPermitted(
            ErrorCode.JOBCENTER_MISMATCH, "the municipality in the request is not the caller"
        )
    _check_dates(clock.now(), body.first_day_of_absence, body.contact_date)
    ref = pseudonyms.case_ref(body.citizen_cpr, pseudonym_key)
    async with store.reading() as uow:
        psychiatry = await uow.directory.org_by_sor(body.psychiatry_sor)
        if psychiatry is None or not psychiatry.enabled or psychiatry.role is not Role.PSYCHIATRY:
            earlier = None
            if idempotency_key is not None:
                earlier = await uow.contacts.by_idempotency_key(org.id, idempotency_key)
            if earlier is not None:  # the key names another contact: that is what is wrong
                raise Replay(
                    ErrorCode.IDEMPOTENCY_KEY_REUSED,
                    "this Idempotency-Key was used with a different contact",
                )
            raise InvalidInput(ErrorCode.UNKNOWN_RECEIVER, "no psychiatry unit has that SOR code")
    contact = _Contact(
        jobcenter=org,
        psychiatry=psychiatry,
        registrar=org,
        registered_by=Registrar.JOBCENTER,
        municipality=body.municipality,
        case_ref=ref,
        cpr=body.citizen_cpr,
        case_kind=body.case_kind.value,
        first_day_of_absence=body.first_day_of_absence,
        contact_date=body.contact_date,
        channel=body.channel,
    )
    return await _register(store, relay, keyring, clock, contact, idempotency_key, gateway_org_id)


def _case_on(cases: list[CaseRecord], day: dt.date) -> CaseRecord | None:
    """The latest case begun on or before `day` (else the earliest one)."""
    begun = [c for c in cases if c.first_day_of_absence <= day]
    if begun:
        return max(begun, key=lambda c: c.first_day_of_absence)
    return min(cases, key=lambda c: c.first_day_of_absence, default=None)


async def register_psychiatry_contact(
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    body: PsychiatryContactIn,
    *,
    idempotency_key: str | None,
    gateway_org_id: str,
    pseudonym_key: bytes,
) -> tuple[ContactAccepted, bool]:
    """A psychiatry unit's registration. Returns (answer, created now)."""
    ref = citizen_ref(body.citizen_cpr, body.case_ref, pseudonym_key)
    async with store.reading() as uow:
        jobcenter = await uow.directory.jobcenter_of(body.municipality)
        if jobcenter is None:
            raise InvalidInput(
                ErrorCode.UNKNOWN_JOBCENTER, "the municipality has no job centre in the gateway"
            )
        case_kind, first_day = body.case_kind, body.first_day_of_absence
        if case_kind is None or first_day is None:
            case = _case_on(await uow.cases.of_citizen(jobcenter.id, ref), body.contact_date)
            if case is None:
                raise InvalidInput(
                    ErrorCode.UNKNOWN_CASE,
                    "the job centre has registered no case of this citizen: send case_kind "
                    "and first_day_of_absence",
                )
            kind_value = case_kind.value if case_kind is not None else case.case_kind
            first_day = first_day or case.first_day_of_absence
        else:
            kind_value = case_kind.value
    _check_dates(clock.now(), first_day, body.contact_date)
    contact = _Contact(
        jobcenter=jobcenter,
        psychiatry=org,
        registrar=org,
        registered_by=Registrar.PSYCHIATRY,
        municipality=body.municipality,
        case_ref=ref,
        cpr=body.citizen_cpr,
        case_kind=kind_value,
        first_day_of_absence=first_day,
        contact_date=body.contact_date,
        channel=body.channel,
    )
    return await _register(store, relay, keyring, clock, contact, idempotency_key, gateway_org_id)


async def _register(
    store: Store,
    relay: Relay,
    keyring: KeyRing,
    clock: Clock,
    c: _Contact,
    idempotency_key: str | None,
    gateway_org_id: str,
) -> tuple[ContactAccepted, bool]:
    """Store the registration and its tracking event. Returns (answer, created now)."""
    now = clock.now()
    async with store.transaction() as uow:
        if idempotency_key is not None:
            row = await uow.contacts.by_idempotency_key(c.registrar.id, idempotency_key)
            if row is not None:
                if not _same_contact(row, c):
                    raise Replay(
                        ErrorCode.IDEMPOTENCY_KEY_REUSED,
                        "this Idempotency-Key was used with a different contact",
                    )
                return ContactAccepted.model_validate_json(row.response), False
        contact_id = str(uuid.uuid4())
        accepted = ContactAccepted(
            contact_id=contact_id,
            contact_date=c.contact_date,
            psychiatry=c.psychiatry.name,
            jobcenter=c.jobcenter.name,
            registered_by=c.registered_by,
        )
        sealed = None
        if c.cpr is not None:
            sealed = await seal_for_gateway(
                uow.directory,
                keyring,
                gateway_org_id,
                c.cpr,
                context=pseudonyms.contact_context(contact_id),
                now=now,
            )
        await uow.contacts.add(
            ContactRecord(
                contact_id=contact_id,
                jobcenter_org=c.jobcenter.id,
                psychiatry_org=c.psychiatry.id,
                case_ref=c.case_ref,
                case_kind=c.case_kind,
                first_day_of_absence=c.first_day_of_absence,
                contact_date=c.contact_date,
                channel=c.channel.value,
                idempotency_key=idempotency_key,
                response=accepted.model_dump_json(),
                created_at=now,
                citizen_sealed=sealed,
                registrar_org=c.registrar.id,
            )
        )
        await uow.coverage.refresh([c.case_ref])  # the contact may decide a case
        event = ContactEvent(
            event_id=str(uuid.uuid4()),
            contact_id=contact_id,
            # noon local time on the contact day: inside that day in any Danish time zone
            at=dt.datetime.combine(c.contact_date, dt.time(11, 0), tzinfo=dt.UTC),
            contact_date=c.contact_date,
            jobcenter_org=c.jobcenter.id,
            psychiatry_org=c.psychiatry.id,
            municipality=c.municipality,
            region_code=municipalities()[c.municipality].region_code,
            case_kind=c.case_kind,
            case_ref=c.case_ref,
            first_day_of_absence=c.first_day_of_absence,
            channel=c.channel,
            registered_by=c.registered_by,
        )
        await uow.outbox.add_contact_event(event, now)
    relay.wake()
    return accepted, True
