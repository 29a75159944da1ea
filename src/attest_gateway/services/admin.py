"""Directory administration: organisations and their keys, as the operator changes them.

Every change is an async function on an `AsyncConnection` (the caller owns the transaction),
takes the `actor` and `source` of the change, writes an audit entry at the point of change and
returns what changed. The CLI (`attest-gateway orgs|keys`, entrypoints/cli/admin.py) and the demo
organisations of `make run` (devtools/demo.py) both go through here.

The key lifecycle:

- **generate / rotate**: a new key pair. A custodial organisation's private half (job centres,
  the gateway itself) is appended to its key file under `KEYS_DIR/custodial/` (with a token,
  PKCS11_MODULE: the signing key made in the token and only named in the file, the HPKE key
  wrapped by the token's key-encryption key; docs/keys.md) *before* the
  public half enters the directory, so the gateway can open whatever is sealed to the new key
  the moment it is used; the older keys stay in the file, so old mail still opens. Any other
  organisation makes its own keys (`keys generate --out`, no database) and the operator
  registers the public halves (`register_public_keys`); in development the gateway may write
  the private file for it (`private_out`). New mail is sealed to the newest usable key.
- **retire**: `not_after = now`. The key is no longer used or accepted; a custodial private
  key is removed from the key file, so mail still sealed to it can no longer be opened.
- **revoke**: `revoked_at = now`, for a compromised key. A revoked signing key is refused at
  once everywhere (delivery, API submissions); a revoked HPKE key is never sealed to again (a
  custodial one stays in the key file: what was sealed to it is opened as before). A revoked
  custodial signing key leaves the key file: the gateway must never sign with it again.

Running gateways see key-file changes without a restart (`crypto.KeyRing.refresh`), and
directory changes at once (triggers renew the directory's generation token; see
infra/db/directory.py). Every write to `organisations` or `org_keys` here goes through
`directory.execute_write`, so that the rest of its transaction reads the directory directly.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic_core import PydanticCustomError
from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.config import (
    Settings,
    custodial_keys_dir,
    pseudonym_key_file,
    staged_key_file,
)
from attest_gateway.contracts.envelope import Suite
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.directory import (
    HEALTH_ROLES,
    MessageFormat,
    Organisation,
    Role,
    hash_api_key,
    new_api_key,
)
from attest_gateway.core.errors import EnvelopeRejected, ErrorCode, InvalidInput
from attest_gateway.core.identifiers import (
    check_gln,
    check_kommunekode,
    check_sor,
    check_ydernummer,
    municipalities,
)
from attest_gateway.crypto.pseudonyms import KEY_FILE_CONTEXT
from attest_gateway.crypto.sealing import (
    CLEAR_FILES,
    KeyStore,
    KeyStoreError,
    OrgKeys,
    PrivateHpkeKey,
    PublicHpkeKey,
    decode_verify_key,
    is_wrapped,
    raise_if_unknown_suite,
    secret_file_text,
)
from attest_gateway.infra.db import audit, directory
from attest_gateway.infra.db.tables import org_keys, organisations
from attest_gateway.infra.kafka.topics import Topics
from attest_gateway.infra.keys import open_key_store
from attest_gateway.production import is_development_certificate

Purpose = Literal["hpke", "signing"]
PURPOSES: tuple[Purpose, ...] = ("hpke", "signing")
PUBLIC_FILE_FORMAT = "attest-gateway/public-keys/v1"

_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class AdminError(InvalidInput):
    """A refused change; the message is one sentence for the operator (what the CLI prints:
    `str()` is the message alone)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_REQUEST, message)
        self.args = (message,)


# --- what the functions return ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One row of `org_keys` (public information only)."""

    key_id: str
    org_id: str
    purpose: str
    algorithm: str
    created_at: dt.datetime
    not_after: dt.datetime | None
    revoked_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Any) -> KeyInfo:
        return cls(
            key_id=row.key_id,
            org_id=row.org_id,
            purpose=row.purpose,
            algorithm=row.algorithm,
            created_at=_aware(row.created_at),
            not_after=_aware(row.not_after) if row.not_after is not None else None,
            revoked_at=_aware(row.revoked_at) if row.revoked_at is not None else None,
        )

    def usable(self, at: dt.datetime) -> bool:
        if self.revoked_at is not None and self.revoked_at <= at:
            return False
        return self.not_after is None or at < self.not_after

    def state(self, at: dt.datetime) -> str:
        if self.revoked_at is not None and self.revoked_at <= at:
            return "revoked"
        if self.not_after is not None and self.not_after <= at:
            return "retired"
        return "usable"


