"""Sickness cases and psychiatric treatments as the denominator of contact coverage; contacts
registered by either side.

A job centre registers its sickness cases (`tracker_cases`), with or without any attest
request, and a psychiatry unit registers the citizens in its treatment (`tracker_treatments`):
coverage is counted over those cases, so the citizens with no exchange at all are seen. A
contact is now registered by the job centre or by the psychiatry unit (`registrar_org`, which
also scopes the Idempotency-Key). Both new tables keep the CPR number only sealed to the
gateway's own key (EXTERNAL storage on PostgreSQL, as 0012 does for the other such columns).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# A frozen copy of the sealed columns this revision adds (tables.SEALED_COLUMNS).
COLUMNS = (("tracker_cases", "citizen_sealed"), ("tracker_treatments", "citizen_sealed"))


def upgrade() -> None:
    op.create_table(
        "tracker_cases",
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("jobcenter_org", sa.String(64), nullable=False),
        sa.Column("jobcenter_case_id", sa.String(200), nullable=False),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.Column("municipality", sa.String(3), nullable=False),
        sa.Column("region_code", sa.String(4), nullable=False),
        sa.Column("case_kind", sa.String(32), nullable=False),
        sa.Column("psychiatric_course", sa.Boolean, nullable=False),
        sa.Column("first_day_of_absence", sa.Date, nullable=False),
        sa.Column("closed_on", sa.Date, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("citizen_sealed", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("case_id", name="pk_tracker_cases"),
        sa.UniqueConstraint(
            "jobcenter_org",
            "jobcenter_case_id",
            name="uq_tracker_cases_jobcenter_org_jobcenter_case_id",
        ),
    )
    op.create_index("ix_tracker_cases_case_ref", "tracker_cases", ["case_ref"])
    op.create_index(
        "ix_tracker_cases_first_day_of_absence", "tracker_cases", ["first_day_of_absence"]
    )
    op.create_table(
        "tracker_treatments",
        sa.Column("treatment_id", sa.String(64), nullable=False),
        sa.Column("psychiatry_org", sa.String(64), nullable=False),
        sa.Column("case_ref", sa.String(64), nullable=False),
        sa.Column("region_code", sa.String(4), nullable=True),
        sa.Column("start_date", sa.Date, nullable=False),
        sa.Column("end_date", sa.Date, nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("citizen_sealed", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("treatment_id", name="pk_tracker_treatments"),
        sa.UniqueConstraint(
            "psychiatry_org",
            "idempotency_key",
            name="uq_tracker_treatments_psychiatry_org_idempotency_key",
        ),
    )
    op.create_index("ix_tracker_treatments_case_ref", "tracker_treatments", ["case_ref"])
    with op.batch_alter_table("tracker_contacts") as batch:
        batch.add_column(sa.Column("registrar_org", sa.String(64), nullable=True))
    op.execute("UPDATE tracker_contacts SET registrar_org = jobcenter_org")
    with op.batch_alter_table("tracker_contacts") as batch:
        batch.alter_column("registrar_org", existing_type=sa.String(64), nullable=False)
        batch.drop_constraint("uq_tracker_contacts_jobcenter_org_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_tracker_contacts_registrar_org_idempotency_key",
            ["registrar_org", "idempotency_key"],
        )
    if op.get_bind().dialect.name == "postgresql":
        for table, column in COLUMNS:
            op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" SET STORAGE EXTERNAL')


def downgrade() -> None:
    with op.batch_alter_table("tracker_contacts") as batch:
        batch.drop_constraint("uq_tracker_contacts_registrar_org_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_tracker_contacts_jobcenter_org_idempotency_key",
            ["jobcenter_org", "idempotency_key"],
        )
        batch.drop_column("registrar_org")
    op.drop_index("ix_tracker_treatments_case_ref", table_name="tracker_treatments")
    op.drop_table("tracker_treatments")
    op.drop_index("ix_tracker_cases_first_day_of_absence", table_name="tracker_cases")
    op.drop_index("ix_tracker_cases_case_ref", table_name="tracker_cases")
    op.drop_table("tracker_cases")
