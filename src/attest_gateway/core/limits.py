"""What one client may send: a rate and a number of requests at once per organisation and
endpoint class, and a lockout of an address after repeated failed authentications.

A read's cost is the items it hands out (`Limit.items_per_token`): a mailbox read of 200 sealed
envelopes costs what 200 reads of one do, so an organisation cannot buy a hundred times the
gateway's work with one cheap-looking request. A read is admitted when its organisation has a
token, and at once charged the most it asked for (`?limit=`), so that its other requests in
the meantime see that debt (several large reads are not admitted together on one token each);
when its items are known the charge is settled to what it handed out (the rest is given back).
The bucket may go below zero: the organisation's next requests wait the debt out.

A credential that authenticated recently is remembered with its organisation
(`RequestLimits.remember`), so that a request over the limit is refused before its credential
is looked up in the store: a flood of refused requests does not queue for the store's
connections ahead of other organisations' requests. And a request target (method and path)
that a limited route has answered is remembered with its endpoint class (`LimitedTargets`), so
that the HTTP layer can refuse such a request again before the rest of its work
(entrypoints/http/early_refusal.py).

Pure and in memory: the state lives in the process that answers (entrypoints/http/auth.py
holds one `RequestLimits` and one `AuthLockout` per app), so N API replicas behind a load
balancer allow N times the configured figures. Time is a monotonic clock in seconds, passed
in (the machine's by default), so that tests step it by hand.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from attest_gateway.core.errors import ErrorCode, RateLimited

Monotonic = Callable[[], float]
_K = TypeVar("_K")

#: Credentials remembered with their organisation at most (the oldest are forgotten first).
MAX_REMEMBERED_CREDENTIALS = 10_000
#: Request targets remembered with their endpoint class at most (the oldest first).
MAX_REMEMBERED_TARGETS = 4_096
#: A credential's refusals waiting out their pause at once from which the pause grows with
#: them (`stretch`), and the most it grows by.
CROWD_FROM = 8
MAX_STRETCH = 4.0

#: Addresses the lockout tracks at most; beyond, the ones whose window has passed go first,
#: then the oldest (a flood of addresses cannot grow the process without bound).
MAX_TRACKED_ADDRESSES = 100_000


class EndpointClass(StrEnum):
    """What a request does, for its limits: each class has its own rate and its own count of
    requests at once, so that a flood of reads never holds back the same organisation's
    writes."""

    READS = "reads"
    WRITES = "writes"
    REPORTS = "reports"  # the ministry's figures (the costliest reads)


def retry_after_seconds(wait: float) -> int:
    """A `Retry-After` in whole seconds, at least 1."""
    return max(1, math.ceil(wait))


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens a second up to `capacity`; a request takes one, and may be charged more
    afterwards (`charge`: the tokens may go below zero, a debt paid back at `rate`). Starts
    full."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def wait(self, now: float) -> float:
        """0.0 when there is a token, else the seconds until there is (none is taken)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        wait = self.wait(now)
        if wait == 0.0:
            self.tokens -= 1.0
        return wait

    def charge(self, now: float, tokens: float) -> None:
        """Take `tokens` more, whether there are that many or not; a negative charge gives
        them back (up to `capacity`)."""
        self.wait(now)
        self.tokens = min(self.capacity, self.tokens - tokens)


