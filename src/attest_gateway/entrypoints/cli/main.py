"""The `attest-gateway` command: serve, migrate, demo, and a small MedCom client toolbox."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import ssl
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal

import httpx
import orjson
import typer
import uvicorn
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from attest_gateway.bootstrap import database, refuse_audit_rewrites, release_long_polls
from attest_gateway.client.envelopes import (
    REPLY_KIND_CODES,
    acknowledgement,
    as_envelope,
    attest_reply,
    open_envelope,
)
from attest_gateway.client.errors import GatewayProblem, NotOpened
from attest_gateway.client.http import Client as PartnerClient
from attest_gateway.config import Settings, custodial_keys_dir, load_settings
from attest_gateway.contracts.directory import OrganisationKeys
from attest_gateway.core.clock import SystemClock
from attest_gateway.crypto.sealing import KeyRing, KeyStoreError, OrgKeys
from attest_gateway.entrypoints.cli import admin as cli_admin
from attest_gateway.entrypoints.cli import audit as cli_audit
from attest_gateway.entrypoints.cli import citizen as cli_citizen
from attest_gateway.entrypoints.cli import db as cli_db
from attest_gateway.entrypoints.cli import ops as cli_ops
from attest_gateway.entrypoints.cli import pseudonyms as cli_pseudonyms
from attest_gateway.entrypoints.cli import retention as cli_retention
from attest_gateway.entrypoints.cli import tracker as tracker_cli
from attest_gateway.entrypoints.cli import webhooks as cli_webhooks
from attest_gateway.entrypoints.http.app import create_app
from attest_gateway.entrypoints.http.mtls import PROTOCOL, ensure_development_tls
from attest_gateway.entrypoints.http.proxy_protocol import ProxyProtocolServer
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db.migrate import upgrade
from attest_gateway.infra.kafka.dead_letters import read_dead_letters, replay
from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from attest_gateway.infra.kafka.reading import KafkaReadTimeout, TopicMissing
from attest_gateway.infra.keys import open_key_store
from attest_gateway.medcom.build import (
    PersonName,
    SegmentAuthor,
)
from attest_gateway.medcom.codes import AUTHORISED_ROLES
from attest_gateway.observability.logging import configure_logging

app = typer.Typer(
    help="attest gateway: sealed MedCom-like messaging between job centres and the health sector.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
client = typer.Typer(help="Tools for a psychiatry or GP system: open envelopes, build replies.")
app.add_typer(client, name="client")
console = Console(stderr=True)


class ServeRole(StrEnum):
    ALL = "all"
    API = "api"
    WORKER = "worker"


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


async def _refuse_audit_rewrites(settings: Settings) -> None:
    """Production: `UnsafeSettings` (printed by run_cli) before anything starts when the
    database role may rewrite the audit log; the lifespan checks again (bootstrap.py)."""
    if settings.environment != "production":
        return
    async with database(settings) as engine:
        await refuse_audit_rewrites(settings, engine)


@app.command()
def migrate() -> None:
    """Bring the database to the newest schema, as the owner role (DATABASE_OWNER_URL, else
    DATABASE_URL); then `attest-gateway db grant` gives the gateway's role what it needs.

    Example: DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/test attest-gateway migrate
    """
    settings = load_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_owner_database_url)
    console.print("database is at the newest schema")


def _refuse_unopened_keys(settings: Settings) -> None:
    """`serve`: the key store opens (with a token: the library, label and PIN) and every key
    file's keys open with it; else one sentence, exit 2."""
    try:
        KeyRing.load_dir(custodial_keys_dir(settings), open_key_store(settings))
    except KeyStoreError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: API_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: API_PORT or 8000")] = None,
    consumers: Annotated[bool, typer.Option(help="run the Kafka consumers here")] = True,
    role: Annotated[
        ServeRole,
        typer.Option(
            help="all: API + relay + consumers; api: the partner API and the relay (run "
            "several behind a load balancer); worker: relay + consumers, with only /healthz, "
            "/readyz and /metrics on the port. api and worker need KAFKA_BOOTSTRAP_SERVERS."
        ),
    ] = ServeRole.ALL,
    dev_tls: Annotated[
        bool,
        typer.Option(
            "--dev-tls",
            help="development: HTTPS with a local CA under VAR_DIR/tls, and a client "
            "certificate per demo organisation for mutual TLS (make run uses it)",
        ),
    ] = False,
) -> None:
    """Start the gateway (all of it by default, or one role of it).

    Embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set), migrations, demo organisations
    (development), the API and the consumers. Ctrl-C or SIGTERM stops all.

    Example: attest-gateway serve --port 8000
    Example: attest-gateway serve --dev-tls       # https://localhost:8000, mTLS (make run)
    Example: attest-gateway serve --role api      # API replica (production: behind HAProxy)
    Example: attest-gateway serve --role worker   # consumers, relay, sweeper; /readyz, /metrics
    """
    settings = load_settings()
    configure_logging(settings.log_level, cli_ops.log_format(settings))
    cli_ops.refuse_unsafe(settings)  # production: one sentence per unsafe setting, exit 2
    if role is not ServeRole.ALL and not settings.kafka_bootstrap_servers:
        raise _fail(
            f"--role {role.value} needs KAFKA_BOOTSTRAP_SERVERS: separate processes share one "
            "broker (attest-gateway broker starts the embedded one alone)"
        )
    if settings.proxy_protocol and not settings.trusted_proxy_networks:
        raise _fail("PROXY_PROTOCOL=true needs TRUSTED_PROXIES: the proxies whose headers to read")
    if dev_tls and settings.environment == "production":
        raise _fail("--dev-tls is for development: production uses API_TLS_* certificates")
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | None = None
    if settings.kafka_bootstrap_servers:
        bootstrap = settings.kafka_bootstrap_servers
    else:
        broker = EmbeddedBroker(log_path=settings.var_dir / "broker.log").start()
        bootstrap = broker.bootstrap
        console.print(f"embedded broker (Tansu) on {bootstrap}, pid {broker.pid}")
    try:
        upgrade(settings.effective_database_url)
        _refuse_unopened_keys(settings)  # the token: label, PIN, wrapped keys; one sentence
        asyncio.run(_refuse_audit_rewrites(settings))  # production: one sentence, exit 2
        cli_pseudonyms.refuse_key_mismatch(settings)  # one sentence, exit 2
        creds = asyncio.run(cli_ops.ensure_organisations(settings))
        if dev_tls:
            settings = settings.model_copy(update=asyncio.run(_development_tls(settings)))
            console.print(
                f"development CA {settings.api_tls_client_cafile}: trust it, or use the demo "
                "organisations' client certificates listed in the credentials file"
            )
        if creds is not None:
            console.print(f"demo organisations, API keys and key files: [bold]{creds}[/bold]")
        config = uvicorn.Config(
            create_app(
                settings,
                bootstrap,
                run_consumers=consumers and role is not ServeRole.API,
                api_routes=role is not ServeRole.WORKER,
                freeze_heap=True,
            ),
            host=host or settings.api_host,
            port=port or settings.api_port,
            ssl_certfile=settings.api_tls_certfile,
            ssl_keyfile=settings.api_tls_keyfile,
            **_client_certificate_options(settings),
            log_config=None,
            access_log=False,
            lifespan="on",
            date_header=False,  # the app's, from the gateway's clock (DateHeaderMiddleware)
            # The client's address comes from TRUSTED_PROXIES only (the app's
            # ForwardedForMiddleware; the PROXY protocol below), never from uvicorn's
            # default trust in any X-Forwarded-For from loopback.
            proxy_headers=False,
            forwarded_allow_ips=[],
        )
        server: uvicorn.Server = (
            _ProxyProtocolServer(config, settings.trusted_proxy_networks)
            if settings.proxy_protocol
            else _Server(config)
        )
        scheme = "https" if settings.api_tls_certfile else "http"
        what = "operations port" if role is ServeRole.WORKER else "API"
        console.print(
            f"{what} on {scheme}://{host or settings.api_host}:{port or settings.api_port}"
        )
        server.run()
        if not server.started:
            raise _fail("the API server did not start (is the port in use?)")
    finally:
        if broker is not None:
            broker.stop()


