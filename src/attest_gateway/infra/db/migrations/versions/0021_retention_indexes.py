"""The indexes retention needs to stay bounded at national volume (docs/data-lifecycle.md,
"How pruning runs"; bench/RESULTS.md, "Retention at national volume").

- the erasure of a closed case finds the citizen's rows by case ref: `conversations`,
  `tracker_contacts` and `tracker_cell_citizens` (keyed by cell first) had no index on it,
  and the citizen's outbox records by key, which `outbox` had none on either;
- a conversation's rows are removed by conversation id: `mailbox`, `sent_messages`,
  `inbound_messages` and `idempotency_keys` had no index on it;
- finished conversations are walked in (final stage, time, conversation id) order, a cursor
  carried from one batch to the next: `ix_stages_stage_at` becomes
  `ix_stages_stage_at_conversation_id`, which serves every query the old one did.

On PostgreSQL every index is built with CREATE INDEX CONCURRENTLY (outside the migration's
transaction, alembic's autocommit block): the tables stay writable while it builds, at the
cost of two scans of the table; it waits for the transactions already open on the table to
end. A national year (about 2.7 million stage rows, 600,000 mailbox and outbox rows) builds
in some tens of seconds. If a build fails (e.g. cancelled), PostgreSQL leaves an INVALID
index of that name: drop it (`DROP INDEX CONCURRENTLY ix_…`) and migrate again. On SQLite a
plain CREATE INDEX, in the migration's transaction (the database is one writer anyway).

Revision ID: 0021
Revises: 0020 (and needs 0011, the tracker branch's cell tables)
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
# the tracker's branch: 0011 rebuilt tracker_cell_citizens, which this indexes
depends_on = "0011"

# (index name, table, columns)
INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ix_outbox_key", "outbox", ("key",)),
    ("ix_conversations_case_ref", "conversations", ("case_ref",)),
    ("ix_tracker_contacts_case_ref", "tracker_contacts", ("case_ref",)),
    ("ix_tracker_cell_citizens_case_ref", "tracker_cell_citizens", ("case_ref",)),
    ("ix_mailbox_conversation_id", "mailbox", ("conversation_id",)),
    ("ix_sent_messages_conversation_id", "sent_messages", ("conversation_id",)),
    ("ix_inbound_messages_conversation_id", "inbound_messages", ("conversation_id",)),
    ("ix_idempotency_keys_conversation_id", "idempotency_keys", ("conversation_id",)),
    ("ix_stages_stage_at_conversation_id", "stages", ("stage", "at", "conversation_id")),
)
REPLACED = ("ix_stages_stage_at", "stages", ("stage", "at"))


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    if not _postgres():
        for name, table, columns in INDEXES:
            op.create_index(name, table, list(columns))
        op.drop_index(REPLACED[0], table_name=REPLACED[1])
        return
    with op.get_context().autocommit_block():
        for name, table, columns in INDEXES:
            op.create_index(
                name, table, list(columns), postgresql_concurrently=True, if_not_exists=True
            )
        op.drop_index(
            REPLACED[0], table_name=REPLACED[1], postgresql_concurrently=True, if_exists=True
        )


def downgrade() -> None:
    if not _postgres():
        op.create_index(REPLACED[0], REPLACED[1], list(REPLACED[2]))
        for name, table, _ in reversed(INDEXES):
            op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        op.create_index(
            REPLACED[0],
            REPLACED[1],
            list(REPLACED[2]),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        for name, table, _ in reversed(INDEXES):
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
