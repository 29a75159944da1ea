"""The FHIR format an organisation takes its MedCom messages in (json | xml).

MedCom-certified systems take FHIR JSON or FHIR XML, as each was built; the gateway seals
what a receiver takes into its envelopes. Existing organisations keep JSON.

A plain ADD COLUMN (with its default) and DROP COLUMN on both databases (SQLite has had
DROP COLUMN since 3.35), so that SQLite keeps the organisations table and its
directory-generation triggers (0008): a batch copy of the table would drop them.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "organisations",
        sa.Column("message_format", sa.String(8), nullable=False, server_default="json"),
    )


def downgrade() -> None:
    op.drop_column("organisations", "message_format")
