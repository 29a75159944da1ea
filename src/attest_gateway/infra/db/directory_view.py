"""The directory port (ports/store.py `Directory`) on one connection: the cached look-ups of
directory.py, for the use cases' units of work and the housekeeping's transactions."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncConnection

from attest_gateway.core.directory import Organisation, VerifyKey
from attest_gateway.crypto.sealing import PublicHpkeKey
from attest_gateway.infra.db import directory


class SqlDirectory:
    """The directory as the use cases see it (the cached look-ups of directory.py)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def org_by_id(self, org_id: str) -> Organisation | None:
        return await directory.org_by_id(self._conn, org_id)

    async def org_by_sor(self, sor: str) -> Organisation | None:
        return await directory.org_by_sor(self._conn, sor)

    async def org_by_ydernummer(self, ydernummer: str) -> Organisation | None:
        return await directory.org_by_ydernummer(self._conn, ydernummer)

    async def jobcenter_of(self, kommunekode: str) -> Organisation | None:
        return await directory.jobcenter_of(self._conn, kommunekode)

    async def current_hpke_key(self, org_id: str, at: dt.datetime) -> PublicHpkeKey | None:
        return await directory.current_hpke_key(self._conn, org_id, at)

    async def usable_signing_key_ids(self, org_id: str, at: dt.datetime) -> list[str]:
        return await directory.usable_signing_key_ids(self._conn, org_id, at)

    async def hpke_key_owner(self, key_id: str) -> str | None:
        return await directory.hpke_key_owner(self._conn, key_id)

    async def signing_key(self, key_id: str) -> VerifyKey | None:
        return await directory.signing_key(self._conn, key_id)
