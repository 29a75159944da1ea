"""Re-keyable pseudonyms: the CPR number sealed (HPKE) to the gateway's own key beside each
conversation and registered contact, so that `attest-gateway pseudonyms rekey` can compute
the citizen's pseudonym under a new key. Nullable: rows made before this have none.

Revision ID: 0007
Revises: 0006 (and needs the tracker's 0002, another branch, for tracker_contacts)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = "0002"


def upgrade() -> None:
    for table in ("conversations", "tracker_contacts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("citizen_sealed", sa.Text, nullable=True))


def downgrade() -> None:
    for table in ("tracker_contacts", "conversations"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("citizen_sealed")
