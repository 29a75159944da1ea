"""`attest-gateway pseudonyms status | rekey`: the citizens' pseudonym key and its rotation.

The re-key itself is infra/db/rekey.py; this module handles the keys around it. With the
generated key file (`KEYS_DIR/pseudonym.key`, PSEUDONYM_KEY unset) the new key is written to
`pseudonym.key.new` first, the database is re-keyed and committed, then the staged file
replaces the key file (an atomic rename). A crash between the commit and the rename leaves
the staged file: the gateway then refuses to start, and running `rekey` again finishes the
rename. With a token (PKCS11_MODULE) both files hold the key wrapped by its key-encryption
key, never the key itself. With PSEUDONYM_KEY set, the operator gives the new key
(`--new-key-env VAR` or `--new-key-file PATH`) and, once the re-key committed, sets
PSEUDONYM_KEY to it everywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from attest_gateway.bootstrap import database, load_pseudonym_key
from attest_gateway.config import (
    Settings,
    custodial_keys_dir,
    load_settings,
    pseudonym_key_file,
    staged_key_file,
)
from attest_gateway.core.clock import SystemClock
from attest_gateway.crypto import pseudonyms as cps
from attest_gateway.crypto.sealing import KeyRing, read_secret_file, secret_file_text
from attest_gateway.entrypoints.cli.admin import operator
from attest_gateway.infra.db import pseudonyms as ps
from attest_gateway.infra.db.rekey import RekeyRefused, RekeyReport, rekey
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.infra.keys import KeyStoreError, open_key_store

pseudonyms_app = typer.Typer(help="Citizens' pseudonyms (case refs): their key and its rotation.")
console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.add_typer(pseudonyms_app, name="pseudonyms")


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=code)


def _read_key_file(settings: Settings, path: Path) -> bytes:
    """A pseudonym key file: in clear, or wrapped by the token's key-encryption key."""
    try:
        return read_secret_file(path, open_key_store(settings), context=cps.KEY_FILE_CONTEXT)
    except KeyStoreError as exc:
        raise _fail(str(exc)) from None


def _current_key(settings: Settings) -> bytes:
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key.get_secret_value().encode("utf-8")
    path = pseudonym_key_file(settings)
    if not path.exists():
        raise _fail(f"there is no pseudonym key yet ({path}): the gateway makes it at first start")
    return _read_key_file(settings, path)


def _new_key(settings: Settings, env: str | None, file: Path | None) -> bytes:
    """The new key: from an environment variable or a file, else (key-file mode) random."""
    if env is not None and file is not None:
        raise _fail("give the new key either with --new-key-env or with --new-key-file")
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise _fail(f"the environment variable {env} is not set")
    elif file is not None:
        value = file.read_text(encoding="utf-8").strip()
    elif settings.pseudonym_key is not None:
        raise _fail(
            "PSEUDONYM_KEY is set, so the new key must come from you: --new-key-env VAR or "
            "--new-key-file PATH (openssl rand -hex 32)"
        )
    else:
        return secrets.token_hex(32).encode("ascii")
    if len(value) < 32 or len(set(value)) < 8:
        raise _fail("the new key is too short or too regular: use openssl rand -hex 32")
    return value.encode("utf-8")


def _write_private(settings: Settings, path: Path, key: bytes) -> None:
    """The key file: the key itself, or wrapped by the token when PKCS11_MODULE is set."""
    try:
        text = secret_file_text(key, open_key_store(settings), context=cps.KEY_FILE_CONTEXT)
    except KeyStoreError as exc:
        raise _fail(str(exc)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode("ascii"))
        fh.flush()
        os.fsync(fh.fileno())


