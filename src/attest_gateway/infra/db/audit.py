"""The audit log: every read of content and every administrative change, hash-chained.

An entry says who (`actor`), what (`action`), which message, when and from where (`source`:
the client's address, or `cli` / `gateway`). Entries hold ids only, never content or CPR
numbers.

The chain: entry n has `prev_hash` = hash of entry n-1 (64 zeros for entry 1) and
`hash` = sha256(prev_hash || canonical JSON of its fields) (contracts/audit.py). The one-row
`audit_head` table holds the last seq and hash; whoever extends the chain first updates it
(`_lock_head`), which takes its row lock on PostgreSQL and the write lock on SQLite, so
concurrent chainers from several processes queue there instead of forking the chain.

Appending and chaining are two steps. A read, a request or a reply appends its events
unchained (`record_many`): `audit_pending` rows (the event, no seq or hashes yet) in the
caller's transaction, so a read is never committed without its entry, and no shared lock is
taken: concurrent requests no longer queue on the head. The chainer (`chain_pending`,
run by `AuditChainer` in infra/db/audit_chainer.py where the sweeper runs, at its start,
when woken and on a short poll) takes the head's lock, chains the pending rows in `id`
order, a bounded batch per transaction, writes their `audit_log` rows and `gateway.audit`
outbox records, marks each pending row with its seq and moves the head, all in one
transaction. Only chainers take the head's lock, so one chains at a time, whichever process
it is in; rows of transactions still open are simply chained by a later pass (pending rows
are found by their NULL seq, not after a high-water mark, so none is skipped). The
administrative and housekeeping entries (`record`: `org.add` from the command line, the
sweeper opening its own copy, checkpoints, pruning) are rare, come from commands that may run
with no chainer after them, and are chained at once in their transaction.

Pending rows are never removed by the gateway: the runtime role may only set a NULL `seq`
(a column-level UPDATE grant, and on PostgreSQL a trigger that allows nothing else, once;
infra/db/grants.py, migration 0019), not change or delete a row. So an entry cannot vanish
while pending: it is either still pending (`verify` counts the pending entries and gives the
time of the oldest: a stopped chainer shows), or marked with the seq of the chain entry it
became, and `verify` finds a row marked with a seq whose entry is missing or says something
else. Retention removes a chained entry's pending row with the entry. Until an entry is
chained and relayed it is in the database only, as a chained entry was before its outbox
record was published: the owner role could remove it there unseen, not the gateway's role.

`verify` walks the log: a missing, altered or reordered entry breaks the links or the hashes;
a cut tail no longer reaches the head; a cut tail with the head reset too, or a consistent
rewrite, no longer matches what was published on `gateway.audit` (pass those records as
anchors; the topic is out of reach of whoever edits the database), nor the chain heads the
gateway signed (below). On PostgreSQL the gateway's own role cannot change or remove entries
at all (infra/db/grants.py): only the owner role could, and the topic finds what it did.

Pruning keeps the chain verifiable. A checkpoint (`audit_checkpoints`) is the chain's seq and
hash at a moment, signed with the gateway's Ed25519 signing key; the sweeper makes one every
AUDIT_CHECKPOINT_ENTRIES entries or AUDIT_CHECKPOINT_SECONDS (`checkpoint_if_due`), and
appends it to the chain as an `audit.checkpoint` entry, so that the signed head is on
`gateway.audit` too. Whoever rewrites entries before a signed head, even recomputing every
hash, cannot sign it again: `verify` finds the rewrite from the database alone; whoever cuts
the tail and the signed heads in it is found by the signed heads on the topic.
Retention (`prune`) removes the entries up to the newest checkpoint older than the retention
period, oldest first, a batch per transaction: each batch is checked against the checkpoint
before it, ends at a checkpoint (signed then if there is none), takes the older checkpoint
with it, and appends an `audit.prune` entry naming the seq it removed through. So the oldest
kept checkpoint is always the seq just before the first kept entry, and `verify` starts
there: it checks the checkpoint's signature and that the first entry links to its hash. A
changed, moved or missing checkpoint, or removed entries put back (at or below a seq an
`audit.prune` entry names), break the verification.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attest_gateway.config import Settings
from attest_gateway.contracts.audit import GENESIS, AuditEntry, canonical_at, entry_hash
from attest_gateway.core.audit import AUDIT_CHECKPOINT as AUDIT_CHECKPOINT
from attest_gateway.core.audit import AUDIT_PRUNE as AUDIT_PRUNE
from attest_gateway.core.audit import ENVELOPE_OPEN as ENVELOPE_OPEN
from attest_gateway.core.audit import INBOX_FETCH as INBOX_FETCH
from attest_gateway.core.audit import MAILBOX_FETCH as MAILBOX_FETCH
from attest_gateway.core.audit import MESSAGE_SUBMIT as MESSAGE_SUBMIT
from attest_gateway.core.audit import REQUEST_SUBMIT as REQUEST_SUBMIT
from attest_gateway.core.audit import SOURCE_CLI as SOURCE_CLI
from attest_gateway.core.audit import SOURCE_GATEWAY as SOURCE_GATEWAY
from attest_gateway.core.audit import AuditEvent as AuditEvent
from attest_gateway.crypto.sealing import SigningKey, decode_verify_key
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.engine import aware, insert_ignore
from attest_gateway.infra.db.tables import (
    audit_checkpoints,
    audit_head,
    audit_log,
    audit_pending,
    outbox,
)
from attest_gateway.infra.kafka.reading import (
    read_deadline,
    read_to_end,
    started_reader,
    topic_partitions,
)
from attest_gateway.infra.kafka.topics import AUDIT, Topics

HEAD_ID = 1
CHAIN_KEY = "audit"  # record key: the whole chain on one partition
VERIFY_BATCH = 2000
CHAIN_BATCH = 500  # pending entries chained per transaction


def chain(prev_hash: str, first_seq: int, events: Sequence[AuditEvent]) -> list[AuditEntry]:
    """Give events seqs from `first_seq` on and link them after `prev_hash` (pure)."""
    entries: list[AuditEntry] = []
    for seq, event in enumerate(events, start=first_seq):
        fields: dict[str, Any] = {
            "seq": seq,
            "at": aware(event.at).astimezone(dt.UTC),
            "actor": event.actor,
            "action": event.action,
            "source": event.source[:64],
            "subject_org": event.subject_org,
            "message_id": event.message_id,
            "conversation_id": event.conversation_id,
            "detail": dict(event.detail) if event.detail is not None else None,
        }
        digest = entry_hash(prev_hash, fields)
        entries.append(AuditEntry(**fields, prev_hash=prev_hash, hash=digest))
        prev_hash = digest
    return entries


def _headers(entry: AuditEntry) -> str:
    pairs = {
        "content-type": "application/json",
        "schema-version": "1",
        "message-type": "audit",
        "audit-seq": str(entry.seq),
    }
    return orjson.dumps(sorted(pairs.items())).decode()


def _row(entry: AuditEntry) -> dict[str, Any]:
    row = entry.model_dump()
    row["detail"] = (
        orjson.dumps(entry.detail, option=orjson.OPT_SORT_KEYS).decode()
        if entry.detail is not None
        else None
    )
    return row


async def record_many(conn: AsyncConnection, topics: Topics, events: Sequence[AuditEvent]) -> None:
    """Append events, unchained, in the caller's transaction: `audit_pending` rows, which
    take no shared lock. `chain_pending` chains them and writes their `gateway.audit` outbox
    records then, to the chainer's topics (`topics` here is not used)."""
    del topics
    if not events:
        return
    await conn.execute(audit_pending.insert(), [_pending_row(e) for e in events])


