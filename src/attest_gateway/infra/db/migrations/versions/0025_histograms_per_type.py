"""The published duration distributions of the receiving units and the municipalities are kept
per attest type too, a row per type (`tracker_decision_histograms.types` is the type's code,
as long as `tracker_cells.attest_type`): a drill-down of one type at those grains read the
rollup instead, seconds at national volume. Their rows published before are removed, so that
the next round publishes both kinds (a report meanwhile reads the rollup, as before).

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM tracker_decision_histograms WHERE grain IN ('receiver', 'municipality')"
    )
    with op.batch_alter_table("tracker_decision_histograms") as batch:
        batch.alter_column(
            "types", existing_type=sa.String(8), type_=sa.String(16), existing_nullable=False
        )


def downgrade() -> None:
    op.execute("DELETE FROM tracker_decision_histograms WHERE types NOT IN ('all', 'each')")
    with op.batch_alter_table("tracker_decision_histograms") as batch:
        batch.alter_column(
            "types", existing_type=sa.String(16), type_=sa.String(8), existing_nullable=False
        )
