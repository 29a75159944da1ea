"""Operator commands for the organisation directory: `attest-gateway orgs add|list|disable` and
`attest-gateway keys generate|add|rotate|revoke|retire|protect|list`.

Thin: each command parses its options, runs one function of `services/admin.py` in one
database transaction (audited there, actor `operator:<OS user>`, source `cli`) and prints the
result. A refused change is one sentence and exit code 1. Registered on the main app by
`cli.py` (`register(app)`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.bootstrap import database
from attest_gateway.config import Settings, load_settings
from attest_gateway.contracts.envelope import Suite
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.directory import MessageFormat, Organisation, Role
from attest_gateway.crypto.sealing import OrgKeys, PrivateHpkeKey, SigningKey
from attest_gateway.entrypoints.cli.ops import fail
from attest_gateway.services import admin

console = Console(stderr=True)
T = TypeVar("T")

orgs_app = typer.Typer(help="The organisation directory: add, list and disable organisations.")
keys_app = typer.Typer(
    help="Organisation keys: generate (locally), add, rotate, revoke, retire, list."
)

ROLES = tuple(role.value for role in Role)
PURPOSES = ("hpke", "signing")

PurposeOption = Annotated[
    str, typer.Option("--purpose", help="hpke, signing or both", show_default=True)
]


def register(app: typer.Typer) -> None:
    app.add_typer(orgs_app, name="orgs")
    app.add_typer(keys_app, name="keys")


def operator() -> str:
    """The actor of a CLI change: `operator:` and the OS user name."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (some containers)
        user = f"uid{os.getuid()}"
    return f"operator:{user}"[:64]


