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
from attest_gateway.core.attests import DEFAULT_CATALOGUE, DeadlineUnit, FormSource, ReplyKind
from attest_gateway.core.bounds import LINE, NAME, REFERENCE, TEXT, Email, InputDate, Phone
from attest_gateway.core.directory import Role
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


class ConsentIn(_Contract):
    """The citizen's consent to the request (`given` true and the `date` it was given), or,
    for an attest type a law lets the job centre ask for without consent, that law
    (`legal_basis`, one of the type's `legal_bases` in `GET /jobcenter/v1/attest-types`).
    Checked per attest type: `consent-required` (422) when the type needs consent."""

    # The JSON Schema says "consent or legal basis" too (a null counts as absent, as in the
    # check).
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["given", "date"],
                    "properties": {"given": {"const": True}, "date": {"type": "string"}},
                    "not": {
                        "required": ["legal_basis"],
                        "properties": {"legal_basis": {"type": "string"}},
                    },
                },
                {
                    "required": ["legal_basis"],
                    "properties": {"legal_basis": {"type": "string"}},
                    "not": {
                        "anyOf": [
                            {"required": ["given"], "properties": {"given": {"const": True}}},
                            {"required": ["date"], "properties": {"date": {"type": "string"}}},
                        ]
                    },
                },
            ]
        }
    )

    given: Literal[True] | None = Field(
        default=None, description="true: the citizen consented (with `date`)"
    )
    date: InputDate | None = Field(default=None, description="the day the citizen consented")
    legal_basis: Annotated[str, Field(min_length=1, max_length=200), LINE] | None = Field(
        default=None,
        description="the law that lets the job centre ask without consent, e.g. "
        "'sygedagpengeloven § 11 a' for LÆ 285",
    )

    @model_validator(mode="after")
    def _consent_or_basis(self) -> Self:
        consent = self.given is not None or self.date is not None
        if consent and (self.given is None or self.date is None):
            raise ValueError("consent needs both given (true) and date")
        if consent == (self.legal_basis is not None):
            raise ValueError("give either given and date, or legal_basis")
        return self


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
    consent: ConsentIn | None = Field(
        default=None,
        description="the citizen's consent, or the legal basis to ask without it; required "
        "(`consent-required`, 422) for every attest type: consent, or a basis the type allows",
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
    request_form: str = Field(description="the LÆ form the request was made on, e.g. 'LÆ 121'")
    reply_form: str = Field(description="the LÆ form the attest comes on, e.g. 'LÆ 125'")
    case_kind: CaseKind
    caseworker_ref: str
    receiver: OrganisationSummary
    reply_deadline: dt.date
    stage: Stage
    stages: dict[Stage, dt.datetime]
    timeline: list[TimelineEntry]
    reply_kind: ReplyKind | None = Field(
        default=None,
        description="what the clinic answered, once it did: the attest, or an answer "
        "without it (not-in-treatment, wrong-form, cannot-answer), which ends the request too",
    )


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
    attest_text: str | None = Field(
        description="the text the clinic wrote in this reply (not the earlier segments it "
        "repeats); for an answer without an attest, why"
    )
    attachments: list[AttachmentOut]
    reply_kind: ReplyKind = Field(
        default=ReplyKind.ATTEST,
        description="attest: here is the attest; not-in-treatment: the citizen is not "
        "treated there; wrong-form: the wrong attest type was asked for "
        "(`suggested_attest_type` may name the right one); cannot-answer: see the text",
    )
    suggested_attest_type: str | None = Field(
        default=None, description="with wrong-form: the attest type the clinic suggests"
    )


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
    reply_kind: ReplyKind | None = Field(
        default=None,
        description="what the clinic answered, once it did (attest, not-in-treatment, "
        "wrong-form, cannot-answer)",
    )


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


class ReplyDeadlineOut(_Contract):
    """A default reply deadline: an amount of days or months after the request."""

    amount: int = Field(description="how many units after the request")
    unit: DeadlineUnit = Field(description="days or months")


class AttestTypeOut(_Contract):
    """One attest type of the LÆ catalogue: its request/reply form pair, who issues it, its
    default reply deadline, and whether the citizen's consent is needed."""

    code: str = Field(description="the attest type: its reply form, e.g. 'LÆ 125'")
    title: str
    request_form: str = Field(description="the form the job centre asks on, e.g. 'LÆ 121'")
    reply_form: str = Field(description="the form the doctor answers on (the code)")
    request_form_source: FormSource = Field(
        description="observed: the pair is named in the domain sources; inferred: it follows "
        "their numbering (the reply form's number less four)"
    )
    issuers: list[Role] = Field(description="the roles that issue it")
    reply_deadline: ReplyDeadlineOut = Field(
        description="the default reply deadline, counted from the request"
    )
    consent_required: bool = Field(
        description="true: a request needs the citizen's consent (given and date)"
    )
    legal_bases: list[str] = Field(
        description="the laws a request may name instead of consent (`consent.legal_basis`)"
    )


class AttestTypeList(_Contract):
    """`GET /jobcenter/v1/attest-types`: the LÆ catalogue."""

    items: list[AttestTypeOut]
