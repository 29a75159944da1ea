"""The Kafka the tests run on: the embedded broker (the default), or an external one named by
the environment, so the suite can run against Apache Kafka or any other broker.

    TEST_KAFKA_BOOTSTRAP_SERVERS    host:port[,host:port…] of the external broker; unset = the
                                    tests start the embedded broker (`make test`)
    TEST_KAFKA_SECURITY_PROTOCOL    PLAINTEXT (default) or SSL
    TEST_KAFKA_SSL_CAFILE           PEM CA bundle that verifies the brokers
    TEST_KAFKA_SSL_CERTFILE         PEM client certificate (mutual TLS)
    TEST_KAFKA_SSL_KEYFILE          PEM key of the client certificate
    TEST_KAFKA_RESTART_COMMAND      shell command that restarts the broker (fault tests)
    TEST_KAFKA_STOP_COMMAND         shell command that stops it (back-pressure test) …
    TEST_KAFKA_START_COMMAND        … and one that starts it again

They map onto the gateway's own KAFKA_* settings: in-process gateways get them as settings,
subprocesses as environment variables. Every gateway the tests start uses a topic and group
prefix of its own, so several runs can share one broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attest_gateway.config import load_settings
from attest_gateway.infra.kafka.connection import kafka_ssl_context
from attest_gateway.infra.kafka.embedded import EmbeddedBroker

BOOTSTRAP = "TEST_KAFKA_BOOTSTRAP_SERVERS"
RESTART_COMMAND = "TEST_KAFKA_RESTART_COMMAND"
STOP_COMMAND = "TEST_KAFKA_STOP_COMMAND"
START_COMMAND = "TEST_KAFKA_START_COMMAND"

# The gateway's settings that name a broker and how to reach it (never passed on from the
# environment the tests run in: the tests decide them).
KAFKA_ENV = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "KAFKA_TOPIC_PREFIX",
    "KAFKA_GROUP_PREFIX",
)


@dataclass(frozen=True)
class TestKafka:
    """The broker of the test session: `bootstrap`, and the TLS settings to reach it."""

    __test__ = False  # not a test class

    bootstrap: str
    external: bool
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    restart_command: str | None = None
    stop_command: str | None = None
    start_command: str | None = None

    def settings(self) -> dict[str, Any]:
        """The gateway's settings (as `load_settings` takes them) for this broker's TLS."""
        if self.security_protocol != "SSL":
            return {}
        return {
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": self.ssl_cafile,
            "kafka_ssl_certfile": self.ssl_certfile,
            "kafka_ssl_keyfile": self.ssl_keyfile,
        }

    def env(self) -> dict[str, str]:
        """The gateway's environment variables for this broker (bootstrap and TLS)."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}
        if self.security_protocol == "SSL":
            env["KAFKA_SECURITY_PROTOCOL"] = "SSL"
            for name, path in (
                ("KAFKA_SSL_CAFILE", self.ssl_cafile),
                ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
                ("KAFKA_SSL_KEYFILE", self.ssl_keyfile),
            ):
                if path is not None:
                    env[name] = str(path)
        return env

    def client_args(self) -> dict[str, Any]:
        """Keyword arguments for a raw aiokafka client of the tests on this broker."""
        args: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.security_protocol == "SSL":
            args["security_protocol"] = "SSL"
            args["ssl_context"] = kafka_ssl_context(load_settings(**self.settings()))
        return args

    def reachable(self) -> bool:
        for server in self.bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            with suppress(OSError), socket.create_connection((host, int(port)), 0.5):
                return True
        return False

    def wait_reachable(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while not self.reachable():
            assert time.monotonic() < deadline, f"Kafka at {self.bootstrap} did not come back"
            time.sleep(0.2)


def _path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def external_from_env() -> TestKafka | None:
    """The external broker named by TEST_KAFKA_BOOTSTRAP_SERVERS, or None."""
    bootstrap = os.environ.get(BOOTSTRAP, "").strip()
    if not bootstrap:
        return None
    protocol = os.environ.get("TEST_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").strip().upper()
    if protocol not in ("PLAINTEXT", "SSL"):
        raise ValueError(f"TEST_KAFKA_SECURITY_PROTOCOL must be PLAINTEXT or SSL, not {protocol}")
    return TestKafka(
        bootstrap=bootstrap,
        external=True,
        security_protocol=protocol,
        ssl_cafile=_path("TEST_KAFKA_SSL_CAFILE"),
        ssl_certfile=_path("TEST_KAFKA_SSL_CERTFILE"),
        ssl_keyfile=_path("TEST_KAFKA_SSL_KEYFILE"),
        restart_command=os.environ.get(RESTART_COMMAND) or None,
        stop_command=os.environ.get(STOP_COMMAND) or None,
        start_command=os.environ.get(START_COMMAND) or None,
    )


EXTERNAL = external_from_env()


@contextmanager
def session_kafka() -> Iterator[TestKafka]:
    """The external broker when one is named, else a fresh embedded broker for the session."""
    if EXTERNAL is not None:
        yield EXTERNAL
        return
    with EmbeddedBroker() as embedded:
        yield TestKafka(bootstrap=embedded.bootstrap, external=False)


def client_args(bootstrap: str) -> dict[str, Any]:
    """Keyword arguments for a raw aiokafka client on `bootstrap`: with the external broker's
    TLS when it is that broker, plain otherwise (an embedded broker of a test's own)."""
    if EXTERNAL is not None and bootstrap == EXTERNAL.bootstrap:
        return EXTERNAL.client_args()
    return {"bootstrap_servers": bootstrap}


def kafka_env(bootstrap: str) -> dict[str, str]:
    """The gateway's environment variables for a subprocess on `bootstrap` (with the external
    broker's TLS when it is that broker)."""
    if EXTERNAL is not None and bootstrap == EXTERNAL.bootstrap:
        return EXTERNAL.env()
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}


def settings_for(bootstrap: str) -> dict[str, Any]:
    """The gateway settings for TLS to `bootstrap` (none unless it is the external broker)."""
    if EXTERNAL is not None and bootstrap == EXTERNAL.bootstrap:
        return EXTERNAL.settings()
    return {}


def unique_prefix(letter: str = "t") -> str:
    """A topic prefix no other test or run uses (topics and groups on a shared broker)."""
    return f"{letter}{uuid.uuid4().hex[:8]}."


def prefix_env(prefix: str) -> dict[str, str]:
    return {"KAFKA_TOPIC_PREFIX": prefix, "KAFKA_GROUP_PREFIX": f"{prefix}attest-gateway"}


def gateway_env() -> dict[str, str]:
    """For a gateway subprocess that starts its own embedded broker when it names none: nothing
    (it does, so its topics are its own), or the external broker with a prefix of its own."""
    if EXTERNAL is None:
        return {}
    return {**EXTERNAL.env(), **prefix_env(unique_prefix("e"))}


def run_command(command: str) -> None:
    """Run one of the TEST_KAFKA_*_COMMAND shell commands; fail the test when it fails."""
    result = subprocess.run(  # noqa: S602 - the operator's own command, by design
        command, shell=True, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{command!r} exited {result.returncode}: {result.stderr}"
