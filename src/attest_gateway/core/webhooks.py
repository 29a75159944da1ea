"""Webhooks, the pure part: the delivery's stable id, secrets, the retry schedule, the
endpoint URL rule (SSRF) and the per-endpoint circuit breaker.

No I/O here: the dispatcher and the sender (services/webhooks.py) decide with these, the
store (infra/db/webhooks.py) and the HTTP client (infra/webhooks/client.py) act. Which stage
becomes which event for whom is in services/webhooks.py (it needs the stage events).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import random
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from attest_gateway.core.errors import ErrorCode, InvalidInput

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
MAX_URL_LENGTH = 500


def delivery_id(source_id: str, endpoint_id: str) -> str:
    """The delivery's id, the `webhook-id` header: derived from what it reports and where it
    goes, so the same stage event read twice from Kafka makes the same delivery."""
    digest = hashlib.sha256(f"{source_id}\n{endpoint_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def new_endpoint_id() -> str:
    return f"ep_{secrets.token_hex(12)}"


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes, base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


# --- retries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits a random time up to
    min(cap, base·2^(n-1)); after `period` from the delivery's creation it is given up."""

    base: dt.timedelta
    cap: dt.timedelta
    period: dt.timedelta

    def next_attempt(
        self, attempts: int, now: dt.datetime, give_up_at: dt.datetime, rng: random.Random
    ) -> dt.datetime | None:
        """When to try again after `attempts` failed attempts; None: give up."""
        ceiling = min(self.cap.total_seconds(), self.base.total_seconds() * 2 ** (attempts - 1))
        # at least a tenth of the ceiling, so that a retry never comes back at once
        at = now + dt.timedelta(seconds=rng.uniform(ceiling / 10, ceiling))
        return at if at < give_up_at else None


# --- the endpoint URL (SSRF) ------------------------------------------------------------------


def blocked_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address no production webhook may reach: private, loopback, link-local (cloud
    metadata), multicast, reserved or unspecified; an IPv4-mapped IPv6 address as its IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def check_url(url: str, *, production: bool) -> str:
    """An endpoint URL: absolute https, no credentials, no fragment; in production no
    loopback name and no blocked address literal (the names are checked again when they are
    resolved, at every delivery). Raises InvalidInput (`invalid-webhook-url`)."""
    parts = urlsplit(url)
    if len(url) > MAX_URL_LENGTH or parts.scheme != "https" or not parts.hostname:
        raise InvalidInput(
            ErrorCode.INVALID_WEBHOOK_URL, "a webhook endpoint is an absolute https URL"
        )
    if parts.username or parts.password or parts.fragment:
        raise InvalidInput(
            ErrorCode.INVALID_WEBHOOK_URL, "a webhook URL carries no credentials and no fragment"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise InvalidInput(ErrorCode.INVALID_WEBHOOK_URL, "the URL's port is not valid") from None
    if production:
        host = parts.hostname
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise InvalidInput(
                ErrorCode.INVALID_WEBHOOK_URL, "a webhook endpoint must be a public address"
            )
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return url
        if blocked_address(literal):
            raise InvalidInput(
                ErrorCode.INVALID_WEBHOOK_URL, "a webhook endpoint must be a public address"
            )
    return url


# --- the circuit breaker ----------------------------------------------------------------------


class CircuitBreaker:
    """Per endpoint: after `threshold` failures in a row the circuit opens for `cooldown`
    (nothing is sent there), then lets one attempt through (half-open); a success closes
    it, a failure opens it again. Times are the caller's monotonic seconds."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def failures(self) -> int:
        return self._failures

    def is_open(self, now: float) -> bool:
        return self._open_until is not None and now < self._open_until

    def allow(self, now: float) -> bool:
        """Whether an attempt may go now (and, half-open, take the one probe)."""
        if self._open_until is None:
            return True
        if now < self._open_until or self._probing:
            return False
        self._probing = True
        return True

    def reopens_at(self) -> float | None:
        return self._open_until

    def succeeded(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False

    def failed(self, now: float) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self._threshold:
            self._open_until = now + self._cooldown
