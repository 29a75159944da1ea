"""What the audit log records: an event (who did what to which message, when, from where)
before the store gives it its place in the hash chain (infra/db/audit.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MAILBOX_FETCH = "mailbox.fetch"  # a health organisation fetched a sealed message
INBOX_FETCH = "inbox.fetch"  # a job centre fetched an (opened) attest reply
ENVELOPE_OPEN = "envelope.open"  # the gateway opened a custodial organisation's mail
# retention removed the audit entries up to `through_seq`, a signed checkpoint (detail)
AUDIT_PRUNE = "audit.prune"
CASE_CLOSE = "case.close"  # a job centre closed a case (detail: closure id, conversations)
CASE_ERASE = "case.erase"  # retention erased a closed case's citizen data (detail: closure id)
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
