"""Columns that hold ciphertext are stored EXTERNAL on PostgreSQL: out of line when large,
never compressed. Ciphertext does not compress; PostgreSQL's pglz still tried on every row
(an envelope's JSON header compresses a little, so it went on through the whole value before
giving up): docs/decisions/0005-uncompressed-sealed-columns.md. Applies to rows written
from now on; SQLite has no such setting.

Revision ID: 0012
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0008"
branch_labels = None
depends_on = None

# A frozen copy of tables.SEALED_COLUMNS as of this revision (a migration must not change
# with the code); a test checks they agree.
COLUMNS = (
    ("outbox", "value"),
    ("mailbox", "envelope"),
    ("sent_messages", "copy"),
    ("conversations", "citizen_sealed"),
    ("tracker_contacts", "citizen_sealed"),
)


def _set(storage: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" SET STORAGE {storage}')


def upgrade() -> None:
    _set("EXTERNAL")


def downgrade() -> None:
    _set("EXTENDED")  # the default of bytea and text
