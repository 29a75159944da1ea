"""Re-keying the citizens' pseudonyms: every case ref in the store is replaced by the
pseudonym of the same CPR number under a new key, in ONE database transaction.

Offline: every gateway process must be stopped (their consumers would otherwise write or
accept pseudonyms of the old key). `rekey()` holds the `pseudonym-rekey` lease so two
re-keys never run at once, and refuses while a relay holds outbox rows.

In the transaction:
1. the store's key record moves from the old key id to the new one (a conditional update:
   a second re-key that raced this one finds the old id gone and stops);
2. every sealed CPR number (conversations, registered contacts) is opened with the gateway's
   key ring and checked against its row's case ref under the old key; the pair gives the
   mapping old ref → new ref. A sealed CPR number under an older gateway HPKE key is sealed
   again to the current one;
3. refs that no sealed CPR number explains (rows made before CPR numbers were sealed) are
   refused, or with `force` mapped to `pseudonyms.unlinked_ref` (a keyed digest of the old ref
   under the new key: the rows that shared it still share it, so aggregates stay as they are,
   but the citizen's later rows get their real new pseudonym, not this one);
4. every case ref column (conversations and the tracker's tables) is rewritten through a
   temporary mapping table, and so is the JSON of `gateway.tracking` outbox rows not yet
   published or published in the last `republish_since` window (those are published again:
   a tracker that had not consumed the old copy gets the new one; the old copies are
   dead-lettered as `stale-pseudonym`).
A failure anywhere (a sealed CPR number that does not open, a ref that does not match)
rolls all of it back.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.contracts.contacts import NotATrackingEvent, parse_tracking_event
from attest_gateway.core.clock import Clock
from attest_gateway.crypto import pseudonyms as cps
from attest_gateway.crypto.sealing import KeyRing, PublicHpkeKey
from attest_gateway.infra.db import audit
from attest_gateway.infra.db import pseudonyms as ps
from attest_gateway.infra.db.engine import aware, insert_ignore
from attest_gateway.infra.db.tables import (
    conversations,
    leases,
    outbox,
    tracker_cases,
    tracker_contacts,
    tracker_treatments,
)
from attest_gateway.infra.kafka.topics import Topics

LEASE = "pseudonym-rekey"
_CHUNK = 1000

# The mapping old ref → new ref, a temporary table of the re-key's own connection.
_MAP = sa.Table(
    "pseudonym_rekey_map",
    sa.MetaData(),
    sa.Column("old_ref", sa.String(64), primary_key=True),
    sa.Column("new_ref", sa.String(64), nullable=False),
    prefixes=["TEMPORARY"],
)

# Rows that carry a sealed CPR number: (table, primary key column, sealing context).
_SEALED: tuple[tuple[sa.Table, sa.Column[Any], Callable[[str], str]], ...] = (
    (conversations, conversations.c.id, cps.conversation_context),
    (tracker_contacts, tracker_contacts.c.contact_id, cps.contact_context),
    (tracker_cases, tracker_cases.c.case_id, cps.case_context),
    (tracker_treatments, tracker_treatments.c.treatment_id, cps.treatment_context),
)


@dataclass(frozen=True, slots=True)
class _TrackingRow:
    id: int
    key: str
    value: bytes
    published: bool
    ref: str  # the event's case ref as the store keeps it


class RekeyRefused(Exception):
    """The re-key did not happen (nothing changed); the message is one sentence."""


@dataclass
class RekeyReport:
    old_key_id: str
    new_key_id: str
    dry_run: bool = False
    citizens: int = 0  # distinct CPR numbers opened
    sealed_rows: dict[str, int] = field(default_factory=dict)  # rows with a sealed CPR
    resealed: int = 0  # sealed again to the gateway's current HPKE key
    unlinked_refs: int = 0  # refs without a sealed CPR number (force)
    unlinked_rows: dict[str, int] = field(default_factory=dict)
    rewritten: dict[str, int] = field(default_factory=dict)  # rows whose case ref changed
    republished: int = 0  # tracking outbox rows that will be published again


async def rekey(
    engine: AsyncEngine,
    keyring: KeyRing,
    *,
    gateway_org_id: str,
    old_key: bytes,
    new_key: bytes,
    tracking_topic: str,
    republish_since: dt.datetime | None,
    force: bool = False,
    dry_run: bool = False,
    lease_seconds: float = 6 * 3600,
    audit_to: Topics | None = None,
    actor: str = "operator",
    clock: Clock,
) -> RekeyReport:
    """Re-key every pseudonym in the store from `old_key` to `new_key` (see the module).
    Raises RekeyRefused, with nothing changed. `dry_run` does all of it and rolls back."""
    old_kid, new_kid = cps.key_id(old_key), cps.key_id(new_key)
    if new_key == old_key:
        raise RekeyRefused("the new pseudonym key is the current one")
    if new_kid == old_kid:
        raise RekeyRefused(f"the new key's id equals the current key's ({old_kid}): make another")
    holder = uuid.uuid4().hex[:16]
    await _take_lease(engine, holder, lease_seconds, clock.now())
    try:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            try:
                try:  # the first statement writes: SQLite's transaction begins here
                    store = await ps.store_key(
                        conn, old_key, tracking_topic=tracking_topic, now=clock.now()
                    )
                except ps.PseudonymKeyMismatch as exc:
                    raise RekeyRefused(str(exc)) from None
                job = _Rekey(conn, keyring, gateway_org_id, store, old_key, new_key, clock)
                report = await job.run(
                    tracking_topic=tracking_topic, republish_since=republish_since, force=force
                )
                report.dry_run = dry_run
                if audit_to is not None:  # an administrative change: in the same transaction
                    await audit.record(
                        conn,
                        audit_to,
                        actor=actor,
                        action="pseudonym.rekey",
                        source=audit.SOURCE_CLI,
                        at=clock.now(),
                        detail={
                            "old_key_id": report.old_key_id,
                            "new_key_id": report.new_key_id,
                            "citizens": str(report.citizens),
                        },
                    )
            except BaseException:
                await transaction.rollback()
                raise
            if dry_run:
                await transaction.rollback()
            else:
                await transaction.commit()
    finally:
        await _release_lease(engine, holder, clock.now())
    return report


async def _take_lease(engine: AsyncEngine, holder: str, seconds: float, now: dt.datetime) -> None:
    async with engine.begin() as conn:
        await insert_ignore(
            conn, leases, {"name": LEASE, "holder": "", "until": now - dt.timedelta(days=1)}
        )
        taken = await conn.execute(
            leases.update()
            .where(leases.c.name == LEASE, leases.c.until < now)
            .values(holder=holder, until=now + dt.timedelta(seconds=seconds))
        )
        if taken.rowcount == 1:
            return
        until = (
            await conn.execute(sa.select(leases.c.until).where(leases.c.name == LEASE))
        ).scalar_one()
    raise RekeyRefused(
        f"another re-key is running (it holds the {LEASE} lease until "
        f"{aware(until).isoformat(timespec='seconds')})"
    )


async def _release_lease(engine: AsyncEngine, holder: str, now: dt.datetime) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            leases.update()
            .where(leases.c.name == LEASE, leases.c.holder == holder)
            .values(until=now - dt.timedelta(seconds=1))
        )


class _Rekey:
    """One re-key, inside the caller's transaction."""

    def __init__(
        self,
        conn: AsyncConnection,
        keyring: KeyRing,
        gateway_org_id: str,
        store: ps.StoreKey,
        old_key: bytes,
        new_key: bytes,
        clock: Clock,
    ) -> None:
        self.conn = conn
        self.clock = clock
        self.keyring = keyring
        self.gateway_org_id = gateway_org_id
        self.store = store
        self.old_key = old_key
        self.new_key = new_key
        self.mapping: dict[str, str] = {}
        self._in_map: set[str] = set()
        self.report = RekeyReport(cps.key_id(old_key), cps.key_id(new_key))

    async def run(
        self, *, tracking_topic: str, republish_since: dt.datetime | None, force: bool
    ) -> RekeyReport:
        conn, report = self.conn, self.report
        moved = await conn.execute(
            leases.update()
            .where(leases.c.name == ps.KEY_ROW, leases.c.holder == report.old_key_id)
            .values(holder=report.new_key_id, until=self.clock.now())
        )
        if moved.rowcount != 1:
            raise RekeyRefused("the store's pseudonym key changed while the re-key started")
        await conn.execute(leases.delete().where(leases.c.name == ps.LEGACY_ROW))
        await self._refuse_if_running()
        await conn.run_sync(lambda sync: _MAP.create(sync))
        current = await ps.gateway_hpke_key(
            conn, self.keyring, self.gateway_org_id, self.clock.now()
        )
        citizens: set[str] = set()
        for table, pk, context in _SEALED:
            citizens |= await self._open_sealed(table, pk, context, current)
        report.citizens = len(citizens)
        await self._insert_mapping(dict(self.mapping))
        events = await self._tracking_rows(tracking_topic, republish_since)
        unlinked = await self._unlinked(events)
        if unlinked and not force:
            rows = sum(report.unlinked_rows.values())
            raise RekeyRefused(
                f"{len(unlinked)} pseudonym(s) in {rows} row(s) have no sealed CPR number to "
                "re-key from (rows made before CPR numbers were sealed): run again with "
                "--force to give each an unlinked pseudonym under the new key"
            )
        report.unlinked_refs = len(unlinked)
        extra = {ref: cps.unlinked_ref(ref, self.new_key) for ref in unlinked}
        await self._insert_mapping(extra)
        self.mapping |= extra
        for column in ps.REF_COLUMNS:
            report.rewritten[_name(column)] = await self._rewrite(column)
        await self._rewrite_outbox(events)
        await self._check_all_new()
        await conn.run_sync(lambda sync: _MAP.drop(sync))
        return report

    async def _refuse_if_running(self) -> None:
        now = self.clock.now()
        leased = (
            await self.conn.execute(
                sa.select(sa.func.max(outbox.c.claimed_until)).where(
                    outbox.c.published_at.is_(None), outbox.c.claimed_until > now
                )
            )
        ).scalar_one_or_none()
        if leased is not None:
            raise RekeyRefused(
                "a gateway is running (a relay holds outbox rows until "
                f"{aware(leased).isoformat(timespec='seconds')}): stop every gateway process first"
            )

    async def _open_sealed(
        self,
        table: sa.Table,
        pk: sa.Column[Any],
        context: Callable[[str], str],
        current: PublicHpkeKey,
    ) -> set[str]:
        """Open every sealed CPR number of `table`, check it against its row's case ref and
        map the ref; seal again to the current gateway key what was sealed to an older one.
        Returns the CPR numbers' new pseudonyms (one per citizen)."""
        seen: set[str] = set()
        rows_done, last = 0, None
        while True:
            query = (
                sa.select(pk, table.c.case_ref, table.c.citizen_sealed)
                .where(table.c.citizen_sealed.is_not(None))
                .order_by(pk)
                .limit(_CHUNK)
            )
            if last is not None:
                query = query.where(pk > last)
            rows = (await self.conn.execute(query)).all()
            if not rows:
                break
            resealed: list[dict[str, str]] = []
            for row_id, ref, sealed in rows:
                where = f"{table.name} row {row_id}"
                try:
                    cpr = cps.open_citizen(sealed, self.keyring, context=context(row_id))
                except cps.CitizenSealError as exc:
                    raise RekeyRefused(f"{where}: {exc}") from None
                if cps.case_ref(cpr, self.old_key) != ref:
                    raise RekeyRefused(
                        f"{where}: its sealed CPR number does not give its case ref under the "
                        "current key"
                    )
                new_ref = cps.case_ref(cpr, self.new_key)
                if self.mapping.setdefault(ref, new_ref) != new_ref:
                    raise RekeyRefused(f"{where}: two CPR numbers share one case ref")
                seen.add(new_ref)
                if cps.sealed_key_id(sealed) != current.key_id:
                    again = cps.seal_citizen(cpr, current, context=context(row_id))
                    resealed.append({"row_id": row_id, "sealed": again})
            if resealed:
                await self.conn.execute(
                    table.update()
                    .where(pk == sa.bindparam("row_id"))
                    .values(citizen_sealed=sa.bindparam("sealed")),
                    resealed,
                )
            self.report.resealed += len(resealed)
            rows_done += len(rows)
            last = rows[-1][0]
        self.report.sealed_rows[table.name] = rows_done
        return seen

    async def _insert_mapping(self, pairs: dict[str, str]) -> None:
        rows = [
            {"old_ref": old, "new_ref": new}
            for old, new in pairs.items()
            if old not in self._in_map
        ]
        for start in range(0, len(rows), _CHUNK):
            await self.conn.execute(_MAP.insert(), rows[start : start + _CHUNK])
        self._in_map |= pairs.keys()

    async def _tracking_rows(self, topic: str, since: dt.datetime | None) -> list[_TrackingRow]:
        """The tracking outbox rows to rewrite."""
        rows = await self.conn.execute(
            sa.select(outbox.c.id, outbox.c.key, outbox.c.value, outbox.c.published_at)
            .where(ps.tracking_rows_filter(topic, since))
            .order_by(outbox.c.id)
        )
        found = []
        for row in rows:
            try:
                event = parse_tracking_event(row.value)
            except NotATrackingEvent as exc:
                raise RekeyRefused(f"outbox row {row.id}: {exc}") from None
            ref = self.store.admit(event.case_ref) or event.case_ref
            found.append(
                _TrackingRow(row.id, row.key, row.value, row.published_at is not None, ref)
            )
        return found

    async def _unlinked(self, events: list[_TrackingRow]) -> set[str]:
        """The refs no sealed CPR number explains, and how many rows hold them per table."""
        unlinked: set[str] = set()
        for column in ps.REF_COLUMNS:
            known = sa.exists().where(_MAP.c.old_ref == column)
            rows = await self.conn.execute(
                sa.select(column, sa.func.count())
                .where(~known, column.is_not(None))
                .group_by(column)
            )
            count = 0
            for ref, n in rows:
                unlinked.add(ref)
                count += int(n)
            if count:
                self.report.unlinked_rows[_name(column)] = count
        outbox_rows = [e for e in events if e.ref not in self.mapping]
        unlinked |= {e.ref for e in outbox_rows}
        if outbox_rows:
            self.report.unlinked_rows["outbox"] = len(outbox_rows)
        return unlinked

    async def _rewrite(self, column: sa.Column[Any]) -> int:
        table = column.table
        assert isinstance(table, sa.Table)
        new = sa.select(_MAP.c.new_ref).where(_MAP.c.old_ref == column).scalar_subquery()
        result = await self.conn.execute(
            table.update()
            .where(sa.exists().where(_MAP.c.old_ref == column))
            .values({column.key: new})
        )
        return int(result.rowcount or 0)

    async def _rewrite_outbox(self, events: list[_TrackingRow]) -> None:
        def new_ref(old: str) -> str | None:
            return self.mapping.get(self.store.admit(old) or old)

        updates: list[dict[str, Any]] = []
        for row in events:
            try:
                rewritten = ps.rewrite_tracking_row(row.key, row.value, new_ref)
            except ValueError as exc:
                raise RekeyRefused(f"outbox row {row.id}: {exc}") from None
            if rewritten is None:
                continue
            updates.append({"row_id": row.id, "new_key": rewritten[0], "new_value": rewritten[1]})
            self.report.republished += row.published
        # Published rows go out again with the new ref; unpublished ones just wait for the relay.
        await ps.update_outbox_rows(self.conn, updates, republish=True)
        self.report.rewritten["outbox"] = len(updates)

    async def _check_all_new(self) -> None:
        """Every case ref now carries the new key id (else roll back)."""
        prefix = f"{self.report.new_key_id}."
        for column in ps.REF_COLUMNS:
            left = (
                await self.conn.execute(
                    sa.select(sa.func.count()).where(~column.startswith(prefix, autoescape=True))
                )
            ).scalar_one()
            if left:
                raise RekeyRefused(f"{_name(column)}: {left} case ref(s) were not re-keyed")


def _name(column: sa.Column[Any]) -> str:
    table = column.table
    assert isinstance(table, sa.Table)
    return table.name
