"""Published disclosure decisions: `tracker_decisions` (one row per cube: the digest of the
weights it was decided over, when, how many cells and how many suppressed) and
`tracker_decision_cells` (per cube, period kind, grain and type, the cells as decided:
shown or not, their weights and counters) and `tracker_decision_histograms` (the duration
distributions of those cubes' grains, over every attest type or per type, per metric, period
kind and year).

Both start empty: until the tracker's sweep publishes a cube's decision (tracker/decisions.py),
a report decides it when asked, as before.

Revision ID: 0023
Revises: 0022; depends on 0011 (the tracker's branch)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = "0011"  # the tracker's branch: the rollups whose decisions these are


def upgrade() -> None:
    op.create_table(
        "tracker_decisions",
        sa.Column("cube", sa.String(160), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cells", sa.Integer, nullable=False),
        sa.Column("suppressed", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("cube", name="pk_tracker_decisions"),
    )
    op.create_table(
        "tracker_decision_cells",
        sa.Column("cube", sa.String(160), nullable=False),
        sa.Column("period_kind", sa.String(7), nullable=False),
        sa.Column("grain", sa.String(16), nullable=False),
        sa.Column("attest_type", sa.String(16), nullable=False),
        sa.Column("cells", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint(
            "cube", "period_kind", "grain", "attest_type", name="pk_tracker_decision_cells"
        ),
    )

    op.create_table(
        "tracker_decision_histograms",
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("period_kind", sa.String(7), nullable=False),
        sa.Column("grain", sa.String(16), nullable=False),
        sa.Column("types", sa.String(8), nullable=False),
        sa.Column("year", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cells", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint(
            "metric",
            "period_kind",
            "grain",
            "types",
            "year",
            name="pk_tracker_decision_histograms",
        ),
    )


def downgrade() -> None:
    op.drop_table("tracker_decision_histograms")
    op.drop_table("tracker_decision_cells")
    op.drop_table("tracker_decisions")
