"""The request lifecycle: what a job centre did to its request after sending it.

`request_actions` holds a cancellation (key ""), each deadline extension (key: the new
deadline) and each reminder sent by hand (key: the day, so at most one a day); the primary
key makes each of them naturally idempotent. Ids, dates and a short detail only: no CPR
number, no text.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "request_actions",
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("detail", sa.String(200), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("conversation_id", "action", "key", name="pk_request_actions"),
    )


def downgrade() -> None:
    op.drop_table("request_actions")
