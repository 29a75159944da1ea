"""A Kafka outage as the log tells it: one warning when it starts, one line when it ends.

While the brokers are unreachable every Kafka client retries on its own: aiokafka writes an
error line per connection attempt (hundreds a second across a producer and a few consumers),
and the gateway's relay, consumers and sweeper fail and try again. `KafkaOutage` is one
process's view of that: the first failure any client reports writes `kafka.unreachable`
(the bootstrap servers, which client, what kind of error), the failures after it only count
what is being retried (a reminder, `kafka.still_unreachable`, once a minute at most), and the
first success writes `kafka.reachable_again` with the outage's duration and those counts.

`QuietDuringOutage` is the filter on aiokafka's loggers that turns its per-attempt connection
errors into failures of the outage: the first one opens it, the rest are counted and dropped.
aiokafka's other lines (a rebalance, an unexpected error) stay visible.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable

import structlog
from aiokafka.errors import KafkaError, KafkaTimeoutError

from attest_gateway.core.errors import GatewayError

log = structlog.get_logger(__name__)

#: How often, at most, a lasting outage is recalled at warning level.
REMIND_SECONDS = 60.0
#: How long after an outage aiokafka's lines that follow from it are still dropped: a
#: consumer learns that its group session expired meanwhile only once it reaches the broker.
ECHO_SECONDS = 60.0

#: aiokafka's lines that mean "a broker cannot be reached", written once per attempt: the
#: first opens an outage.
_CONNECTION_FAILED = (
    "Unable connect",
    "Unable to connect",
    "Unable to update metadata",
    "Unable to request metadata",
    "NodeNotReadyError",
    "KafkaConnectionError",
    "Connection refused",
    "Connection reset",
    "Connect call failed",
)
#: aiokafka's lines that follow from an outage (a group's session ran out meanwhile, a
#: request waited in vain): dropped while one is known and for `ECHO_SECONDS` after it,
#: written otherwise.
_OUTAGE_ECHOES = (
    "RequestTimedOutError",
    "Marking the coordinator dead",
    "Heartbeat session expired",
    "Coordinator Request failed",
    "Got error produce response",
    "UnknownMemberIdError",  # the group forgot the member whose session ran out
    "member_id was not recognized",
)


def unreachable(error: BaseException) -> bool:
    """Whether a failed Kafka call means the brokers could not be reached (or answered too
    late): a connection error, a timeout, a retriable Kafka error. A record Kafka refuses
    (too large, say) is not an outage, and is logged as the error it is."""
    if isinstance(error, KafkaError):
        return isinstance(error, KafkaTimeoutError) or bool(error.retriable)
    return isinstance(error, OSError | TimeoutError)


def error_kind(error: BaseException | str) -> str:
    """What kind of failure, for the log: a gateway error's code, else the class name; a
    text (an aiokafka line) as it is, cut short."""
    if isinstance(error, GatewayError):
        return str(error.code)
    if isinstance(error, BaseException):
        return type(error).__name__
    return error[:160]


class KafkaOutage:
    """Whether this process's Kafka clients can reach the brokers at `bootstrap`, and what
    they retried while they could not. Every client of one gateway reports to the same one
    (`Gateway.outage`): `failed` after a Kafka call failed, `succeeded` after one worked."""

    def __init__(
        self,
        bootstrap: str,
        *,
        remind_seconds: float = REMIND_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = bootstrap
        self._remind_seconds = remind_seconds
        self._monotonic = monotonic
        self._since: float | None = None  # monotonic, for the duration
        self._ended: float | None = None  # monotonic, when the last outage ended
        self._since_wall = dt.datetime.min.replace(tzinfo=dt.UTC)  # for the reader
        self._reminded = 0.0
        self._clients: set[str] = set()
        self._retried: Counter[str] = Counter()
        self.outages = 0  # how many began in this process

    @property
    def down(self) -> bool:
        return self._since is not None

    def ended_within(self, seconds: float) -> bool:
        """Whether an outage ended less than `seconds` ago."""
        return self._ended is not None and self._monotonic() - self._ended < seconds

    def failed(self, client: str, error: BaseException | str, **retried: int) -> None:
        """A Kafka call of `client` failed; `retried`: what will be tried again because of it
        (counted, e.g. `relay_records=12`)."""
        self._retried.update({k: v for k, v in retried.items() if v})
        self._clients.add(client)
        now = self._monotonic()
        if self._since is None:
            self._since, self._reminded = now, now
            self._since_wall = dt.datetime.now(dt.UTC)
            self.outages += 1
            log.warning(
                "kafka.unreachable",
                bootstrap=self.bootstrap,
                client=client,
                error=error_kind(error),
            )
        elif now - self._reminded >= self._remind_seconds:
            self._reminded = now
            log.warning(
                "kafka.still_unreachable",
                bootstrap=self.bootstrap,
                since=self._since_wall.isoformat(),
                down_seconds=round(now - self._since, 1),
                retried=dict(self._retried),
            )

    def succeeded(self, client: str) -> None:
        """A Kafka call of `client` worked: an outage, if there was one, is over."""
        if self._since is None:
            return
        log.info(
            "kafka.reachable_again",
            bootstrap=self.bootstrap,
            client=client,
            since=self._since_wall.isoformat(),
            down_seconds=round(self._monotonic() - self._since, 1),
            clients=sorted(self._clients),
            retried=dict(self._retried),
        )
        self._since = None
        self._ended = self._monotonic()
        self._clients = set()
        self._retried = Counter()


def connection_failed(record: logging.LogRecord) -> bool:
    """An aiokafka line that says a broker could not be reached (one per attempt)."""
    message = record.getMessage()
    return record.levelno >= logging.WARNING and any(p in message for p in _CONNECTION_FAILED)


def outage_echo(record: logging.LogRecord) -> bool:
    """An aiokafka line that follows from an outage but does not show one by itself."""
    message = record.getMessage()
    return record.levelno >= logging.WARNING and any(p in message for p in _OUTAGE_ECHOES)


class QuietDuringOutage(logging.Filter):
    """On aiokafka's loggers: a connection error is a failure of the outages it watches (the
    first opens one, with its `kafka.unreachable` warning) and is not written itself; the
    outages count them as `connection_attempts`. A line that follows from an outage (a
    session that ran out meanwhile) is dropped while one is known and for `ECHO_SECONDS`
    after it. Any other line passes,
    and every line with no outage watched (no gateway in this process)."""

    def __init__(self) -> None:
        super().__init__()
        self._outages: weakref.WeakSet[KafkaOutage] = weakref.WeakSet()

    def watch(self, outage: KafkaOutage) -> None:
        self._outages.add(outage)

    def filter(self, record: logging.LogRecord) -> bool:
        outages = list(self._outages)
        if not outages:
            return True
        if connection_failed(record):
            for outage in outages:
                outage.failed(record.name, record.getMessage(), connection_attempts=1)
            return False
        if outage_echo(record):
            if any(outage.down for outage in outages):
                for outage in outages:
                    if outage.down:
                        outage.failed(record.name, record.getMessage(), connection_attempts=1)
                return False
            if any(outage.ended_within(ECHO_SECONDS) for outage in outages):
                return False  # told already: the outage that just ended
        return True


#: The one filter of this process, on every aiokafka logger (`quiet_aiokafka`).
AIOKAFKA_FILTER = QuietDuringOutage()


def quiet_aiokafka(outage: KafkaOutage) -> None:
    """Let `outage` take aiokafka's per-attempt connection errors (`QuietDuringOutage`).
    A logger's filters apply only to the lines logged on it, not to those of its children,
    so the filter goes on every aiokafka logger (all exist once aiokafka is imported)."""
    AIOKAFKA_FILTER.watch(outage)
    names = [
        name
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and name.startswith("aiokafka.")
    ]
    for name in ("aiokafka", *names):
        logger = logging.getLogger(name)
        if AIOKAFKA_FILTER not in logger.filters:
            logger.addFilter(AIOKAFKA_FILTER)
