"""Audit entries: who read which message (or changed what), when, from where.

One entry is one row of the hash-chained audit log and one `gateway.audit` record. It names
organisations, message and conversation ids and a client address; it never carries message
content, a CPR number or a case ref.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

# The `prev_hash` of the first entry.
GENESIS = "0" * 64

# The fields an entry's hash covers, besides the hash of the entry before it.
HASHED_FIELDS = (
    "seq",
    "at",
    "actor",
    "action",
    "source",
    "subject_org",
    "message_id",
    "conversation_id",
    "detail",
)


def canonical_at(at: dt.datetime) -> str:
    """The one text form of a time in the chain: UTC, microseconds, explicit offset."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
    return aware.astimezone(dt.UTC).isoformat(timespec="microseconds")


def canonical_fields(fields: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, no whitespace, UTF-8) of the hashed fields."""
    values = {name: fields[name] for name in HASHED_FIELDS}
    values["at"] = canonical_at(values["at"])
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS)


def entry_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """sha256(prev_hash || canonical JSON of the entry's fields), hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_fields(fields)).hexdigest()


class AuditEntry(BaseModel):
    """`gateway.audit` record value (JSON) and one entry of `GET /audit/v1/entries`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(ge=1, description="position in the chain: 1, 2, 3 … without gaps")
    at: dt.datetime = Field(description="when it happened (UTC)")
    actor: str = Field(description="who: an organisation id, or the operator for `cli`")
    action: str = Field(
        description="what: mailbox.fetch, inbox.fetch, envelope.open, or an administrative "
        "change such as org.add, key.rotate"
    )
    source: str = Field(
        description="from where: the client's IP address, or `cli` / `gateway` when no "
        "request caused it"
    )
    subject_org: str | None = Field(
        default=None, description="the organisation whose mailbox, key or record it concerns"
    )
    message_id: str | None = Field(default=None, description="the message read or opened")
    conversation_id: str | None = Field(default=None, description="the message's conversation")
    detail: dict[str, str] | None = Field(
        default=None, description="a few more ids (e.g. the key used); never content"
    )
    prev_hash: str = Field(description="`hash` of entry seq - 1 (64 zeros for the first)")
    hash: str = Field(
        description="sha256 over prev_hash and the canonical JSON (sorted keys, no "
        "whitespace) of seq, at, actor, action, source, subject_org, message_id, "
        "conversation_id, detail; lower-case hex"
    )

    def expected_hash(self) -> str:
        """The hash this entry must have, given its fields and `prev_hash`."""
        return entry_hash(self.prev_hash, self.model_dump())


class AuditEntries(BaseModel):
    """`GET /audit/v1/entries`: the caller's entries after `after_seq`, oldest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entries: list[AuditEntry]
    next_after_seq: int = Field(
        description="pass as `after_seq` to read on (the last entry's seq, or the given "
        "after_seq when there is nothing new)"
    )
