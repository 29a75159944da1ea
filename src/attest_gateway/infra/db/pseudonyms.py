"""The store's side of the citizens' pseudonyms: the CPR numbers sealed at ingest, and the
record of which pseudonym key the store was written with.

- What a case ref is, and how a CPR number is sealed for re-keying: crypto/pseudonyms.py.
- Two rows of `leases` record the key: `pseudonym-key` (holder = the key id every stored
  pseudonym is made with) and `pseudonym-legacy-key` (holder = the key id bare refs belong
  to; deleted by the first re-key). The first gateway start after migration 0007 records its
  key and prefixes the bare refs already stored; every start checks that its key is the
  recorded one (`check_store_key`), and refuses to start otherwise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.contracts.contacts import NotATrackingEvent, parse_tracking_event
from attest_gateway.crypto.pseudonyms import key_id, key_id_of
from attest_gateway.crypto.sealing import KeyRing, PublicHpkeKey
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.engine import insert_ignore
from attest_gateway.infra.db.tables import (
    case_closures,
    conversations,
    leases,
    outbox,
    tracker_cases,
    tracker_cell_citizens,
    tracker_contacts,
    tracker_conversations,
    tracker_episodes,
    tracker_overdue_citizens,
    tracker_rehab_cases,
    tracker_treatments,
)

KEY_ROW = "pseudonym-key"
LEGACY_ROW = "pseudonym-legacy-key"

# Every column that holds a case ref. `gateway.tracking` outbox rows hold it in their JSON
# (and a contact event's record key is its case ref): see `rewrite_tracking_row`.
REF_COLUMNS: tuple[sa.Column[Any], ...] = (
    conversations.c.case_ref,
    tracker_conversations.c.case_ref,
    tracker_episodes.c.case_ref,
    tracker_contacts.c.case_ref,
    tracker_cases.c.case_ref,
    tracker_treatments.c.case_ref,
    tracker_cell_citizens.c.case_ref,
    tracker_overdue_citizens.c.case_ref,
    tracker_rehab_cases.c.case_ref,
    case_closures.c.case_ref,  # NULL once the case is erased
)


class PseudonymKeyMismatch(RuntimeError):
    """The configured pseudonym key is not the one the store's pseudonyms were made with."""


async def gateway_hpke_key(
    conn: AsyncConnection, keyring: KeyRing, gateway_org_id: str, now: dt.datetime
) -> PublicHpkeKey:
    """The gateway organisation's current HPKE key as the directory lists it (what other mail
    to the gateway is sealed to: never a revoked key), provided the key ring holds its
    private half, so that what is sealed to it can be opened again."""
    key = await directory.current_hpke_key(conn, gateway_org_id, now)
    if key is None or keyring.hpke_key(key.key_id) is None:
        raise RuntimeError(
            f"the gateway organisation {gateway_org_id!r} has no usable HPKE key in its key file"
        )
    return key


# --- the store's key ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreKey:
    """The pseudonym key the store was written with (by id), as the tracker applies it."""

    key_id: str
    legacy: bool = False  # bare refs (made before key ids) are this key's

    def admit(self, ref: str) -> str | None:
        """The ref as stored (bare refs get the key id), or None if made under another key."""
        kid = key_id_of(ref)
        if kid is None:
            return f"{self.key_id}.{ref}" if self.legacy else None
        return ref if kid == self.key_id else None


async def recorded_key(conn: AsyncConnection) -> tuple[str | None, str | None]:
    """(key id of the store's pseudonyms, key id bare refs belong to), as recorded."""
    rows = await conn.execute(
        sa.select(leases.c.name, leases.c.holder).where(leases.c.name.in_([KEY_ROW, LEGACY_ROW]))
    )
    found = {r.name: r.holder for r in rows}
    return found.get(KEY_ROW), found.get(LEGACY_ROW)


def mismatch_message(configured: str, recorded: str) -> str:
    return (
        f"the pseudonym key (key id {configured}) is not the key the store's pseudonyms were "
        f"made with (key id {recorded}): configure that key (after a re-key, the new key "
        "`attest-gateway pseudonyms rekey` moved the store to)"
    )


async def check_store_key(
    engine: AsyncEngine, key: bytes, *, tracking_topic: str, now: dt.datetime
) -> StoreKey:
    """Record the key on first use, else check it is the recorded one. Raises
    PseudonymKeyMismatch (one sentence) when the store was written with another key."""
    async with engine.begin() as conn:
        return await store_key(conn, key, tracking_topic=tracking_topic, now=now)


