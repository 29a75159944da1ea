"""The directory's generation: a one-row table whose random token changes, by trigger, in the
same transaction as every write to `organisations` or `org_keys` (whoever writes: the gateway,
the admin CLI in another process, plain SQL). The gateway keeps a snapshot of the directory in
memory and reloads it when the token differs (infra/db/directory.py). A random token, not a
counter: a re-created database can never match a cached generation.

PostgreSQL: one plpgsql function and statement-level triggers, BEFORE each INSERT, UPDATE,
DELETE and TRUNCATE (before, so that concurrent directory writers queue on the token row
before they lock any directory row: no new deadlock). SQLite: per-row AFTER triggers.

A later migration that rebuilds `organisations` or `org_keys` on SQLite (Alembic's batch
mode copies the table) drops their triggers and must create them again (`create_triggers`).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("organisations", "org_keys")
FUNCTION = "directory_generation_bump"
PG_RANDOM = "replace(gen_random_uuid()::text, '-', '')"
SQLITE_RANDOM = "lower(hex(randomblob(16)))"
SQLITE_EVENTS = ("insert", "update", "delete")
SQLITE_BUMP = "UPDATE directory_generation SET token = lower(hex(randomblob(16))) WHERE id = 1;"


def _random() -> str:
    """SQL for a new random token (32 hex digits)."""
    return PG_RANDOM if op.get_bind().dialect.name == "postgresql" else SQLITE_RANDOM


def create_triggers() -> None:
    """The triggers that give the directory a new token on every write (both databases)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE directory_generation SET token = {PG_RANDOM} WHERE id = 1;
                RETURN NULL;
            END;
            $$
            """  # noqa: S608 - this module's constants only
        )
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_directory_generation "
                f"BEFORE INSERT OR UPDATE OR DELETE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_directory_generation_truncate "
                f"BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
            )
        return
    for table in TABLES:
        for event in SQLITE_EVENTS:
            op.execute(
                f"CREATE TRIGGER {table}_directory_generation_{event} "
                f"AFTER {event.upper()} ON {table} FOR EACH ROW BEGIN {SQLITE_BUMP} END"
            )


def drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_directory_generation_truncate ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_directory_generation ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
        return
    for table in TABLES:
        for event in SQLITE_EVENTS:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_directory_generation_{event}")


def upgrade() -> None:
    op.create_table(
        "directory_generation",
        sa.Column("id", sa.SmallInteger, nullable=False, autoincrement=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_directory_generation"),
    )
    op.execute(f"INSERT INTO directory_generation (id, token) VALUES (1, {_random()})")  # noqa: S608
    create_triggers()


def downgrade() -> None:
    drop_triggers()
    op.drop_table("directory_generation")
