"""/healthz and /readyz on the in-process gateway (real broker, both databases)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from attest_gateway.crypto.sealing import KeyRing
from attest_gateway.entrypoints.http.routes import health
from attest_gateway.infra.container import Gateway
from attest_gateway.infra.kafka.topic_check import Mismatch, TopicCheckFailed, TopicSettingsCheck
from tests.integration.conftest import Harness


async def test_healthz_and_readyz(harness: Harness) -> None:
    alive = await harness.client.get("/healthz")
    assert alive.status_code == 200
    assert alive.json() == {"status": "ok"}
    ready = await harness.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "kafka", "topics", "keys", "audit"}
    assert all(check["ok"] for check in body["checks"].values())


async def test_readyz_names_the_failing_check(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broker_down(_gw: Gateway) -> None:
        raise ConnectionRefusedError("secret-host:9093 refused")

    monkeypatch.setitem(health.CHECKS, "kafka", broker_down)
    response = await harness.client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["kafka"] == {"ok": False, "error": "ConnectionRefusedError",
                               "ms": checks["kafka"]["ms"]}  # fmt: skip
    assert checks["database"]["ok"]
    assert checks["keys"]["ok"]
    assert "secret-host" not in response.text  # the class, never the text


async def test_a_hanging_check_times_out(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    async def hangs(_gw: Gateway) -> None:
        await asyncio.Event().wait()

    monkeypatch.setitem(health.CHECKS, "database", hangs)
    impatient = harness.settings.model_copy(update={"readiness_timeout_seconds": 0.05})
    harness.app.state.gateway = dataclasses.replace(harness.gw, settings=impatient)
    try:
        response = await harness.client.get("/readyz")
    finally:
        harness.app.state.gateway = harness.gw
    assert response.status_code == 503
    assert response.json()["checks"]["database"]["error"] == "no answer within 0.05 s"


async def test_topics_check_asks_only_in_production(harness: Harness) -> None:
    """Development never asks the broker here (the warnings came at start); production fails
    on a mismatch, and on a broker that will not describe the topics, saying why."""
    reads: list[str] = []

    async def refused() -> list[Mismatch]:
        reads.append("read")
        raise TopicCheckFailed("the broker refused DescribeConfigs of t: AuthorizationError")

    failing = dataclasses.replace(harness.gw, topic_check=TopicSettingsCheck(refused, max_age=60))
    await health.check_topics(failing)
    assert reads == []
    production = harness.settings.model_copy(update={"environment": "production"})
    with pytest.raises(health.NotReady, match="refused DescribeConfigs of t: Authorization"):
        await health.check_topics(dataclasses.replace(failing, settings=production))
    assert reads == ["read"]


async def test_keys_check_needs_the_gateway_key_in_the_directory(harness: Harness) -> None:
    without_keys = dataclasses.replace(harness.gw, keyring=KeyRing({}))
    with pytest.raises(health.NotReady, match="key file is not loaded"):
        await health.check_keys(without_keys)
    await health.check_keys(harness.gw)


async def test_every_answer_carries_a_correlation_id(harness: Harness) -> None:
    """The caller's X-Correlation-Id comes back unchanged; without one the gateway makes one,
    on success and on problem answers alike."""
    given = await harness.client.get("/healthz", headers={"X-Correlation-Id": "case-4711"})
    assert given.headers["x-correlation-id"] == "case-4711"
    made = await harness.client.get("/healthz")
    other = await harness.client.get("/jobcenter/v1/inbox")  # no credentials: 401
    assert other.status_code == 401
    ids = [made.headers["x-correlation-id"], other.headers["x-correlation-id"]]
    assert all(len(i) == 36 for i in ids)
    assert ids[0] != ids[1]