@dataclass(frozen=True, slots=True)
class OrgEntry:
    org: Organisation
    keys: list[KeyInfo]

    def current(self, purpose: str, at: dt.datetime) -> KeyInfo | None:
        """The newest usable key of a purpose (new mail is sealed to / signed with it)."""
        return _newest_usable(self.keys, purpose, at)


@dataclass(frozen=True, slots=True)
class AddedOrg:
    org: Organisation
    api_key: str | None  # shown once; only its hash is stored
    keys: list[KeyInfo]
    private_file: Path | None  # where the private halves went, if the gateway made them


@dataclass(frozen=True, slots=True)
class OrgChange:
    org: Organisation
    changed: bool


@dataclass(frozen=True, slots=True)
class NewKeys:
    org_id: str
    keys: list[KeyInfo]
    replaced: dict[str, str]  # purpose → the key id that was current before
    private_file: Path | None


@dataclass(frozen=True, slots=True)
class KeyChange:
    key: KeyInfo  # as it is after the change
    changed: bool  # False: it was revoked / retired already
    removed_from_key_file: bool


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: str
    purpose: Purpose
    algorithm: str  # the HPKE suite, or "Ed25519"
    public_key: str  # base64, as in the directory


@dataclass(frozen=True, slots=True)
class PublicKeySet:
    """The public halves an organisation hands to the operator (`keys generate --out`)."""

    org_id: str
    keys: list[PublicKey]

    @classmethod
    def of(cls, keys: OrgKeys) -> PublicKeySet:
        return cls(
            keys.org_id,
            [PublicKey(h.key_id, "hpke", h.suite, h.public_encoded) for h in keys.hpke_keys]
            + [
                PublicKey(s.key_id, "signing", "Ed25519", s.public_encoded)
                for s in keys.signing_keys
            ],
        )

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "format": PUBLIC_FILE_FORMAT,
                "org_id": self.org_id,
                "keys": [
                    {
                        "key_id": k.key_id,
                        "purpose": k.purpose,
                        "algorithm": k.algorithm,
                        "public_key": k.public_key,
                    }
                    for k in self.keys
                ],
            },
            option=orjson.OPT_INDENT_2,
        ).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> PublicKeySet:
        """Parse and check a public-keys file: every key decodes, ids are well-formed."""
        try:
            data = orjson.loads(text)
            if data.get("format") != PUBLIC_FILE_FORMAT:
                raise AdminError(f"the file is not a public-keys file ({PUBLIC_FILE_FORMAT})")
            keys = [_public_key(rec) for rec in data["keys"]]
            org_id = str(data["org_id"])
        except AdminError:
            raise
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            raise AdminError("the public-keys file is not JSON of the expected shape") from None
        if not keys:
            raise AdminError("the public-keys file holds no keys")
        return cls(org_id, keys)


def _public_key(rec: dict[str, Any]) -> PublicKey:
    key_id, purpose, algorithm, encoded = (
        str(rec["key_id"]),
        rec["purpose"],
        str(rec["algorithm"]),
        str(rec["public_key"]),
    )
    _check_key_id(key_id)
    try:
        if purpose == "hpke":
            raise_if_unknown_suite(algorithm)
            suite: Suite = algorithm  # type: ignore[assignment]
            PublicHpkeKey.decode(key_id, suite, encoded)
        elif purpose == "signing":
            if algorithm != "Ed25519":
                raise AdminError(f"signing key {key_id} must be Ed25519")
            decode_verify_key(encoded)
        else:
            raise AdminError(f"key {key_id} has an unknown purpose (hpke or signing)")
    except EnvelopeRejected:
        raise AdminError(f"key {key_id} names an unsupported HPKE suite") from None
    except ValueError:  # bad base64 or a wrong key length
        raise AdminError(f"key {key_id} is not a valid {purpose} public key") from None
    return PublicKey(key_id, purpose, algorithm, encoded)


# --- checks ----------------------------------------------------------------------------------


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _check_key_id(key_id: str) -> None:
    if not _KEY_ID.match(key_id):
        raise AdminError(f"{key_id!r} is not a valid key id (letters, digits, . _ : -, ≤ 64)")


