"""`attest-gateway prune`: one pass of retention, by hand (the gateway's sweeper runs the
same every SWEEP_INTERVAL_SECONDS)."""

from __future__ import annotations

import asyncio
import sys

import typer

from attest_gateway.bootstrap import clock_from_settings, database
from attest_gateway.config import custodial_keys_dir, load_settings
from attest_gateway.crypto.sealing import KeyRing, KeyStoreError
from attest_gateway.infra.housekeeping.retention import PruneReport, prune_all
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.infra.keys import open_key_store


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)


def prune() -> None:
    """Delete what is past its retention period (docs/data-lifecycle.md), in small batches,
    and say what went, by class. Safe while the gateway runs; a checkpoint of the audit chain
    is signed first when one is due. Runs as the owner role (DATABASE_OWNER_URL, else
    DATABASE_URL): the gateway's own role may not remove audit entries.

    Example: attest-gateway prune
    """
    settings = load_settings()
    try:  # the gateway's signing key signs the audit checkpoint (in the token, if one is set)
        keyring = KeyRing.load_dir(custodial_keys_dir(settings), open_key_store(settings))
    except KeyStoreError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(code=1) from None

    async def run() -> PruneReport:
        async with database(settings, owner=True) as engine:
            return await prune_all(
                engine,
                settings,
                Topics.from_settings(settings),
                keyring,
                clock_from_settings(settings).now(),
            )

    report = asyncio.run(run())
    if not report.counts:
        sys.stdout.write("nothing is past its retention period\n")
        return
    for name, n in sorted(report.counts.items()):
        sys.stdout.write(f"{name}: {n}\n")
