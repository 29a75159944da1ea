"""`attest-gateway db grant | privileges`: the runtime role's grants (infra/db/grants.py)."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.exc import DBAPIError

from attest_gateway.bootstrap import audit_rewrite_problem, database
from attest_gateway.config import load_settings
from attest_gateway.infra.db import grants

db_app = typer.Typer(help="The database roles: the owner and the gateway's runtime role.")
console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")


@db_app.command("grant")
def grant(
    runtime_role: Annotated[
        str, typer.Option(help="the PostgreSQL role the gateway's processes log in as")
    ],
) -> None:
    """Give the runtime role what the gateway needs on every table, and on the audit log only
    reading and appending (SELECT, INSERT; the chain head SELECT, UPDATE). Runs as the owner
    role (DATABASE_OWNER_URL, else DATABASE_URL); run it again after every `migrate`.

    Example: DATABASE_OWNER_URL=postgresql+asyncpg://attest_owner@db/attest attest-gateway db grant --runtime-role attest_runtime
    """  # noqa: E501
    settings = load_settings()
    if settings.effective_owner_database_url.startswith("sqlite"):
        console.print("[red]error:[/red] SQLite has no roles: grants are PostgreSQL's")
        raise typer.Exit(2)

    async def run() -> list[str]:
        async with database(settings, owner=True) as engine, engine.begin() as conn:
            return await grants.grant_runtime(conn, runtime_role)

    try:
        statements = asyncio.run(run())
    except DBAPIError as exc:
        console.print(f"[red]error:[/red] the grants failed: {type(exc.orig).__name__}")
        raise typer.Exit(1) from None
    for statement in statements:
        sys.stdout.write(statement + ";\n")


@db_app.command("privileges")
def privileges() -> None:
    """Check DATABASE_URL's role: exit 0 when it can only read and append the audit log, 1
    naming what else it may do there (production refuses to start then).

    Example: attest-gateway db privileges
    """
    settings = load_settings()

    async def run() -> list[str]:
        async with database(settings) as engine, engine.connect() as conn:
            return await grants.rewrite_privileges(conn)

    held = asyncio.run(run())
    if held:
        console.print(f"[red]error:[/red] {audit_rewrite_problem(held)}")
        raise typer.Exit(1)
    sys.stdout.write("the database role can only read and append the audit log\n")