def _pending_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": aware(event.at).astimezone(dt.UTC),
        "actor": event.actor,
        "action": event.action,
        "source": event.source[:64],
        "subject_org": event.subject_org,
        "message_id": event.message_id,
        "conversation_id": event.conversation_id,
        "detail": (
            orjson.dumps(dict(event.detail), option=orjson.OPT_SORT_KEYS).decode()
            if event.detail is not None
            else None
        ),
    }


def _event_of(row: Any) -> AuditEvent:
    return AuditEvent(
        actor=row.actor,
        action=row.action,
        source=row.source,
        at=aware(row.at),
        subject_org=row.subject_org,
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        detail=orjson.loads(row.detail) if row.detail is not None else None,
    )


async def has_pending(conn: AsyncConnection) -> bool:
    """Whether an entry waits to be chained (a look into the pending rows' index, no lock)."""
    query = sa.select(audit_pending.c.id).where(audit_pending.c.seq.is_(None)).limit(1)
    return (await conn.execute(query)).first() is not None


async def chain_pending(conn: AsyncConnection, topics: Topics, *, limit: int = CHAIN_BATCH) -> int:
    """Chain up to `limit` pending entries, lowest id first, in the caller's transaction:
    the head's lock first (one chainer at a time; checkpoints and pruning wait), then their
    `audit_log` rows and `gateway.audit` outbox records, each pending row marked with its
    seq, the head moved. Returns how many it chained."""
    head = await _lock_head(conn)
    rows = list(
        await conn.execute(
            sa.select(audit_pending)
            .where(audit_pending.c.seq.is_(None))
            .order_by(audit_pending.c.id)
            .limit(limit)
        )
    )
    if not rows:
        return 0
    entries = chain(head.hash, head.seq + 1, [_event_of(r) for r in rows])
    await _write(conn, topics, entries)
    await conn.execute(
        audit_pending.update()
        .where(audit_pending.c.id == sa.bindparam("pending_id"), audit_pending.c.seq.is_(None))
        .values(seq=sa.bindparam("chained_seq")),
        [{"pending_id": r.id, "chained_seq": e.seq} for r, e in zip(rows, entries, strict=True)],
    )
    await _move_head(conn, entries[-1])
    return len(entries)


