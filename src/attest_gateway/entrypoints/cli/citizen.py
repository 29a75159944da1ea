"""`attest-gateway citizen export`: the citizen's own view (GDPR art. 15), for the operator
to hand to the citizen: their conversations' timelines, registered contacts, cases and
treatments, and every read of their data, as JSON or as a self-contained HTML page.

The operator CLI is the authorised role: it runs on the gateway host with the database and
the pseudonym key. The export is audited (`citizen.export`, infra/db/citizen.py); the CPR
number is asked for at a hidden prompt unless given, and is never printed, logged or stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from html import escape
from pathlib import Path
from typing import Annotated

import typer
from pydantic_core import PydanticCustomError
from rich.console import Console

from attest_gateway.bootstrap import clock_from_settings, database, load_pseudonym_key
from attest_gateway.config import load_settings
from attest_gateway.contracts.citizen import CitizenExport, OrgName
from attest_gateway.core.audit import SOURCE_CLI
from attest_gateway.core.identifiers import check_cpr
from attest_gateway.crypto.sealing import KeyStoreError
from attest_gateway.entrypoints.cli.admin import operator
from attest_gateway.infra.db import citizen
from attest_gateway.infra.db.pseudonyms import PseudonymKeyMismatch
from attest_gateway.infra.kafka.topics import Topics

citizen_app = typer.Typer(help="A citizen's own view of their data (GDPR art. 15).")
console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.add_typer(citizen_app, name="citizen")


@citizen_app.command("export")
def export(
    cpr: Annotated[
        str,
        typer.Option(
            prompt="CPR number",
            hide_input=True,
            help="the citizen's CPR number (asked for at a hidden prompt when left out, so it "
            "stays out of the shell's history)",
        ),
    ],
    fmt: Annotated[str, typer.Option("--format", help="json or html")] = "json",
    out: Annotated[
        Path | None, typer.Option(help="write to this file (mode 600) instead of stdout")
    ] = None,
    operator_name: Annotated[
        str | None,
        typer.Option("--operator", help="who exports, for the audit entry (default: OS user)"),
    ] = None,
) -> None:
    """Export everything the gateway holds about one citizen: who asked whom for which
    attest and when each stage happened, registered contacts, sickness cases, treatments,
    closures, and every read of their data (who, when, from where). No attest content.
    Audited as `citizen.export` (the operator, ids and counts; never the CPR number).

    Example: attest-gateway citizen export --format html --out citizen.html
    """
    if fmt not in ("json", "html"):
        console.print("[red]error:[/red] --format is json or html")
        raise typer.Exit(2)
    try:
        number = str(check_cpr(cpr))
    except PydanticCustomError as exc:
        console.print(f"[red]error:[/red] {exc.message()}")
        raise typer.Exit(2) from None
    settings = load_settings()
    try:
        key = load_pseudonym_key(settings)
    except KeyStoreError as exc:  # the token (PKCS11_MODULE) does not open the key file
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    actor = f"operator:{operator_name}"[:64] if operator_name else operator()

    async def run() -> CitizenExport:
        async with database(settings) as engine:
            return await citizen.export(
                engine, Topics.from_settings(settings), number, key, actor=actor,
                source=SOURCE_CLI, now=clock_from_settings(settings).now(),
            )  # fmt: skip

    try:
        found = asyncio.run(run())
    except PseudonymKeyMismatch as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    text = found.model_dump_json(indent=2) + "\n" if fmt == "json" else render_html(found)
    if out is None:
        sys.stdout.write(text)
    else:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    console.print(
        f"exported {len(found.conversations)} conversations, {len(found.contacts)} contacts, "
        f"{len(found.cases)} cases, {len(found.treatments)} treatments, "
        f"{len(found.accesses)} reads (audited as citizen.export)"
    )


# --- the HTML page ----------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1, h2 { margin-bottom: 0.1em; }
.en { color: #555; font-size: 0.9em; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
"""


