"""What one client may send: a rate and a number of requests at once per organisation and
endpoint class, and a lockout of an address after repeated failed authentications.

Pure and in memory: the state lives in the process that answers (entrypoints/http/auth.py
holds one `RequestLimits` and one `AuthLockout` per app), so N API replicas behind a load
balancer allow N times the configured figures. Time is a monotonic clock in seconds, passed
in (the machine's by default), so that tests step it by hand.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from attest_gateway.core.errors import ErrorCode, RateLimited

Monotonic = Callable[[], float]

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
    """`rate` tokens a second up to `capacity`; a request takes one. Starts full."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Limit:
    """One endpoint class's limits: `per_second` (0: none), a burst of `burst_seconds` of it,
    and `at_once` requests in progress (0: none)."""

    per_second: float
    burst_seconds: float
    at_once: int


@dataclass
class RequestLimits:
    """The rate and the requests at once of each (organisation, endpoint class)."""

    limits: dict[EndpointClass, Limit]
    monotonic: Monotonic = time.monotonic
    _buckets: dict[tuple[str, EndpointClass], TokenBucket] = field(default_factory=dict)
    _in_progress: dict[tuple[str, EndpointClass], int] = field(default_factory=dict)

    @contextmanager
    def admit(self, org_id: str, endpoint: EndpointClass) -> Iterator[None]:
        """Hold one of the organisation's places for `endpoint` while the request runs.
        Raises `RateLimited` (`rate-limited` or `too-many-concurrent-requests`) when over."""
        limit = self.limits.get(endpoint)
        if limit is None:
            yield
            return
        key = (org_id, endpoint)
        if limit.per_second > 0:
            bucket = self._buckets.get(key)
            now = self.monotonic()
            if bucket is None:
                capacity = max(1.0, limit.per_second * limit.burst_seconds)
                bucket = self._buckets[key] = TokenBucket(limit.per_second, capacity, capacity, now)
            wait = bucket.take(now)
            if wait > 0:
                raise RateLimited(
                    ErrorCode.RATE_LIMITED,
                    f"this organisation sends more {endpoint.value} than its limit "
                    f"({limit.per_second:g} a second); retry after Retry-After seconds",
                    retry_after=retry_after_seconds(wait),
                )
        if limit.at_once > 0:
            running = self._in_progress.get(key, 0)
            if running >= limit.at_once:
                raise RateLimited(
                    ErrorCode.TOO_MANY_CONCURRENT_REQUESTS,
                    f"this organisation has {limit.at_once} {endpoint.value} in progress "
                    "already; retry after Retry-After seconds",
                    retry_after=1,
                )
            self._in_progress[key] = running + 1
            try:
                yield
            finally:
                left = self._in_progress[key] - 1
                if left:
                    self._in_progress[key] = left
                else:
                    del self._in_progress[key]
        else:
            yield

    def in_progress(self, org_id: str, endpoint: EndpointClass) -> int:
        return self._in_progress.get((org_id, endpoint), 0)


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