async def chain_all(engine: AsyncEngine, topics: Topics, *, batch: int = CHAIN_BATCH) -> int:
    """Chain every entry pending now, `batch` per transaction (see `chain_pending`);
    nothing is locked when none is pending. Returns how many it chained."""
    chained = 0
    while True:
        async with engine.connect() as conn:
            if not await has_pending(conn):
                return chained
        async with engine.begin() as conn:
            done = await chain_pending(conn, topics, limit=batch)
        chained += done
        if done < batch:
            return chained


async def _lock_head(conn: AsyncConnection) -> ChainHead:
    head = (
        await conn.execute(
            audit_head.update()
            .where(audit_head.c.id == HEAD_ID)
            .values(seq=audit_head.c.seq)
            .returning(audit_head.c.seq, audit_head.c.hash)
        )
    ).first()
    if head is None:
        # Fail closed: nothing is chained around a missing head.
        raise RuntimeError("the audit chain head is missing; run `attest-gateway migrate`")
    return ChainHead(head.seq, head.hash)


async def _move_head(conn: AsyncConnection, last: AuditEntry) -> None:
    await conn.execute(
        audit_head.update().where(audit_head.c.id == HEAD_ID).values(seq=last.seq, hash=last.hash)
    )


async def _append(
    conn: AsyncConnection,
    topics: Topics,
    n: int,
    make: Callable[[ChainHead], Sequence[AuditEvent]],
) -> list[AuditEntry]:
    """Chain the `n` events `make` returns at once, given the chain's head before them (read
    with its lock held, so `make` may sign it): the gateway's own bookkeeping (checkpoints,
    pruning), which must sit at a known place in the chain."""
    head = await _lock_head(conn)
    events = make(head)
    if len(events) != n:
        raise ValueError(f"expected {n} audit events, got {len(events)}")
    entries = chain(head.hash, head.seq + 1, events)
    await _write(conn, topics, entries)
    await _move_head(conn, entries[-1])
    return entries


async def _write(conn: AsyncConnection, topics: Topics, entries: Sequence[AuditEntry]) -> None:
    """Chained entries into `audit_log` and the `gateway.audit` outbox."""
    await conn.execute(audit_log.insert(), [_row(e) for e in entries])
    await conn.execute(
        outbox.insert(),
        [
            {
                "topic": topics.audit,
                "key": CHAIN_KEY,
                "value": e.model_dump_json().encode(),
                "headers": _headers(e),
                "message_id": None,
                "created_at": e.at,
            }
            for e in entries
        ],
    )


async def record(
    conn: AsyncConnection,
    topics: Topics,
    *,
    actor: str,
    action: str,
    source: str,
    at: dt.datetime,
    subject_org: str | None = None,
    message_id: str | None = None,
    conversation_id: str | None = None,
    detail: dict[str, str] | None = None,
) -> None:
    """Append one entry and chain it at once, in the caller's transaction (the head's lock
    held from here to the commit): the administrative and housekeeping entries (`org.add` by
    the operator from `cli`, the sweeper opening its own copy …), rare and outside the
    partners' requests, which may come from a command that runs alone, with no chainer
    after it. The partners' reads and requests append with `record_many` instead."""
    event = AuditEvent(
        actor=actor,
        action=action,
        source=source,
        at=at,
        subject_org=subject_org,
        message_id=message_id,
        conversation_id=conversation_id,
        detail=detail,
    )
    await _append(conn, topics, 1, lambda _head: [event])


# --- reading --------------------------------------------------------------------------------


