"""Audit entries appended unchained: `audit_pending`, chained later by one chainer at a time.

A read, a request or a reply inserts its audit event here in its own transaction (no shared
row lock); the chainer (infra/db/audit.py `chain_pending`) gives pending rows their seq in
the chain, in `id` order, and marks each with it (`seq`: NULL while pending). The partial
index holds the pending rows only, so finding them stays cheap however many were chained.

On PostgreSQL a trigger lets an UPDATE do one thing only: set a NULL `seq`, once, and change
nothing else, so that the runtime role (granted SELECT, INSERT and UPDATE of `seq` alone:
infra/db/grants.py) cannot change a pending entry, nor mark one chained twice; it cannot
DELETE them at all. A row marked with a seq whose chained entry differs is what
`audit verify` reports.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)

_GUARD = """
CREATE FUNCTION audit_pending_chain_once() RETURNS trigger AS $$
BEGIN
    IF OLD.seq IS NOT NULL OR NEW.seq IS NULL
       OR (NEW.id, NEW.at, NEW.actor, NEW.action, NEW.source, NEW.subject_org,
           NEW.message_id, NEW.conversation_id, NEW.detail)
          IS DISTINCT FROM
          (OLD.id, OLD.at, OLD.actor, OLD.action, OLD.source, OLD.subject_org,
           OLD.message_id, OLD.conversation_id, OLD.detail) THEN
        RAISE EXCEPTION 'a pending audit entry may only be marked chained, once'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "audit_pending",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("subject_org", sa.String(64), nullable=True),
        sa.Column("message_id", sa.String(64), nullable=True),
        sa.Column("conversation_id", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("seq", name="uq_audit_pending_seq"),
    )
    op.create_index(
        "ix_audit_pending_unchained",
        "audit_pending",
        ["id"],
        postgresql_where=sa.text("seq IS NULL"),
        sqlite_where=sa.text("seq IS NULL"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_GUARD)
        op.execute(
            "CREATE TRIGGER audit_pending_chain_once BEFORE UPDATE ON audit_pending "
            "FOR EACH ROW EXECUTE FUNCTION audit_pending_chain_once()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_pending_chain_once ON audit_pending")
        op.execute("DROP FUNCTION audit_pending_chain_once()")
    op.drop_index("ix_audit_pending_unchained", table_name="audit_pending")
    op.drop_table("audit_pending")
