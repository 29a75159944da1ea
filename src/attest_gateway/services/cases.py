"""Sickness cases and psychiatric treatments: the denominator of contact coverage.

`POST /jobcenter/v1/cases` registers a job centre's sickness case (the citizen, case kind,
psychiatric course, first day of absence, closed), with or without any attest request;
`PATCH /jobcenter/v1/cases/{case_id}` changes its psychiatric course or closes it.
`POST /psychiatry/v1/treatments` registers that a citizen is in a psychiatry unit's
treatment: a case of that citizen then counts as one with a psychiatric course, whatever the
job centre marked. The CPR number becomes the case ref at once and is stored only sealed to
the gateway's own key (for re-keying, infra/db/rekey.py); the tracker's coverage report
(tracker/coverage.py) reads these rows, never a CPR number. Each registration or change
decides the citizen's cases again in its own transaction (`uow.coverage.refresh`: the
coverage rollup, infra/db/coverage.py).

A case is idempotent by the job centre's own case id: the same registration again answers the
stored case (200, `Idempotent-Replayed`), another citizen, case kind or first day of absence
under that id is a conflict (409 `case-conflict`), and a changed psychiatric course or closing
day is a `PATCH`.
"""

from __future__ import annotations

import datetime as dt
import uuid

from attest_gateway.contracts.cases import (
    CaseIn,
    CaseOut,
    CasePatch,
    TreatmentAccepted,
    TreatmentIn,
)
from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.core.bounds import a_year_after
from attest_gateway.core.clock import Clock
from attest_gateway.core.directory import Organisation
from attest_gateway.core.errors import ErrorCode, InvalidInput, NotPermitted, Replay, Unknown
from attest_gateway.core.identifiers import municipalities
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.ports.records import CaseRecord, TreatmentRecord
from attest_gateway.ports.sealing import seal_for_gateway
from attest_gateway.ports.store import Store
from attest_gateway.services.contacts import citizen_ref


def case_out(row: CaseRecord) -> CaseOut:
    return CaseOut(
        case_id=row.jobcenter_case_id,
        case_ref=row.case_ref,
        municipality=row.municipality,
        case_kind=CaseKind(row.case_kind),
        psychiatric_course=row.psychiatric_course,
        first_day_of_absence=row.first_day_of_absence,
        closed_on=row.closed_on,
    )


def _check_closed(first_day: dt.date, closed_on: dt.date | None, today: dt.date) -> None:
    if closed_on is None:
        return
    if closed_on < first_day:
        raise InvalidInput(
            ErrorCode.INVALID_CLOSED_DATE, "the case cannot close before the first day of absence"
        )
    if closed_on > today + dt.timedelta(days=1):
        raise InvalidInput(ErrorCode.INVALID_CLOSED_DATE, "a case cannot be closed in advance")


async def register_case(
    store: Store,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    body: CaseIn,
    *,
    gateway_org_id: str,
    pseudonym_key: bytes,
) -> tuple[CaseOut, bool]:
    """Store a sickness case. Returns (the case, created now)."""
    if body.municipality != org.kommunekode:
        raise NotPermitted(
            ErrorCode.JOBCENTER_MISMATCH, "the municipality in the request is not the caller"
        )
    now = clock.now()
    if body.first_day_of_absence > a_year_after(now.date()):
        raise InvalidInput(
            ErrorCode.INVALID_FIRST_DAY_OF_ABSENCE,
            "the first day of absence is more than a year ahead",
        )
    _check_closed(body.first_day_of_absence, body.closed_on, now.date())
    ref = pseudonyms.case_ref(body.citizen_cpr, pseudonym_key)
    async with store.transaction() as uow:
        row = await uow.cases.by_jobcenter_case_id(org.id, body.case_id)
        if row is not None:
            same = (row.case_ref, row.case_kind, row.first_day_of_absence) == (
                ref,
                body.case_kind.value,
                body.first_day_of_absence,
            ) and (row.psychiatric_course, row.closed_on) == (
                body.psychiatric_course,
                body.closed_on,
            )
            if not same:
                raise Replay(
                    ErrorCode.CASE_CONFLICT,
                    "the job centre already registered another case under this case id "
                    "(change the psychiatric course or close it with PATCH)",
                )
            return case_out(row), False
        case_id = str(uuid.uuid4())
        record = CaseRecord(
            case_id=case_id,
            jobcenter_org=org.id,
            jobcenter_case_id=body.case_id,
            case_ref=ref,
            municipality=body.municipality,
            region_code=municipalities()[body.municipality].region_code,
            case_kind=body.case_kind.value,
            psychiatric_course=body.psychiatric_course,
            first_day_of_absence=body.first_day_of_absence,
            closed_on=body.closed_on,
            created_at=now,
            updated_at=now,
            citizen_sealed=await seal_for_gateway(
                uow.directory,
                keyring,
                gateway_org_id,
                body.citizen_cpr,
                context=pseudonyms.case_context(case_id),
                now=now,
            ),
        )
        await uow.cases.add(record)
        await uow.coverage.refresh([ref])
    return case_out(record), True


