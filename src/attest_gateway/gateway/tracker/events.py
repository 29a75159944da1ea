"""Tracker input besides stage events: a contact the job centre registered.

`gateway.tracking` carries two record types, told apart by the JSON field `type` (and the
`message-type` header): `stage` (`schemas.events.StageEvent`, key = conversation id) and
`contact` (`ContactEvent`, key = case ref). Both are metadata only: the citizen appears as
the case ref, never as a CPR number.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Literal

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict

from attest_gateway.schemas.events import StageEvent


class ContactChannel(StrEnum):
    MEETING = "meeting"
    PHONE = "phone"
    VIDEO = "video"
    OTHER = "other"


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


TrackingEvent = StageEvent | ContactEvent


class NotATrackingEvent(ValueError):
    pass


def parse_tracking_event(raw: bytes | None) -> TrackingEvent:
    """A `gateway.tracking` record value → its model. Raises NotATrackingEvent."""
    if raw is None:
        raise NotATrackingEvent("the record has no value")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise NotATrackingEvent("the record is not JSON") from exc
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "stage":
            return StageEvent.model_validate(data)
        if kind == "contact":
            return ContactEvent.model_validate(data)
    except pydantic.ValidationError as exc:
        raise NotATrackingEvent(f"the {kind} event does not match its schema") from exc
    raise NotATrackingEvent("unknown tracking event type")