def entry_from_row(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        at=aware(row.at),
        actor=row.actor,
        action=row.action,
        source=row.source,
        subject_org=row.subject_org,
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        detail=orjson.loads(row.detail) if row.detail is not None else None,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


async def entries_of(
    conn: AsyncConnection, org_id: str, *, after_seq: int, limit: int
) -> list[AuditEntry]:
    """The entries where `org_id` is the actor or the subject, after `after_seq`, oldest
    first."""
    rows = await conn.execute(
        sa.select(audit_log)
        .where(
            sa.or_(audit_log.c.actor == org_id, audit_log.c.subject_org == org_id),
            audit_log.c.seq > after_seq,
        )
        .order_by(audit_log.c.seq)
        .limit(limit)
    )
    return [entry_from_row(r) for r in rows]


async def latest(conn: AsyncConnection, *, org_id: str | None, limit: int) -> list[AuditEntry]:
    """The newest `limit` entries (of one organisation, as actor or subject), oldest first."""
    query = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
    if org_id is not None:
        query = query.where(sa.or_(audit_log.c.actor == org_id, audit_log.c.subject_org == org_id))
    rows = list(await conn.execute(query))
    return [entry_from_row(r) for r in reversed(rows)]


# --- verifying ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain's seq and hash at `at`, signed by the gateway's key `key_id`."""

    seq: int
    hash: str
    at: dt.datetime
    key_id: str
    signature: str

    def signed_bytes(self) -> bytes:
        return checkpoint_signed_bytes(self.seq, self.hash, self.at, self.key_id)


def checkpoint_signed_bytes(seq: int, digest: str, at: dt.datetime, key_id: str) -> bytes:
    """What a checkpoint's signature covers: a context string, then canonical JSON."""
    body = {"at": canonical_at(at), "hash": digest, "key_id": key_id, "seq": seq}
    return b"attest-gateway/audit-checkpoint/v1\0" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_checkpoint(signer: SigningKey, seq: int, digest: str, at: dt.datetime) -> Checkpoint:
    at = aware(at).astimezone(dt.UTC)
    signature = signer.key.sign(checkpoint_signed_bytes(seq, digest, at, signer.key_id))
    return Checkpoint(seq, digest, at, signer.key_id, base64.b64encode(signature).decode())


@dataclass(frozen=True, slots=True)
class Verdict:
    entries: int  # entries checked (up to the first break)
    broken_seq: int | None = None
    reason: str | None = None
    anchored: int = 0  # entries also found, with the same hash, on gateway.audit
    first_seq: int = 1  # the first entry checked
    start: Checkpoint | None = None  # the checkpoint the check started from (None: genesis)
    checkpoints: int = 0  # checkpoints whose signature and hash were checked
    pending: int = 0  # entries appended but not chained yet (not checked: no hash yet)
    oldest_pending: dt.datetime | None = None  # the time of the oldest of them

    @property
    def ok(self) -> bool:
        return self.broken_seq is None

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.entries - 1


@dataclass
class ChainVerifier:
    """Feed entries in seq order, then `finish` with the head; stops at the first break.

    `anchors`: seq → the hashes `gateway.audit` carries for it (empty: no topic check).
    """

    anchors: Mapping[int, Collection[str]] = field(default_factory=dict)
    #: the checkpoint to start after (its signature checked by the caller); None: genesis
    start: Checkpoint | None = None
    #: seq → hash of the signed checkpoints within the chain, checked as they are passed
    checkpoints: Mapping[int, str] = field(default_factory=dict)
    count: int = 0
    anchored: int = 0
    #: (seq, signed head) of every `audit.checkpoint` entry passed: their signatures are the
    #: caller's to check (`verify`)
    signed_heads: list[tuple[int, Checkpoint]] = field(default_factory=list)
    _prev: str = GENESIS
    _first: int = 1
    _checked_points: int = 0
    _broken: Verdict | None = None

    def __post_init__(self) -> None:
        if self.start is not None:
            self.count = self.start.seq
            self._prev = self.start.hash
            self._first = self.start.seq + 1
            self._checked_points = 1

    def _break(self, seq: int, reason: str) -> bool:
        self._broken = self._verdict_now(seq, reason)
        return False

    def _verdict_now(self, broken: int | None = None, reason: str | None = None) -> Verdict:
        return Verdict(
            self.count - self._first + 1, broken, reason, self.anchored, self._first,
            self.start, self._checked_points,
        )  # fmt: skip

    def feed(self, entry: AuditEntry) -> bool:
        """Check one entry; False once the chain is broken (later entries are not looked at)."""
        if self._broken is not None:
            return False
        seq = self.count + 1
        if entry.seq != seq:
            if entry.seq > seq:
                return self._break(seq, f"entry {seq} is missing")
            if self.start is not None and entry.seq <= self.start.seq:
                return self._break(
                    entry.seq,
                    f"it is at or before the oldest checkpoint ({self.start.seq}), which "
                    "retention removed: a removed entry was put back",
                )
            return self._break(seq, f"entry {entry.seq} is out of order")
        if entry.prev_hash != self._prev:
            if seq == self._first and self.start is not None:
                return self._break(
                    seq,
                    f"it does not link to the checkpoint at seq {self.start.seq}: the "
                    "checkpoint was moved or entries were removed after it",
                )
            return self._break(
                seq, f"it does not link to entry {seq - 1}: an entry was removed or reordered"
            )
        if entry.expected_hash() != entry.hash:
            return self._break(seq, "its fields do not match its hash: it was altered")
        if entry.action == AUDIT_CHECKPOINT:
            point = checkpoint_of(entry)
            if point is None:
                return self._break(seq, "its signed chain head cannot be read")
            if (point.seq, point.hash) != (seq - 1, self._prev):
                return self._break(
                    seq,
                    f"the chain head it signed (seq {point.seq}) is not the entry before it: "
                    "the entries before it were rewritten",
                )
            self.signed_heads.append((seq, point))
        if seq in self.checkpoints:
            if self.checkpoints[seq] != entry.hash:
                return self._break(seq, "it differs from the signed checkpoint at this seq")
            self._checked_points += 1
        if entry.action == AUDIT_PRUNE and entry.detail is not None:
            through = int(entry.detail.get("through_seq", "0"))
            if self._first <= through:
                return self._break(
                    self._first,
                    f"entries up to {through} were removed by retention (entry {seq} records "
                    "it), but it is in the log: a removed range was put back",
                )
        published = set(self.anchors.get(seq, ()))
        if len(published) > 1:
            return self._break(
                seq,
                "gateway.audit carries different entries with this seq: the log was cut and "
                "written again (or restored from an older backup)",
            )
        if published:
            if entry.hash not in published:
                return self._break(seq, "it differs from the entry published on gateway.audit")
            self.anchored += 1
        self._prev = entry.hash
        self.count = seq
        return True

    def finish(self, head: ChainHead | None, *, newest_seq: int | None = None) -> Verdict:
        """The verdict, given the chain head read before the entries (and, when entries
        may have been appended meanwhile, the newest head seq read after them)."""
        if self._broken is not None:
            return self._broken
        last = self.count
        if head is None:
            return self._verdict(last + 1, "the chain head is missing")
        if head.seq > last:
            gone = f"entry {last + 1} is" if head.seq == last + 1 else f"entries {last + 1}… are"
            return self._verdict(last + 1, f"{gone} missing: the chain head is at {head.seq}")
        if head.seq < last:
            return self._verdict(
                head.seq + 1,
                f"entries after the chain head ({head.seq}) were written around the chain",
            )
        if head.hash != self._prev:
            return self._verdict(max(last, 1), "the last entry does not match the chain head")
        newest = max(last, newest_seq or 0)
        beyond = sorted(seq for seq in self.anchors if seq > newest)
        if beyond:
            return self._verdict(
                last + 1,
                f"entry {beyond[0]} was published on gateway.audit but is not in the log",
            )
        return self._verdict_now()

    def _verdict(self, seq: int, reason: str) -> Verdict:
        self._break(seq, reason)
        assert self._broken is not None
        return self._broken


def verify_chain(
    entries: Iterable[AuditEntry],
    head: ChainHead | None,
    anchors: Mapping[int, Collection[str]] | None = None,
    *,
    start: Checkpoint | None = None,
) -> Verdict:
    """Verify a whole chain held in memory (entries in seq order), from genesis or from the
    checkpoint `start` (whose signature the caller checked)."""
    verifier = ChainVerifier(anchors or {}, start)
    for entry in entries:
        if not verifier.feed(entry):
            break
    return verifier.finish(head)


async def read_head(conn: AsyncConnection) -> ChainHead | None:
    row = (
        await conn.execute(
            sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID)
        )
    ).first()
    return ChainHead(row.seq, row.hash) if row is not None else None


