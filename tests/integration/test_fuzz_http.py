"""Bad input, fuzzed, over HTTP: deeply nested JSON, random bodies, mutated Bundles.
No 5xx; every error is problem+json with a code; nothing half-written."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import orjson
import pytest

from attest_gateway.medcom.build import build_attest_reply
from tests.integration.conftest import Harness
from tests.integration.test_medcom_side import new_request
from tests.support.harness import attest_request_body
from tests.support.people import CLINICIAN

JC, PSY = "jc-koebenhavn", "psyk-kbh"


def assert_problem(response: Any) -> None:
    assert response.status_code < 500, response.text
    assert response.status_code >= 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"]


@pytest.mark.parametrize(
    ("url", "org"),
    [("/jobcenter/v1/attest-requests", JC), ("/medcom/v1/messages", PSY)],
)
async def test_deeply_nested_json_is_refused(harness: Harness, url: str, org: str) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    response = await harness.client.post(
        url, content=body, headers={**harness.auth(org), "Content-Type": "application/json"}
    )
    assert_problem(response)


async def test_mutated_bundles_get_typed_errors(harness: Harness) -> None:
    """Random mutations of a real reply Bundle: never a 5xx, never delivered twice."""
    h = harness
    _accepted, request, _ = await new_request(h)
    rng = random.Random(20261122)  # fixed seed: reproducible
    base = build_attest_reply(
        author=CLINICIAN,
        request=request,
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=dt.datetime.now(dt.UTC),
        text="svar",
        pdf=None,
    )

    def mutate(node: Any, depth: int = 0) -> Any:
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            choice = rng.random()
            if choice < 0.25:
                return {k: v for k, v in node.items() if k != key}
            if choice < 0.5:
                return {**node, key: rng.choice([None, 0, "", [], {}, "x" * 300, -1, True])}
            return {**node, key: mutate(node[key], depth + 1)}
        if isinstance(node, list) and node:
            i = rng.randrange(len(node))
            return [*node[:i], mutate(node[i], depth + 1), *node[i + 1 :]]
        if isinstance(node, str):
            return rng.choice([node[::-1], node + "\x00", "", "Organization/none", "9" * 40])
        return rng.choice([None, "text", 10**20, 1.5])

    statuses: dict[int, int] = {}
    for _ in range(150):
        fresh = orjson.loads(orjson.dumps(base))  # never a replay of `base`: new ids
        fresh["id"] = str(uuid.uuid4())
        fresh["entry"][0]["resource"]["id"] = str(uuid.uuid4())
        mutated = mutate(fresh)
        response = await h.client.post(
            "/medcom/v1/messages",
            content=orjson.dumps(mutated),
            headers={**h.auth(PSY), "Content-Type": "application/fhir+json"},
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert_problem(response)
    assert any(code >= 400 for code in statuses)  # the mutations really were rejected


async def test_random_request_bodies(harness: Harness) -> None:
    h = harness
    rng = random.Random(7)
    valid = attest_request_body(jobcenter_gln=h.gln(JC))
    for _ in range(100):
        body = dict(valid)
        for key in rng.sample(list(body), k=rng.randint(1, 3)):
            body[key] = rng.choice([None, 12, "", "x" * 70, [1], {"a": 1}, "2026-13-45", True])
        response = await h.client.post(
            "/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC)
        )
        assert response.status_code < 500, response.text
        if response.status_code != 202:
            assert_problem(response)