def _run(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one transaction; admin refusals and an unmigrated database are one
    sentence and exit code 1."""

    async def go() -> T:
        async with database(settings) as engine, engine.begin() as conn:
            return await work(conn)

    try:
        return asyncio.run(go())
    except admin.AdminError as exc:
        raise fail(str(exc)) from None
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        raise fail(
            "the database is not reachable or not set up: check DATABASE_URL and run "
            "attest-gateway setup (or migrate) first"
        ) from None


def _purpose(value: str) -> Literal["hpke", "signing", "both"]:
    if value == "hpke":
        return "hpke"
    if value == "signing":
        return "signing"
    if value == "both":
        return "both"
    raise fail(f"--purpose must be hpke, signing or both, not {value!r}")


def _suite(value: str | None) -> Suite | None:
    if value is None:
        return None
    for suite in ("MLKEM768_X25519/HKDF_SHA256/AES_256_GCM", "X25519/HKDF_SHA256/AES_256_GCM"):
        if value in (suite, suite.split("/", 1)[0]):
            return suite
    raise fail(f"--suite must be MLKEM768_X25519 or X25519, not {value!r}")


def _when(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _key_row(key: admin.KeyInfo, current: set[str], at: dt.datetime) -> dict[str, Any]:
    state = key.state(at)
    return {
        "key_id": key.key_id,
        "org_id": key.org_id,
        "purpose": key.purpose,
        "algorithm": key.algorithm,
        "state": "current" if key.key_id in current and state == "usable" else state,
        "created_at": _when(key.created_at),
        "not_after": _when(key.not_after),
        "revoked_at": _when(key.revoked_at),
    }


def _print_keys(keys: list[admin.KeyInfo]) -> None:
    for key in keys:
        console.print(f"  {key.purpose:8} {key.key_id}  ({key.algorithm})")


# --- orgs ------------------------------------------------------------------------------------


@orgs_app.command("add")
def orgs_add(
    org_id: Annotated[str, typer.Argument(help="short id: lower-case letters, digits, . _ -")],
    name: Annotated[str, typer.Option(help="the organisation's name")],
    role: Annotated[str, typer.Option(help=" | ".join(ROLES))],
    sor: Annotated[str | None, typer.Option(help="SOR code (6–18 digits)")] = None,
    gln: Annotated[str | None, typer.Option(help="GLN (13 digits, GS1 check digit)")] = None,
    kommunekode: Annotated[
        str | None, typer.Option(help="municipality code (job centres, municipality analysts)")
    ] = None,
    ydernummer: Annotated[str | None, typer.Option(help="GP practice number (5–6 digits)")] = None,
    region: Annotated[
        str | None,
        typer.Option(help="region code (1081–1085; region analysts); from --kommunekode if unset"),
    ] = None,
    custodial: Annotated[
        bool,
        typer.Option(
            help="the gateway holds its keys (job centres whose systems cannot open mail)"
        ),
    ] = False,
    webhook_url: Annotated[str | None, typer.Option(help="https endpoint to notify")] = None,
    message_format: Annotated[
        str, typer.Option(help="json | xml: the FHIR format its systems take MedCom messages in")
    ] = MessageFormat.JSON.value,
    public_file: Annotated[
        Path | None, typer.Option(help="its public keys, from `keys generate --out` on its side")
    ] = None,
    keys_out: Annotated[
        Path | None,
        typer.Option(help="development: make its keys here and hand the file over"),
    ] = None,
    api_key: Annotated[bool, typer.Option(help="issue an API key")] = True,
) -> None:
    """Add an organisation to the directory; prints its API key once.

    Only the API key's hash is stored. A custodial organisation gets new keys in
    KEYS_DIR/custodial/; any other registers the public keys it made itself (--public-file),
    or, in development, gets keys in --keys-out.

    Example: attest-gateway orgs add jc-odense --name "Jobcenter Odense" --role jobcenter --kommunekode 461 --gln 5790001610012 --sor 461181000016008 --custodial
    Example: attest-gateway orgs add psyk-ouh --name "Psykiatrien OUH" --role psychiatry --sor 123456789012 --gln 5790004610019 --public-file psyk-ouh.public.json
    """  # noqa: E501
    if role not in ROLES:
        raise fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    fmt = _message_format(message_format)
    settings = load_settings()
    public = _read_public(public_file) if public_file is not None else None
    org = Organisation(
        id=org_id,
        name=name,
        role=Role(role),
        sor=sor,
        gln=gln,
        kommunekode=kommunekode,
        ydernummer=ydernummer,
        region_code=region,
        custodial=custodial,
        enabled=True,
        webhook_url=webhook_url,
        message_format=fmt,
    )
    added = _run(
        settings,
        lambda conn: admin.add_org(
            conn,
            settings,
            org,
            actor=operator(),
            source="cli",
            with_api_key=api_key,
            public_keys=public,
            private_out=keys_out,
        ),
    )
    console.print(f"added {added.org.id} ({added.org.role.value}, region {added.org.region_code})")
    _print_keys(added.keys)
    if added.private_file is not None:
        console.print(f"private keys: {added.private_file} (hand it over, then delete it here)")
    if not added.keys:
        console.print(
            "[yellow]warning:[/yellow] it has no keys yet; nothing can be sealed to it until "
            f"`attest-gateway keys add --org {added.org.id} --public-file …`"
        )
    if added.api_key is not None:
        console.print("API key (shown this once; only its hash is stored):")
        sys.stdout.write(added.api_key + "\n")


@orgs_app.command("list")
def orgs_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List the organisations with their identifiers, state and current key ids.

    Example: attest-gateway orgs list
    """
    settings = load_settings()
    entries = _run(settings, admin.list_orgs)
    now = SystemClock().now()
    rows: list[dict[str, Any]] = []
    for e in entries:
        o = e.org
        hpke, signing = e.current("hpke", now), e.current("signing", now)
        rows.append(
            {
                "id": o.id,
                "name": o.name,
                "role": o.role.value,
                "sor": o.sor,
                "gln": o.gln,
                "kommunekode": o.kommunekode,
                "ydernummer": o.ydernummer,
                "region": o.region_code,
                "custodial": o.custodial,
                "enabled": o.enabled,
                "webhook_url": o.webhook_url,
                "message_format": o.message_format.value,
                "hpke_key": hpke.key_id if hpke else None,
                "signing_key": signing.key_id if signing else None,
            }
        )
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    table = Table(
        "id",
        "name",
        "role",
        "identifiers",
        "custodial",
        "enabled",
        "format",
        "HPKE key",
        "signing key",
    )
    for row in rows:
        ids = " ".join(
            f"{k}={row[k]}" for k in ("sor", "gln", "kommunekode", "ydernummer") if row[k]
        )
        table.add_row(
            row["id"],
            row["name"],
            row["role"],
            ids or "-",
            "yes" if row["custodial"] else "no",
            "yes" if row["enabled"] else "no",
            row["message_format"],
            row["hpke_key"] or "-",
            row["signing_key"] or "-",
        )
    Console(width=200).print(table)


@orgs_app.command("disable")
def orgs_disable(
    org_id: Annotated[str, typer.Argument(help="the organisation to disable")],
) -> None:
    """Disable an organisation: its API key stops working and nothing is delivered to it.

    Example: attest-gateway orgs disable gp-noerrebro
    """
    settings = load_settings()
    change = _run(
        settings,
        lambda conn: admin.disable_org(conn, settings, org_id, actor=operator(), source="cli"),
    )
    console.print(f"{org_id} is disabled" + ("" if change.changed else " (it was already)"))


@orgs_app.command("enable")
def orgs_enable(
    org_id: Annotated[str, typer.Argument(help="the organisation to enable again")],
) -> None:
    """Enable a disabled organisation again.

    Example: attest-gateway orgs enable gp-noerrebro
    """
    settings = load_settings()
    change = _run(
        settings,
        lambda conn: admin.enable_org(conn, settings, org_id, actor=operator(), source="cli"),
    )
    console.print(f"{org_id} is enabled" + ("" if change.changed else " (it was already)"))


def _message_format(value: str) -> MessageFormat:
    try:
        return MessageFormat(value)
    except ValueError:
        formats = " or ".join(f.value for f in MessageFormat)
        raise fail(f"the message format is {formats}, not {value!r}") from None


@orgs_app.command("set-format")
def orgs_set_format(
    org_id: Annotated[str, typer.Argument(help="the organisation")],
    message_format: Annotated[str, typer.Argument(help="json | xml")],
) -> None:
    """Set the FHIR format sealed into an organisation's envelopes: json
    (application/fhir+json) or xml (application/fhir+xml), as its systems take MedCom
    messages. Mail sealed before stays as it is.

    Example: attest-gateway orgs set-format psyk-kbh xml
    """
    fmt = _message_format(message_format)
    settings = load_settings()
    change = _run(
        settings,
        lambda conn: admin.set_message_format(
            conn, settings, org_id, fmt, actor=operator(), source="cli"
        ),
    )
    console.print(f"{org_id} gets {fmt.value}" + ("" if change.changed else " (it did already)"))


@orgs_app.command("new-api-key")
def orgs_new_api_key(
    org_id: Annotated[str, typer.Argument(help="the organisation whose API key to replace")],
) -> None:
    """Replace an organisation's API key (leaked or lost): the old one stops working at once.
    The new key is printed once on standard output; only its hash is stored.

    Example: attest-gateway orgs new-api-key jc-koebenhavn
    """
    settings = load_settings()
    api_key = _run(
        settings,
        lambda conn: admin.reissue_api_key(conn, settings, org_id, actor=operator(), source="cli"),
    )
    sys.stdout.write(f"{api_key}\n")
    console.print(f"{org_id} has a new API key; the old one no longer works")


# --- keys ------------------------------------------------------------------------------------


def _read_public(path: Path) -> admin.PublicKeySet:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        return admin.PublicKeySet.from_json(text)
    except admin.AdminError as exc:
        raise fail(f"{path}: {exc}") from None


def public_file_for(private_file: Path) -> Path:
    return private_file.with_name(private_file.name.removesuffix(".json") + ".public.json")


@keys_app.command("generate")
def keys_generate(
    org: Annotated[str, typer.Option(help="your organisation's id in the gateway's directory")],
    out: Annotated[Path, typer.Option(help="your private key file (made, or extended)")],
    purpose: PurposeOption = "both",
    suite: Annotated[
        str | None, typer.Option(help="HPKE suite: MLKEM768_X25519 (default) or X25519")
    ] = None,
    public_out: Annotated[
        Path | None, typer.Option(help="default: next to --out, named *.public.json")
    ] = None,
) -> None:
    """Make your organisation's keys on your own machine (no database).

    Writes a private key file, kept by you, and a public-keys file to hand to the gateway
    operator (`keys add`). Run it again on the same file to rotate: the older keys stay in
    it, so your old mail still opens.

    Example: attest-gateway keys generate --org psyk-ouh --out psyk-ouh.json
    """
    settings = load_settings()
    purposes = admin.PURPOSES if _purpose(purpose) == "both" else (_purpose(purpose),)
    chosen = _suite(suite) or settings.hpke_suite
    new = OrgKeys(
        org,
        [PrivateHpkeKey.generate(chosen)] if "hpke" in purposes else [],
        [SigningKey.generate()] if "signing" in purposes else [],
    )
    try:
        admin.append_to_key_file(out, new)
    except admin.AdminError as exc:
        raise fail(str(exc)) from None
    except (OSError, ValueError, KeyError):
        raise fail(f"{out} exists and is not a key file") from None
    target = public_out or public_file_for(out)
    target.write_text(admin.PublicKeySet.of(OrgKeys.load(out)).to_json() + "\n", "utf-8")
    for key in admin.PublicKeySet.of(new).keys:
        console.print(f"  {key.purpose:8} {key.key_id}  ({key.algorithm})")
    console.print(f"private keys (keep them, mode 0600): {out}")
    console.print(f"public keys (give to the operator): {target}")


@keys_app.command("add")
def keys_add(
    org: Annotated[str, typer.Option(help="the organisation the keys belong to")],
    public_file: Annotated[Path, typer.Option(help="its public-keys file (`keys generate`)")],
) -> None:
    """Register public keys an organisation made itself; the newest becomes current.

    Example: attest-gateway keys add --org psyk-ouh --public-file psyk-ouh.public.json
    """
    settings = load_settings()
    public = _read_public(public_file)
    added = _run(
        settings,
        lambda conn: admin.register_public_keys(
            conn, settings, org, public, actor=operator(), source="cli"
        ),
    )
    console.print(f"registered for {org}:")
    _print_keys(added)


@keys_app.command("add-cert")
def keys_add_cert(
    org: Annotated[str, typer.Option(help="the organisation the certificate belongs to")],
    cert: Annotated[Path, typer.Option(help="its TLS client certificate (PEM)")],
) -> None:
    """Pin a TLS client certificate to an organisation: it may then call the API with mutual
    TLS instead of (or beside) its API key. Revoke it with keys revoke <key id>.

    Example: attest-gateway keys add-cert --org psyk-ouh --cert psyk-ouh-client.crt
    """
    settings = load_settings()
    try:
        pem = cert.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {cert}: {exc.strerror}") from None
    pinned = _run(
        settings,
        lambda conn: admin.pin_client_certificate(
            conn, settings, org, pem, actor=operator(), source="cli"
        ),
    )
    console.print(f"pinned for {org}:")
    _print_keys([pinned])


@keys_app.command("rotate")
def keys_rotate(
    org: Annotated[str, typer.Option(help="the organisation whose keys to rotate")],
    purpose: PurposeOption = "both",
    suite: Annotated[
        str | None, typer.Option(help="HPKE suite: MLKEM768_X25519 (default) or X25519")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="development, non-custodial: the private key file to extend"),
    ] = None,
) -> None:
    """Make a new key pair for an organisation; it is current at once.

    A custodial organisation's private key joins its key file (running gateways pick it up
    within a second); the old key still opens old mail and verifies messages in flight until
    you retire or revoke it. Any other organisation makes its own keys (`keys generate`,
    `keys add`); --out is for development only.

    Example: attest-gateway keys rotate --org jc-koebenhavn --purpose hpke
    """
    settings = load_settings()
    made = _run(
        settings,
        lambda conn: admin.rotate_keys(
            conn,
            settings,
            org,
            purpose=_purpose(purpose),
            suite=_suite(suite),
            private_out=out,
            actor=operator(),
            source="cli",
        ),
    )
    console.print(f"new current keys of {org}:")
    _print_keys(made.keys)
    for which, old in sorted(made.replaced.items()):
        console.print(f"  replaces {which} key {old} (retire it once mail to it is read)")
    if made.private_file is not None:
        console.print(f"private keys: {made.private_file}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (`keys list`)")],
    reason: Annotated[str | None, typer.Option(help="why (kept in the audit log)")] = None,
) -> None:
    """Revoke a key at once (compromise).

    A revoked signing key is refused everywhere from now on; a revoked HPKE key is never
    sealed to again.

    Example: attest-gateway keys revoke sig-3f9a0c1d2e4b --reason "laptop stolen"
    """
    settings = load_settings()
    change = _run(
        settings,
        lambda conn: admin.revoke_key(
            conn, settings, key_id, reason=reason, actor=operator(), source="cli"
        ),
    )
    if not change.changed:
        console.print(f"{key_id} was already revoked at {_when(change.key.revoked_at)}")
        return
    console.print(f"{key_id} ({change.key.purpose}, {change.key.org_id}) is revoked")
    if change.removed_from_key_file:
        console.print("  and removed from the custodial key file")


