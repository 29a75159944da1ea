"""The organisations: identifiers, roles, public keys; API key hashing; demo organisations.

The directory lives in the database (`organisations`, `org_keys`). Private keys never do:
an organisation keeps its own, and the gateway keeps only its own and those of custodial
organisations (job centres, whose case systems cannot open envelopes) in its key directory.

**The snapshot cache.** Every message needs several lookups, and the directory rarely changes,
but a change (a key revoked, an organisation disabled) must count at once, also when another
process makes it. So the lookups answer from an in-memory snapshot of both tables, one per
engine, that is exact rather than timed: triggers (migration 0008) give the one-row table
`directory_generation` a new random token in the same transaction as every write to the two
tables, whoever writes, and a snapshot is filed under the token it was read at.

- A transaction compares the token once, at its first lookup (one small query), reloads the
  snapshot when it differs (two queries) and answers its further lookups from memory. The
  check belongs to the transaction (SQLAlchemy's root transaction of the connection): after a
  commit or rollback, the next transaction on the same connection checks again. Lookups
  compare times (revoked, expired) in Python at call time, so a snapshot never ages.
- A transaction that writes the directory reads it directly (from the database) for the
  rest of the transaction, so it sees its own writes and never caches them. The writes of this
  module and of services/admin.py go through `execute_write`, which marks the transaction;
  code that writes the two tables otherwise and reads them again in the same transaction
  calls `note_directory_write` after its write.
- Without the `directory_generation` table (a database not migrated to 0008), every lookup
  queries the tables as before; the cache starts once the table appears.
- One HTTP request sees one generation (`DirectoryCache.request_view`, entered by the request
  middleware): its first check (the authentication's) fixes the snapshot that its later
  transactions use without checking again, so a request is served against the directory it
  was authenticated with, and saves a query per transaction. A request that writes the
  directory drops the view and checks as above from then on.

**Who owns it.** The cache is a `DirectoryCache` object, made by the composition root
(bootstrap.py) and held by the gateway's container, not a module-level table keyed by engine:
`cache.bind(engine)` returns the engine the container hands out, which carries the cache as
an execution option, so that the lookups below (which take a connection) find it through their
connection. An engine without one (the operator commands, tools, tests) reads the directory
directly, every time.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Transaction
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.contracts.directory import PublicKey
from attest_gateway.contracts.envelope import Suite
from attest_gateway.core.directory import (
    CLIENT_CERT_PURPOSE,
    Organisation,
    Role,
    VerifyKey,
    client_cert_key_id,
    hash_api_key,
)
from attest_gateway.crypto.sealing import OrgKeys, PublicHpkeKey
from attest_gateway.infra.db.tables import directory_generation, org_keys, organisations


async def add_organisation(
    conn: AsyncConnection,
    org: Organisation,
    keys: OrgKeys,
    *,
    api_key: str | None,
    now: dt.datetime,
) -> None:
    """Register an organisation with the public halves of its keys."""
    await execute_write(
        conn,
        organisations.insert().values(
            id=org.id,
            name=org.name,
            role=org.role.value,
            sor=org.sor,
            gln=org.gln,
            kommunekode=org.kommunekode,
            ydernummer=org.ydernummer,
            region_code=org.region_code,
            api_key_hash=hash_api_key(api_key) if api_key else None,
            custodial=org.custodial,
            enabled=org.enabled,
            webhook_url=org.webhook_url,
            message_format=org.message_format.value,
            created_at=now,
        ),
    )
    for h in keys.hpke_keys:
        await execute_write(
            conn,
            org_keys.insert().values(
                key_id=h.key_id,
                org_id=org.id,
                purpose="hpke",
                algorithm=h.suite,
                public_key=h.public_encoded,
                created_at=now,
            ),
        )
    for s in keys.signing_keys:
        await execute_write(
            conn,
            org_keys.insert().values(
                key_id=s.key_id,
                org_id=org.id,
                purpose="signing",
                algorithm="Ed25519",
                public_key=s.public_encoded,
                created_at=now,
            ),
        )


# --- the snapshot cache -----------------------------------------------------------------------
# See the module docstring for the rules.

OrgIndex = Literal["id", "api_key_hash", "sor", "gln", "ydernummer"]
_ORG_INDEXES: tuple[OrgIndex, ...] = ("id", "api_key_hash", "sor", "gln", "ydernummer")
_CACHE_OPTION = "attest_gateway_directory_cache"  # the execution option that carries the cache


@dataclass(frozen=True, slots=True)
class _Key:
    """One row of `org_keys`, as the lookups need it."""

    key_id: str
    org_id: str
    purpose: str
    algorithm: str
    public_key: str
    verify: VerifyKey

    @classmethod
    def from_row(cls, row: Any) -> _Key:
        return cls(
            key_id=row.key_id,
            org_id=row.org_id,
            purpose=row.purpose,
            algorithm=row.algorithm,
            public_key=row.public_key,
            verify=VerifyKey(row.key_id, row.org_id, row.public_key, row.revoked_at, row.not_after),
        )


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The whole directory as of one generation token (never changed once made)."""

    token: str
    orgs: Mapping[OrgIndex, Mapping[str, Organisation]]
    keys: Mapping[str, _Key]
    newest_first: Mapping[tuple[str, str], tuple[_Key, ...]]  # (org id, purpose) → keys


