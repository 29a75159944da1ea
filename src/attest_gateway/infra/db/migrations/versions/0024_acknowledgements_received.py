"""Positive acknowledgements waiting in a job centre's mailbox are marked collected.

A job centre's inbox hands out its attest replies and refusals, never a positive
acknowledgement, so these rows waited for good: every inbox read and long-poll of that job
centre passed over all of them again (its cost grew with every conversation), the mailbox
depth gauge counted them, and retention, which removes collected mail, never removed them.
Delivery now stores them collected (services/delivery.py); this marks those delivered before,
collected as of their delivery, so that retention's clock runs from then. A refusal (the
acknowledgement a `refused` stage names) is left waiting.

Data only; the downgrade leaves the rows as they are.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE mailbox SET collected_at = delivered_at
        WHERE message_type = 'acknowledgement'
          AND collected_at IS NULL
          AND EXISTS (
            SELECT 1 FROM conversations c
            WHERE c.id = mailbox.conversation_id AND c.jobcenter_org_id = mailbox.receiver_org_id
          )
          AND NOT EXISTS (
            SELECT 1 FROM stages s
            WHERE s.conversation_id = mailbox.conversation_id
              AND s.stage = 'refused'
              AND s.message_id = mailbox.message_id
          )
        """
    )


def downgrade() -> None:
    pass  # which rows were marked is not kept; they stay collected