@app.command()
def broker(
    port: Annotated[int | None, typer.Option(help="default: a free loopback port")] = None,
) -> None:
    """Run the embedded Kafka-compatible broker alone (for several gateway processes).

    Example: attest-gateway broker --port 19092   # then KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092
    """
    stop = asyncio.Event()

    async def wait_for_signal() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    with EmbeddedBroker(port=port) as running:
        sys.stdout.write(f"{running.bootstrap}\n")
        sys.stdout.flush()
        console.print(f"embedded broker (Tansu) on {running.bootstrap}, pid {running.pid}")
        asyncio.run(wait_for_signal())


dead_letters = typer.Typer(help="Inspect and re-drive the dead-letter topic.")
app.add_typer(dead_letters, name="dead-letters")


def _run_kafka(settings: Settings, work: Any) -> Any:
    """Run a Kafka coroutine for a command; a broker we cannot reach is one clear error."""
    try:
        return asyncio.run(work)
    except (KafkaReadTimeout, TopicMissing) as exc:
        raise _fail(f"{exc.detail} (Kafka at {settings.kafka_bootstrap_servers})") from None
    except (KafkaError, OSError, asyncio.CancelledError):
        raise _fail(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}") from None


def _bootstrap_or_fail(settings: Settings) -> str:
    if not settings.kafka_bootstrap_servers:
        raise _fail("set KAFKA_BOOTSTRAP_SERVERS to the broker the gateway uses")
    return settings.kafka_bootstrap_servers