async def update_case(
    store: Store, clock: Clock, org: Organisation, jobcenter_case_id: str, body: CasePatch
) -> CaseOut:
    """Change a case's psychiatric course or closing day (only the job centre's own case)."""
    now = clock.now()
    async with store.transaction() as uow:
        row = await uow.cases.by_jobcenter_case_id(org.id, jobcenter_case_id)
        if row is None:
            raise Unknown(ErrorCode.NOT_FOUND, "no such case")
        fields = body.model_fields_set
        course = (
            body.psychiatric_course
            if "psychiatric_course" in fields and body.psychiatric_course is not None
            else row.psychiatric_course
        )
        closed_on = body.closed_on if "closed_on" in fields else row.closed_on
        _check_closed(row.first_day_of_absence, closed_on, now.date())
        changed = CaseRecord(
            **{f: getattr(row, f) for f in CaseRecord.__dataclass_fields__}
            | {"psychiatric_course": course, "closed_on": closed_on, "updated_at": now}
        )
        await uow.cases.update(changed)
        await uow.coverage.refresh([changed.case_ref])
    return case_out(changed)


async def register_treatment(
    store: Store,
    keyring: KeyRing,
    clock: Clock,
    org: Organisation,
    body: TreatmentIn,
    *,
    idempotency_key: str | None,
    gateway_org_id: str,
    pseudonym_key: bytes,
) -> tuple[TreatmentAccepted, bool]:
    """Store that a citizen is in `org`'s treatment. Returns (answer, created now)."""
    now = clock.now()
    if body.start_date > now.date() + dt.timedelta(days=1):
        raise InvalidInput(
            ErrorCode.INVALID_PERIOD, "a treatment cannot be registered before it begins"
        )
    if body.end_date is not None and body.end_date < body.start_date:
        raise InvalidInput(ErrorCode.INVALID_PERIOD, "end_date is before start_date")
    ref = citizen_ref(body.citizen_cpr, body.case_ref, pseudonym_key)
    async with store.transaction() as uow:
        if idempotency_key is not None:
            row = await uow.treatments.by_idempotency_key(org.id, idempotency_key)
            if row is not None:
                if (row.case_ref, row.start_date, row.end_date) != (
                    ref,
                    body.start_date,
                    body.end_date,
                ):
                    raise Replay(
                        ErrorCode.IDEMPOTENCY_KEY_REUSED,
                        "this Idempotency-Key was used with a different treatment",
                    )
                return TreatmentAccepted.model_validate_json(row.response), False
        treatment_id = str(uuid.uuid4())
        accepted = TreatmentAccepted(
            treatment_id=treatment_id, start_date=body.start_date, end_date=body.end_date
        )
        sealed = None
        if body.citizen_cpr is not None:
            sealed = await seal_for_gateway(
                uow.directory,
                keyring,
                gateway_org_id,
                body.citizen_cpr,
                context=pseudonyms.treatment_context(treatment_id),
                now=now,
            )
        await uow.treatments.add(
            TreatmentRecord(
                treatment_id=treatment_id,
                psychiatry_org=org.id,
                case_ref=ref,
                region_code=org.region_code,
                start_date=body.start_date,
                end_date=body.end_date,
                idempotency_key=idempotency_key,
                response=accepted.model_dump_json(),
                created_at=now,
                citizen_sealed=sealed,
            )
        )
        await uow.coverage.refresh([ref])
    return accepted, True
