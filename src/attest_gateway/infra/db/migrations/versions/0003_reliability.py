"""Reliability: sent messages awaiting acknowledgement (MedCom resend rule); outbox attempts,
delivery time and relay leases; leases for jobs one process must do alone.

A branch of its own from 0001 (the tracker's tables are another); `upgrade heads` applies both.

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = ("reliability",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("until", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_table(
        "sent_messages",
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("sender_org_id", sa.String(64), nullable=False),
        sa.Column("receiver_org_id", sa.String(64), nullable=False),
        sa.Column("message_type", sa.String(32), nullable=False),
        sa.Column("copy", sa.LargeBinary, nullable=False),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("last_sent_at", TS, nullable=False),
        sa.Column("resend_count", sa.Integer, nullable=False),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("undeliverable_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("message_id", name="pk_sent_messages"),
    )
    op.create_index(
        "ix_sent_messages_acknowledged_at_undeliverable_at_last_sent_at",
        "sent_messages",
        ["acknowledged_at", "undeliverable_at", "last_sent_at"],
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("delivered_at", TS, nullable=True))
        batch.add_column(sa.Column("claim_token", sa.String(32), nullable=True))
        batch.add_column(sa.Column("claimed_until", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claim_token")
        batch.drop_column("delivered_at")
        batch.drop_column("attempts")
    op.drop_table("sent_messages")
    op.drop_table("leases")