def _install_staged(settings: Settings) -> None:
    """Put the staged key file in place of the key file (atomic rename, then sync)."""
    staged, target = staged_key_file(settings), pseudonym_key_file(settings)
    staged.replace(target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _recorded(settings: Settings) -> tuple[str | None, str | None]:
    async with database(settings) as engine, engine.connect() as conn:
        return await ps.recorded_key(conn)


def _finish_interrupted(settings: Settings) -> bool:
    """A staged key file whose key the store already records: an earlier re-key committed but
    did not rename its key file. Finish it. True if it did."""
    staged = staged_key_file(settings)
    if settings.pseudonym_key is not None or not staged.exists():
        return False
    recorded, _ = asyncio.run(_recorded(settings))
    if recorded is None or cps.key_id(_read_key_file(settings, staged)) != recorded:
        return False
    _install_staged(settings)
    return True


def key_mismatch(settings: Settings) -> str | None:
    """One sentence when the configured key is not the one the store records (or None).
    Records the key on a store's first use, as the gateway's start does."""

    async def check() -> str | None:
        async with database(settings) as engine:
            try:
                key = load_pseudonym_key(settings)
                await ps.check_store_key(
                    engine,
                    key,
                    tracking_topic=Topics.from_settings(settings).tracking,
                    now=SystemClock().now(),
                )
            except KeyStoreError as exc:
                return str(exc)
            except ps.PseudonymKeyMismatch as exc:
                staged = staged_key_file(settings)
                if settings.pseudonym_key is None and staged.exists():
                    return (
                        f"{exc}; a re-key left {staged}: finish it (attest-gateway pseudonyms "
                        "rekey)"
                    )
                return str(exc)
        return None

    return asyncio.run(check())


def refuse_key_mismatch(settings: Settings) -> None:
    """`serve`: refuse to start, in one sentence, when the key is not the store's."""
    problem = key_mismatch(settings)
    if problem is not None:
        raise _fail(problem, code=2)


@pseudonyms_app.command("status")
def status() -> None:
    """Show the configured pseudonym key's id and the one the store's pseudonyms are made with.

    Exit 0 when they match (or the store has none yet), 2 when they differ.

    Example: attest-gateway pseudonyms status
    """
    settings = load_settings()
    configured = cps.key_id(_current_key(settings))
    recorded, legacy = asyncio.run(_recorded(settings))
    source = "PSEUDONYM_KEY" if settings.pseudonym_key is not None else "key file"
    sys.stdout.write(f"configured key id: {configured} ({source})\n")
    sys.stdout.write(f"store's key id:    {recorded or '(none recorded yet)'}\n")
    if legacy is not None:
        sys.stdout.write(f"refs without a key id belong to key id {legacy} (no re-key yet)\n")
    if recorded is not None and recorded != configured:
        raise _fail(ps.mismatch_message(configured, recorded), code=2)


@pseudonyms_app.command("rekey")
def rekey_command(
    new_key_env: Annotated[
        str | None,
        typer.Option(
            "--new-key-env",
            help="name of an environment variable holding the new key",
            show_default=False,
        ),
    ] = None,
    new_key_file: Annotated[
        Path | None,
        typer.Option("--new-key-file", help="a file holding the new key", show_default=False),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="re-key even when some pseudonyms have no sealed CPR number (rows made before "
            "CPR numbers were sealed): each gets an unlinked pseudonym under the new key",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="do all of it, report, and roll back")
    ] = False,
    republish_seconds: Annotated[
        float | None,
        typer.Option(
            help="also rewrite and publish again the tracking events published this recently "
            "(default: REPLAY_WINDOW_SECONDS)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Re-key every citizen pseudonym in the store under a new key, in one transaction.

    Stop every gateway process first (API and workers): the re-key is offline. Each stored
    CPR number (sealed to the gateway's own key) is opened and its pseudonym computed under
    the new key; conversations, the tracker's tables and unpublished tracking events are
    rewritten. Nothing changes if anything fails. Then start the gateway with the new key.

    Example: attest-gateway pseudonyms rekey --dry-run
    Example: attest-gateway pseudonyms rekey                  # generated key file: a new one
    Example: NEW=$(openssl rand -hex 32) attest-gateway pseudonyms rekey --new-key-env NEW
    """
    settings = load_settings()
    if not dry_run and _finish_interrupted(settings):
        sys.stdout.write(
            f"finished an interrupted re-key: {pseudonym_key_file(settings)} now holds the "
            "store's key; start the gateway\n"
        )
        return
    old_key = _current_key(settings)
    new_key = _new_key(settings, new_key_env, new_key_file)
    try:
        keyring = KeyRing.load_dir(custodial_keys_dir(settings), open_key_store(settings))
    except KeyStoreError as exc:
        raise _fail(str(exc)) from None
    window = settings.replay_window_seconds if republish_seconds is None else republish_seconds
    staged = staged_key_file(settings)
    key_file_mode = settings.pseudonym_key is None
    if key_file_mode and not dry_run:
        _write_private(settings, staged, new_key)  # on disk before the database moves to it

    clock = SystemClock()  # a command run by hand, between runs of the gateway

    async def run() -> RekeyReport:
        async with database(settings) as engine:
            return await rekey(
                engine,
                keyring,
                gateway_org_id=settings.gateway_org_id,
                old_key=old_key,
                new_key=new_key,
                tracking_topic=Topics.from_settings(settings).tracking,
                republish_since=clock.now() - dt.timedelta(seconds=window),
                force=force,
                dry_run=dry_run,
                audit_to=Topics.from_settings(settings),
                actor=operator(),
                clock=clock,
            )

    try:
        report = asyncio.run(run())
    except RekeyRefused as exc:
        if key_file_mode and not dry_run:
            staged.unlink(missing_ok=True)
        raise _fail(str(exc)) from None
    _print_report(report)
    if dry_run:
        sys.stdout.write("dry run: nothing was changed\n")
        return
    if key_file_mode:
        _install_staged(settings)
        sys.stdout.write(
            f"{pseudonym_key_file(settings)} now holds the new key; start the gateway\n"
        )
    else:
        source = f"the value of {new_key_env}" if new_key_env else f"the content of {new_key_file}"
        sys.stdout.write(
            f"now set PSEUDONYM_KEY to the new key ({source}, key id {cps.key_id(new_key)}) for "
            "every gateway process, then start them: with the old key they refuse to start\n"
        )


def _print_report(report: RekeyReport) -> None:
    out = sys.stdout.write
    out(f"pseudonym key {report.old_key_id} → {report.new_key_id}\n")
    out(f"citizens re-keyed from their sealed CPR number: {report.citizens}\n")
    for table, n in sorted(report.sealed_rows.items()):
        out(f"  {table}: {n} row(s) with a sealed CPR number\n")
    if report.resealed:
        out(f"sealed again to the gateway's current HPKE key: {report.resealed}\n")
    if report.unlinked_refs:
        rows = ", ".join(f"{t} {n}" for t, n in sorted(report.unlinked_rows.items()))
        out(
            f"pseudonyms without a sealed CPR number, given unlinked pseudonyms (--force): "
            f"{report.unlinked_refs} ({rows})\n"
        )
    for table, n in sorted(report.rewritten.items()):
        out(f"  {table}: {n} row(s) rewritten\n")
    out(f"tracking events to publish again: {report.republished}\n")
