"""`attest-gateway audit verify | list`: check the audit log's hash chain, show its entries."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from attest_gateway.bootstrap import database
from attest_gateway.config import Settings, load_settings
from attest_gateway.contracts.audit import AuditEntry
from attest_gateway.core.actors import AUTHORISATION_KEY, PERSON_KEY
from attest_gateway.infra.db import audit
from attest_gateway.infra.kafka.reading import KafkaReadTimeout, TopicMissing
from attest_gateway.infra.kafka.topics import Topics

audit_app = typer.Typer(help="The audit log of reads and administrative changes.")
console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


def _anchors(settings: Settings, topic: bool | None) -> audit.TopicAnchors | None:
    """The entries and signed chain heads on gateway.audit, when asked for (or by default
    when Kafka is configured)."""
    if topic is False or (topic is None and not settings.kafka_bootstrap_servers):
        return None
    if not settings.kafka_bootstrap_servers:
        console.print("[red]error:[/red] --topic needs KAFKA_BOOTSTRAP_SERVERS")
        raise typer.Exit(2)
    try:
        return asyncio.run(audit.read_topic_anchors(settings, settings.kafka_bootstrap_servers))
    except (KafkaReadTimeout, TopicMissing) as exc:
        console.print(
            f"[red]error:[/red] {exc.detail} (Kafka at {settings.kafka_bootstrap_servers}; "
            "--no-topic checks the database alone)"
        )
        raise typer.Exit(2) from None
    except (KafkaError, OSError, asyncio.CancelledError):
        console.print(
            f"[red]error:[/red] cannot reach Kafka at {settings.kafka_bootstrap_servers} "
            "(--no-topic checks the database alone)"
        )
        raise typer.Exit(2) from None


@audit_app.command("verify")
def verify(
    topic: Annotated[
        bool | None,
        typer.Option(
            "--topic/--no-topic",
            help="also hold the chain against the entries and signed chain heads on "
            "gateway.audit (default: when KAFKA_BOOTSTRAP_SERVERS is set). Only that finds a "
            "tail cut or rewritten together with its head and the signed heads in it.",
        ),
    ] = None,
) -> None:
    """Check the audit log's hash chain: exit 0 when intact, 1 with the first broken seq.

    After retention removed old entries, the check starts from the oldest kept checkpoint
    (its signature by the gateway's key checked) and says which entries it covers. Entries
    appended but not chained yet are counted, with the time of the oldest: a chainer that
    stopped shows there.

    Example: attest-gateway audit verify
    """
    settings = load_settings()
    anchors = _anchors(settings, topic)

    async def run() -> audit.Verdict:
        async with database(settings) as engine, engine.connect() as conn:
            return await audit.verify(
                conn,
                anchors.entries if anchors is not None else None,
                gateway_org_id=settings.gateway_org_id,
                signed_heads=anchors.signed_heads if anchors is not None else (),
            )

    verdict = asyncio.run(run())
    if not verdict.ok:
        console.print(f"[red]chain broken at seq {verdict.broken_seq}:[/red] {verdict.reason}")
        raise typer.Exit(1)
    sys.stdout.write(covered(verdict, held_against_topic=anchors is not None) + "\n")


def covered(verdict: audit.Verdict, *, held_against_topic: bool) -> str:
    """What an intact chain's verification covered, in one line."""
    checked = (
        f"; {verdict.anchored} confirmed on gateway.audit"
        if held_against_topic
        else "; not held against gateway.audit"
    )
    if verdict.start is None:
        origin = "from the first entry"
    else:
        origin = (
            f"from the signed checkpoint at seq {verdict.start.seq} of "
            f"{verdict.start.at.isoformat(timespec='seconds')} (key {verdict.start.key_id}; "
            "older entries removed by retention)"
        )
    if verdict.entries == 0:
        span = "0 entries"
    elif verdict.entries == 1:
        span = f"1 entry (seq {verdict.first_seq})"
    else:
        span = f"{verdict.entries} entries (seq {verdict.first_seq}–{verdict.last_seq})"
    n = verdict.checkpoints
    points = f"; {n} signed checkpoint{'' if n == 1 else 's'} checked" if n else ""
    waiting = ""
    if verdict.pending and verdict.oldest_pending is not None:
        waiting = (
            f"; {verdict.pending} {'entry' if verdict.pending == 1 else 'entries'} appended, "
            "not chained yet (the oldest of "
            f"{verdict.oldest_pending.isoformat(timespec='seconds')})"
        )
    return f"chain intact, {span} {origin}{points}{checked}{waiting}"


@audit_app.command("list")
def list_entries(
    org: Annotated[
        str | None, typer.Option(help="only entries with this organisation as actor or subject")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="the newest this many")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Show the newest audit entries, oldest first: the organisation and, when its system
    named one, the person acting (and their autorisations-ID). Ids and addresses only,
    never content.

    Example: attest-gateway audit list --org jc-koebenhavn --limit 20
    """
    settings = load_settings()

    async def run() -> list[AuditEntry]:
        async with database(settings) as engine:
            await audit.chain_all(engine, Topics.from_settings(settings))  # pending ones too
            async with engine.connect() as conn:
                return await audit.latest(conn, org_id=org, limit=limit)

    entries = asyncio.run(run())
    if as_json:
        for entry in entries:
            sys.stdout.write(entry.model_dump_json() + "\n")
        return
    table = Table("seq", "at", "actor", "person", "action", "subject", "message id", "source")
    for e in entries:
        detail = e.detail or {}
        person = " ".join(detail[k] for k in (PERSON_KEY, AUTHORISATION_KEY) if k in detail)
        table.add_row(
            str(e.seq), e.at.isoformat(timespec="seconds"), e.actor, person or "-", e.action,
            e.subject_org or "-", e.message_id or "-", e.source,
        )  # fmt: skip
    Console().print(table)