@keys_app.command("retire")
def keys_retire(
    key_id: Annotated[str, typer.Argument(help="the key id (`keys list`)")],
) -> None:
    """Retire an old key after a rotation: it is no longer used or accepted.

    A custodial private key leaves the key file, so mail still sealed to it can no longer be
    opened by the gateway.

    Example: attest-gateway keys retire hpke-8c2d41e07f55
    """
    settings = load_settings()
    change = _run(
        settings,
        lambda conn: admin.retire_key(conn, settings, key_id, actor=operator(), source="cli"),
    )
    if not change.changed:
        console.print(f"{key_id} is already revoked or retired")
        return
    console.print(f"{key_id} ({change.key.purpose}, {change.key.org_id}) is retired")
    if change.removed_from_key_file:
        console.print("  and removed from the custodial key file")


@keys_app.command("protect")
def keys_protect() -> None:
    """Move the private keys of clear key files into the PKCS#11 token (PKCS11_MODULE).

    Custodial signing keys are imported into the token (not extractable; they sign there),
    HPKE keys and the pseudonym key are wrapped by the token's key-encryption key; the files
    then hold only names and wrapped blobs. Run it once after configuring the token (no
    database needed); the clear bytes may still be in backups: replace those too. With
    PSEUDONYM_KEY set and no key file yet, the key file is made from it: unset PSEUDONYM_KEY.

    Example: attest-gateway keys protect   # PKCS11_MODULE and PKCS11_PIN_FILE set
    """
    settings = load_settings()
    try:
        done = admin.protect_key_files(settings)
    except admin.AdminError as exc:
        raise fail(str(exc)) from None
    for path in done.files:
        console.print(f"protected {path}")
    if done.signing_keys:
        console.print(f"  signing keys now in the token: {', '.join(done.signing_keys)}")
    if done.hpke_keys:
        console.print(f"  HPKE keys now wrapped: {', '.join(done.hpke_keys)}")
    if done.pseudonym_key is not None:
        console.print(f"pseudonym key wrapped in {done.pseudonym_key}")
        if settings.pseudonym_key is not None:
            console.print("  now unset PSEUDONYM_KEY for every gateway process")
    if not done.files and done.pseudonym_key is None:
        console.print("no key in clear: nothing to do")


@keys_app.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option(help="only this organisation's keys")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List keys (public information only): id, organisation, purpose, state, times.

    Example: attest-gateway keys list --org jc-koebenhavn
    """
    settings = load_settings()
    entries = _run(settings, lambda conn: admin.list_orgs(conn, org))
    now = SystemClock().now()
    rows: list[dict[str, Any]] = []
    for entry in entries:
        current = {k.key_id for p in admin.PURPOSES if (k := entry.current(p, now)) is not None}
        rows += [_key_row(k, current, now) for k in entry.keys]
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table(
        "key id", "organisation", "purpose", "algorithm", "state", "created", "not after", "revoked"
    )
    for r in rows:
        table.add_row(
            r["key_id"],
            r["org_id"],
            r["purpose"],
            r["algorithm"],
            r["state"],
            r["created_at"],
            r["not_after"],
            r["revoked_at"],
        )
    Console(width=200).print(table)