def read_cost(items: int, items_per_token: int) -> int:
    """The tokens a read that handed out `items` costs in all: one per `items_per_token`
    items begun, at least one (0: one, whatever it handed out)."""
    if items_per_token <= 0:
        return 1
    return max(1, -(-items // items_per_token))


@dataclass(frozen=True, slots=True)
class Limit:
    """One endpoint class's limits: `per_second` tokens (0: none), a burst of `burst_seconds`
    of them, and `at_once` requests in progress (0: none). A request costs one token; one that
    hands out items costs one per `items_per_token` of them (`read_cost`; 0: one)."""

    per_second: float
    burst_seconds: float
    at_once: int
    items_per_token: int = 0


class Admission:
    """A request's place, held while it runs. It was charged one token, and the most its
    items may cost when it asked for a number of them; `handed_out` settles the charge to
    what its answer hands out, and leaving `RequestLimits.admit` without that settles it to
    one token."""

    __slots__ = ("_bucket", "_items_per_token", "_monotonic", "charged", "settled")

    def __init__(
        self,
        bucket: TokenBucket | None,
        items_per_token: int,
        monotonic: Monotonic,
        asked: int = 0,
    ) -> None:
        self._bucket = bucket
        self._items_per_token = items_per_token
        self._monotonic = monotonic
        self.charged = 1  # the token it was admitted on (counted without a rate too)
        self.settled = False
        if asked > 0:  # the most it may cost, until it is known
            self._charge(read_cost(asked, items_per_token))

    def handed_out(self, items: int) -> None:
        """The answer hands out `items` (mailbox, inbox, a list): its charge becomes their
        cost (`read_cost`). Called once the items are known, before the answer is sent."""
        self._charge(read_cost(items, self._items_per_token))
        self.settled = True

    def release(self) -> None:
        """The request is over: a charge never settled (an error, a refused parameter) is
        settled to the one token it was admitted on."""
        if not self.settled:
            self._charge(1)
            self.settled = True

    def _charge(self, cost: int) -> None:
        difference = cost - self.charged
        self.charged = cost
        if difference and self._bucket is not None:
            self._bucket.charge(self._monotonic(), difference)


#: What `admit` yields for a class without limits.
UNLIMITED = Admission(None, 0, time.monotonic)


@dataclass(frozen=True, slots=True)
class LimitedTarget:
    """A request target a limited route answers: its endpoint class, and the route (whatever
    the HTTP layer matched, for its metrics)."""

    endpoint: EndpointClass
    route: object


@dataclass
class LimitedTargets:
    """(method, path) → the limited route that answered it, learned as routes answer (a
    path is only ever routed one way), the most recently used `MAX_REMEMBERED_TARGETS` kept."""

    _targets: OrderedDict[tuple[str, str], LimitedTarget] = field(default_factory=OrderedDict)

    def learn(self, method: str, path: str, endpoint: EndpointClass, route: object) -> None:
        key = (method, path)
        if key in self._targets:
            self._targets.move_to_end(key)
            return
        self._targets[key] = LimitedTarget(endpoint, route)
        while len(self._targets) > MAX_REMEMBERED_TARGETS:
            self._targets.popitem(last=False)

    def get(self, method: str, path: str) -> LimitedTarget | None:
        return self._targets.get((method, path))


@dataclass
class RequestLimits:
    """The rate and the requests at once of each (organisation, endpoint class), and
    `org_at_once` requests of all classes at once per organisation (0: no such cap): sized
    below the store's connection pool, one organisation never holds all its connections."""

    limits: dict[EndpointClass, Limit]
    monotonic: Monotonic = time.monotonic
    org_at_once: int = 0
    _org_in_progress: dict[str, int] = field(default_factory=dict)
    _buckets: dict[tuple[str, EndpointClass], TokenBucket] = field(default_factory=dict)
    _in_progress: dict[tuple[str, EndpointClass], int] = field(default_factory=dict)
    _credentials: OrderedDict[str, str] = field(default_factory=OrderedDict)
    _pausing: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def pausing(self, credential: str) -> Iterator[float]:
        """A refusal of `credential` waits out its pause: yields how much longer than the
        configured pause it waits (`stretch`), given the refusals of that credential waiting
        now, this one included."""
        waiting = self._pausing[credential] = self._pausing.get(credential, 0) + 1
        try:
            yield stretch(waiting)
        finally:
            _decrement(self._pausing, credential)

    @contextmanager
    def admit(self, org_id: str, endpoint: EndpointClass, asked: int = 0) -> Iterator[Admission]:
        """Hold one of the organisation's places for `endpoint` while the request runs, and
        charge it: one token, or what `asked` items cost (a `?limit=`) until the `Admission`
        is told what the answer hands out. Raises `RateLimited` (`rate-limited` or
        `too-many-concurrent-requests`) when over."""
        limit = self.limits.get(endpoint)
        if limit is None:
            yield UNLIMITED
            return
        key = (org_id, endpoint)
        bucket = None
        self._refuse_if_busy(org_id, key, limit)
        if limit.per_second > 0:
            bucket = self._bucket(key, limit)
            self._refuse_if_empty(bucket.take(self.monotonic()), endpoint, limit)
        admission = Admission(bucket, limit.items_per_token, self.monotonic, asked)
        self._in_progress[key] = self._in_progress.get(key, 0) + 1
        self._org_in_progress[org_id] = self._org_in_progress.get(org_id, 0) + 1
        try:
            yield admission
        finally:
            admission.release()
            _decrement(self._in_progress, key)
            _decrement(self._org_in_progress, org_id)

    def refuse_early(self, credential: str, endpoint: EndpointClass) -> None:
        """Raise `RateLimited` when the organisation a remembered `credential` authenticated
        as has no token or no place for `endpoint` now; nothing is taken. A credential not
        remembered (or since revoked: it is refused later anyway) passes."""
        org_id = self._credentials.get(credential)
        limit = self.limits.get(endpoint)
        if org_id is None or limit is None:
            return
        key = (org_id, endpoint)
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._refuse_if_empty(bucket.wait(self.monotonic()), endpoint, limit)
        self._refuse_if_busy(org_id, key, limit)

    def remember(self, credential: str, org_id: str) -> None:
        """`credential` (a digest, never the secret) authenticated as `org_id`."""
        if self._credentials.get(credential) == org_id:
            self._credentials.move_to_end(credential)
            return
        self._credentials[credential] = org_id
        while len(self._credentials) > MAX_REMEMBERED_CREDENTIALS:
            self._credentials.popitem(last=False)

    def forget(self, credential: str) -> None:
        """`credential` was refused: it no longer names an organisation."""
        self._credentials.pop(credential, None)

    def _bucket(self, key: tuple[str, EndpointClass], limit: Limit) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            now = self.monotonic()
            capacity = max(1.0, limit.per_second * limit.burst_seconds)
            bucket = self._buckets[key] = TokenBucket(limit.per_second, capacity, capacity, now)
        return bucket

    @staticmethod
    def _refuse_if_empty(wait: float, endpoint: EndpointClass, limit: Limit) -> None:
        if wait > 0:
            raise RateLimited(
                ErrorCode.RATE_LIMITED,
                f"this organisation sends more {endpoint.value} than its limit "
                f"({limit.per_second:g} a second); retry after Retry-After seconds",
                retry_after=retry_after_seconds(wait),
            )

    def _refuse_if_busy(self, org_id: str, key: tuple[str, EndpointClass], limit: Limit) -> None:
        if limit.at_once > 0 and self._in_progress.get(key, 0) >= limit.at_once:
            raise RateLimited(
                ErrorCode.TOO_MANY_CONCURRENT_REQUESTS,
                f"this organisation has {limit.at_once} {key[1].value} in progress "
                "already; retry after Retry-After seconds",
                retry_after=1,
            )
        if 0 < self.org_at_once <= self._org_in_progress.get(org_id, 0):
            raise RateLimited(
                ErrorCode.TOO_MANY_CONCURRENT_REQUESTS,
                f"this organisation has {self.org_at_once} requests in progress already; "
                "retry after Retry-After seconds",
                retry_after=1,
            )

    def in_progress(self, org_id: str, endpoint: EndpointClass | None = None) -> int:
        """The organisation's requests of `endpoint` in progress (None: of every class)."""
        if endpoint is None:
            return self._org_in_progress.get(org_id, 0)
        return self._in_progress.get((org_id, endpoint), 0)


def stretch(waiting: int) -> float:
    """How much longer than the configured pause a refusal waits when `waiting` refusals of
    its credential wait at once: not at all up to CROWD_FROM (a client's few connections),
    then in proportion, at most MAX_STRETCH. A client that sends again on each of its n
    connections as soon as it is refused gets n / (pause × stretch) refusals a second: from
    CROWD_FROM connections on that stays at CROWD_FROM per pause, up to CROWD_FROM ×
    MAX_STRETCH connections (32), and grows only a quarter as fast beyond. Each refusal still
    shortens its Retry-After by its wait, so a client that honours it waits no longer."""
    return min(MAX_STRETCH, max(1.0, waiting / CROWD_FROM))


def _decrement(counts: dict[_K, int], key: _K) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


@dataclass
class AuthLockout:
    """`failures` failed authentications from one address within `window` seconds lock it
    out for `lockout` seconds: every request from it is answered 429 before its credential
    is looked at. Other addresses are not affected. `failures=0`: never."""

    failures: int
    window: float
    lockout: float
    monotonic: Monotonic = time.monotonic
    _failed: dict[str, deque[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)

    def check(self, address: str) -> None:
        """Raise `RateLimited` (`authentication-locked-out`) while the address is locked out."""
        until = self._locked_until.get(address)
        if until is None:
            return
        now = self.monotonic()
        if now >= until:
            del self._locked_until[address]
            return
        raise RateLimited(
            ErrorCode.AUTHENTICATION_LOCKED_OUT,
            "too many failed authentications from this address; retry after Retry-After seconds",
            retry_after=retry_after_seconds(until - now),
        )

    def failed(self, address: str) -> None:
        """Count a failed authentication from the address; lock it out at the limit."""
        if self.failures <= 0:
            return
        now = self.monotonic()
        times = self._failed.get(address)
        if times is None:
            if len(self._failed) >= MAX_TRACKED_ADDRESSES:
                self._forget(now)
            times = self._failed[address] = deque(maxlen=self.failures)
        times.append(now)
        if len(times) == self.failures and now - times[0] <= self.window:
            self._locked_until[address] = now + self.lockout
            del self._failed[address]

    def _forget(self, now: float) -> None:
        for address in [a for a, t in self._failed.items() if now - t[-1] > self.window]:
            del self._failed[address]
        while len(self._failed) >= MAX_TRACKED_ADDRESSES:
            del self._failed[next(iter(self._failed))]
        for address in [a for a, until in self._locked_until.items() if now >= until]:
            del self._locked_until[address]
