"""Webhooks on the wire: the events, the payload a receiver gets (Standard Webhooks form:
`type`, `timestamp`, `data`), and the `/webhooks/v1` API's models.

A payload is metadata only: ids, types, the stage, links to fetch the content through the
API. Never health data, never a CPR number, not even the case ref.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from attest_gateway.contracts.stages import MessageType, Stage


class WebhookEvent(StrEnum):
    """What a delivery reports (`type` in its payload)."""

    MESSAGE_WAITING = "message.waiting"  # a clinic: a request is waiting in its mailbox
    REPLY_ARRIVED = "reply.arrived"  # a job centre: a reply (any reply_kind) is in its inbox
    REQUEST_REFUSED = "request.refused"  # a job centre: the clinic acknowledged with an error
    REQUEST_OVERDUE = "request.overdue"  # a job centre: the reply deadline passed
    STATUS_CHANGED = "request.status-changed"  # a job centre: its request reached a stage
    PING = "ping"  # on demand, to test an endpoint


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # not yet accepted by the endpoint: tried again when due
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # given up after the retry period (or the endpoint was removed)


class EventData(BaseModel):
    """`data` of a conversation's event: where it stands and where to read it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    conversation_id: str
    message_id: str
    message_type: MessageType
    stage: Stage
    at: dt.datetime
    attest_type: str
    response_code: str | None = Field(
        default=None, description="the MedCom acknowledgement code, for `request.refused`"
    )
    links: dict[str, str] = Field(description="API paths to fetch what the event is about")


class PingData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_id: str
    links: dict[str, str] = Field(default_factory=dict)


class WebhookPayload(BaseModel):
    """The body of every delivery, in the Standard Webhooks shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: WebhookEvent
    timestamp: dt.datetime
    data: EventData | PingData


# --- the API ----------------------------------------------------------------------------------


class EndpointIn(BaseModel):
    """A new endpoint: an https URL and the events it wants (none named: all the
    organisation's role gets)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(max_length=500, description="https URL the deliveries are POSTed to")
    events: list[WebhookEvent] | None = Field(
        default=None, max_length=10, description="the events to send; default: all for the role"
    )


class Endpoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    url: str
    events: list[WebhookEvent]
    created_at: dt.datetime
    rotating_until: dt.datetime | None = Field(
        default=None, description="until then the previous secret signs too"
    )


class EndpointCreated(Endpoint):
    secret: str = Field(description="`whsec_…`: shown once, keep it to verify the deliveries")


class EndpointRotated(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    secret: str = Field(description="the new `whsec_…` secret, shown once")
    rotating_until: dt.datetime


class Endpoints(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoints: list[Endpoint]


class Delivery(BaseModel):
    """A delivery as its organisation sees it. The endpoint's answers are not stored: only
    the status code of the last attempt, or the gateway's own word for what went wrong."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="the `webhook-id` header: the same on every attempt")
    endpoint_id: str
    event_type: WebhookEvent
    conversation_id: str | None
    status: DeliveryStatus
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None


class Deliveries(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    deliveries: list[Delivery]


class DeliveryQueued(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    status: Literal["pending"] = "pending"