def _identifier(label: str, value: str | None, check: Callable[[str], str]) -> str | None:
    if value is None:
        return None
    try:
        return check(value)
    except PydanticCustomError as exc:
        raise AdminError(f"{label} {value!r} is not valid: {exc.message()}") from None


def check_webhook_url(url: str, settings: Settings) -> str:
    """https, or http to a loopback address in development."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http") or len(url) > 500:
        raise AdminError(f"webhook URL {url!r} is not an absolute http(s) URL")
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback or settings.environment == "production":
            raise AdminError("a webhook URL must use https (http only to localhost in development)")
    if parts.username or parts.password:
        raise AdminError("a webhook URL must not carry credentials")
    return url


def checked_organisation(org: Organisation, settings: Settings) -> Organisation:
    """The organisation with valid identifiers and a region (from its municipality if not
    given); raises AdminError naming the first problem."""
    if not _ORG_ID.match(org.id):
        raise AdminError(
            f"{org.id!r} is not a valid organisation id (lower-case letters, digits, . _ -)"
        )
    if not org.name.strip() or len(org.name) > 200:
        raise AdminError("the organisation name must be 1 to 200 characters")
    sor = _identifier("SOR code", org.sor, check_sor)
    gln = _identifier("GLN", org.gln, check_gln)
    kommunekode = _identifier("kommunekode", org.kommunekode, check_kommunekode)
    ydernummer = _identifier("ydernummer", org.ydernummer, check_ydernummer)
    region = org.region_code
    regions = {m.region_code for m in municipalities().values()}
    if region is not None and region not in regions:
        raise AdminError(f"region {region!r} is not one of {', '.join(sorted(regions))}")
    if kommunekode is not None:
        own = municipalities()[kommunekode].region_code
        if region is not None and region != own:
            raise AdminError(f"kommunekode {kommunekode} lies in region {own}, not {region}")
        region = own
    # Every party of a MedCom message is named by its SOR code and GLN (medcom/).
    if org.role is Role.JOBCENTER and (kommunekode is None or gln is None or sor is None):
        raise AdminError("a job centre needs --kommunekode, --gln and --sor")
    if org.role in HEALTH_ROLES and (sor is None or gln is None):
        raise AdminError(f"a {org.role.value} organisation needs --sor and --gln")
    if org.role is Role.REGION_ANALYST and (region is None or kommunekode is not None):
        raise AdminError("a region's analysts need --region (and no --kommunekode)")
    if org.role is Role.MUNICIPALITY_ANALYST and kommunekode is None:
        raise AdminError("a municipality's analysts need --kommunekode")
    if org.role is Role.OPERATOR and org.id != settings.gateway_org_id:
        raise AdminError(
            f"only the gateway's own organisation ({settings.gateway_org_id}) has the operator role"
        )
    if org.custodial and org.message_format is not MessageFormat.JSON:
        raise AdminError(_CUSTODIAL_FORMAT)
    webhook = check_webhook_url(org.webhook_url, settings) if org.webhook_url else None
    return replace(
        org,
        sor=sor,
        gln=gln,
        kommunekode=kommunekode,
        ydernummer=ydernummer,
        region_code=region,
        webhook_url=webhook,
    )


# --- key files -------------------------------------------------------------------------------


def custodial_key_file(settings: Settings, org_id: str) -> Path:
    return custodial_keys_dir(settings) / f"{org_id}.json"


def _key_store(settings: Settings) -> KeyStore:
    """Where custodial private keys rest (PKCS11_MODULE: the token), as an AdminError."""
    try:
        return open_key_store(settings)
    except KeyStoreError as exc:
        raise AdminError(str(exc)) from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the key files in one directory between processes (two
    operators at once). The lock is on the directory: a key file is replaced, not rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_to_key_file(path: Path, new: OrgKeys, store: KeyStore = CLEAR_FILES) -> None:
    """Add keys to an organisation's key file (created if absent); older keys stay. With a
    token the file holds the HPKE keys wrapped and the signing keys by name."""
    with _locked(path):
        if path.exists():
            held = OrgKeys.load(path, store)
            if held.org_id != new.org_id:
                raise AdminError(f"{path} holds the keys of {held.org_id}, not {new.org_id}")
        else:
            held = OrgKeys(new.org_id, [], [])
        held.hpke_keys.extend(new.hpke_keys)
        held.signing_keys.extend(new.signing_keys)
        held.save(path, store)


def _remove_from_key_file(path: Path, key_id: str, store: KeyStore) -> bool:
    """Take a key out of the key file; a signing key in a token is destroyed there too (after
    the file no longer names it, so no gateway looks for it)."""
    with _locked(path):
        if not path.exists():
            return False
        held = OrgKeys.load(path, store)
        hpke = [k for k in held.hpke_keys if k.key_id != key_id]
        signing = [k for k in held.signing_keys if k.key_id != key_id]
        if len(hpke) == len(held.hpke_keys) and len(signing) == len(held.signing_keys):
            return False
        OrgKeys(held.org_id, hpke, signing).save(path, store)
        if len(signing) != len(held.signing_keys):
            store.forget_signing_key(key_id)
        return True


def _held_signing_ids(path: Path, store: KeyStore) -> set[str]:
    return {k.key_id for k in OrgKeys.load(path, store).signing_keys} if path.exists() else set()


@dataclass(frozen=True, slots=True)
class Protected:
    """What `protect_key_files` moved into the token."""

    signing_keys: list[str]
    hpke_keys: list[str]
    files: list[Path]
    pseudonym_key: Path | None


def protect_key_files(settings: Settings) -> Protected:
    """Move the private keys of clear key files into the configured token: each signing key
    is imported into the token (not extractable) and named in the file, each HPKE key and the
    pseudonym key (its file, or PSEUDONYM_KEY when no file exists yet) are wrapped by the
    token's key-encryption key. Files already protected stay as they are. The clear bytes are
    overwritten by the rewrite, not erased from backups or the disk's free blocks."""
    store = _key_store(settings)
    if store.in_clear:
        raise AdminError("PKCS11_MODULE is not set: there is no token to move the keys into")
    signing: list[str] = []
    hpke: list[str] = []
    files: list[Path] = []
    directory = custodial_keys_dir(settings)
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        with _locked(path):
            text = path.read_text(encoding="utf-8")
            records = orjson.loads(text).get("keys", [])
            clear_hpke = [r["key_id"] for r in records if "x25519" in r]
            newly = [r["key_id"] for r in records if "ed25519" in r]
            if not newly and not clear_hpke:
                continue
            try:
                held = OrgKeys.from_json(text, store)
                moved = [
                    store.import_signing_key(k) if k.key_id in newly else k
                    for k in held.signing_keys
                ]
            except KeyStoreError as exc:
                raise AdminError(f"{path}: {exc}") from None
            OrgKeys(held.org_id, held.hpke_keys, moved).save(path, store)
        signing += newly
        hpke += clear_hpke
        files.append(path)
    return Protected(signing, hpke, files, _protect_pseudonym_key(settings, store))


