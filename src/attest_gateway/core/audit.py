"""What the audit log records: an event (who did what to which message, when, from where)
before the store gives it its place in the hash chain (infra/db/audit.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAILBOX_FETCH = "mailbox.fetch"  # a health organisation fetched a sealed message
INBOX_FETCH = "inbox.fetch"  # a job centre fetched an (opened) attest reply
ENVELOPE_OPEN = "envelope.open"  # the gateway opened a custodial organisation's mail
# retention removed the audit entries up to `through_seq`, a signed checkpoint (detail)
AUDIT_PRUNE = "audit.prune"
# the chain's head (the entry before this one), signed by the gateway (detail: seq, hash, at,
# key_id, signature): written into the chain, so onto gateway.audit too
AUDIT_CHECKPOINT = "audit.checkpoint"
CASE_CLOSE = "case.close"  # a job centre closed a case (detail: closure id, conversations)
CASE_ERASE = "case.erase"  # retention erased a closed case's citizen data (detail: closure id)
# an operator exported a citizen's own view (detail: conversation ids and counts, no CPR number)
CITIZEN_EXPORT = "citizen.export"
# a job centre sent an attest request; a clinic a reply or an acknowledgement (detail: the
# person acting, core/actors.py, when the caller named one)
REQUEST_SUBMIT = "request.submit"
MESSAGE_SUBMIT = "message.submit"
SOURCE_CLI = "cli"
SOURCE_GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An entry before it has a place in the chain."""

    actor: str
    action: str
    source: str
    at: dt.datetime
    subject_org: str | None = None
    message_id: str | None = None
    conversation_id: str | None = None
    detail: dict[str, str] | None = None


def read_entries(
    *,
    actor: str,
    action: str,
    source: str,
    at: dt.datetime,
    subject_org: str,
    items: Sequence[tuple[str, str]],
    detail: Mapping[str, str] | None = None,
) -> list[AuditEvent]:
    """One entry for a read that handed out (or opened) `items` (message id, conversation
    id), none for a read of nothing: `detail` lists the message ids, space-separated in the
    order handed out (`message_ids`), and their `count`; a read of one item names it in
    `message_id` and `conversation_id` too. A read is at most 500 items (the routes' limit)
    of ids of at most 64 characters, so the entry stays under 33 KB."""
    if not items:
        return []
    one = items[0] if len(items) == 1 else None
    return [
        AuditEvent(
            actor=actor,
            action=action,
            source=source,
            at=at,
            subject_org=subject_org,
            message_id=one[0] if one else None,
            conversation_id=one[1] if one else None,
            detail={
                **(detail or {}),
                "count": str(len(items)),
                "message_ids": " ".join(message_id for message_id, _ in items),
            },
        )
    ]
