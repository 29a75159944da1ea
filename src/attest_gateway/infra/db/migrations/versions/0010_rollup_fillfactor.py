"""The tracker's counter and histogram tables leave room in their pages for updates
(PostgreSQL `fillfactor` 80): every event adds to existing cells, and an update that finds
room in the row's own page is a heap-only tuple (HOT) update, with no new index entry for the
row's wide key. Applies to pages written from now on; SQLite has no such setting.

Revision ID: 0010
Revises: 0009 (the tracker's branch)
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = ("tracker_counts", "tracker_durations")
FILLFACTOR = 80


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
