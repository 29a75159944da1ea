"""`attest-client`: the partner client on the command line, for a clinic's or a job centre's
scripts. It imports the client only (argparse, no server stack), so each call starts in a
fraction of a second (bench/client_start.py). JSON in from a file or `-` (stdin), JSON out on
stdout, one sentence on stderr and exit 1 on an error.

The gateway and the credentials come from options or the environment: ATTEST_GATEWAY_URL,
ATTEST_GATEWAY_API_KEY, or ATTEST_GATEWAY_CERT and ATTEST_GATEWAY_CERT_KEY (mutual TLS), and
ATTEST_GATEWAY_CA (the CA the gateway's certificate is checked against); the person acting
from --actor (ATTEST_ACTOR) and a clinician's --actor-authorisation (ATTEST_ACTOR_AUTHORISATION)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import BaseModel

from attest_gateway.client.envelopes import (
    REPLY_KIND_CODES,
    AckCode,
    acknowledgement,
    as_envelope,
    attest_reply,
    open_envelope,
)
from attest_gateway.client.errors import GatewayProblem, NotOpened
from attest_gateway.client.http import MAX_WAIT_SECONDS, Client
from attest_gateway.contracts.directory import OrganisationKeys
from attest_gateway.crypto.sealing import OrgKeys
from attest_gateway.medcom.build import PersonName, SegmentAuthor
from attest_gateway.medcom.codes import AUTHORISED_ROLES


class Failed(Exception):
    """One sentence for stderr; exit 1."""


def _read_json(path: str) -> Any:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Failed(f"{path} is not JSON") from None


def _emit(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _client(args: argparse.Namespace) -> Client:
    if not args.gateway:
        raise Failed("give --gateway (or ATTEST_GATEWAY_URL)")
    cert = (args.cert, args.cert_key) if args.cert and args.cert_key else None
    if args.api_key is None and cert is None:
        raise Failed(
            "give --api-key (ATTEST_GATEWAY_API_KEY) or --cert and --cert-key "
            "(ATTEST_GATEWAY_CERT, ATTEST_GATEWAY_CERT_KEY)"
        )
    if args.actor_authorisation and not args.actor:
        raise Failed("--actor-authorisation belongs to a person: give --actor (ATTEST_ACTOR) too")
    try:
        return Client(
            args.gateway,
            api_key=args.api_key,
            cert=cert,
            ca=args.ca,
            gateway_org_id=args.gateway_org,
            actor=args.actor,
            actor_authorisation=args.actor_authorisation,
        )
    except OSError as exc:
        raise Failed(f"cannot read the certificate or CA file ({exc.strerror or exc})") from None


def _keys(path: str) -> OrgKeys:
    try:
        return OrgKeys.load(Path(path))
    except (OSError, ValueError, KeyError) as exc:
        raise Failed(f"cannot read the key file {path} ({type(exc).__name__})") from None


def cmd_open(args: argparse.Namespace) -> Any:
    try:
        sealed = as_envelope(_read_json(args.envelope))
    except ValueError:
        raise Failed(f"{args.envelope} holds no sealed envelope or mailbox item") from None
    keys = _keys(args.keys)
    if args.no_verify:
        signer = None
    elif args.signer_keys:
        try:
            signer = OrganisationKeys.model_validate_json(Path(args.signer_keys).read_bytes())
        except (OSError, ValueError):
            raise Failed(f"{args.signer_keys} is not a list of keys") from None
    elif args.gateway and (args.api_key or args.cert):
        with _client(args) as gw:
            signer = gw.organisation_keys(sealed.header.signer)
    else:
        raise Failed(
            "to check the sender's signature give --gateway and --api-key (or "
            "--signer-keys); --no-verify opens without checking"
        )
    try:
        return open_envelope(sealed, keys, signer, gateway_org_id=args.gateway_org)
    except NotOpened as exc:
        raise Failed(f"not opened: {exc.detail} ({exc.code})") from None


def cmd_fetch(args: argparse.Namespace) -> Any:
    with _client(args) as gw:
        mailbox = gw.mailbox(args.limit, wait=args.wait)
        if not args.open:
            return mailbox
        keys = _keys(args.open)
        opened: list[dict[str, Any]] = []
        for item in mailbox.items:
            entry: dict[str, Any] = {
                "message_id": item.message_id,
                "conversation_id": item.conversation_id,
                "message_type": item.message_type.value,
            }
            try:
                entry["bundle"] = gw.open(item.envelope, keys)
            except NotOpened as exc:
                entry["not_opened"] = {"code": exc.code, "detail": exc.detail}
            opened.append(entry)
        return {"items": opened}


def cmd_collect(args: argparse.Namespace) -> Any:
    with _client(args) as gw:
        return gw.collect(args.message_id)


def _maybe_send(args: argparse.Namespace, bundle: dict[str, Any]) -> Any:
    if not args.send:
        return bundle
    with _client(args) as gw:
        return gw.submit(bundle)


def cmd_ack(args: argparse.Namespace) -> Any:
    code: AckCode = args.code
    try:
        bundle = acknowledgement(_read_json(args.bundle), code)
    except ValueError as exc:
        raise Failed(str(exc)) from None
    return _maybe_send(args, bundle)


def cmd_reply(args: argparse.Namespace) -> Any:
    if args.kind == "attest" and args.text is None and args.pdf is None:
        raise Failed("give --text, --pdf or both")
    try:
        author = SegmentAuthor(
            name=PersonName(family=args.family, given=tuple(args.given or ())),
            phone=args.phone,
            role=AUTHORISED_ROLES[args.role],
            role_code=args.role,
            authorisation_id=args.authorisation_id,
        )
        pdf = Path(args.pdf).read_bytes() if args.pdf else None
        bundle = attest_reply(
            _read_json(args.bundle),
            author,
            text=args.text,
            pdf=pdf,
            kind=args.kind,
            suggest=args.suggest,
        )
    except (ValueError, OSError) as exc:
        raise Failed(str(exc)) from None
    return _maybe_send(args, bundle)


def cmd_submit(args: argparse.Namespace) -> Any:
    with _client(args) as gw:
        return gw.submit(_read_json(args.bundle))


def cmd_keys(args: argparse.Namespace) -> Any:
    with _client(args) as gw:
        return gw.organisation_keys(args.org_id)


def _wait_seconds(text: str) -> int:
    seconds = int(text)
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"0 to {MAX_WAIT_SECONDS} seconds, not {seconds}")
    return seconds


def cmd_inbox(args: argparse.Namespace) -> Any:
    with _client(args) as gw:
        return gw.inbox(args.limit, wait=args.wait)


def cmd_inbox_ack(args: argparse.Namespace) -> Any:
    with _client(args) as gw:
        return gw.ack(args.message_id)


def _connection(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--gateway", default=env("ATTEST_GATEWAY_URL"), help="the gateway's URL")
    parser.add_argument(
        "--api-key", default=env("ATTEST_GATEWAY_API_KEY"), help="the organisation's API key"
    )
    parser.add_argument(
        "--cert", default=env("ATTEST_GATEWAY_CERT"), help="client certificate (mutual TLS)"
    )
    parser.add_argument(
        "--cert-key", default=env("ATTEST_GATEWAY_CERT_KEY"), help="its private key file"
    )
    parser.add_argument(
        "--ca", default=env("ATTEST_GATEWAY_CA"), help="CA file for the gateway's HTTPS"
    )
    parser.add_argument(
        "--gateway-org",
        default="gateway",
        help="the gateway's organisation id (it signs for job centres)",
    )
    parser.add_argument(
        "--actor",
        default=env("ATTEST_ACTOR"),
        help="the person acting (your user id), recorded in the gateway's audit log",
    )
    parser.add_argument(
        "--actor-authorisation",
        default=env("ATTEST_ACTOR_AUTHORISATION"),
        help="the acting clinician's autorisations-ID (with --actor)",
    )


def _send_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--send", action="store_true", help="submit it and print the gateway's answer"
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="attest-client",
        description="The attest gateway's partner client: open envelopes, build and send "
        "MedCom answers, read the mailbox and the inbox.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.Namespace], Any]]] = [
        ("open", "check an envelope's signature, open it, print the FHIR Bundle", cmd_open),
        ("fetch", "print the mailbox (sealed; --open KEYS: opened and checked)", cmd_fetch),
        ("collect", "mark a mailbox message collected", cmd_collect),
        ("ack", "build the MedCom acknowledgement of a received Bundle", cmd_ack),
        ("reply", "build the attest reply to a request Bundle", cmd_reply),
        ("submit", "send a Bundle (acknowledgement or attest reply)", cmd_submit),
        ("keys", "print an organisation's published keys", cmd_keys),
        ("inbox", "job centre: print the inbox (replies as JSON)", cmd_inbox),
        ("inbox-ack", "job centre: acknowledge a reply of the inbox", cmd_inbox_ack),
    ]
    subs = {}
    for name, text, run in commands:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(run=run)
        _connection(p)
        subs[name] = p
    subs["open"].add_argument("envelope", help="sealed envelope or mailbox item; - for stdin")
    subs["open"].add_argument("--keys", required=True, help="the organisation's private key file")
    subs["open"].add_argument(
        "--signer-keys",
        help="instead of --gateway: the signer's keys, as GET "
        "/directory/v1/organisations/{id}/keys answers them",
    )
    subs["open"].add_argument(
        "--no-verify", action="store_true", help="open without checking the signature"
    )
    subs["fetch"].add_argument("--limit", type=int, default=100, help="at most this many")
    subs["fetch"].add_argument("--open", metavar="KEYS", help="open each with this key file")
    subs["inbox"].add_argument("--limit", type=int, default=50, help="at most this many")
    for name in ("fetch", "inbox"):
        subs[name].add_argument(
            "--wait",
            type=_wait_seconds,
            default=0,
            metavar="SECONDS",
            help="when nothing waits, wait up to this many seconds (0-30) for something",
        )
    subs["collect"].add_argument("message_id")
    subs["ack"].add_argument("bundle", help="the received Bundle; - for stdin")
    subs["ack"].add_argument(
        "--code", choices=["ok", "transient-error", "fatal-error"], default="ok"
    )
    _send_option(subs["ack"])
    reply = subs["reply"]
    reply.add_argument("bundle", help="the attest request Bundle; - for stdin")
    reply.add_argument("--family", required=True, help="the clinician's family name")
    reply.add_argument("--given", action="append", help="a given name (repeat for more)")
    reply.add_argument("--authorisation-id", required=True, help="autorisations-ID (5 characters)")
    reply.add_argument("--phone", required=True, help="the clinician's phone")
    reply.add_argument("--role", choices=sorted(AUTHORISED_ROLES), default="laege")
    reply.add_argument("--text", help="the attest text (with cannot-answer: why)")
    reply.add_argument("--pdf", help="a PDF file to attach (only with --kind attest)")
    reply.add_argument(
        "--kind",
        choices=REPLY_KIND_CODES,
        default="attest",
        help="attest (default); or an answer without it: not-in-treatment, wrong-form, "
        "cannot-answer (needs --text)",
    )
    reply.add_argument("--suggest", help="with --kind wrong-form: the LÆ form to ask for")
    _send_option(reply)
    subs["submit"].add_argument("bundle", help="the Bundle to send; - for stdin")
    subs["keys"].add_argument("org_id")
    subs["inbox-ack"].add_argument("message_id")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        _emit(args.run(args))
    except Failed as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except GatewayProblem as exc:
        sys.stderr.write(f"error: the gateway answered {exc.status} {exc.code}: {exc.detail}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: {exc.strerror or exc}\n")
        return 1
    except httpx.HTTPError as exc:
        sys.stderr.write(f"error: cannot reach the gateway ({type(exc).__name__})\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
