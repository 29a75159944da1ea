"""Tracker: per-conversation timelines, reminders, contact episodes, registered contacts and the
incremental rollups the ministry view reads.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("tracker",)
depends_on = None

TS = sa.DateTime(timezone=True)
_STAGE_COLUMNS = (
    "submitted_at",
    "published_at",
    "in_mailbox_at",
    "fetched_at",
    "acknowledged_at",
    "replied_at",
    "reply_in_inbox_at",
    "reply_fetched_at",
    "reply_acknowledged_at",
    "overdue_at",
    "last_reminded_at",
)
_CELL = ("grain", "period_kind", "period_start", "attest_type", "dim")


def _cell_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("grain", sa.String(16), nullable=False),
        sa.Column("period_kind", sa.String(5), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("attest_type", sa.String(16), nullable=False),
        sa.Column("dim", sa.String(64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "tracker_conversations",
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("attest_type", sa.String(16), nullable=False),
        sa.Column("case_kind", sa.String(32), nullable=False),
        sa.Column("municipality", sa.String(3), nullable=False),
        sa.Column("region_code", sa.String(4), nullable=False),
        sa.Column("jobcenter_org", sa.String(64), nullable=False),
        sa.Column("receiver_org", sa.String(64), nullable=False),
        sa.Column("receiver_role", sa.String(32), nullable=True),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.Column("psychiatric_course", sa.Boolean, nullable=False),
        sa.Column("first_day_of_absence", sa.Date, nullable=False),
        sa.Column("request_deadline", sa.Date, nullable=False),
        sa.Column("due_date", sa.Date, nullable=True),
        *(sa.Column(name, TS, nullable=True) for name in _STAGE_COLUMNS),
        sa.Column("reminders", sa.Integer, nullable=False, server_default="0"),
        sa.Column("requested_late", sa.Boolean, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("conversation_id", name="pk_tracker_conversations"),
    )
    op.create_index(
        "ix_tracker_conversations_outcome_due_date",
        "tracker_conversations",
        ["outcome", "due_date"],
    )
    op.create_index("ix_tracker_conversations_case_ref", "tracker_conversations", ["case_ref"])
    op.create_table(
        "tracker_reminders",
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("sent_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "seq", name="pk_tracker_reminders"),
        sa.UniqueConstraint("message_id", name="uq_tracker_reminders_message_id"),
    )
    op.create_table(
        "tracker_episodes",
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.Column("jobcenter_org", sa.String(64), nullable=False),
        sa.Column("first_day_of_absence", sa.Date, nullable=False),
        sa.Column("case_kind", sa.String(32), nullable=False),
        sa.Column("municipality", sa.String(3), nullable=False),
        sa.Column("region_code", sa.String(4), nullable=False),
        sa.Column("window_end", sa.Date, nullable=False),
        sa.Column("first_contact_at", TS, nullable=True),
        sa.Column("contact_source", sa.String(16), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("decided_at", TS, nullable=True),
        sa.PrimaryKeyConstraint(
            "case_ref", "jobcenter_org", "first_day_of_absence", name="pk_tracker_episodes"
        ),
    )
    op.create_index(
        "ix_tracker_episodes_outcome_window_end", "tracker_episodes", ["outcome", "window_end"]
    )
    op.create_table(
        "tracker_contacts",
        sa.Column("contact_id", sa.String(64), nullable=False),
        sa.Column("jobcenter_org", sa.String(64), nullable=False),
        sa.Column("psychiatry_org", sa.String(64), nullable=False),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.Column("case_kind", sa.String(32), nullable=False),
        sa.Column("first_day_of_absence", sa.Date, nullable=False),
        sa.Column("contact_date", sa.Date, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("contact_id", name="pk_tracker_contacts"),
        sa.UniqueConstraint(
            "jobcenter_org",
            "idempotency_key",
            name="uq_tracker_contacts_jobcenter_org_idempotency_key",
        ),
    )
    op.create_table(
        "tracker_counts",
        *_cell_columns(),
        *(
            sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
            for name in (
                "requests",
                "citizens",
                "late_requests",
                "replied",
                "decided",
                "overdue",
                "reminders",
                "contact_decided",
                "contact_covered",
            )
        ),
        sa.PrimaryKeyConstraint(*_CELL, name="pk_tracker_counts"),
    )
    op.create_table(
        "tracker_durations",
        sa.Column("metric", sa.String(32), nullable=False),
        *_cell_columns(),
        sa.Column("bucket", sa.SmallInteger, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("metric", *_CELL, "bucket", name="pk_tracker_durations"),
    )
    op.create_table(
        "tracker_cell_citizens",
        *_cell_columns(),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint(*_CELL, "case_ref", name="pk_tracker_cell_citizens"),
    )


def downgrade() -> None:
    for table in (
        "tracker_cell_citizens",
        "tracker_durations",
        "tracker_counts",
        "tracker_contacts",
        "tracker_episodes",
        "tracker_reminders",
    ):
        op.drop_table(table)
    op.drop_index("ix_tracker_conversations_case_ref", "tracker_conversations")
    op.drop_index("ix_tracker_conversations_outcome_due_date", "tracker_conversations")
    op.drop_table("tracker_conversations")
