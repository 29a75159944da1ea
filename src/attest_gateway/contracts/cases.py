"""Sickness cases (job centre) and psychiatric treatments (psychiatry): what crosses the edge.

A case is the denominator of contact coverage: every sick-listed citizen a job centre follows,
with or without an attest request. The CPR number is turned into the case ref at the edge; the
answer gives the case ref back so that psychiatry can name the citizen without the CPR number.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.core.bounds import REFERENCE, InputDate
from attest_gateway.core.identifiers import Cpr, Kommunekode

CASE_REF_PATTERN = r"^[0-9a-f]{6}\.[0-9a-f]{32}$"
CaseRef = Annotated[str, Field(pattern=CASE_REF_PATTERN)]

#: JSON Schema of a body that names the citizen by `citizen_cpr` or by `case_ref`, one of them.
ONE_CITIZEN: dict[str, Any] = {
    "oneOf": [
        {"required": ["citizen_cpr"], "properties": {"citizen_cpr": {"type": "string"}}},
        {"required": ["case_ref"], "properties": {"case_ref": {"type": "string"}}},
    ]
}
JobcenterCaseId = Annotated[str, Field(min_length=1, max_length=64), REFERENCE]


class _Contract(BaseModel):
    # hide_input_in_errors: a validation error must never carry the CPR number.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class CaseIn(_Contract):
    """`POST /jobcenter/v1/cases`: register a sickness case (idempotent by `case_id`)."""

    municipality: Kommunekode
    case_id: JobcenterCaseId = Field(description="the job centre's own id of the case (no CPR)")
    citizen_cpr: Cpr
    case_kind: CaseKind
    psychiatric_course: bool = Field(description="the citizen has a psychiatric course")
    first_day_of_absence: InputDate = Field(description="at most a year ahead")
    closed_on: InputDate | None = Field(default=None, description="the day the case closed")


class CasePatch(_Contract):
    """`PATCH /jobcenter/v1/cases/{case_id}`: what may change; a field left out stays."""

    # an empty object changes nothing and is refused: say so in the schema (OpenAPI)
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})  # merged with _Contract's

    psychiatric_course: bool | None = None
    closed_on: InputDate | None = Field(
        default=None, description="the day the case closed (null: open again)"
    )

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("send psychiatric_course, closed_on or both")
        return self


class CaseOut(_Contract):
    case_id: str
    case_ref: str = Field(
        description="the citizen's pseudonym in the gateway: psychiatry may register a "
        "treatment or contact by it instead of the CPR number"
    )
    municipality: str
    case_kind: CaseKind
    psychiatric_course: bool
    first_day_of_absence: dt.date
    closed_on: dt.date | None


class TreatmentIn(_Contract):
    """`POST /psychiatry/v1/treatments`: a citizen is in this unit's treatment."""

    # the citizen by CPR number or by case ref, exactly one (stated for OpenAPI as well)
    model_config = ConfigDict(json_schema_extra=ONE_CITIZEN)

    citizen_cpr: Cpr | None = None
    case_ref: CaseRef | None = Field(
        default=None, description="the citizen's case ref as the gateway gave it"
    )
    start_date: InputDate = Field(description="the treatment's first day")
    end_date: InputDate | None = Field(default=None, description="its last day, if known")

    @model_validator(mode="after")
    def _one_citizen(self) -> Self:
        if (self.citizen_cpr is None) == (self.case_ref is None):
            raise ValueError("name the citizen by citizen_cpr or by case_ref, one of them")
        return self


class TreatmentAccepted(_Contract):
    treatment_id: str
    start_date: dt.date
    end_date: dt.date | None
