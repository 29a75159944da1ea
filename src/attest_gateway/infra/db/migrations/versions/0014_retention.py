"""Retention: seen message ids that outlive the mailbox, signed audit checkpoints, and an
index to find finished conversations.

- `seen_ids`: every MessageHeader.id and Bundle.id that reached a mailbox, kept longer than
  the mailbox rows (SEEN_IDS_RETENTION_SECONDS), so an id reused after its mailbox row was
  pruned is still a replay. Filled from the mailbox rows there are (MessageHeader ids with
  their routing; their Bundle ids are inside the envelopes and are recorded from the next
  delivery on).
- `audit_checkpoints`: signed checkpoints of the audit chain's head; entries are pruned only
  up to one, and `audit verify` starts from the oldest one kept.
- `stages (stage, at)`: retention finds the conversations that reached a final stage.
- `case_closures`: cases a job centre closed; retention erases what identifies the citizen
  in them after CASE_ERASURE_DAYS.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "seen_ids",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("sender_org_id", sa.String(64), nullable=False),
        sa.Column("receiver_org_id", sa.String(64), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("message_type", sa.String(32), nullable=False),
        sa.Column("first_seen_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("kind", "id", name="pk_seen_ids"),
    )
    op.create_index("ix_seen_ids_first_seen_at", "seen_ids", ["first_seen_at"])
    op.execute(
        "INSERT INTO seen_ids (kind, id, message_id, sender_org_id, receiver_org_id, "
        "conversation_id, message_type, first_seen_at) "
        "SELECT 'message', message_id, message_id, sender_org_id, receiver_org_id, "
        "conversation_id, message_type, delivered_at FROM mailbox"
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_checkpoints"),
    )
    op.create_index("ix_stages_stage_at", "stages", ["stage", "at"])
    op.create_table(
        "case_closures",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("jobcenter_org_id", sa.String(64), nullable=False),
        sa.Column("case_kind", sa.String(32), nullable=False),
        sa.Column("case_ref", sa.String(64), nullable=True),
        sa.Column("conversations", sa.Integer, nullable=False),
        sa.Column("closed_at", Timestamp, nullable=False),
        sa.Column("erase_after", Timestamp, nullable=False),
        sa.Column("erased_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_case_closures"),
        sa.UniqueConstraint(
            "jobcenter_org_id",
            "case_ref",
            "case_kind",
            name="uq_case_closures_jobcenter_org_id_case_ref_case_kind",
        ),
    )
    op.create_index(
        "ix_case_closures_erased_at_erase_after", "case_closures", ["erased_at", "erase_after"]
    )


def downgrade() -> None:
    op.drop_index("ix_case_closures_erased_at_erase_after", table_name="case_closures")
    op.drop_table("case_closures")
    op.drop_index("ix_stages_stage_at", table_name="stages")
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_seen_ids_first_seen_at", table_name="seen_ids")
    op.drop_table("seen_ids")
