"""The citizen's own view (GDPR art. 15): what the gateway holds about one citizen, and who
read it, as `attest-gateway citizen export` writes it (JSON; the HTML page shows the same).

Metadata only: who asked whom for which attest, when each stage happened, the registered
contacts, sickness cases and treatments, and every audit entry concerning the citizen's
conversations and messages. Never attest text, a Bundle, a sealed copy, the CPR number or
the case ref, and never another citizen's ids (a read that handed out several citizens'
messages lists only this citizen's).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OrgName(_Frozen):
    """An organisation by its directory id and name (the name as the directory holds it now;
    `null` when it is no longer in the directory)."""

    id: str
    name: str | None = None


class StageTime(_Frozen):
    stage: str = Field(description="the stage (contracts/stages.py), e.g. submitted, fetched")
    at: dt.datetime


class ConversationTimeline(_Frozen):
    """One attest request and what happened to it."""

    conversation_id: str
    jobcenter: OrgName = Field(description="the job centre that asked")
    receiver: OrgName = Field(description="the clinic asked for the attest")
    attest_type: str
    case_kind: str
    created_at: dt.datetime | None = Field(
        default=None, description="when the request was accepted (null in a tracker timeline)"
    )
    reply_deadline: dt.date | None = None
    stages: list[StageTime] = Field(description="each stage reached, oldest first")
    kept_by: Literal["gateway", "tracker"] = Field(
        description="`gateway`: the conversation itself; `tracker`: only the tracker's timeline "
        "is left (the conversation was removed by retention)"
    )


class RegisteredContact(_Frozen):
    contact_id: str
    jobcenter: OrgName
    psychiatry: OrgName
    registered_by: OrgName
    case_kind: str
    first_day_of_absence: dt.date
    contact_date: dt.date
    channel: str
    registered_at: dt.datetime


class SicknessCase(_Frozen):
    case_id: str
    jobcenter: OrgName
    case_kind: str
    psychiatric_course: bool
    first_day_of_absence: dt.date
    closed_on: dt.date | None
    registered_at: dt.datetime


class Treatment(_Frozen):
    treatment_id: str
    psychiatry: OrgName
    start_date: dt.date
    end_date: dt.date | None
    registered_at: dt.datetime


class CaseClosure(_Frozen):
    closure_id: str
    jobcenter: OrgName
    case_kind: str
    closed_at: dt.datetime
    erase_after: dt.datetime


class Access(_Frozen):
    """An audit entry concerning the citizen: a read, an opening at the edge, a closure, an
    earlier export. Ids of other citizens' messages read at the same time are left out."""

    seq: int
    at: dt.datetime
    actor: OrgName = Field(description="an organisation, or `operator:<name>` at the gateway")
    action: str
    source: str = Field(description="the client's address, or `cli` / `gateway`")
    conversation_ids: list[str]
    message_ids: list[str]
    person: str | None = Field(
        default=None,
        description="the person who acted for the organisation, as its system names them "
        "(`Attest-Actor`), when it said",
    )
    authorisation_id: str | None = Field(
        default=None, description="that person's autorisations-ID, for a health professional"
    )


class CitizenExport(_Frozen):
    """`attest-gateway citizen export`: everything the gateway holds about one citizen."""

    schema_version: Literal[1] = SCHEMA_VERSION
    exported_at: dt.datetime
    pseudonym_key_id: str = Field(description="the key id of the pseudonyms searched for")
    conversations: list[ConversationTimeline]
    contacts: list[RegisteredContact]
    cases: list[SicknessCase]
    treatments: list[Treatment]
    closures: list[CaseClosure]
    accesses: list[Access]
