"""`POST /jobcenter/v1/contacts`: a job centre registers a direct contact with psychiatry.

A meeting, call or video meeting between the job centre and a psychiatry unit about one
citizen counts towards contact coverage as much as a message does. The CPR number is turned
into the case ref at once and stored only sealed to the gateway's own key (to re-key the
pseudonym from, infra/db/pseudonyms.py); the registration (case ref, organisations, dates,
channel) and its `contact` tracking event are written in one transaction (the outbox relay
publishes the event to `gateway.tracking`, key = case ref). An `Idempotency-Key` makes a
retry return the first answer.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from attest_gateway.contracts.contacts import ContactChannel, ContactEvent
from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.core.bounds import InputDate, a_year_after
from attest_gateway.core.clock import Clock
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import ErrorCode, InvalidInput, NotPermitted, Replay
from attest_gateway.core.identifiers import Cpr, Kommunekode, Sor, municipalities
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.ports.records import ContactRecord
from attest_gateway.ports.sealing import seal_for_gateway
from attest_gateway.ports.store import Directory, Relay, Store


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


class ContactAccepted(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    contact_id: str
    contact_date: dt.date
    psychiatry: Annotated[str, Field(description="the psychiatry unit's name")]


async def _same_contact(
    directory: Directory, row: ContactRecord, body: ContactIn, ref: str
) -> bool:
    """Whether a stored registration is the one `body` asks for (a retry), field by field."""
    if (row.case_ref, row.case_kind, row.channel) != (ref, body.case_kind.value, body.channel):
        return False
    if (row.first_day_of_absence, row.contact_date) != (
        body.first_day_of_absence,
        body.contact_date,
    ):
        return False
    psychiatry = await directory.org_by_id(row.psychiatry_org)
    return psychiatry is not None and psychiatry.sor == body.psychiatry_sor


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
    """Store the registration and its tracking event. Returns (answer, created now)."""
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
    if body.contact_date > now.date() + dt.timedelta(days=1):
        raise InvalidInput(
            ErrorCode.INVALID_CONTACT_DATE, "a contact cannot be registered in advance"
        )
    if body.contact_date < body.first_day_of_absence - dt.timedelta(days=365):
        raise InvalidInput(ErrorCode.INVALID_CONTACT_DATE, "the contact is long before the absence")
    ref = pseudonyms.case_ref(body.citizen_cpr, pseudonym_key)
    async with store.transaction() as uow:
        if idempotency_key is not None:
            row = await uow.contacts.by_idempotency_key(org.id, idempotency_key)
            if row is not None:
                if not await _same_contact(uow.directory, row, body, ref):
                    raise Replay(
                        ErrorCode.IDEMPOTENCY_KEY_REUSED,
                        "this Idempotency-Key was used with a different contact",
                    )
                return ContactAccepted.model_validate_json(row.response), False
        psychiatry = await uow.directory.org_by_sor(body.psychiatry_sor)
        if psychiatry is None or not psychiatry.enabled or psychiatry.role is not Role.PSYCHIATRY:
            raise InvalidInput(ErrorCode.UNKNOWN_RECEIVER, "no psychiatry unit has that SOR code")
        contact_id = str(uuid.uuid4())
        accepted = ContactAccepted(
            contact_id=contact_id, contact_date=body.contact_date, psychiatry=psychiatry.name
        )
        await uow.contacts.add(
            ContactRecord(
                contact_id=contact_id,
                jobcenter_org=org.id,
                psychiatry_org=psychiatry.id,
                case_ref=ref,
                case_kind=body.case_kind.value,
                first_day_of_absence=body.first_day_of_absence,
                contact_date=body.contact_date,
                channel=body.channel.value,
                idempotency_key=idempotency_key,
                response=accepted.model_dump_json(),
                created_at=now,
                citizen_sealed=await seal_for_gateway(
                    uow.directory,
                    keyring,
                    gateway_org_id,
                    body.citizen_cpr,
                    context=pseudonyms.contact_context(contact_id),
                    now=now,
                ),
            )
        )
        event = ContactEvent(
            event_id=str(uuid.uuid4()),
            contact_id=contact_id,
            # noon local time on the contact day: inside that day in any Danish time zone
            at=dt.datetime.combine(body.contact_date, dt.time(11, 0), tzinfo=dt.UTC),
            contact_date=body.contact_date,
            jobcenter_org=org.id,
            psychiatry_org=psychiatry.id,
            municipality=body.municipality,
            region_code=municipalities()[body.municipality].region_code,
            case_kind=body.case_kind.value,
            case_ref=ref,
            first_day_of_absence=body.first_day_of_absence,
            channel=body.channel,
        )
        await uow.outbox.add_contact_event(event, now)
    relay.wake()
    return accepted, True
