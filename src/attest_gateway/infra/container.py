"""`Gateway`: the immutable container of one gateway's wired parts (settings, store, keys,
topics and the check of their settings, Kafka producer, outbox relay, group commit, directory
cache, clock, audit chainer).

Only the composition root (`bootstrap.build_gateway`) makes one; everything else is handed
it. It is defined here, below the use cases and the housekeeping that read its fields, rather
than in bootstrap.py, which imports them to wire them: a definition in bootstrap.py would
make every reader import the composition root back. What *runs* (consumers, the tracker, the
sweeper) is not part of it: that is `bootstrap.Running`, made once the container exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.config import Settings
from attest_gateway.core.attests import DEFAULT_CATALOGUE, AttestType
from attest_gateway.core.clock import Clock
from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.infra.db.audit_chainer import AuditChainer
from attest_gateway.infra.db.directory import DirectoryCache
from attest_gateway.infra.db.group_commit import GroupCommit
from attest_gateway.infra.db.pseudonyms import StoreKey
from attest_gateway.infra.db.uow import SqlStore
from attest_gateway.infra.kafka.outage import KafkaOutage
from attest_gateway.infra.kafka.relay import OutboxRelay
from attest_gateway.infra.kafka.topic_check import TopicSettingsCheck
from attest_gateway.infra.kafka.topics import Topics


@dataclass(frozen=True, eq=False)
class Gateway:
    """One gateway's parts, as wired by `bootstrap.build_gateway` (never changed afterwards;
    tests derive variants with `dataclasses.replace`)."""

    settings: Settings
    #: the configured database, bound to `directory` (its lookups answer from the snapshot)
    engine: AsyncEngine
    keyring: KeyRing
    #: the HMAC key of the case refs
    pseudonym_key: bytes
    topics: Topics
    #: the topics' settings held against what they must be (read at start, again on /readyz)
    topic_check: TopicSettingsCheck
    producer: AIOKafkaProducer
    relay: OutboxRelay
    #: accepted requests' rows, written together with those of concurrent requests
    writes: GroupCommit
    #: the store's units of work and repositories, as the use cases take them (ports/store.py)
    store: SqlStore
    #: the directory snapshot cache of `engine` (infra/db/directory.py)
    directory: DirectoryCache
    #: the key id the store's pseudonyms are made with (checked at start, see pseudonyms.py)
    store_key: StoreKey
    clock: Clock
    #: whether the brokers are reachable, for all of this gateway's Kafka clients
    outage: KafkaOutage
    #: chains the pending audit entries (started where the sweeper runs; woken by `writes`)
    chainer: AuditChainer
    catalogue: dict[str, AttestType] = field(default_factory=lambda: dict(DEFAULT_CATALOGUE))
