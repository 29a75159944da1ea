"""`/healthz` (the process is alive) and `/readyz` (it can do its work: the database answers,
Kafka answers and knows our topics, in production the topics have the settings the gateway
needs and the database role cannot rewrite the audit log, the gateway's keys are loaded and
match the directory).

Orchestrators use `/healthz` to restart a hung process and `/readyz` to route traffic and to
order start-up (the compose healthchecks call `attest-gateway healthcheck`, which asks
`/readyz`). Each check has a time limit; answers name the failing check and the error class,
never a connection string or a secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from attest_gateway.infra.container import Gateway
from attest_gateway.infra.db import directory
from attest_gateway.infra.db.grants import rewrite_privileges
from attest_gateway.infra.kafka import topic_check

router = APIRouter(tags=["operations"])

Check = Callable[[Gateway], Awaitable[None]]


class NotReady(Exception):
    """A readiness check failed for a reason worth a sentence."""


async def check_database(gw: Gateway) -> None:
    async with gw.engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


async def check_kafka(gw: Gateway) -> None:
    metadata = await gw.producer.client.fetch_all_metadata()
    if not metadata.brokers():
        raise NotReady("no broker answered")
    missing = [t for t in gw.topics.all() if t not in metadata.topics()]
    if missing:
        raise NotReady(f"topics missing: {', '.join(sorted(missing))}")


async def check_topics(gw: Gateway) -> None:
    """Production: every topic has the settings the gateway needs (`infra/kafka/topic_check`:
    retention, cleanup, `min.insync.replicas`, partitions, replicas), as last read from the
    broker (read again after KAFKA_TOPIC_CHECK_SECONDS). Development asks nothing here: a
    mismatch there is a warning in the log at start."""
    if gw.settings.environment != "production":
        return
    try:
        mismatches = await gw.topic_check.mismatches()
    except topic_check.TopicCheckFailed as exc:  # the broker's error code, nothing secret
        raise NotReady(str(exc)) from None
    if mismatches:
        raise NotReady(f"topic settings differ: {topic_check.reason(mismatches)}")


async def check_audit_grants(gw: Gateway) -> None:
    """Production: the gateway's database role can still only read and append the audit log
    (a grant given after the start would otherwise go unnoticed; infra/db/grants.py)."""
    if gw.settings.environment != "production":
        return
    async with gw.engine.connect() as conn:
        privileges = await rewrite_privileges(conn)
    if privileges:
        raise NotReady(f"the database role may {', '.join(privileges)}")


async def check_keys(gw: Gateway) -> None:
    org_id = gw.settings.gateway_org_id
    if org_id not in gw.keyring.orgs:
        raise NotReady("the gateway's key file is not loaded")
    signing = gw.keyring.signing(org_id)
    async with gw.engine.connect() as conn:
        key = await directory.signing_key(conn, signing.key_id)
    if key is None or key.org_id != org_id:
        raise NotReady("the gateway's signing key is not in the directory")
    if not key.usable(gw.clock.now()):
        raise NotReady("the gateway's signing key is revoked or expired")


CHECKS: dict[str, Check] = {
    "database": check_database,
    "kafka": check_kafka,
    "topics": check_topics,
    "keys": check_keys,
    "audit": check_audit_grants,
}


async def _run(name: str, check: Check, gw: Gateway, limit: float) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"ok": True}
    try:
        async with asyncio.timeout(limit):
            await check(gw)
    except NotReady as exc:
        result = {"ok": False, "error": str(exc)}
    except TimeoutError:
        result = {"ok": False, "error": f"no answer within {limit:g} s"}
    except Exception as exc:  # any failure means not ready; name its class, never its text
        result = {"ok": False, "error": type(exc).__name__}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


async def readiness(gw: Gateway) -> tuple[bool, dict[str, Any]]:
    timeout = gw.settings.readiness_timeout_seconds
    names = list(CHECKS)
    results = await asyncio.gather(*(_run(n, CHECKS[n], gw, timeout) for n in names))
    checks = dict(zip(names, results, strict=True))
    ready = all(r["ok"] for r in results)
    return ready, {"status": "ready" if ready else "unready", "checks": checks}


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The process can work: database, Kafka and keys reachable",
    responses={503: {"description": "a check failed; `checks` names it"}},
)
async def readyz(request: Request) -> JSONResponse:
    gw: Gateway | None = getattr(request.app.state, "gateway", None)
    if gw is None:
        body = {"status": "unready", "checks": {"startup": {"ok": False, "error": "starting"}}}
        return JSONResponse(body, status_code=503)
    ready, body = await readiness(gw)
    return JSONResponse(body, status_code=200 if ready else 503)
