"""Two database roles on PostgreSQL: the owner and the runtime role.

The owner role owns the schema: it runs the migrations (`attest-gateway migrate`, `setup`) and
the audit log's retention (`attest-gateway prune`), with DATABASE_OWNER_URL, from the
operator's machine or job. The gateway's processes run as the runtime role (DATABASE_URL),
which `attest-gateway db grant --runtime-role NAME` gives what it needs on every table of the
schema, except on the audit log: there it may read and append, never change or remove.

| table               | the runtime role may                                            |
|---------------------|-----------------------------------------------------------------|
| `audit_log`         | SELECT, INSERT                                                  |
| `audit_checkpoints` | SELECT, INSERT (the sweeper signs checkpoints)                  |
| `audit_head`        | SELECT, UPDATE (an append moves the head; it cannot remove it)  |
| `audit_pending`     | SELECT, INSERT, UPDATE of `seq` only (the chainer marks a row   |
|                     | chained; a trigger lets it set a NULL seq once, nothing else)   |
| every other table   | SELECT, INSERT, UPDATE, DELETE                                  |
| sequences           | USAGE, SELECT                                                   |

Whoever holds the runtime role's credentials can then append to the chain, but cannot rewrite
or cut it: a moved head leaves entries beyond it (or misses some), which `audit verify` finds.
Nor can it remove an entry appended but not chained yet: it can only mark a pending row with
a seq, once (migration 0019's trigger), and a row marked without its entry in the chain is
what `audit verify` reports.
Production refuses to start while the runtime role may UPDATE, DELETE or TRUNCATE an audit
table (`rewrite_privileges`, checked in bootstrap.py and by `/readyz`); the owner of a table
holds every privilege on it, so the gateway cannot run as the owner there.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

#: What the runtime role may do on each audit table; any other privilege is refused.
AUDIT_GRANTS: dict[str, tuple[str, ...]] = {
    "audit_log": ("SELECT", "INSERT"),
    "audit_checkpoints": ("SELECT", "INSERT"),
    "audit_head": ("SELECT", "UPDATE"),
    "audit_pending": ("SELECT", "INSERT", "UPDATE (seq)"),
}
#: The privileges that would let the runtime role rewrite or cut the chain.
REWRITES: dict[str, tuple[str, ...]] = {
    "audit_log": ("UPDATE", "DELETE", "TRUNCATE"),
    "audit_checkpoints": ("UPDATE", "DELETE", "TRUNCATE"),
    "audit_head": ("DELETE", "TRUNCATE"),
    "audit_pending": ("UPDATE", "DELETE", "TRUNCATE"),  # UPDATE of the whole row
}
OTHER_TABLES = "SELECT, INSERT, UPDATE, DELETE"
READ_ONLY_TABLES = {"alembic_version"}


async def rewrite_privileges(conn: AsyncConnection) -> list[str]:
    """The privileges the connection's role holds that could rewrite or cut the audit log,
    as `PRIVILEGE on table` (empty when there are none, and on SQLite, which has no roles)."""
    if conn.dialect.name != "postgresql":
        return []
    checks = [(table, privilege) for table, privs in REWRITES.items() for privilege in privs]
    query = sa.text(
        "SELECT " + ", ".join(
            f"has_table_privilege(current_user, :t{i}, :p{i})" for i in range(len(checks))
        )
    )  # fmt: skip
    params = {f"t{i}": t for i, (t, _) in enumerate(checks)}
    params |= {f"p{i}": p for i, (_, p) in enumerate(checks)}
    row = (await conn.execute(query, params)).one()
    return [f"{p} on {t}" for (t, p), held in zip(checks, row, strict=True) if held]


async def may_prune_audit(conn: AsyncConnection) -> bool:
    """Whether the connection's role may remove audit entries (retention): the owner role,
    and SQLite. The gateway's processes, running as the runtime role, leave that to
    `attest-gateway prune` with DATABASE_OWNER_URL."""
    if conn.dialect.name != "postgresql":
        return True
    query = sa.text(
        "SELECT has_table_privilege(current_user, 'audit_log', 'DELETE') "
        "AND has_table_privilege(current_user, 'audit_checkpoints', 'DELETE') "
        "AND has_table_privilege(current_user, 'audit_pending', 'DELETE')"
    )
    return bool((await conn.execute(query)).scalar())


async def grant_runtime(conn: AsyncConnection, role: str) -> list[str]:
    """Give `role` what the gateway's processes need on every table of the current schema
    (see the module's docstring), taking back whatever else it held on the audit tables.
    Run as the owner role after every migration. Returns the statements run."""
    if conn.dialect.name != "postgresql":
        raise ValueError("database roles are PostgreSQL's: SQLite has none")
    quote = conn.dialect.identifier_preparer.quote
    who = quote(role)
    schema = (await conn.execute(sa.text("SELECT current_schema()"))).scalar_one()
    tables = (
        await conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY tablename"),
            {"s": schema},
        )
    ).scalars()
    statements = [f"GRANT USAGE ON SCHEMA {quote(schema)} TO {who}"]
    for table in tables:
        name = f"{quote(schema)}.{quote(table)}"
        if table in AUDIT_GRANTS:
            statements += [
                f"REVOKE ALL ON {name} FROM {who}",
                f"GRANT {', '.join(AUDIT_GRANTS[table])} ON {name} TO {who}",
            ]
        elif table in READ_ONLY_TABLES:
            statements.append(f"GRANT SELECT ON {name} TO {who}")
        else:
            statements.append(f"GRANT {OTHER_TABLES} ON {name} TO {who}")
    statements.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {quote(schema)} TO {who}")
    for statement in statements:
        await conn.execute(sa.text(statement))
    return statements