async def verify(
    conn: AsyncConnection,
    anchors: Mapping[int, Collection[str]] | None = None,
    *,
    gateway_org_id: str = "gateway",
    signed_heads: Sequence[Checkpoint] = (),
) -> Verdict:
    """Verify the stored chain, in batches, while the gateway may go on appending.

    Appends commit their entries and the head together, so: the head is read first and only
    entries up to it are checked; then the newest seq is read, then the head again, and an
    entry beyond that head was written around the chain.

    The check starts from genesis while the log holds entry 1, else from the oldest kept
    checkpoint, whose seq must be the one before the first kept entry; every checkpoint's
    signature (a signing key of `gateway_org_id`, usable when it was made) is checked, and
    its hash against the entry at its seq. So is every signed chain head: those the chain
    carries (`audit.checkpoint` entries: each must sign the entry before it) and those
    `gateway.audit` carries (`signed_heads`, read by `read_topic_anchors`): one beyond the
    chain's head means a cut tail, one whose hash differs from the entry at its seq a rewrite.
    """
    head = await read_head(conn)
    points = await read_checkpoints(conn)
    for point in points:
        if (problem := await _bad_signature(conn, point, gateway_org_id)) is not None:
            return Verdict(0, point.seq, f"the checkpoint at seq {point.seq} {problem}")
    published: dict[int, str] = {}
    for point in signed_heads:
        if (problem := await _bad_signature(conn, point, gateway_org_id)) is not None:
            return Verdict(
                0, point.seq, f"the chain head signed at seq {point.seq} on gateway.audit {problem}"
            )
        if published.setdefault(point.seq, point.hash) != point.hash:
            return Verdict(
                0,
                point.seq,
                f"gateway.audit carries two signed chain heads at seq {point.seq}: the log was "
                "cut and written again",
            )
    first = (await conn.execute(sa.select(sa.func.min(audit_log.c.seq)))).scalar()
    start: Checkpoint | None = None
    if first is not None and first > 1:
        if not points:
            return Verdict(0, 1, f"entries 1–{first - 1} are missing and no checkpoint covers them")
        start = points[0]
        if start.seq >= first:
            return Verdict(
                0,
                first,
                f"entry {first} is at or before the oldest checkpoint ({start.seq}), which "
                "retention removed: a removed entry was put back",
                start=start,
            )
    own = {p.seq: p.hash for p in points if start is None or p is not start}
    for seq, digest in sorted(published.items()):
        if start is not None and seq <= start.seq:
            if seq == start.seq and digest != start.hash:
                return Verdict(
                    0, seq, f"the checkpoint at seq {seq} differs from the chain head signed "
                    "at that seq on gateway.audit", start=start,
                )  # fmt: skip
            continue  # removed by retention
        if own.setdefault(seq, digest) != digest:
            return Verdict(
                0, seq, f"the checkpoint at seq {seq} differs from the chain head signed at "
                "that seq on gateway.audit: the log was rewritten", start=start,
            )  # fmt: skip
    verifier = ChainVerifier(anchors or {}, start, own)
    verdict = await _walk(conn, verifier, head, start)
    if verdict is None:
        top = (await conn.execute(sa.select(sa.func.max(audit_log.c.seq)))).scalar()
        head_now = await read_head(conn)
        verdict = verifier.finish(head, newest_seq=head_now.seq if head_now is not None else None)
        if verdict.ok and head_now is not None and top is not None and top > head_now.seq:
            verdict = dataclasses.replace(
                verdict,
                broken_seq=head_now.seq + 1,
                reason=f"entries after the chain head ({head_now.seq}) were written around "
                "the chain",
            )
        beyond = sorted(seq for seq in own if head_now is None or seq > head_now.seq)
        if verdict.ok and beyond:
            verdict = dataclasses.replace(
                verdict,
                broken_seq=beyond[0],
                reason=f"a signed checkpoint is at seq {beyond[0]}, beyond the chain's head: "
                "entries were cut off and the head moved back",
            )
    for seq, point in verifier.signed_heads:  # signed in the chain: checked up to a break
        if verdict.broken_seq is not None and seq >= verdict.broken_seq:
            break
        if (problem := await _bad_signature(conn, point, gateway_org_id)) is not None:
            return dataclasses.replace(
                verdict,
                entries=seq - verdict.first_seq,
                broken_seq=seq,
                reason=f"the chain head it signs {problem}",
            )
    if verdict.ok and (marked := await _falsely_marked(conn)) is not None:
        return dataclasses.replace(
            verdict,
            broken_seq=marked,
            reason=f"an appended entry is marked chained at seq {marked}, but the chain "
            "holds another entry there, or none: it was dropped without being chained",
        )
    count, oldest = (
        await conn.execute(
            sa.select(sa.func.count(), sa.func.min(audit_pending.c.at)).where(
                audit_pending.c.seq.is_(None)
            )
        )
    ).one()
    return dataclasses.replace(
        verdict, pending=count, oldest_pending=aware(oldest) if oldest is not None else None
    )