@dataclass(slots=True)
class _RequestView:
    """The snapshot one HTTP request reads, fixed by its first check."""

    snapshot: _Snapshot | None = None
    open: bool = True  # False: the request is over, or it wrote the directory


class DirectoryCache:
    """The directory snapshot of one store, exact by its generation token (module docstring).

    One per gateway container (bootstrap.py makes it, with the engine it binds to). It holds
    the snapshot, whether the store has the generation table, the mark of each transaction
    that checked (weakly: a mark goes with its transaction), and the view of the HTTP request
    in progress (a context variable of its own: each request runs in its own context)."""

    __slots__ = ("_checked", "_view", "generation_table", "snapshot")

    def __init__(self) -> None:
        self.generation_table: bool | None = None  # None: not looked for yet
        self.snapshot: _Snapshot | None = None
        # Per (root) transaction: the snapshot it checked the token against, or None when it
        # reads the directory directly (it wrote the directory, or there is no generation table)
        self._checked: weakref.WeakKeyDictionary[Transaction, _Snapshot | None] = (
            weakref.WeakKeyDictionary()
        )
        self._view: ContextVar[_RequestView | None] = ContextVar(
            "directory_request_view", default=None
        )

    def bind(self, engine: AsyncEngine) -> AsyncEngine:
        """`engine` (sharing its pool and listeners) with this cache: its connections' lookups
        answer from the snapshot."""
        return engine.execution_options(**{_CACHE_OPTION: self})

    @contextmanager
    def request_view(self) -> Iterator[None]:
        """Inside: the transactions of one request read the directory as of its first check."""
        view = _RequestView()
        token = self._view.set(view)
        try:
            yield
        finally:
            view.open = False  # also for tasks that copied the context
            self._view.reset(token)

    async def checked(self, conn: AsyncConnection) -> _Snapshot | None:
        """The snapshot the transaction on `conn` reads, checked against the database's token
        at most once per transaction; None: read the directory directly."""
        sync = _sync(conn)
        tx = sync.get_transaction()
        if tx is not None and tx in self._checked:
            return self._checked[tx]
        view = self._view.get()
        if view is not None and view.open and view.snapshot is not None:
            snapshot: _Snapshot | None = view.snapshot
        else:
            snapshot = await self._current(conn)
            if view is not None and view.open and view.snapshot is None and snapshot is not None:
                view.snapshot = snapshot
        tx = sync.get_transaction()  # the query above began it, if none had begun
        if tx is not None:
            self._checked[tx] = snapshot
        return snapshot

    def note_write(self, conn: AsyncConnection) -> None:
        """The transaction on `conn` wrote the directory (see `note_directory_write`)."""
        tx = _sync(conn).get_transaction()
        if tx is not None:
            self._checked[tx] = None
        view = self._view.get()
        if view is not None:  # the request's later transactions must see what it wrote
            view.open = False

    async def _current(self, conn: AsyncConnection) -> _Snapshot | None:
        if not self.generation_table:  # an old schema may have been migrated meanwhile
            self.generation_table = await conn.run_sync(
                lambda sync: sa.inspect(sync).has_table(directory_generation.name)
            )
            if not self.generation_table:
                return None
        try:
            token = (await conn.execute(GENERATION_QUERY)).scalar_one_or_none()
        except sa.exc.DBAPIError:
            # The table may be gone (a downgrade under a running gateway): the transaction is
            # lost on PostgreSQL, but the next one looks for the table again.
            self.generation_table = None
            raise
        if token is None:  # a table without its row was not made by the migration: no triggers
            return None
        snapshot = self.snapshot
        if snapshot is None or snapshot.token != token:
            # Read after the token: the rows are at least as new as the token they are filed
            # under, so a write committed meanwhile shows as a new token at the next check.
            snapshot = self.snapshot = await _load(conn, token)
        return snapshot


def cache_of(conn: AsyncConnection) -> DirectoryCache | None:
    """The cache bound to the engine `conn` came from (`DirectoryCache.bind`), if any."""
    cache = _sync(conn).get_execution_options().get(_CACHE_OPTION)
    return cache if isinstance(cache, DirectoryCache) else None