def _t(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, dt.datetime):
        return escape(value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
    if isinstance(value, dt.date):
        return escape(value.isoformat())
    if isinstance(value, OrgName):
        return escape(f"{value.name} ({value.id})" if value.name else value.id)
    if isinstance(value, bool):
        return "ja / yes" if value else "nej / no"
    return escape(str(value))


def _heading(level: int, da: str, en: str) -> str:
    return f'<h{level}>{escape(da)}</h{level}>\n<p class="en">{escape(en)}</p>\n'


def _table(headers: list[tuple[str, str]], rows: list[list[object]]) -> str:
    if not rows:
        return '<p>Ingen. <span class="en">None.</span></p>\n'
    head = "".join(f"<th>{escape(da)}<br><span class=\"en\">{escape(en)}</span></th>"
                   for da, en in headers)  # fmt: skip
    body = "".join("<tr>" + "".join(f"<td>{_t(v)}</td>" for v in row) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def render_html(found: CitizenExport) -> str:
    """A readable, self-contained page (no script, no outside resource), Danish headings with
    English below; every value escaped."""
    parts = [
        '<!DOCTYPE html>\n<html lang="da">\n<head>\n<meta charset="utf-8">\n',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">\n",
        "<title>Indsigt i dine oplysninger – attest gateway</title>\n",
        f"<style>{_STYLE}</style>\n</head>\n<body>\n",
        _heading(1, "Indsigt i dine oplysninger", "Your data: access request (GDPR art. 15)"),
        f"<p>Udtrukket {_t(found.exported_at)}. Gatewayen bærer lægeattester mellem jobcentre "
        "og sundhedsvæsenet; attesternes indhold har kun jobcentret og klinikken.</p>\n"
        f'<p class="en">Exported {_t(found.exported_at)}. The gateway carries medical attests '
        "between job centres and the health sector; the attests' content is held only by the "
        "job centre and the clinic.</p>\n",
        _heading(2, "Anmodninger om attest", "Attest requests"),
    ]
    if not found.conversations:
        parts.append(_table([], []))
    for c in found.conversations:
        parts.append(
            f"<h3>{_t(c.attest_type)}: {_t(c.jobcenter)} → {_t(c.receiver)}</h3>\n"
            + _table(
                [("Samtale", "Conversation"), ("Sagstype", "Case kind"),
                 ("Oprettet", "Created"), ("Svarfrist", "Reply deadline")],
                [[c.conversation_id, c.case_kind, c.created_at, c.reply_deadline]],
            )
            + _table([("Trin", "Stage"), ("Tidspunkt", "Time")],
                     [[s.stage, s.at] for s in c.stages])
        )  # fmt: skip
    parts += [
        _heading(2, "Registrerede kontakter", "Registered contacts"),
        _table(
            [("Jobcenter", "Job centre"), ("Psykiatri", "Psychiatry"),
             ("Registreret af", "Registered by"), ("Kontaktdato", "Contact date"),
             ("Kanal", "Channel"), ("Registreret", "Registered at")],
            [[r.jobcenter, r.psychiatry, r.registered_by, r.contact_date, r.channel,
              r.registered_at] for r in found.contacts],
        ),
        _heading(2, "Sygedagpengesager", "Sickness cases"),
        _table(
            [("Jobcenter", "Job centre"), ("Sagstype", "Case kind"),
             ("Psykiatrisk forløb", "Psychiatric course"),
             ("Første fraværsdag", "First day of absence"), ("Afsluttet", "Closed on")],
            [[r.jobcenter, r.case_kind, r.psychiatric_course, r.first_day_of_absence,
              r.closed_on] for r in found.cases],
        ),
        _heading(2, "Behandlingsforløb", "Treatments"),
        _table(
            [("Psykiatri", "Psychiatry"), ("Start", "Start"), ("Slut", "End")],
            [[r.psychiatry, r.start_date, r.end_date] for r in found.treatments],
        ),
        _heading(2, "Lukkede sager", "Closed cases"),
        _table(
            [("Jobcenter", "Job centre"), ("Sagstype", "Case kind"), ("Lukket", "Closed"),
             ("Slettes efter", "Erased after")],
            [[r.jobcenter, r.case_kind, r.closed_at, r.erase_after] for r in found.closures],
        ),
        _heading(2, "Hvem har læst dine oplysninger", "Who read your data"),
        _table(
            [("Tidspunkt", "Time"), ("Hvem", "Who"), ("Person", "Person"),
             ("Handling", "Action"), ("Hvorfra", "From where"), ("Beskeder", "Messages")],
            [[a.at, a.actor, " ".join(p for p in (a.person, a.authorisation_id) if p) or "-",
              a.action, a.source, " ".join(a.message_ids or a.conversation_ids)]
             for a in found.accesses],
        ),
        "</body>\n</html>\n",
    ]  # fmt: skip
    return "".join(parts)