async def _falsely_marked(conn: AsyncConnection) -> int | None:
    """The lowest seq a pending row is marked with whose chained entry is missing or says
    something else, or None. One statement, one snapshot: the chainer commits an entry and
    its mark together, and retention removes them together, so neither is ever seen alone."""
    p, e = audit_pending, audit_log
    differs = sa.or_(
        e.c.seq.is_(None),
        *(
            e.c[name].is_distinct_from(p.c[name])
            for name in ("at", "actor", "action", "source", "subject_org", "message_id",
                         "conversation_id", "detail")
        ),
    )  # fmt: skip
    query = (
        sa.select(sa.func.min(p.c.seq))
        .select_from(p.outerjoin(e, e.c.seq == p.c.seq))
        .where(p.c.seq.is_not(None), differs)
    )
    found = (await conn.execute(query)).scalar()
    return int(found) if found is not None else None


async def _walk(
    conn: AsyncConnection, verifier: ChainVerifier, head: ChainHead | None, start: Checkpoint | None
) -> Verdict | None:
    """Feed the stored entries up to `head` to `verifier`: its verdict at the first break,
    else None."""
    after = start.seq if start is not None else 0
    while True:
        query = sa.select(audit_log).where(audit_log.c.seq > after)
        if head is not None:
            query = query.where(audit_log.c.seq <= head.seq)
        rows = list(await conn.execute(query.order_by(audit_log.c.seq).limit(VERIFY_BATCH)))
        for row in rows:
            if not verifier.feed(entry_from_row(row)):
                return verifier.finish(head)
        if len(rows) < VERIFY_BATCH:
            return None
        after = rows[-1].seq