@dead_letters.command("list")
def dead_letters_list(
    reason: Annotated[str | None, typer.Option(help="only this dlq-reason")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List dead letters: id (partition:offset), reason, source, size. Never the content.

    Example: attest-gateway dead-letters list --reason signature-invalid
    """
    settings = load_settings()
    letters = _run_kafka(settings, read_dead_letters(settings, _bootstrap_or_fail(settings)))
    rows = [d.summary() for d in letters if reason is None or d.header("dlq-reason") == reason]
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table("id", "reason", "source", "message type", "message id", "size")
    for row in rows:
        table.add_row(
            row["id"], row["reason"], row["source"], row["message_type"] or "-",
            row["message_id"] or "-", str(row["size"]),
        )  # fmt: skip
    Console().print(table)


@dead_letters.command("show")
def dead_letters_show(
    letter_id: Annotated[str, typer.Argument(help="partition:offset, from `list`")],
) -> None:
    """Show one dead letter's headers and, for a sealed envelope, its clear routing header.

    Example: attest-gateway dead-letters show 3:17
    """
    settings = load_settings()
    letters = _run_kafka(settings, read_dead_letters(settings, _bootstrap_or_fail(settings)))
    found = next((d for d in letters if d.id == letter_id), None)
    if found is None:
        raise _fail(f"no dead letter {letter_id}")
    _emit(
        found.summary() | {"headers": {k: v.decode("utf-8", "replace") for k, v in found.headers}}
    )


@dead_letters.command("replay")
def dead_letters_replay(
    letter_ids: Annotated[list[str] | None, typer.Argument(help="partition:offset ids")] = None,
    reason: Annotated[
        str | None, typer.Option(help="replay every dead letter with this reason")
    ] = None,
) -> None:
    """Send dead letters back to their source topic (after fixing what made them fail).
    Idempotent: consumers store each message id once.

    Example: attest-gateway dead-letters replay --reason unknown-receiver
    """
    if not letter_ids and reason is None:
        raise _fail("name dead letters by id or choose them with --reason")
    settings = load_settings()
    bootstrap = _bootstrap_or_fail(settings)
    letters = _run_kafka(settings, read_dead_letters(settings, bootstrap))
    chosen = [
        d for d in letters
        if (letter_ids and d.id in letter_ids) or (reason and d.header("dlq-reason") == reason)
    ]  # fmt: skip
    missing = set(letter_ids or ()) - {d.id for d in chosen}
    if missing:
        raise _fail(f"no dead letter {', '.join(sorted(missing))}")
    count = _run_kafka(settings, replay(settings, bootstrap, chosen))
    console.print(f"replayed {count} dead letter(s)")


async def _development_tls(settings: Settings) -> dict[str, Path]:
    async with database(settings) as engine:
        return await ensure_development_tls(engine, settings)


def _client_certificate_options(settings: Settings) -> dict[str, Any]:
    """Mutual TLS: ask for a client certificate (optional: API keys still work), verify it
    against API_TLS_CLIENT_CAFILE, and hand it to the app (mtls.PROTOCOL)."""
    if settings.api_tls_certfile is None or settings.api_tls_client_cafile is None:
        return {}
    return {
        "ssl_ca_certs": str(settings.api_tls_client_cafile),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "http": PROTOCOL,
    }


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would kill the
    process before the embedded broker is stopped; here the signal only asks to exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn waits for open requests before the lifespan ends: release the long-polls
        # now, so that they answer within one check instead of after their `wait`
        gw = getattr(getattr(self.config.app, "state", None), "gateway", None)
        if isinstance(gw, Gateway):
            release_long_polls(gw)
        super().handle_exit(sig, frame)


class _ProxyProtocolServer(_Server, ProxyProtocolServer):
    """`serve` with PROXY_PROTOCOL=true: reads the PROXY headers of TRUSTED_PROXIES."""


def _read_json(path: str) -> Any:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _fail(f"{path} is not JSON") from None


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@client.command("open")
def client_open(
    envelope: Annotated[
        str, typer.Argument(help="file with a sealed envelope or mailbox item; - for stdin")
    ],
    keys: Annotated[Path, typer.Option(help="the organisation's private key file")],
    gateway: Annotated[
        str | None,
        typer.Option(
            envvar="ATTEST_GATEWAY_URL",
            help="the gateway's URL: the signer's keys are fetched from its directory",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="ATTEST_GATEWAY_API_KEY", help="the organisation's API key"),
    ] = None,
    cacert: Annotated[
        Path | None, typer.Option(help="CA file to trust for the gateway's HTTPS")
    ] = None,
    signer_keys: Annotated[
        Path | None,
        typer.Option(
            help="instead of --gateway: a file with the signer's keys, as "
            "GET /directory/v1/organisations/{id}/keys answers"
        ),
    ] = None,
    gateway_org: Annotated[
        str, typer.Option(help="the gateway's organisation id (it signs for job centres)")
    ] = "gateway",
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="open without checking the sender's signature"),
    ] = False,
) -> None:
    """Check the envelope's signature against the directory (the signer's published keys),
    then open it with the organisation's private key; print the FHIR Bundle.

    Example: attest-gateway client open item.json --keys var/keys/clients/psyk-kbh.json
    --gateway https://localhost:8000 --api-key "$PSY" --cacert var/tls/ca.crt
    """
    try:
        sealed = as_envelope(_read_json(envelope))
        org_keys = OrgKeys.load(keys)
    except (ValueError, OSError) as exc:
        raise _fail(f"cannot read the envelope or the key file ({type(exc).__name__})") from None
    published = None
    if not no_verify:
        published = _signer_keys(sealed.header.signer, gateway, api_key, cacert, signer_keys)
    try:
        _emit(open_envelope(sealed, org_keys, published, gateway_org_id=gateway_org))
    except NotOpened as exc:
        raise _fail(f"not opened: {exc.detail} ({exc.code})") from None


def _signer_keys(
    signer: str,
    gateway: str | None,
    api_key: str | None,
    cacert: Path | None,
    from_file: Path | None,
) -> OrganisationKeys:
    """The signer's published keys: from a file, or fetched from the gateway's directory."""
    if from_file is not None:
        try:
            return OrganisationKeys.model_validate_json(from_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read the signer's keys ({type(exc).__name__})") from None
    if gateway is None or api_key is None:
        raise _fail(
            "to check the sender's signature give --gateway and --api-key (or "
            "--signer-keys); --no-verify opens without checking"
        )
    try:
        with PartnerClient(gateway, api_key=api_key, ca=cacert) as partner:
            return partner.organisation_keys(signer)
    except GatewayProblem as exc:
        raise _fail(f"the directory answered {exc.status} for the signer's keys") from None
    except (OSError, httpx.HTTPError, ValueError) as exc:
        raise _fail(f"cannot read the signer's keys ({type(exc).__name__})") from None


def _now() -> dt.datetime:
    return SystemClock().now()


@client.command("ack")
def client_ack(
    bundle: Annotated[str, typer.Argument(help="file with the received Bundle; - for stdin")],
    code: Annotated[str, typer.Option(help="ok | transient-error | fatal-error")] = "ok",
) -> None:
    """Build the MedCom acknowledgement of a received Bundle (print it).

    Example: attest-gateway client ack request.json --code ok > ack.json
    """
    if code not in ("ok", "transient-error", "fatal-error"):
        raise _fail("code must be ok, transient-error or fatal-error")
    ack_code: Literal["ok", "transient-error", "fatal-error"] = code  # type: ignore[assignment]
    try:
        _emit(acknowledgement(_read_json(bundle), ack_code, at=_now()))
    except ValueError as exc:
        raise _fail(str(exc)) from None


@client.command("reply")
def client_reply(
    bundle: Annotated[str, typer.Argument(help="file with the attest request Bundle; - for stdin")],
    family: Annotated[str, typer.Option(help="the clinician's family name")],
    authorisation_id: Annotated[
        str, typer.Option(help="the clinician's autorisations-ID (5 characters)")
    ],
    phone: Annotated[str, typer.Option(help="the clinician's phone (digits, optional '+')")],
    given: Annotated[
        list[str] | None, typer.Option(help="a given name of the clinician (repeat for more)")
    ] = None,
    role: Annotated[
        str, typer.Option(help="the clinician's role, a MedCom code: laege, sygeplejerske …")
    ] = "laege",
    text: Annotated[str | None, typer.Option(help="the attest text (cannot-answer: why)")] = None,
    pdf: Annotated[Path | None, typer.Option(help="a PDF file to attach")] = None,
    kind: Annotated[
        str,
        typer.Option(
            help="attest; or an answer without it: not-in-treatment, wrong-form, cannot-answer"
        ),
    ] = "attest",
    suggest: Annotated[
        str | None, typer.Option(help="with --kind wrong-form: the LÆ form to ask for")
    ] = None,
) -> None:
    """Build the reply to a request Bundle (print it), written by the clinician named.

    Example: attest-gateway client reply request.json --family Holm --given Mette
    --authorisation-id 0C4B1 --phone +4578470000 --text "..." --pdf attest.pdf > reply.json
    """
    if kind not in REPLY_KIND_CODES:
        raise _fail(f"--kind is one of {', '.join(REPLY_KIND_CODES)}")
    if kind == "attest" and text is None and pdf is None:
        raise _fail("give --text, --pdf or both")
    if role not in AUTHORISED_ROLES:
        raise _fail(f"--role is one of {', '.join(sorted(AUTHORISED_ROLES))}")
    try:
        author = SegmentAuthor(
            name=PersonName(family=family, given=tuple(given or ())),
            phone=phone,
            role=AUTHORISED_ROLES[role],
            role_code=role,
            authorisation_id=authorisation_id,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        _emit(
            attest_reply(
                _read_json(bundle),
                author,
                text=text,
                pdf=pdf.read_bytes() if pdf else None,
                at=_now(),
                kind=kind,
                suggest=suggest,
            )
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    cli_ops.run_cli(app, console)


cli_ops.register(app)  # setup, config, healthcheck, contracts
tracker_cli.register(app)  # simulate, report, coverage-rebuild
cli_audit.register(app)  # audit verify, list
cli_admin.register(app)  # orgs add|list|disable, keys generate|add|rotate|revoke|retire|list
cli_pseudonyms.register(app)  # pseudonyms status, rekey
cli_retention.register(app)  # prune
cli_db.register(app)  # db grant, privileges
cli_webhooks.register(app)  # webhooks add|list|remove|rotate
cli_citizen.register(app)  # citizen export
