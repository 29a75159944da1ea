"""Tracker input besides stage events: a contact the job centre or psychiatry registered.

`gateway.tracking` carries two record types, told apart by the JSON field `type` (and the
`message-type` header): `stage` (`contracts.stages.StageEvent`, key = conversation id) and
`contact` (`ContactEvent`, key = case ref). Both are metadata only: the citizen appears as
the case ref, never as a CPR number.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict

from attest_gateway.contracts.stages import StageEvent


class ContactChannel(StrEnum):
    MEETING = "meeting"
    PHONE = "phone"
    VIDEO = "video"
    WRITTEN = "written"  # a written exchange (a letter or secure e-mail) outside the gateway
    OTHER = "other"


class Registrar(StrEnum):
    """Which side registered a contact."""

    JOBCENTER = "jobcenter"
    PSYCHIATRY = "psychiatry"


class ContactEvent(BaseModel):
    """A direct contact between a job centre and psychiatry about one citizen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["contact"] = "contact"
    v: Literal[1] = 1
    event_id: str
    contact_id: str
    at: dt.datetime
    contact_date: dt.date
    jobcenter_org: str
    psychiatry_org: str
    municipality: str
    region_code: str
    case_kind: str
    case_ref: str
    first_day_of_absence: dt.date
    channel: ContactChannel
    registered_by: Registrar = Registrar.JOBCENTER


TrackingEvent = StageEvent | ContactEvent

# Both models told apart by `type`, validated straight from the JSON bytes (pydantic-core's
# parser, no intermediate dict: docs/decisions/0011-tracking-events-validated-from-bytes.md).
_TRACKING_EVENT: pydantic.TypeAdapter[TrackingEvent] = pydantic.TypeAdapter(
    Annotated[TrackingEvent, pydantic.Field(discriminator="type")]
)


class NotATrackingEvent(ValueError):
    pass


def parse_tracking_event(raw: bytes | None) -> TrackingEvent:
    """A `gateway.tracking` record value → its model. Raises NotATrackingEvent."""
    if raw is None:
        raise NotATrackingEvent("the record has no value")
    try:
        return _TRACKING_EVENT.validate_json(raw)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise NotATrackingEvent("the record is not JSON") from exc
        located = [e["loc"] for e in errors if e["loc"]]
        if not located:  # not an object, or no known `type`
            raise NotATrackingEvent("unknown tracking event type") from exc
        raise NotATrackingEvent(f"the {located[0][0]} event does not match its schema") from exc
