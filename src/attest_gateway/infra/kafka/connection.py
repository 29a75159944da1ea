"""How the gateway connects to Kafka: the common client settings (TLS included) and the
producer.

The embedded broker supports neither idempotent producers nor transactions; the exactly-once
effect comes from the store (unique message ids). With Apache Kafka,
`kafka_idempotent_producer` turns idempotence on.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import (
    AIOKafkaProducer,
)

from attest_gateway.config import Settings


def kafka_common(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """What every Kafka client (producer, consumers, admin) is built with, TLS included."""
    common: dict[str, Any] = {"bootstrap_servers": bootstrap, "client_id": settings.kafka_client_id}
    if settings.kafka_security_protocol == "SSL":
        common["security_protocol"] = "SSL"
        common["ssl_context"] = kafka_ssl_context(settings)
    return common


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS to the brokers: verify them against KAFKA_SSL_CAFILE (else the system CAs), and
    present KAFKA_SSL_CERTFILE/KEYFILE when the brokers ask for a client certificate."""
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.kafka_ssl_certfile is not None:
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    return context


def make_producer(settings: Settings, bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka_common(settings, bootstrap),
        acks="all",
        enable_idempotence=settings.kafka_idempotent_producer,
        linger_ms=2,
        request_timeout_ms=15_000,
        # After a broker lost its state, topics may come back with other partitions; a short
        # metadata age keeps a producer from writing to partitions that no longer exist.
        metadata_max_age_ms=10_000,
    )
