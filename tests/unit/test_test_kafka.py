"""TEST_KAFKA_* name the tests' external broker; they map onto the gateway's KAFKA_* settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from attest_gateway.config import load_settings
from tests.support.kafka import external_from_env


def test_unset_means_the_embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert external_from_env() is None


def test_the_tls_settings_map_onto_the_gateways(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TEST_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9093,kafka-2:9093")
    monkeypatch.setenv("TEST_KAFKA_SECURITY_PROTOCOL", "ssl")
    monkeypatch.setenv("TEST_KAFKA_SSL_CAFILE", "/certs/ca.crt")
    monkeypatch.setenv("TEST_KAFKA_SSL_CERTFILE", "/certs/client.crt")
    monkeypatch.setenv("TEST_KAFKA_SSL_KEYFILE", "/certs/client.key")
    monkeypatch.setenv("TEST_KAFKA_RESTART_COMMAND", "systemctl restart kafka")
    monkeypatch.delenv("TEST_KAFKA_STOP_COMMAND", raising=False)
    kafka = external_from_env()
    assert kafka is not None
    assert kafka.external
    assert kafka.restart_command == "systemctl restart kafka"
    assert kafka.stop_command is None
    assert kafka.env() == {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9093,kafka-2:9093",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": "/certs/ca.crt",
        "KAFKA_SSL_CERTFILE": "/certs/client.crt",
        "KAFKA_SSL_KEYFILE": "/certs/client.key",
    }
    settings = load_settings(var_dir=tmp_path, **kafka.settings())
    assert settings.kafka_security_protocol == "SSL"
    assert settings.kafka_ssl_cafile == Path("/certs/ca.crt")
    assert settings.kafka_ssl_keyfile == Path("/certs/client.key")


def test_plaintext_passes_only_the_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KAFKA_BOOTSTRAP_SERVERS", " 127.0.0.1:19092 ")
    monkeypatch.delenv("TEST_KAFKA_SECURITY_PROTOCOL", raising=False)
    kafka = external_from_env()
    assert kafka is not None
    assert kafka.env() == {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092"}
    assert kafka.settings() == {}
    assert kafka.client_args() == {"bootstrap_servers": "127.0.0.1:19092"}


def test_an_unknown_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    monkeypatch.setenv("TEST_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValueError, match="PLAINTEXT or SSL"):
        external_from_env()
