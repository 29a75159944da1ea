"""Operator commands for the organisations' webhook endpoints: `attest-gateway webhooks
add|list|remove|rotate`. The same use cases as `/webhooks/v1` (services/webhooks.py); a
refusal is one sentence and exit code 1. Registered on the main app (`register(app)`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import sqlalchemy as sa
import typer
from rich.console import Console

from attest_gateway.bootstrap import database, webhook_config
from attest_gateway.config import Settings, load_settings
from attest_gateway.contracts.webhooks import WebhookEvent
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.errors import GatewayError
from attest_gateway.entrypoints.cli.ops import fail
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.webhooks import SqlWebhookStore
from attest_gateway.observability.logging import configure_logging
from attest_gateway.services import webhooks as service

console = Console()
T = TypeVar("T")

webhooks_app = typer.Typer(help="Organisations' webhook endpoints: add, list, remove, rotate.")


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")


def _run(settings: Settings, work: Callable[[SqlWebhookStore], Awaitable[T]]) -> T:
    configure_logging("WARNING", "console")  # stdout holds the answer (JSON) alone

    async def go() -> T:
        async with database(settings) as engine:
            return await work(SqlWebhookStore(engine))

    try:
        return asyncio.run(go())
    except GatewayError as exc:
        raise fail(exc.detail) from None
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        raise fail("the database is unreachable or not migrated (attest-gateway migrate)") from None


@webhooks_app.command("add")
def add(
    org_id: Annotated[str, typer.Argument(help="the organisation's id")],
    url: Annotated[str, typer.Argument(help="the https URL deliveries are POSTed to")],
    event: Annotated[
        list[WebhookEvent] | None,
        typer.Option("--event", help="an event to send (repeat); default: all for the role"),
    ] = None,
) -> None:
    """Register an endpoint for an organisation and print it with its secret (shown once).

    Example: attest-gateway webhooks add jc-koebenhavn https://sag.kk.example/hooks
    --event reply.arrived
    """
    settings = load_settings()

    async def work(store: SqlWebhookStore) -> str:
        async with database(settings) as engine, engine.connect() as conn:
            org = await directory.org_by_id(conn, org_id)
        if org is None:
            raise fail(f"no organisation {org_id!r}")
        endpoint = await service.add_endpoint(
            store,
            SystemClock(),
            org,
            url,
            event,
            production=settings.environment == "production",
        )
        return json.dumps(
            {
                "id": endpoint.id,
                "org": endpoint.org_id,
                "url": endpoint.url,
                "events": sorted(endpoint.events),
                "secret": endpoint.secret,
            },
            indent=2,
        )

    console.print_json(_run(settings, work))


@webhooks_app.command("list")
def list_(org_id: Annotated[str, typer.Argument(help="the organisation's id")]) -> None:
    """List an organisation's endpoints (never their secrets).

    Example: attest-gateway webhooks list jc-koebenhavn
    """
    settings = load_settings()
    found = _run(settings, lambda store: service.list_endpoints(store, org_id))
    rows = [
        {
            "id": e.id,
            "url": e.url,
            "events": sorted(e.events),
            "created_at": e.created_at.isoformat(),
            "rotating_until": e.previous_until.isoformat() if e.previous_until else None,
        }
        for e in found
    ]
    console.print_json(json.dumps(rows))


@webhooks_app.command("remove")
def remove(
    org_id: Annotated[str, typer.Argument(help="the organisation's id")],
    endpoint_id: Annotated[str, typer.Argument(help="the endpoint's id (ep_…)")],
) -> None:
    """Remove an endpoint; its pending deliveries are marked failed.

    Example: attest-gateway webhooks remove jc-koebenhavn ep_5f0c3b2a9d8e7f6a5b4c3d2e
    """
    settings = load_settings()
    _run(settings, lambda store: service.remove_endpoint(store, SystemClock(), org_id, endpoint_id))
    console.print(f"removed {endpoint_id}")


@webhooks_app.command("rotate")
def rotate(
    org_id: Annotated[str, typer.Argument(help="the organisation's id")],
    endpoint_id: Annotated[str, typer.Argument(help="the endpoint's id (ep_…)")],
) -> None:
    """A new signing secret (printed once); the old one signs too during the overlap
    (WEBHOOK_ROTATION_OVERLAP_HOURS).

    Example: attest-gateway webhooks rotate jc-koebenhavn ep_5f0c3b2a9d8e7f6a5b4c3d2e
    """
    settings = load_settings()
    overlap = webhook_config(settings).rotation_overlap
    secret, until = _run(
        settings,
        lambda store: service.rotate_secret(store, SystemClock(), org_id, endpoint_id, overlap),
    )
    console.print_json(
        json.dumps({"id": endpoint_id, "secret": secret, "rotating_until": until.isoformat()})
    )
