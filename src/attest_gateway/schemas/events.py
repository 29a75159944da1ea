"""Stage events: metadata-only facts about a conversation, published to `gateway.tracking`.

A stage event never carries a CPR number or any text of a message: the citizen is known
only by the case ref (a keyed pseudonym), and the rest is routing and timing.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict


class Stage(StrEnum):
    """The stages of one conversation, in the order they normally happen."""

    SUBMITTED = "submitted"  # the job centre's request was accepted by the API
    PUBLISHED = "published"  # the request was published to Kafka
    IN_MAILBOX = "in_mailbox"  # the request reached the receiver's mailbox
    FETCHED = "fetched"  # the receiver fetched it
    ACKNOWLEDGED = "acknowledged"  # the receiver sent a MedCom acknowledgement
    REPLIED = "replied"  # the receiver sent the attest reply
    REPLY_IN_INBOX = "reply_in_inbox"  # the reply reached the job centre's inbox
    REPLY_FETCHED = "reply_fetched"  # the job centre fetched the reply
    REPLY_ACKNOWLEDGED = "reply_acknowledged"  # the job centre acknowledged the reply
    RESENT = "resent"  # no acknowledgement in time: resent (MedCom resend rule)
    UNDELIVERABLE = "undeliverable"  # still no acknowledgement after the last resend
    OVERDUE = "overdue"  # the reply deadline passed without an attest (tracker)
    REMINDED = "reminded"  # the tracker sent the receiver a reminder (first one)


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)


class MessageType(StrEnum):
    ATTEST_REQUEST = "attest-request"
    ATTEST_REPLY = "attest-reply"
    ACKNOWLEDGEMENT = "acknowledgement"
    ATTEST_REMINDER = "attest-reminder"  # the tracker reminds the receiver of a request


class StageEvent(BaseModel):
    """`gateway.tracking` record value (JSON). Key: the conversation id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["stage"] = "stage"
    v: Literal[1] = 1
    event_id: str
    conversation_id: str
    message_id: str
    message_type: MessageType
    stage: Stage
    at: dt.datetime
    attest_type: str
    case_kind: str
    municipality: str
    region_code: str
    jobcenter_org: str
    receiver_org: str
    case_ref: str
    psychiatric_course: bool
    first_day_of_absence: dt.date
    reply_deadline: dt.date
    detail: str | None = None
