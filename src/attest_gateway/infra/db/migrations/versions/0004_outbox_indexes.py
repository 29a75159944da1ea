"""Outbox lookups by message id (the delivery consumer marks a row delivered per record) and
by claim token (the relay reads back the rows it leased) use an index, not a table scan.

Measured before (bench/pipeline.py): with a few thousand outbox rows, the delivery's
`UPDATE outbox … WHERE message_id = ?` scanned the whole table (each row carries an ~8 KB
envelope) and took most of the delivery consumer's database time.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_message_id", "outbox", ["message_id"])
    op.create_index("ix_outbox_claim_token", "outbox", ["claim_token"])


def downgrade() -> None:
    op.drop_index("ix_outbox_claim_token", table_name="outbox")
    op.drop_index("ix_outbox_message_id", table_name="outbox")