async def _bad_signature(
    conn: AsyncConnection, point: Checkpoint, gateway_org_id: str
) -> str | None:
    """Why the checkpoint's signature does not hold, or None."""
    key = await directory.signing_key(conn, point.key_id)
    if key is None or key.org_id != gateway_org_id:
        return f"names a key ({point.key_id}) that is not a signing key of the gateway"
    if not key.usable(point.at):
        return f"was signed when its key ({point.key_id}) was retired or revoked"
    try:
        decode_verify_key(key.public_key).verify(
            base64.b64decode(point.signature), point.signed_bytes()
        )
    except (InvalidSignature, ValueError):
        return "does not match its signature: it was altered or moved"
    return None


# --- checkpoints and retention ----------------------------------------------------------------


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(row.seq, row.hash, aware(row.at), row.key_id, row.signature)


async def read_checkpoints(conn: AsyncConnection) -> list[Checkpoint]:
    """The kept checkpoints, oldest first."""
    rows = await conn.execute(sa.select(audit_checkpoints).order_by(audit_checkpoints.c.seq))
    return [_checkpoint(r) for r in rows]


async def _add_checkpoint(conn: AsyncConnection, point: Checkpoint) -> bool:
    return await insert_ignore(
        conn,
        audit_checkpoints,
        {
            "seq": point.seq,
            "hash": point.hash,
            "at": point.at,
            "key_id": point.key_id,
            "signature": point.signature,
        },
    )


def checkpoint_detail(point: Checkpoint) -> dict[str, str]:
    """An `audit.checkpoint` entry's detail: the signed head, as text."""
    return {
        "seq": str(point.seq),
        "hash": point.hash,
        "at": canonical_at(point.at),
        "key_id": point.key_id,
        "signature": point.signature,
    }


def checkpoint_of(entry: AuditEntry) -> Checkpoint | None:
    """The signed head an `audit.checkpoint` entry carries (None: not one, or unreadable)."""
    d = entry.detail
    if entry.action != AUDIT_CHECKPOINT or d is None:
        return None
    try:
        return Checkpoint(
            int(d["seq"]), d["hash"], dt.datetime.fromisoformat(d["at"]), d["key_id"],
            d["signature"],
        )  # fmt: skip
    except (KeyError, ValueError):
        return None


async def checkpoint_if_due(
    conn: AsyncConnection,
    signer: SigningKey,
    now: dt.datetime,
    *,
    every: int,
    interval: dt.timedelta,
    topics: Topics,
    actor: str,
) -> Checkpoint | None:
    """Sign a checkpoint of the chain's head when it grew by `every` entries since the last
    one, or grew at all and the last is `interval` old (or there is none). The signed head is
    kept in `audit_checkpoints` and appended to the chain as an `audit.checkpoint` entry
    (by `actor`), so it is on `gateway.audit` too, out of reach of whoever edits the
    database; the entry right after a checkpoint (its own, or retention's `audit.prune`) does
    not count as growth. What is pending is chained first (a batch), so the checkpoint
    covers it. The new checkpoint, or None."""
    await chain_pending(conn, topics)
    locked = (  # the head's lock first (as an append takes it): one checkpoint per head
        await conn.execute(
            audit_head.update()
            .where(audit_head.c.id == HEAD_ID)
            .values(seq=audit_head.c.seq)
            .returning(audit_head.c.seq, audit_head.c.hash)
        )
    ).first()
    if locked is None or locked.seq == 0:
        return None
    row = (
        await conn.execute(
            sa.select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1)
        )
    ).first()
    last = _checkpoint(row) if row is not None else None
    if last is not None:
        grown = locked.seq - last.seq
        if grown <= 0:
            return None
        if grown == 1 and await _gateways_own(conn, locked.seq):
            return None
        if grown < every and now - last.at < interval:
            return None
    made: list[Checkpoint] = []

    def signed_head(head: ChainHead) -> list[AuditEvent]:
        made.append(sign_checkpoint(signer, head.seq, head.hash, now))
        return [
            AuditEvent(
                actor=actor,
                action=AUDIT_CHECKPOINT,
                source=SOURCE_GATEWAY,
                at=now,
                detail=checkpoint_detail(made[0]),
            )
        ]

    await _append(conn, topics, 1, signed_head)
    return made[0] if await _add_checkpoint(conn, made[0]) else None


async def _gateways_own(conn: AsyncConnection, seq: int) -> bool:
    """Whether entry `seq` records a checkpoint or a pruning (the gateway's own bookkeeping)."""
    action = (
        await conn.execute(sa.select(audit_log.c.action).where(audit_log.c.seq == seq))
    ).scalar()
    return action in (AUDIT_CHECKPOINT, AUDIT_PRUNE)


