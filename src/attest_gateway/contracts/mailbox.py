"""The answers of the health side's mailbox and submission, and of a job centre's inbox
acknowledgement, as the partner API returns them and the partner client reads them."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.contracts.stages import MessageType


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MailboxItem(_Answer):
    """One sealed envelope waiting for the organisation; open it with its private key."""

    message_id: str = Field(description="the message's id (MessageHeader.id)")
    conversation_id: str = Field(description="the conversation the message belongs to")
    message_type: MessageType = Field(description="what the message is, as its header says")
    delivered_at: dt.datetime = Field(description="when it reached the mailbox (UTC)")
    envelope: SealedEnvelope = Field(
        description="the sealed envelope: clear header, HPKE ciphertext of the FHIR Bundle, "
        "Ed25519 signature (docs/envelope.md)"
    )


class Mailbox(_Answer):
    """`GET /medcom/v1/mailbox`: what waits, oldest first."""

    items: list[MailboxItem] = Field(
        description="the waiting envelopes, oldest first, at most `limit`; an item stays "
        "until it is acknowledged or marked collected"
    )


class Collected(_Answer):
    """`POST /medcom/v1/mailbox/{message_id}/collected`."""

    message_id: str = Field(description="the message marked collected")
    collected: Literal[True] = Field(description="always true: the message is collected now")
    changed: bool = Field(description="false when it was collected before (a repeated call)")


class MessageAccepted(_Answer):
    """`POST /medcom/v1/messages`: the message is accepted and will be delivered. A repeated
    submission of the same message id answers the first answer again, with the header
    `Idempotent-Replayed: true`."""

    message_id: str = Field(description="the message's id (MessageHeader.id)")
    bundle_id: str = Field(description="the Bundle's id (new on every send)")
    conversation_id: str = Field(description="the conversation it answers")
    message_type: MessageType = Field(description="acknowledgement or attest-reply")
    status: Literal["accepted"] = Field(description="always accepted")
    accepted_at: dt.datetime = Field(description="when the gateway accepted it (UTC)")


class ReplyAcknowledged(_Answer):
    """`POST /jobcenter/v1/inbox/{message_id}/ack`: the reply is acknowledged (the gateway
    sends the MedCom acknowledgement to the clinic for the job centre)."""

    message_id: str = Field(description="the reply acknowledged")
    acknowledged: Literal[True] = Field(description="always true: the reply is acknowledged")
    changed: bool = Field(description="false when it was acknowledged before")
