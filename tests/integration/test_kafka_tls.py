"""Kafka over TLS: the gateway's clients (producer, consumers, admin, the sweeper's canary
reads, the readiness check) all speak TLS with the configured CA and client certificate.

The embedded broker has no working TLS of its own, so a TLS-terminating proxy
(tests/support/tlsproxy.py) sits in front of it and requires a client certificate from the
development CA (mutual TLS). The broker listens on a port only the proxy knows and advertises
the proxy's port, so every Kafka byte of the gateway crosses TLS. Clients without the CA,
without a client certificate, or without TLS are refused.

These tests keep their own embedded broker and proxy even when the suite runs on an external
broker (TEST_KAFKA_BOOTSTRAP_SERVERS): they need a broker that refuses the clients named above,
whatever the external one accepts. TLS to the external broker itself is what the TEST_KAFKA_SSL_*
settings exercise across the rest of the suite.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from structlog.testing import capture_logs

from attest_gateway.config import Settings
from attest_gateway.devtools.devca import (
    CertPair,
    DevCA,
    ensure_ca,
    issue_client_certificate,
    issue_server_certificate,
)
from attest_gateway.infra.kafka.connection import kafka_common
from attest_gateway.infra.kafka.embedded import EmbeddedBroker, free_port
from attest_gateway.infra.kafka.outage import KafkaOutage, quiet_aiokafka
from tests.integration.conftest import Harness, running_gateway
from tests.support.flows import round_trip
from tests.support.harness import wait_for
from tests.support.tlsproxy import TlsProxy, established_clients_of

CLIENT_CN = "gateway"


@dataclass
class TlsKafka:
    ca: DevCA
    client: CertPair
    broker: EmbeddedBroker
    proxy: TlsProxy
    tmp: Path


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    """A broker of its own, reachable only through a TLS proxy that requires client certs."""
    tmp = tmp_path_factory.mktemp("kafka-tls")
    ca = ensure_ca(tmp / "ca")
    server = issue_server_certificate(ca, "kafka-proxy", ("127.0.0.1",))
    client = issue_client_certificate(ca, CLIENT_CN)
    proxy_port = free_port()
    with (
        EmbeddedBroker(advertised_port=proxy_port, log_path=tmp / "broker.log") as broker,
        TlsProxy(
            broker.port,
            port=proxy_port,
            certfile=server.cert,
            keyfile=server.key,
            client_ca=ca.cert,
        ) as proxy,
    ):
        yield TlsKafka(ca, client, broker, proxy, tmp)


@pytest_asyncio.fixture(scope="module")
async def tls_harness(tls_kafka: TlsKafka) -> AsyncIterator[Harness]:
    """The in-process gateway (SQLite) with KAFKA_SECURITY_PROTOCOL=SSL, CA and client cert,
    bootstrapping from the proxy."""
    async with running_gateway(
        "sqlite",
        tls_kafka.tmp,
        tls_kafka.proxy.bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=tls_kafka.ca.cert,
        kafka_ssl_certfile=tls_kafka.client.cert,
        kafka_ssl_keyfile=tls_kafka.client.key,
    ) as h:
        yield h


def _admin(settings: Settings, bootstrap: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**kafka_common(settings, bootstrap), request_timeout_ms=10_000)


async def _refused_with(proxy: TlsProxy, since: int, reason: str) -> bool:
    async def seen() -> bool:
        return any(reason in r for r in proxy.stats().refused[since:])

    return await wait_for(seen, within=15)


async def test_a_round_trip_crosses_only_the_tls_proxy(
    tls_harness: Harness, tls_kafka: TlsKafka
) -> None:
    h, proxy, broker = tls_harness, tls_kafka.proxy, tls_kafka.broker
    assert proxy.port != broker.port
    before = proxy.stats()

    conversation = await round_trip(h)

    after = proxy.stats()
    assert conversation.reply_message_id
    assert after.connections > 0
    assert after.bytes_to_upstream > before.bytes_to_upstream
    assert after.bytes_to_clients > before.bytes_to_clients
    # Every forwarded connection came with the gateway's client certificate; none refused.
    assert set(after.client_subjects) == {CLIENT_CN}
    assert after.refused == before.refused
    # The brokers the gateway's clients know are the proxy: the metadata names its port.
    brokers = h.gw.producer.client.cluster.brokers()
    assert brokers
    assert {(b.host, b.port) for b in brokers} == {("127.0.0.1", proxy.port)}

    # Whoever is connected to the broker's own port is one of the proxy's upstream sockets.
    clients = established_clients_of(broker.port)
    assert clients, "the gateway's producer and consumers keep their connections open"

    async def all_from_the_proxy() -> bool:
        return clients <= proxy.stats().upstream_ports

    assert await wait_for(all_from_the_proxy, within=5)


async def test_readiness_checks_kafka_over_tls(tls_harness: Harness) -> None:
    response = await tls_harness.client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["kafka"]["ok"]


async def test_a_client_with_the_ca_and_certificate_connects(
    tls_harness: Harness, tls_kafka: TlsKafka
) -> None:
    """The positive twin of the refusals below: the same client, built the same way."""
    admin = _admin(tls_harness.settings, tls_kafka.proxy.bootstrap)
    await admin.start()
    try:
        assert tls_harness.gw.topics.medcom_messages in await admin.list_topics()
    finally:
        await admin.close()


async def test_a_client_without_the_ca_is_refused(
    tls_harness: Harness, tls_kafka: TlsKafka, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tls_harness.settings.model_copy(update={"kafka_ssl_cafile": None})  # system CAs
    since = len(tls_kafka.proxy.stats().refused)
    admin = _admin(settings, tls_kafka.proxy.bootstrap)
    # What an operator reads (docs/operations.md, "Kafka TLS"): the gateway's outage warning
    # carries aiokafka's reason, which aiokafka's own per-attempt line no longer repeats.
    outage = KafkaOutage(tls_kafka.proxy.bootstrap)
    quiet_aiokafka(outage)
    with (
        capture_logs() as logs,
        caplog.at_level(logging.ERROR, logger="aiokafka"),
        pytest.raises(KafkaConnectionError),
    ):
        await admin.start()
    await admin.close()
    warnings = [
        e for e in logs if e["event"] == "kafka.unreachable" and e["bootstrap"] == outage.bootstrap
    ]
    assert outage.down  # one of them is this test's own (the harness's gateway may add one)
    assert warnings
    assert all("CERTIFICATE_VERIFY_FAILED" in e["error"] for e in warnings)
    assert "CERTIFICATE_VERIFY_FAILED" not in caplog.text  # counted, not written once per attempt
    assert await _refused_with(tls_kafka.proxy, since, "")  # the proxy saw it give up


async def test_a_client_without_a_certificate_is_refused(
    tls_harness: Harness, tls_kafka: TlsKafka
) -> None:
    settings = tls_harness.settings.model_copy(
        update={"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None}
    )
    since = len(tls_kafka.proxy.stats().refused)
    admin = _admin(settings, tls_kafka.proxy.bootstrap)
    with pytest.raises(KafkaConnectionError):
        await admin.start()
    await admin.close()
    assert await _refused_with(tls_kafka.proxy, since, "PEER_DID_NOT_RETURN_A_CERTIFICATE")


async def test_a_plaintext_client_is_refused(tls_harness: Harness, tls_kafka: TlsKafka) -> None:
    settings = tls_harness.settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    assert "ssl_context" not in kafka_common(settings, tls_kafka.proxy.bootstrap)
    since = len(tls_kafka.proxy.stats().refused)
    admin = _admin(settings, tls_kafka.proxy.bootstrap)
    with pytest.raises(KafkaConnectionError):
        await admin.start()
    await admin.close()
    assert await _refused_with(tls_kafka.proxy, since, "SSLError")
