"""Stage events: metadata-only facts about a conversation, published to `gateway.tracking`.

A stage event never carries a CPR number or any text of a message: the citizen is known
only by the case ref (a keyed pseudonym), and the rest is routing and timing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
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
    REMINDED = "reminded"  # the receiver was reminded (the tracker's first, or by hand)
    REFUSED = "refused"  # the receiver refused the request (a fatal-error acknowledgement)
    DEADLINE_EXTENDED = "deadline_extended"  # the job centre moved the reply deadline later
    CANCELLED = "cancelled"  # the job centre cancelled the request (the receiver was told)


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)

# The stages a conversation moves forward through; the others are things that happened to it
# on the way (a resend, a missed deadline, a reminder) and never undo progress.
PROGRESS: tuple[Stage, ...] = STAGE_ORDER[: STAGE_ORDER.index(Stage.REPLY_ACKNOWLEDGED) + 1]

# A conversation is finished once it reached one of these: the job centre acknowledged the
# reply, the request was given up after its last resend, the receiver refused it, or the job
# centre cancelled it. Nothing more is sent in it, so retention may remove it
# (docs/data-lifecycle.md); a conversation without one is open.
FINAL_STAGES: tuple[Stage, ...] = (
    Stage.REPLY_ACKNOWLEDGED,
    Stage.UNDELIVERABLE,
    Stage.REFUSED,
    Stage.CANCELLED,
)


def current_stage(timeline: Sequence[tuple[Stage, dt.datetime]]) -> Stage:
    """Where a conversation stands, from the stages it reached and when.

    The furthest progress stage, unless something happened to the conversation after it while
    it still waits for the attest (resent, undeliverable, overdue, reminded): then that, the
    latest such. Once the attest is replied, later side events no longer describe it. A
    refused request stays refused, a cancelled one cancelled: nothing more happens in it.
    """
    if any(s is Stage.CANCELLED for s, _ in timeline):
        return Stage.CANCELLED
    progress = [(s, at) for s, at in timeline if s in PROGRESS]
    furthest = max(progress, key=lambda p: PROGRESS.index(p[0]), default=None)
    if furthest is not None and PROGRESS.index(furthest[0]) >= PROGRESS.index(Stage.REPLIED):
        return furthest[0]
    if any(s is Stage.REFUSED for s, _ in timeline):
        return Stage.REFUSED
    since = furthest[1] if furthest is not None else None
    side = [(s, at) for s, at in timeline if s not in PROGRESS and (since is None or at >= since)]
    if side:
        return max(side, key=lambda p: (p[1], STAGE_ORDER.index(p[0])))[0]
    return furthest[0] if furthest is not None else Stage.SUBMITTED


class MessageType(StrEnum):
    ATTEST_REQUEST = "attest-request"
    ATTEST_REPLY = "attest-reply"
    ACKNOWLEDGEMENT = "acknowledgement"
    ATTEST_REMINDER = "attest-reminder"  # the tracker reminds the receiver of a request
    ATTEST_CANCELLATION = "attest-cancellation"  # the job centre cancelled a request


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