async def store_key(
    conn: AsyncConnection, key: bytes, *, tracking_topic: str, now: dt.datetime
) -> StoreKey:
    """`check_store_key` in the caller's transaction (its first statement writes, so that
    SQLite's transaction begins with it). `now` stamps the row recording the key."""
    kid = key_id(key)
    if await insert_ignore(conn, leases, {"name": KEY_ROW, "holder": kid, "until": now}):
        await insert_ignore(conn, leases, {"name": LEGACY_ROW, "holder": kid, "until": now})
        await prefix_bare_refs(conn, kid, tracking_topic)
    recorded, legacy = await recorded_key(conn)
    if recorded != kid:
        raise PseudonymKeyMismatch(mismatch_message(kid, str(recorded)))
    return StoreKey(kid, legacy=legacy == kid)


async def prefix_bare_refs(conn: AsyncConnection, kid: str, tracking_topic: str) -> int:
    """Give every bare ref in the store (made before key ids, under the key being recorded
    now) its key id; the same for the JSON of unpublished tracking events. Returns the rows
    changed."""
    changed = 0
    for column in REF_COLUMNS:
        table = column.table
        assert isinstance(table, sa.Table)
        result = await conn.execute(
            table.update()
            .where(sa.not_(column.contains(".", autoescape=True)))
            .values({column.key: sa.literal(f"{kid}.") + column})
        )
        changed += int(result.rowcount or 0)
    admit = StoreKey(kid, legacy=True).admit
    rows = await conn.execute(
        sa.select(outbox.c.id, outbox.c.key, outbox.c.value).where(
            tracking_rows_filter(tracking_topic, None)
        )
    )
    updates = []
    for row in rows:
        try:
            new = rewrite_tracking_row(row.key, row.value, admit)
        except ValueError:  # unreadable: the tracker dead-letters it as it would have
            continue
        if new is not None:
            updates.append({"row_id": row.id, "new_key": new[0], "new_value": new[1]})
    await update_outbox_rows(conn, updates, republish=False)
    return changed + len(updates)


def rewrite_tracking_row(
    key: str, value: bytes, new_ref: Callable[[str], str | None]
) -> tuple[str, bytes] | None:
    """A `gateway.tracking` outbox row with its case ref replaced by `new_ref(old)` (a
    contact event's record key is its case ref, so that too). None when unchanged; raises
    ValueError when `new_ref` gives None (a ref it cannot map) or the row is unreadable."""
    try:
        event = parse_tracking_event(value)
    except NotATrackingEvent as exc:
        raise ValueError(f"an unreadable tracking event in the outbox: {exc}") from exc
    mapped = new_ref(event.case_ref)
    if mapped is None:
        raise ValueError("a tracking event in the outbox has a pseudonym that cannot be mapped")
    if mapped == event.case_ref:
        return None
    new_key = mapped if key == event.case_ref else key
    return new_key, event.model_copy(update={"case_ref": mapped}).model_dump_json().encode()


async def update_outbox_rows(
    conn: AsyncConnection, updates: Sequence[dict[str, Any]], *, republish: bool
) -> None:
    """Write rewritten tracking rows (`row_id`, `new_key`, `new_value`); `republish` makes the
    relay publish them again (their earlier copies carry the old pseudonym)."""
    if not updates:
        return
    values: dict[str, Any] = {"key": sa.bindparam("new_key"), "value": sa.bindparam("new_value")}
    if republish:
        values |= {"published_at": None, "claim_token": None, "claimed_until": None}
    stmt = outbox.update().where(outbox.c.id == sa.bindparam("row_id")).values(values)
    for start in range(0, len(updates), 1000):
        await conn.execute(stmt, list(updates[start : start + 1000]))


def tracking_rows_filter(topic: str, since: dt.datetime | None) -> sa.ColumnElement[bool]:
    """The `gateway.tracking` outbox rows a re-key rewrites: unpublished, or published since."""
    unpublished = outbox.c.published_at.is_(None)
    if since is None:
        return sa.and_(outbox.c.topic == topic, unpublished)
    return sa.and_(outbox.c.topic == topic, sa.or_(unpublished, outbox.c.published_at >= since))
