"""Duration histograms per attest type only: the tracker no longer writes an all-types (`*`)
histogram beside each type's; reports sum the types' histograms instead (tracker/report.py).
The `*` rows written before are the same counts again: they are deleted. The downgrade
builds them again from the types' rows.

Revision ID: 0009
Revises: 0002 (the tracker's branch)
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM tracker_durations WHERE attest_type = '*'")


def downgrade() -> None:
    op.execute(
        """
        INSERT INTO tracker_durations
            (metric, grain, period_kind, period_start, attest_type, dim, bucket, n)
        SELECT metric, grain, period_kind, period_start, '*', dim, bucket, sum(n)
        FROM tracker_durations
        WHERE attest_type NOT IN ('*', '-')
        GROUP BY metric, grain, period_kind, period_start, dim, bucket
        """
    )