_NEWEST_FIRST = (org_keys.c.created_at.desc(), org_keys.c.key_id.desc())
GENERATION_QUERY = sa.select(directory_generation.c.token).where(directory_generation.c.id == 1)


def _sync(conn: AsyncConnection) -> Connection:
    sync = conn.sync_connection
    assert sync is not None, "the connection is not started"
    return sync


async def _snapshot(conn: AsyncConnection) -> _Snapshot | None:
    """The directory snapshot this transaction reads; None: read the directory directly (no
    cache is bound to the connection's engine, or the cache says so)."""
    cache = cache_of(conn)
    return await cache.checked(conn) if cache is not None else None


async def _load(conn: AsyncConnection, token: str) -> _Snapshot:
    orgs: dict[OrgIndex, dict[str, Organisation]] = {index: {} for index in _ORG_INDEXES}
    for row in await conn.execute(sa.select(organisations)):
        org = Organisation.from_row(row)
        for index in _ORG_INDEXES:
            value = getattr(row, index)
            if value is not None:
                orgs[index][value] = org
    keys: dict[str, _Key] = {}
    newest_first: dict[tuple[str, str], list[_Key]] = {}
    # The database orders them, as the direct query does (its collation decides ties).
    for row in await conn.execute(sa.select(org_keys).order_by(*_NEWEST_FIRST)):
        key = keys[row.key_id] = _Key.from_row(row)
        newest_first.setdefault((key.org_id, key.purpose), []).append(key)
    return _Snapshot(
        token=token,
        orgs=MappingProxyType({index: MappingProxyType(by) for index, by in orgs.items()}),
        keys=MappingProxyType(keys),
        newest_first=MappingProxyType({k: tuple(v) for k, v in newest_first.items()}),
    )


def note_directory_write(conn: AsyncConnection) -> None:
    """The transaction on `conn` wrote `organisations` or `org_keys`: it reads the directory
    directly from now on, so that it sees its own writes. `execute_write` calls it; call it
    after writing the directory any other way in a transaction that may read it again."""
    cache = cache_of(conn)
    if cache is not None:
        cache.note_write(conn)


async def execute_write(conn: AsyncConnection, statement: sa.Executable) -> Any:
    """Execute a write to `organisations` or `org_keys` (see `note_directory_write`)."""
    try:
        return await conn.execute(statement)
    finally:
        note_directory_write(conn)


# --- lookups ---------------------------------------------------------------------------------


async def _org(conn: AsyncConnection, index: OrgIndex, value: str) -> Organisation | None:
    snapshot = await _snapshot(conn)
    if snapshot is not None:
        return snapshot.orgs[index].get(value)
    row = (
        await conn.execute(sa.select(organisations).where(organisations.c[index] == value))
    ).first()
    return Organisation.from_row(row) if row is not None else None


async def _key(conn: AsyncConnection, key_id: str) -> _Key | None:
    snapshot = await _snapshot(conn)
    if snapshot is not None:
        return snapshot.keys.get(key_id)
    row = (await conn.execute(sa.select(org_keys).where(org_keys.c.key_id == key_id))).first()
    return _Key.from_row(row) if row is not None else None


async def _keys_newest_first(conn: AsyncConnection, org_id: str, purpose: str) -> Sequence[_Key]:
    snapshot = await _snapshot(conn)
    if snapshot is not None:
        return snapshot.newest_first.get((org_id, purpose), ())
    rows = await conn.execute(
        sa.select(org_keys)
        .where(org_keys.c.org_id == org_id, org_keys.c.purpose == purpose)
        .order_by(*_NEWEST_FIRST)
    )
    return [_Key.from_row(row) for row in rows]


async def org_by_id(conn: AsyncConnection, org_id: str) -> Organisation | None:
    return await _org(conn, "id", org_id)


async def org_by_api_key(conn: AsyncConnection, api_key: str) -> Organisation | None:
    return await _org(conn, "api_key_hash", hash_api_key(api_key))


async def org_by_sor(conn: AsyncConnection, sor: str) -> Organisation | None:
    return await _org(conn, "sor", sor)


async def org_by_ydernummer(conn: AsyncConnection, ydernummer: str) -> Organisation | None:
    return await _org(conn, "ydernummer", ydernummer)


async def jobcenter_of(conn: AsyncConnection, kommunekode: str) -> Organisation | None:
    """The enabled job centre of a municipality (not cached: only registrations ask)."""
    row = (
        await conn.execute(
            sa.select(organisations)
            .where(
                organisations.c.kommunekode == kommunekode,
                organisations.c.role == Role.JOBCENTER.value,
                organisations.c.enabled.is_(True),
            )
            .order_by(organisations.c.id)
            .limit(1)
        )
    ).first()
    return Organisation.from_row(row) if row is not None else None


