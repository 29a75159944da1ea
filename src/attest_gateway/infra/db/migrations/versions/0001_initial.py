"""Initial schema: directory, conversations, idempotency, inbound dedupe, outbox, mailbox, stages.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("sor", sa.String(18), nullable=True),
        sa.Column("gln", sa.String(13), nullable=True),
        sa.Column("kommunekode", sa.String(3), nullable=True),
        sa.Column("ydernummer", sa.String(6), nullable=True),
        sa.Column("region_code", sa.String(4), nullable=True),
        sa.Column("api_key_hash", sa.String(64), nullable=True),
        sa.Column("custodial", sa.Boolean, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_organisations"),
        sa.UniqueConstraint("sor", name="uq_organisations_sor"),
        sa.UniqueConstraint("gln", name="uq_organisations_gln"),
        sa.UniqueConstraint("ydernummer", name="uq_organisations_ydernummer"),
        sa.UniqueConstraint("api_key_hash", name="uq_organisations_api_key_hash"),
    )
    op.create_table(
        "org_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("not_after", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_org_keys"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_org_keys_org_id_organisations"
        ),
    )
    op.create_index("ix_org_keys_org_id_purpose", "org_keys", ["org_id", "purpose"])
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("jobcenter_org_id", sa.String(64), nullable=False),
        sa.Column("receiver_org_id", sa.String(64), nullable=False),
        sa.Column("request_message_id", sa.String(64), nullable=False),
        sa.Column("attest_type", sa.String(16), nullable=False),
        sa.Column("case_kind", sa.String(32), nullable=False),
        sa.Column("caseworker_ref", sa.String(64), nullable=False),
        sa.Column("municipality", sa.String(3), nullable=False),
        sa.Column("region_code", sa.String(4), nullable=False),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.Column("psychiatric_course", sa.Boolean, nullable=False),
        sa.Column("first_day_of_absence", sa.Date, nullable=False),
        sa.Column("reply_deadline", sa.Date, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint("request_message_id", name="uq_conversations_request_message_id"),
        sa.ForeignKeyConstraint(
            ["jobcenter_org_id"],
            ["organisations.id"],
            name="fk_conversations_jobcenter_org_id_organisations",
        ),
        sa.ForeignKeyConstraint(
            ["receiver_org_id"],
            ["organisations.id"],
            name="fk_conversations_receiver_org_id_organisations",
        ),
    )
    op.create_index(
        "ix_conversations_jobcenter_org_id_created_at",
        "conversations",
        ["jobcenter_org_id", "created_at"],
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("org_id", "key", name="pk_idempotency_keys"),
    )
    op.create_table(
        "inbound_messages",
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("bundle_id", sa.String(64), nullable=False),
        sa.Column("sender_org_id", sa.String(64), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("message_type", sa.String(32), nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("message_id", name="pk_inbound_messages"),
        sa.UniqueConstraint("bundle_id", name="uq_inbound_messages_bundle_id"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("published_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_published_at_id", "outbox", ["published_at", "id"])
    op.create_table(
        "mailbox",
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("receiver_org_id", sa.String(64), nullable=False),
        sa.Column("sender_org_id", sa.String(64), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("message_type", sa.String(32), nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("delivered_at", TS, nullable=False),
        sa.Column("fetched_at", TS, nullable=True),
        sa.Column("collected_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("message_id", name="pk_mailbox"),
    )
    op.create_index(
        "ix_mailbox_receiver_org_id_collected_at_delivered_at",
        "mailbox",
        ["receiver_org_id", "collected_at", "delivered_at"],
    )
    op.create_table(
        "stages",
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("detail", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("conversation_id", "stage", name="pk_stages"),
    )


def downgrade() -> None:
    for table in (
        "stages",
        "mailbox",
        "outbox",
        "inbound_messages",
        "idempotency_keys",
        "conversations",
        "org_keys",
        "organisations",
    ):
        op.drop_table(table)
