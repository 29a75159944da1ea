"""The job-centre JSON API: what a municipality's case system sends and gets back.

Job-centre systems speak plain JSON over HTTPS; they never see FHIR. These models are
our own contracts (frozen, no extra fields); the adapter translates them to and from
MedCom-like Bundles.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from attest_gateway.contracts.stages import Stage
from attest_gateway.core.attests import DEFAULT_CATALOGUE
from attest_gateway.core.bounds import LINE, NAME, REFERENCE, TEXT, Email, InputDate, Phone
from attest_gateway.core.identifiers import Cpr, Gln, Kommunekode, Sor, Ydernummer


class CaseKind(StrEnum):
    SYGEDAGPENGE = "sygedagpenge"
    JOBAFKLARINGSFORLOEB = "jobafklaringsforloeb"
    RESSOURCEFORLOEB = "ressourceforloeb"


class _Contract(BaseModel):
    # hide_input_in_errors: a validation error must never carry the CPR number or text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class ReceiverRef(_Contract):
    """The organisation asked for the attest: a SOR code, or a GP practice's ydernummer."""

    # The JSON Schema says "exactly one" too (a null counts as absent, as in the check).
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("sor", "ydernummer")
            ]
        }
    )

    sor: Sor | None = None
    ydernummer: Ydernummer | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.sor is None) == (self.ydernummer is None):
            raise ValueError("give exactly one of sor or ydernummer")
        return self


NamePart = Annotated[str, NAME, LINE]
"""A given name or a family name: one line of 1 to 100 characters."""


class PersonNameIn(_Contract):
    """A person's name: the given names in order (none, one or more) and the family name."""

    given: list[NamePart] = Field(max_length=10, description="the given names, in order")
    family: NamePart


class CaseworkerIn(PersonNameIn):
    """The job centre's caseworker who asks: the author of the request's text, whom the
    clinic contacts. The phone is required (MedCom's author contact is a phone number); an
    e-mail address may be given too."""

    phone: Phone = Field(description="8 to 15 digits, optionally after a '+'; no spaces")
    email: Email | None = None


class AttestRequestIn(_Contract):
    """`POST /jobcenter/v1/attest-requests`."""

    municipality: Kommunekode = Field(description="kommunekode of the job centre's municipality")
    jobcenter_gln: Gln = Field(
        description="the job centre's GLN/EAN location number (13 digits, the last a GS1 "
        "check digit)"
    )
    caseworker_ref: Annotated[str, Field(min_length=1, max_length=64), REFERENCE] = Field(
        description="the job centre's own case reference; never a CPR number"
    )
    citizen_cpr: Cpr
    citizen_name: PersonNameIn = Field(description="the citizen's official name")
    caseworker: CaseworkerIn
    attest_type: Annotated[str, LINE] = Field(
        description="an LÆ code from the catalogue, e.g. 'LÆ 265'",
        json_schema_extra={"enum": [*sorted(DEFAULT_CATALOGUE)]},
    )
    receiver: ReceiverRef
    case_kind: CaseKind
    first_day_of_absence: InputDate = Field(description="at most a year ahead")
    psychiatric_course: bool
    questions: Annotated[str, Field(min_length=1, max_length=20_000), TEXT]
    reply_deadline: InputDate | None = Field(
        default=None, description="after today and at most a year ahead"
    )


class AttestRequestAccepted(_Contract):
    conversation_id: str
    message_id: str
    status_url: str
    reply_deadline: dt.date


class OrganisationSummary(_Contract):
    name: str
    sor: str | None = None
    gln: str | None = None
    ydernummer: str | None = None


class TimelineEntry(_Contract):
    stage: Stage
    at: dt.datetime
    message_id: str
    detail: str | None = None


class ConversationStatus(_Contract):
    conversation_id: str
    attest_type: str
    case_kind: CaseKind
    caseworker_ref: str
    receiver: OrganisationSummary
    reply_deadline: dt.date
    stage: Stage
    stages: dict[Stage, dt.datetime]
    timeline: list[TimelineEntry]


class AttachmentOut(_Contract):
    content_type: str
    title: str | None
    data_base64: str


class InboxItem(_Contract):
    """One attest reply, translated from the MedCom-like Bundle into job-centre JSON."""

    message_id: str
    conversation_id: str
    caseworker_ref: str
    attest_type: str
    sender: OrganisationSummary
    received_at: dt.datetime
    attest_text: str | None
    attachments: list[AttachmentOut]


class UnreadableReply(_Contract):
    """A reply that arrived but that the gateway cannot open or read for the job centre
    (e.g. its custodial key is missing): named so that it is not silently missing, and
    handed out again, readable, once the cause is mended. No content, only metadata."""

    message_id: str
    conversation_id: str
    caseworker_ref: str
    received_at: dt.datetime
    code: Annotated[str, Field(description="why it cannot be read: a stable error code")]


class RefusedRequest(_Contract):
    """A request the receiver refused with a MedCom `fatal-error` acknowledgement: the
    conversation ends there (stage `refused`; no reminder follows). Handed out until the job
    centre acknowledges it (`POST /jobcenter/v1/inbox/{message_id}/ack`, which sends nothing
    on: an acknowledgement is never acknowledged)."""

    message_id: str = Field(description="the acknowledgement's MessageHeader id")
    conversation_id: str
    caseworker_ref: str
    attest_type: str
    sender: OrganisationSummary
    received_at: dt.datetime
    code: str = Field(
        description="MedCom's acknowledgement issue code (or the HL7 issue code) of the refusal"
    )
    reason: str | None = Field(
        description="the refusal's text (the OperationOutcome's diagnostics), if it gave one"
    )


class Inbox(_Contract):
    items: list[InboxItem]
    refused: list[RefusedRequest] = Field(
        default_factory=list,
        description="requests the receiver refused (fatal-error acknowledgements)",
    )
    unreadable: list[UnreadableReply] = Field(
        default_factory=list,
        description="replies that cannot be read now; the readable ones always come first",
    )


class AttestRequestSummary(_Contract):
    """One request in the job centre's list."""

    conversation_id: str
    attest_type: str
    case_kind: CaseKind
    caseworker_ref: str
    created_at: dt.datetime
    reply_deadline: dt.date
    stage: Stage = Field(description="where it stands (the status)")
    overdue: bool = Field(description="the reply deadline passed without an attest")
    status_url: str


class AttestRequestList(_Contract):
    """A page of the job centre's requests, newest first."""

    items: list[AttestRequestSummary]
    next_cursor: str | None = Field(
        default=None,
        description="pass it as `cursor` for the next page; absent on the last page",
    )


class DeadlineExtensionIn(_Contract):
    """`POST /jobcenter/v1/attest-requests/{id}/extend`."""

    reply_deadline: InputDate = Field(
        description="the new reply deadline: later than the current one, at most a year ahead"
    )


class RequestActionOut(_Contract):
    """What a cancellation, a deadline extension or a reminder by hand did."""

    conversation_id: str
    action: Literal["cancel", "extend", "remind"] = Field(
        description="what was done: cancelled, deadline extended, reminded by hand"
    )
    at: dt.datetime
    message_id: str | None = Field(
        default=None, description="the message sent to the receiver (cancel, remind)"
    )
    reply_deadline: dt.date = Field(description="the request's reply deadline now")
    status_url: str