async def org_by_identifiers(
    conn: AsyncConnection, *, sor: str | None, gln: str | None
) -> Organisation | None:
    """The organisation a MedCom Organization resource names (SOR first, then GLN)."""
    if sor:
        found = await org_by_sor(conn, sor)
        if found is not None:
            return found
    if gln:
        return await _org(conn, "gln", gln)
    return None


async def current_hpke_key(
    conn: AsyncConnection, org_id: str, at: dt.datetime
) -> PublicHpkeKey | None:
    """The newest usable HPKE key of an organisation: new mail is sealed to it."""
    for key in await _keys_newest_first(conn, org_id, "hpke"):
        if key.verify.usable(at):
            return PublicHpkeKey.decode(key.key_id, cast(Suite, key.algorithm), key.public_key)
    return None


async def usable_signing_key_ids(conn: AsyncConnection, org_id: str, at: dt.datetime) -> list[str]:
    """The organisation's usable signing keys, newest first: the gateway signs with the first
    of them it holds."""
    keys = await _keys_newest_first(conn, org_id, "signing")
    return [key.key_id for key in keys if key.verify.usable(at)]


async def hpke_key_owner(conn: AsyncConnection, key_id: str) -> str | None:
    key = await _key(conn, key_id)
    return key.org_id if key is not None and key.purpose == "hpke" else None


async def signing_key(conn: AsyncConnection, key_id: str) -> VerifyKey | None:
    key = await _key(conn, key_id)
    return key.verify if key is not None and key.purpose == "signing" else None


async def public_keys(
    conn: AsyncConnection, org_id: str, at: dt.datetime
) -> list[PublicKey] | None:
    """An organisation's HPKE and signing keys, revoked and expired ones included (with
    their state, so that older envelopes can still be checked); None for no such
    organisation."""
    if await org_by_id(conn, org_id) is None:
        return None
    rows = await conn.execute(
        sa.select(org_keys)
        .where(org_keys.c.org_id == org_id, org_keys.c.purpose.in_(("hpke", "signing")))
        .order_by(org_keys.c.purpose, *_NEWEST_FIRST)
    )
    keys: list[PublicKey] = []
    for row in rows:
        key = _Key.from_row(row)
        keys.append(
            PublicKey(
                key_id=key.key_id,
                purpose=cast(Literal["hpke", "signing"], key.purpose),
                algorithm=key.algorithm,
                public_key=key.public_key,
                valid_from=_utc(row.created_at),
                valid_until=_utc(row.not_after) if row.not_after is not None else None,
                revoked_at=_utc(row.revoked_at) if row.revoked_at is not None else None,
                usable=key.verify.usable(at),
            )
        )
    return keys


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


async def list_organisations(conn: AsyncConnection) -> list[Organisation]:
    rows = await conn.execute(sa.select(organisations).order_by(organisations.c.id))
    return [Organisation.from_row(r) for r in rows]


# --- client certificates (mutual TLS) --------------------------------------------------------
# A client certificate is pinned by its SHA-256 fingerprint in `org_keys` (purpose
# `tls-client`), with its expiry as `not_after`, so that it is revoked like any other key.
async def register_client_certificate(
    conn: AsyncConnection,
    org_id: str,
    fingerprint: str,
    *,
    not_after: dt.datetime,
    now: dt.datetime,
) -> str:
    """Pin a client certificate to an organisation; returns its key id (idempotent)."""
    key_id = client_cert_key_id(fingerprint)
    existing = (
        await conn.execute(sa.select(org_keys.c.org_id).where(org_keys.c.key_id == key_id))
    ).first()
    if existing is not None:
        if existing.org_id != org_id:
            raise ValueError("this certificate is already registered to another organisation")
        return key_id
    await execute_write(
        conn,
        org_keys.insert().values(
            key_id=key_id,
            org_id=org_id,
            purpose=CLIENT_CERT_PURPOSE,
            algorithm="x509-sha256",
            public_key=fingerprint,
            created_at=now,
            not_after=not_after,
        ),
    )
    return key_id


async def org_by_client_certificate(
    conn: AsyncConnection, fingerprint: str, at: dt.datetime
) -> Organisation | None:
    """The enabled organisation a usable (not revoked, not expired) certificate is pinned to."""
    pinned = await _key(conn, client_cert_key_id(fingerprint))
    if pinned is None or pinned.purpose != CLIENT_CERT_PURPOSE or pinned.public_key != fingerprint:
        return None
    if not pinned.verify.usable(at):
        return None
    org = await org_by_id(conn, pinned.org_id)
    return org if org is not None and org.enabled else None
