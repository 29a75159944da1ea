"""The audit log's hash chain, without a database: the documented hash, and every kind of
tampering `verify_chain` must find (alteration, deletion, reordering, a cut tail, a cut tail
with its head reset, a consistent rewrite) with the first broken seq."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

import pytest

from attest_gateway.contracts.audit import GENESIS, AuditEntry, canonical_at
from attest_gateway.infra.db.audit import MAILBOX_FETCH, AuditEvent, ChainHead, chain, verify_chain

T0 = dt.datetime(2026, 10, 29, 9, 30, tzinfo=dt.UTC)


def _events(n: int, *, actor: str = "psyk-kbh") -> list[AuditEvent]:
    return [
        AuditEvent(
            actor=actor,
            action=MAILBOX_FETCH,
            source="192.0.2.10",
            at=T0 + dt.timedelta(seconds=i),
            subject_org=actor,
            message_id=f"msg-{i}",
            conversation_id=f"conv-{i}",
            detail={"key_id": "hpke-1"} if i % 2 else None,
        )
        for i in range(n)
    ]


def _head(entries: list[AuditEntry]) -> ChainHead:
    return ChainHead(entries[-1].seq, entries[-1].hash) if entries else ChainHead(0, GENESIS)


def _anchors(entries: list[AuditEntry]) -> dict[int, set[str]]:
    return {e.seq: {e.hash} for e in entries}


def _altered(entry: AuditEntry, **changes: object) -> AuditEntry:
    return entry.model_copy(update=changes)


def test_the_hash_is_sha256_of_prev_hash_and_canonical_json() -> None:
    (first, second) = chain(GENESIS, 1, _events(2))
    fields = {
        "seq": 2,
        "at": "2026-10-29T09:30:01.000000+00:00",
        "actor": "psyk-kbh",
        "action": "mailbox.fetch",
        "source": "192.0.2.10",
        "subject_org": "psyk-kbh",
        "message_id": "msg-1",
        "conversation_id": "conv-1",
        "detail": {"key_id": "hpke-1"},
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert second.prev_hash == first.hash
    assert first.prev_hash == GENESIS
    assert second.hash == hashlib.sha256(first.hash.encode() + canonical).hexdigest()


def test_times_hash_the_same_whatever_their_zone() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    naive = T0.replace(tzinfo=None)
    assert canonical_at(T0) == canonical_at(T0.astimezone(cet)) == canonical_at(naive)
    event = _events(1)[0]
    (utc,) = chain(GENESIS, 1, [event])
    (local,) = chain(GENESIS, 1, [dataclasses.replace(event, at=T0.astimezone(cet))])
    assert utc.hash == local.hash


def test_an_intact_chain_verifies() -> None:
    entries = chain(GENESIS, 1, _events(6))
    verdict = verify_chain(entries, _head(entries), _anchors(entries))
    assert verdict.ok
    assert (verdict.entries, verdict.anchored) == (6, 6)


def test_an_empty_chain_verifies() -> None:
    verdict = verify_chain([], ChainHead(0, GENESIS))
    assert verdict.ok
    assert verdict.entries == 0


def test_a_chain_continues_where_the_head_is() -> None:
    first = chain(GENESIS, 1, _events(3))
    rest = chain(first[-1].hash, 4, _events(2))
    assert verify_chain(first + rest, _head(rest)).ok


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "jc-koebenhavn"},
        {"message_id": "msg-other"},
        {"source": "198.51.100.1"},
        {"at": T0 - dt.timedelta(days=1)},
        {"detail": {"key_id": "hpke-2"}},
        {"subject_org": None},
    ],
    ids=lambda c: next(iter(c)),
)
def test_an_altered_entry_is_found(change: dict[str, object]) -> None:
    entries = chain(GENESIS, 1, _events(6))
    entries[3] = _altered(entries[3], **change)
    verdict = verify_chain(entries, _head(entries))
    assert not verdict.ok
    assert verdict.broken_seq == 4
    assert "altered" in (verdict.reason or "")
    assert verdict.entries == 3


def test_an_altered_entry_with_a_new_hash_breaks_the_next_link() -> None:
    entries = chain(GENESIS, 1, _events(6))
    forged = _altered(entries[2], actor="someone-else")
    entries[2] = _altered(forged, hash=forged.expected_hash())
    verdict = verify_chain(entries, _head(entries))
    assert verdict.broken_seq == 4
    assert "does not link" in (verdict.reason or "")


def test_a_deleted_entry_is_found() -> None:
    entries = chain(GENESIS, 1, _events(6))
    del entries[2]
    verdict = verify_chain(entries, ChainHead(6, entries[-1].hash))
    assert verdict.broken_seq == 3
    assert verdict.reason == "entry 3 is missing"


def test_a_deleted_first_entry_is_found() -> None:
    entries = chain(GENESIS, 1, _events(3))
    assert verify_chain(entries[1:], _head(entries)).broken_seq == 1


def test_reordered_entries_are_found() -> None:
    entries = chain(GENESIS, 1, _events(6))
    # Swap the positions of entries 3 and 4 (their seqs swapped, all else kept).
    a, b = entries[2], entries[3]
    entries[2], entries[3] = _altered(b, seq=3), _altered(a, seq=4)
    verdict = verify_chain(entries, _head(entries))
    assert verdict.broken_seq == 3
    assert not verify_chain([entries[0], entries[1], entries[3], entries[2]], _head(entries)).ok


def test_a_cut_tail_is_found_by_the_head() -> None:
    entries = chain(GENESIS, 1, _events(6))
    verdict = verify_chain(entries[:-2], _head(entries))
    assert verdict.broken_seq == 5
    assert "chain head is at 6" in (verdict.reason or "")


def test_a_cut_tail_with_its_head_reset_is_found_only_by_the_topic() -> None:
    entries = chain(GENESIS, 1, _events(6))
    cut = entries[:-1]
    # The database alone cannot tell: the cut chain and its reset head agree…
    assert verify_chain(cut, _head(cut)).ok
    # …but gateway.audit still has entry 6.
    verdict = verify_chain(cut, _head(cut), _anchors(entries))
    assert verdict.broken_seq == 6
    assert "gateway.audit" in (verdict.reason or "")


def test_a_consistent_rewrite_is_found_by_the_topic() -> None:
    entries = chain(GENESIS, 1, _events(6))
    rewritten = entries[:2] + chain(entries[1].hash, 3, _events(4, actor="gp-noerrebro"))
    assert verify_chain(rewritten, _head(rewritten)).ok
    verdict = verify_chain(rewritten, _head(rewritten), _anchors(entries))
    assert verdict.broken_seq == 3
    assert verdict.anchored == 2


def test_a_cut_and_rewritten_tail_is_found_when_the_topic_has_both() -> None:
    entries = chain(GENESIS, 1, _events(4))
    again = entries[:3] + chain(entries[2].hash, 4, _events(1, actor="gp-noerrebro"))
    anchors = _anchors(entries)
    anchors[4].add(again[3].hash)
    verdict = verify_chain(again, _head(again), anchors)
    assert verdict.broken_seq == 4


def test_a_head_that_does_not_match_the_last_entry_is_found() -> None:
    entries = chain(GENESIS, 1, _events(3))
    assert verify_chain(entries, ChainHead(3, "f" * 64)).broken_seq == 3


def test_a_missing_head_is_found() -> None:
    entries = chain(GENESIS, 1, _events(3))
    verdict = verify_chain(entries, None)
    assert verdict.broken_seq == 4
    assert verdict.reason == "the chain head is missing"


def test_an_entry_written_around_the_head_is_found() -> None:
    entries = chain(GENESIS, 1, _events(4))
    verdict = verify_chain(entries, ChainHead(3, entries[2].hash))
    assert verdict.broken_seq == 4
