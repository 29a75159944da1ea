"""A mailbox row the gateway could not open for its job centre is marked, with the reason:
the job centre's inbox then hands out every other reply first and names the marked ones,
instead of failing the whole read on one bad envelope.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox") as batch:
        batch.add_column(sa.Column("unreadable_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("unreadable_reason", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailbox") as batch:
        batch.drop_column("unreadable_reason")
        batch.drop_column("unreadable_at")