def _protect_pseudonym_key(settings: Settings, store: KeyStore) -> Path | None:
    target = pseudonym_key_file(settings)
    done: Path | None = None
    for path in (target, staged_key_file(settings)):
        if not path.exists():
            continue
        text = path.read_text(encoding="ascii").strip()
        if is_wrapped(text):
            continue
        _write_secret(path, secret_file_text(text.encode("ascii"), store, context=KEY_FILE_CONTEXT))
        done = done or path
    if not target.exists() and settings.pseudonym_key is not None:
        value = settings.pseudonym_key.get_secret_value().encode("utf-8")
        _write_secret(target, secret_file_text(value, store, context=KEY_FILE_CONTEXT))
        done = target
    return done


def _write_secret(path: Path, text: str) -> None:
    """Replace a secret file atomically (mode 0600, synced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


# --- directory reads -------------------------------------------------------------------------


async def _org_or_fail(conn: AsyncConnection, org_id: str) -> Organisation:
    org = await directory.org_by_id(conn, org_id)
    if org is None:
        raise AdminError(f"there is no organisation {org_id!r} in the directory")
    return org


async def _keys_of(conn: AsyncConnection, org_id: str | None = None) -> list[KeyInfo]:
    query = sa.select(org_keys).order_by(
        org_keys.c.org_id, org_keys.c.purpose, org_keys.c.created_at, org_keys.c.key_id
    )
    if org_id is not None:
        query = query.where(org_keys.c.org_id == org_id)
    return [KeyInfo.from_row(r) for r in await conn.execute(query)]


async def _key_or_fail(conn: AsyncConnection, key_id: str) -> KeyInfo:
    row = (await conn.execute(sa.select(org_keys).where(org_keys.c.key_id == key_id))).first()
    if row is None:
        raise AdminError(f"there is no key {key_id!r} in the directory")
    return KeyInfo.from_row(row)


def _newest_usable(keys: list[KeyInfo], purpose: str, at: dt.datetime) -> KeyInfo | None:
    """Same order as `directory.current_hpke_key`: newest created, then highest key id."""
    usable = [k for k in keys if k.purpose == purpose and k.usable(at)]
    return max(usable, key=lambda k: (k.created_at, k.key_id), default=None)


async def list_orgs(conn: AsyncConnection, org_id: str | None = None) -> list[OrgEntry]:
    """Every organisation (or one) with its keys. A read: nothing is audited."""
    orgs = (
        [await _org_or_fail(conn, org_id)] if org_id else await directory.list_organisations(conn)
    )
    keys = await _keys_of(conn, org_id)
    return [OrgEntry(o, [k for k in keys if k.org_id == o.id]) for o in orgs]


# --- changes ---------------------------------------------------------------------------------


async def _record(
    conn: AsyncConnection,
    settings: Settings,
    *,
    actor: str,
    source: str,
    action: str,
    at: dt.datetime,
    org_id: str,
    detail: dict[str, str] | None = None,
) -> None:
    await audit.record(
        conn,
        Topics.from_settings(settings),
        actor=actor,
        action=action,
        source=source,
        at=at,
        subject_org=org_id,
        detail=detail,
    )


async def add_org(
    conn: AsyncConnection,
    settings: Settings,
    org: Organisation,
    *,
    actor: str,
    source: str,
    with_api_key: bool = True,
    public_keys: PublicKeySet | None = None,
    private_out: Path | None = None,
    now: dt.datetime | None = None,
) -> AddedOrg:
    """Register an organisation and its keys, and issue its API key.

    Keys: the public halves it made itself (`public_keys`); else, for a custodial
    organisation, new keys in its custodial key file; else, in development, new keys whose
    private file is written to `private_out`; else none yet (`keys add` later).
    """
    now = now or SystemClock().now()
    org = checked_organisation(org, settings)
    if public_keys is not None and org.custodial:
        raise AdminError("a custodial organisation's keys are made by the gateway, not registered")
    if await directory.org_by_id(conn, org.id) is not None:
        raise AdminError(f"there is already an organisation {org.id!r}")
    for label, column, value in (
        ("SOR code", organisations.c.sor, org.sor),
        ("GLN", organisations.c.gln, org.gln),
        ("ydernummer", organisations.c.ydernummer, org.ydernummer),
    ):
        if value is not None:
            holder = (
                await conn.execute(sa.select(organisations.c.id).where(column == value))
            ).first()
            if holder is not None:
                raise AdminError(f"{label} {value} already belongs to {holder.id}")
    api_key = new_api_key(org.id) if with_api_key else None
    await directory.add_organisation(conn, org, OrgKeys(org.id, [], []), api_key=api_key, now=now)
    await _record(
        conn,
        settings,
        actor=actor,
        source=source,
        action="org.add",
        at=now,
        org_id=org.id,
        detail={"role": org.role.value, "custodial": str(org.custodial).lower()},
    )
    keys: list[KeyInfo] = []
    private_file: Path | None = None
    if public_keys is not None:
        keys = await register_public_keys(
            conn, settings, org.id, public_keys, actor=actor, source=source, now=now
        )
    elif org.custodial or private_out is not None:
        made = await generate_keys(
            conn,
            settings,
            org.id,
            purpose="both",
            private_out=private_out,
            actor=actor,
            source=source,
            now=now,
        )
        keys, private_file = made.keys, made.private_file
    return AddedOrg(org, api_key, keys, private_file)


async def disable_org(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    *,
    actor: str,
    source: str,
    now: dt.datetime | None = None,
) -> OrgChange:
    """Disable an organisation: its API key stops working, nothing more is delivered to it
    (mail for it is dead-lettered as `unknown-receiver`), no request can name it."""
    if org_id == settings.gateway_org_id:
        raise AdminError("the gateway's own organisation cannot be disabled")
    return await _set_enabled(conn, settings, org_id, False, actor=actor, source=source, now=now)


async def enable_org(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    *,
    actor: str,
    source: str,
    now: dt.datetime | None = None,
) -> OrgChange:
    """Enable a disabled organisation again (its API key and pinned certificates work again,
    unless replaced or revoked meanwhile)."""
    return await _set_enabled(conn, settings, org_id, True, actor=actor, source=source, now=now)


async def _set_enabled(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    enabled: bool,
    *,
    actor: str,
    source: str,
    now: dt.datetime | None,
) -> OrgChange:
    now = now or SystemClock().now()
    org = await _org_or_fail(conn, org_id)
    if org.enabled == enabled:
        return OrgChange(org, False)
    await directory.execute_write(
        conn, organisations.update().where(organisations.c.id == org_id).values(enabled=enabled)
    )
    action = "org.enable" if enabled else "org.disable"
    await _record(conn, settings, actor=actor, source=source, action=action, at=now, org_id=org_id)
    return OrgChange(replace(org, enabled=enabled), True)


_CUSTODIAL_FORMAT = (
    "a custodial organisation's mail is opened by the gateway itself: its message format is json"
)


async def set_message_format(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    message_format: MessageFormat,
    *,
    actor: str,
    source: str,
    now: dt.datetime | None = None,
) -> OrgChange:
    """The FHIR format sealed into an organisation's envelopes from now on (json or xml, as
    its systems take MedCom messages). Audited; mail already sealed stays as it is."""
    now = now or SystemClock().now()
    org = await _org_or_fail(conn, org_id)
    if org.message_format is message_format:
        return OrgChange(org, False)
    if org.custodial and message_format is not MessageFormat.JSON:
        raise AdminError(_CUSTODIAL_FORMAT)
    await directory.execute_write(
        conn,
        organisations.update()
        .where(organisations.c.id == org_id)
        .values(message_format=message_format.value),
    )
    await _record(
        conn,
        settings,
        actor=actor,
        source=source,
        action="org.message_format",
        at=now,
        org_id=org_id,
        detail={"message_format": message_format.value},
    )
    return OrgChange(replace(org, message_format=message_format), True)


async def reissue_api_key(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    *,
    actor: str,
    source: str,
    now: dt.datetime | None = None,
) -> str:
    """A new API key for an organisation (a leaked or lost one): the old key stops working at
    once. Returns the new key, which is shown once; only its hash is stored."""
    now = now or SystemClock().now()
    org = await _org_or_fail(conn, org_id)
    if org_id == settings.gateway_org_id:
        raise AdminError("the gateway's own organisation has no API key")
    api_key = new_api_key(org.id)
    await directory.execute_write(
        conn,
        organisations.update()
        .where(organisations.c.id == org_id)
        .values(api_key_hash=hash_api_key(api_key)),
    )
    await _record(
        conn, settings, actor=actor, source=source, action="org.api-key", at=now, org_id=org_id
    )
    return api_key


async def _insert_key(
    conn: AsyncConnection, org_id: str, key: PublicKey, now: dt.datetime
) -> KeyInfo:
    taken = (
        await conn.execute(sa.select(org_keys.c.org_id).where(org_keys.c.key_id == key.key_id))
    ).first()
    if taken is not None:
        raise AdminError(f"key id {key.key_id} is already in the directory")
    await directory.execute_write(
        conn,
        org_keys.insert().values(
            key_id=key.key_id,
            org_id=org_id,
            purpose=key.purpose,
            algorithm=key.algorithm,
            public_key=key.public_key,
            created_at=now,
        ),
    )
    return KeyInfo(key.key_id, org_id, key.purpose, key.algorithm, now, None, None)


def _purposes(purpose: Purpose | Literal["both"]) -> tuple[Purpose, ...]:
    return PURPOSES if purpose == "both" else (purpose,)


async def _make_keys(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    *,
    purpose: Purpose | Literal["both"],
    suite: Suite | None,
    private_out: Path | None,
    actor: str,
    source: str,
    now: dt.datetime,
    rotating: bool,
) -> NewKeys:
    org = await _org_or_fail(conn, org_id)
    if org.custodial:
        if private_out is not None:
            raise AdminError(
                f"{org_id} is custodial: its private keys stay in the gateway's key file"
            )
        path, store = custodial_key_file(settings, org_id), _key_store(settings)
    elif private_out is None:
        raise AdminError(
            f"{org_id} is not custodial: register the public keys it made itself "
            "(keys generate --out, then keys add), or give --out in development"
        )
    elif settings.environment == "production":
        raise AdminError(
            "in production the gateway never makes a non-custodial organisation's "
            "private keys: register its own public keys with keys add"
        )
    else:
        path, store = private_out, CLEAR_FILES  # development: the clinic's own file, in clear
    purposes = _purposes(purpose)
    before = await _keys_of(conn, org_id)
    new = OrgKeys(
        org_id,
        [PrivateHpkeKey.generate(suite or settings.hpke_suite)] if "hpke" in purposes else [],
        [store.new_signing_key()] if "signing" in purposes else [],
    )
    append_to_key_file(path, new, store)  # first the private half, then the directory
    public = PublicKeySet.of(new)
    added: list[KeyInfo] = []
    replaced: dict[str, str] = {}
    for key in public.keys:
        added.append(await _insert_key(conn, org_id, key, now))
        previous = _newest_usable(before, key.purpose, now)
        detail = {"key_id": key.key_id, "purpose": key.purpose, "algorithm": key.algorithm}
        if previous is not None:
            replaced[key.purpose] = detail["previous_key_id"] = previous.key_id
        action = "key.rotate" if rotating and previous is not None else "key.generate"
        await _record(
            conn,
            settings,
            actor=actor,
            source=source,
            action=action,
            at=now,
            org_id=org_id,
            detail=detail,
        )
    return NewKeys(org_id, added, replaced, path if not org.custodial else None)


async def generate_keys(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    *,
    actor: str,
    source: str,
    purpose: Purpose | Literal["both"] = "both",
    suite: Suite | None = None,
    private_out: Path | None = None,
    now: dt.datetime | None = None,
) -> NewKeys:
    """New key pair(s) for an organisation (audited as `key.generate`)."""
    return await _make_keys(
        conn,
        settings,
        org_id,
        purpose=purpose,
        suite=suite,
        private_out=private_out,
        actor=actor,
        source=source,
        now=now or SystemClock().now(),
        rotating=False,
    )


async def rotate_keys(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    *,
    actor: str,
    source: str,
    purpose: Purpose | Literal["both"] = "both",
    suite: Suite | None = None,
    private_out: Path | None = None,
    now: dt.datetime | None = None,
) -> NewKeys:
    """A new key pair that becomes current at once; the old keys stay usable (old mail still
    opens, messages in flight still verify) until they are retired or revoked. Audited as
    `key.rotate` (as `key.generate` when there was no key of that purpose)."""
    return await _make_keys(
        conn,
        settings,
        org_id,
        purpose=purpose,
        suite=suite,
        private_out=private_out,
        actor=actor,
        source=source,
        now=now or SystemClock().now(),
        rotating=True,
    )


async def register_public_keys(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    public_keys: PublicKeySet,
    *,
    actor: str,
    source: str,
    now: dt.datetime | None = None,
) -> list[KeyInfo]:
    """Register public keys an organisation made itself; the newest becomes current.
    Audited as `key.rotate` when it replaces a key of that purpose, else `key.generate`."""
    now = now or SystemClock().now()
    org = await _org_or_fail(conn, org_id)
    if org.custodial:
        raise AdminError(f"{org_id} is custodial: its keys are made with keys rotate")
    if public_keys.org_id != org_id:
        raise AdminError(f"the public-keys file is for {public_keys.org_id}, not {org_id}")
    before = await _keys_of(conn, org_id)
    known = {k.key_id for k in before}
    fresh = [k for k in public_keys.keys if k.key_id not in known]
    if not fresh:
        raise AdminError(f"every key in the file is already registered for {org_id}")
    added = []
    for key in fresh:
        added.append(await _insert_key(conn, org_id, key, now))
        previous = _newest_usable(before, key.purpose, now)
        detail = {
            "key_id": key.key_id,
            "purpose": key.purpose,
            "algorithm": key.algorithm,
            "registered": "public",
        }
        if previous is not None:
            detail["previous_key_id"] = previous.key_id
        await _record(
            conn,
            settings,
            actor=actor,
            source=source,
            org_id=org_id,
            at=now,
            detail=detail,
            action="key.rotate" if previous is not None else "key.generate",
        )
    return added


async def pin_client_certificate(
    conn: AsyncConnection,
    settings: Settings,
    org_id: str,
    pem: bytes,
    *,
    actor: str,
    source: str,
    now: dt.datetime | None = None,
) -> KeyInfo:
    """Pin a TLS client certificate to an organisation (mutual TLS on the API): its SHA-256
    fingerprint joins `org_keys` (purpose `tls-client`, `not_after` = the certificate's
    expiry), so it is listed, revoked and retired like any key. Audited as `cert.add`."""
    now = now or SystemClock().now()
    org = await _org_or_fail(conn, org_id)
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise AdminError("the file holds no PEM certificate") from None
    if cert.not_valid_after_utc <= now:
        raise AdminError(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise AdminError("the certificate is not for TLS client authentication")
    if settings.environment == "production" and is_development_certificate(cert):
        raise AdminError("production refuses development certificates")
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    try:
        key_id = await directory.register_client_certificate(
            conn, org.id, fingerprint, not_after=cert.not_valid_after_utc, now=now
        )
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    await _record(
        conn,
        settings,
        actor=actor,
        source=source,
        action="cert.add",
        at=now,
        org_id=org.id,
        detail={"key_id": key_id, "fingerprint": fingerprint},
    )
    return await _key_or_fail(conn, key_id)


async def revoke_key(
    conn: AsyncConnection,
    settings: Settings,
    key_id: str,
    *,
    actor: str,
    source: str,
    reason: str | None = None,
    now: dt.datetime | None = None,
) -> KeyChange:
    """Revoke a key at once (compromise). See the module docstring for what that means."""
    now = now or SystemClock().now()
    key = await _key_or_fail(conn, key_id)
    if key.revoked_at is not None and key.revoked_at <= now:
        return KeyChange(key, False, False)
    org = await _org_or_fail(conn, key.org_id)
    path = custodial_key_file(settings, org.id)
    removed = False
    if org.custodial and key.purpose == "signing":
        others = [
            k
            for k in await _keys_of(conn, org.id)
            if k.purpose == "signing" and k.key_id != key_id and k.usable(now)
        ]
        if not {k.key_id for k in others} & _held_signing_ids(path, _key_store(settings)):
            raise AdminError(
                f"{key_id} is the only usable signing key of {org.id}: rotate first "
                f"(keys rotate --org {org.id} --purpose signing), then revoke it"
            )
    await directory.execute_write(
        conn, org_keys.update().where(org_keys.c.key_id == key_id).values(revoked_at=now)
    )
    if org.custodial and key.purpose == "signing":
        removed = _remove_from_key_file(path, key_id, _key_store(settings))
    detail = {"key_id": key_id, "purpose": key.purpose}
    if reason:
        detail["reason"] = reason[:200]
    await _record(
        conn,
        settings,
        actor=actor,
        source=source,
        action="key.revoke",
        at=now,
        org_id=org.id,
        detail=detail,
    )
    return KeyChange(replace(key, revoked_at=now), True, removed)


async def retire_key(
    conn: AsyncConnection,
    settings: Settings,
    key_id: str,
    *,
    actor: str,
    source: str,
    now: dt.datetime | None = None,
) -> KeyChange:
    """End a key's use after a rotation (`not_after = now`); a custodial private key leaves
    the key file, so mail still sealed to it can no longer be opened."""
    now = now or SystemClock().now()
    key = await _key_or_fail(conn, key_id)
    if not key.usable(now):
        return KeyChange(key, False, False)
    org = await _org_or_fail(conn, key.org_id)
    if org.id == settings.gateway_org_id and key.purpose == "hpke":
        raise AdminError(
            "the gateway's own HPKE keys are never retired: they open its stored copies of sent "
            "messages (revoke one to stop sealing to it)"
        )
    if key.purpose in PURPOSES:
        current = _newest_usable(await _keys_of(conn, org.id), key.purpose, now)
        if current is not None and current.key_id == key_id:
            raise AdminError(
                f"{key_id} is the current {key.purpose} key of {org.id}: rotate first "
                f"(keys rotate --org {org.id} --purpose {key.purpose}), then retire it"
            )
    await directory.execute_write(
        conn, org_keys.update().where(org_keys.c.key_id == key_id).values(not_after=now)
    )
    removed = False
    if org.custodial and key.purpose in PURPOSES:
        removed = _remove_from_key_file(
            custodial_key_file(settings, org.id), key_id, _key_store(settings)
        )
    await _record(
        conn,
        settings,
        actor=actor,
        source=source,
        action="key.retire",
        at=now,
        org_id=org.id,
        detail={"key_id": key_id, "purpose": key.purpose},
    )
    return KeyChange(replace(key, not_after=now), True, removed)