async def prune(
    engine: AsyncEngine,
    topics: Topics,
    signer: SigningKey | None,
    *,
    before: dt.datetime,
    now: dt.datetime,
    batch: int,
    actor: str,
    between: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Remove the entries up to the newest checkpoint made before `before`, oldest first,
    `batch` entries per transaction (see the module's docstring), awaiting `between` after
    each batch (retention's pace; else only a turn of the loop). Stops, removing nothing
    more, at a batch that does not link to the checkpoint before it: `verify` says why.
    Returns how many entries it removed."""
    async with engine.connect() as conn:
        target = (
            await conn.execute(
                sa.select(audit_checkpoints.c.seq)
                .where(audit_checkpoints.c.at < before)
                .order_by(audit_checkpoints.c.seq.desc())
                .limit(1)
            )
        ).scalar()
    if target is None:
        return 0
    removed = 0
    while True:
        async with engine.begin() as conn:
            done = await _prune_batch(conn, topics, signer, target, now, batch, actor)
        if done == 0:
            return removed
        removed += done
        if between is not None:
            await between()
        else:
            await asyncio.sleep(0)  # let appends in between batches


async def _prune_batch(
    conn: AsyncConnection,
    topics: Topics,
    signer: SigningKey | None,
    target: int,
    now: dt.datetime,
    batch: int,
    actor: str,
) -> int:
    rows = list(
        await conn.execute(
            sa.select(audit_log)
            .where(audit_log.c.seq <= target)
            .order_by(audit_log.c.seq)
            .limit(batch)
        )
    )
    if not rows:
        return 0
    entries = [entry_from_row(r) for r in rows]
    first = entries[0].seq
    if first == 1:
        prev = GENESIS
    else:
        anchor = (
            await conn.execute(
                sa.select(audit_checkpoints).where(audit_checkpoints.c.seq == first - 1)
            )
        ).first()
        if anchor is None:
            return 0
        prev = anchor.hash
    for expected, entry in enumerate(entries, start=first):
        if entry.seq != expected or entry.prev_hash != prev or entry.expected_hash() != entry.hash:
            return 0  # a broken chain is not pruned: `audit verify` reports it
        prev = entry.hash
    last = entries[-1]
    point = (
        await conn.execute(sa.select(audit_checkpoints).where(audit_checkpoints.c.seq == last.seq))
    ).first()
    if point is None:
        if signer is None:
            return 0
        await _add_checkpoint(conn, sign_checkpoint(signer, last.seq, last.hash, now))
    elif point.hash != last.hash:
        return 0
    await conn.execute(audit_log.delete().where(audit_log.c.seq <= last.seq))
    await conn.execute(audit_pending.delete().where(audit_pending.c.seq <= last.seq))
    await conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.seq < last.seq))
    pruned = AuditEvent(
        actor=actor,
        action=AUDIT_PRUNE,
        source=SOURCE_GATEWAY,
        at=now,
        detail={"through_seq": str(last.seq), "checkpoint_hash": last.hash},
    )
    await _append(conn, topics, 1, lambda _head: [pruned])
    return len(entries)


@dataclass(frozen=True, slots=True)
class TopicAnchors:
    """What `gateway.audit` holds: seq → hashes of its entries, and the signed chain heads
    its `audit.checkpoint` entries carry (oldest first)."""

    entries: dict[int, set[str]]
    signed_heads: list[Checkpoint]


async def read_anchors(settings: Settings, bootstrap: str) -> dict[int, set[str]]:
    """seq → hashes of every entry now on `gateway.audit` (see `read_topic_anchors`)."""
    return (await read_topic_anchors(settings, bootstrap)).entries


async def read_topic_anchors(settings: Settings, bootstrap: str) -> TopicAnchors:
    """Every entry now on `gateway.audit` and the signed chain heads among them (records it
    cannot read are skipped: they are not the gateway's). Raises TopicMissing if there is no
    such topic, KafkaReadTimeout after `kafka_read_timeout_seconds`."""
    topic = settings.topic(AUDIT)
    until = read_deadline(settings)
    tps = await topic_partitions(settings, bootstrap, topic, until=until)
    what = f"reading {topic}"
    async with started_reader(settings, bootstrap, until=until, what=what) as consumer:
        records = await read_to_end(consumer, tps, until=until, what=what)
    return anchors_of(record.value or b"" for record in records)


def anchors_of(values: Iterable[bytes]) -> TopicAnchors:
    """The anchors in `gateway.audit` record values (values that are no entry are skipped)."""
    anchors: dict[int, set[str]] = {}
    heads: list[Checkpoint] = []
    for value in values:
        try:
            entry = AuditEntry.model_validate_json(value)
        except ValueError:
            continue
        anchors.setdefault(entry.seq, set()).add(entry.hash)
        if (point := checkpoint_of(entry)) is not None:
            heads.append(point)
    return TopicAnchors(anchors, sorted(heads, key=lambda p: p.seq))
