"""Bad input gets RFC 9457 problem+json with a stable code, and nothing is stored or published."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from attest_gateway.gateway.store import tables
from tests.integration.conftest import Harness
from tests.support.harness import CPR, attest_request_body

JC = "jc-koebenhavn"
URL = "/jobcenter/v1/attest-requests"


async def counts(h: Harness) -> dict[str, int]:
    """Rows that only an accepted request writes (the relay adds others in the background)."""
    queries = {
        "conversations": sa.select(sa.func.count()).select_from(tables.conversations),
        "idempotency_keys": sa.select(sa.func.count()).select_from(tables.idempotency_keys),
        "outbox_messages": sa.select(sa.func.count())
        .select_from(tables.outbox)
        .where(tables.outbox.c.topic == h.gw.topics.medcom_messages),
        "submitted": sa.select(sa.func.count())
        .select_from(tables.stages)
        .where(tables.stages.c.stage == "submitted"),
    }
    async with h.gw.engine.connect() as conn:
        return {name: (await conn.execute(q)).scalar_one() for name, q in queries.items()}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"].endswith("/" + code)
    assert problem["title"]
    assert problem["detail"]
    assert CPR not in response.text  # never echo the citizen's number
    return problem


def valid(h: Harness, **overrides: Any) -> dict[str, Any]:
    return attest_request_body(**{"jobcenter_gln": h.gln(JC), **overrides})


CASES: list[tuple[str, Any, int, str]] = [
    ("unknown attest type", {"attest_type": "LÆ 999"}, 422, "unknown-attest-type"),
    ("CPR not a date", {"citizen_cpr": "3102901234"}, 422, "invalid-cpr"),
    ("CPR too short", {"citizen_cpr": "010190123"}, 422, "invalid-cpr"),
    ("GLN check digit", {"jobcenter_gln": "5790001010011"}, 422, "invalid-gln"),
    ("unknown receiver", {"receiver": {"sor": "999999999999999"}}, 422, "unknown-receiver"),
    ("unknown ydernummer", {"receiver": {"ydernummer": "099999"}}, 422, "unknown-receiver"),
    ("receiver is a job centre", {"receiver": {"sor": "751181000016005"}}, 422, "unknown-receiver"),
    (
        "GP cannot issue LÆ 155",
        {"receiver": {"ydernummer": "012345"}},
        422,
        "receiver-cannot-issue",
    ),
    ("bad case kind", {"case_kind": "kontanthjaelp"}, 422, "invalid-request"),
    ("unknown field", {"extra": 1}, 422, "invalid-request"),
    ("deadline in the past", {"reply_deadline": "2020-01-01"}, 422, "invalid-reply-deadline"),
    ("other job centre's GLN", {"municipality": "751"}, 403, "jobcenter-mismatch"),
]


@pytest.mark.parametrize(("case", "overrides", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_invalid_request_changes_nothing(
    harness: Harness, case: str, overrides: dict[str, Any], status: int, code: str
) -> None:
    before = await counts(harness)
    response = await harness.client.post(
        URL, json=valid(harness, **overrides), headers=harness.auth(JC)
    )
    assert_problem(response, status, code)
    assert await counts(harness) == before


async def test_malformed_json(harness: Harness) -> None:
    before = await counts(harness)
    response = await harness.client.post(
        URL,
        content=b'{"municipality": "101",',
        headers={**harness.auth(JC), "Content-Type": "application/json"},
    )
    assert_problem(response, 400, "malformed-json")
    assert await counts(harness) == before


MALFORMED = [b'{"municipality": "101",', b'{"municipality": "\xff\xfe"}']
BODY_URLS = [URL, "/jobcenter/v1/contacts"]


@pytest.mark.parametrize("body", MALFORMED, ids=["truncated", "not UTF-8"])
@pytest.mark.parametrize("url", BODY_URLS)
@pytest.mark.parametrize(
    "auth",
    [{}, {"Authorization": "Bearer agw_nobody_123"}],
    ids=["no key", "wrong key"],
)
async def test_malformed_body_of_an_unknown_caller_is_unauthenticated(
    harness: Harness, url: str, body: bytes, auth: dict[str, str]
) -> None:
    """Authentication comes before the body is read: a caller that is not known learns
    nothing about how its body was parsed."""
    before = await counts(harness)
    response = await harness.client.post(
        url, content=body, headers={**auth, "Content-Type": "application/json"}
    )
    problem = assert_problem(response, 401, "unauthenticated")
    assert "errors" not in problem
    assert "json" not in response.text.lower()
    assert await counts(harness) == before


@pytest.mark.parametrize("body", MALFORMED, ids=["truncated", "not UTF-8"])
async def test_malformed_body_of_another_role_is_forbidden(harness: Harness, body: bytes) -> None:
    response = await harness.client.post(
        URL, content=body, headers={**harness.auth("psyk-kbh"), "Content-Type": "application/json"}
    )
    assert_problem(response, 403, "forbidden")


async def test_body_that_is_not_utf8_is_malformed_json(harness: Harness) -> None:
    before = await counts(harness)
    response = await harness.client.post(
        URL, content=MALFORMED[1], headers={**harness.auth(JC), "Content-Type": "application/json"}
    )
    assert_problem(response, 400, "malformed-json")
    assert response.json()["title"] == "Bad request"
    assert await counts(harness) == before


FRAMEWORK_ERRORS = [
    ("DELETE", "/jobcenter/v1/inbox", "GET"),
    ("PUT", URL, "POST"),
    ("GET", "/medcom/v1/messages", "POST"),
    ("TRACE", "/audit/v1/entries", "GET"),
    ("POST", "/ministry/v1/report", "GET"),
    ("PATCH", "/healthz", "GET"),
]


@pytest.mark.parametrize(("method", "path", "allow"), FRAMEWORK_ERRORS)
@pytest.mark.parametrize("authenticated", [True, False], ids=["with key", "without key"])
async def test_method_not_allowed_is_a_problem_with_allow(
    harness: Harness, method: str, path: str, allow: str, authenticated: bool
) -> None:
    """RFC 9110: a 405 names the methods the resource takes in `Allow`."""
    headers = harness.auth(JC) if authenticated else {}
    response = await harness.client.request(method, path, headers=headers)
    problem = assert_problem(response, 405, "method-not-allowed")
    assert problem["title"] == "Method not allowed"
    assert response.headers["allow"] == allow


async def test_body_over_the_limit(harness: Harness) -> None:
    before = await counts(harness)
    big = valid(harness, questions="x" * (harness.settings.max_body_bytes + 10))
    response = await harness.client.post(URL, json=big, headers=harness.auth(JC))
    assert_problem(response, 413, "payload-too-large")
    assert await counts(harness) == before


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer agw_nobody_123"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["missing", "wrong key", "wrong scheme"],
)
async def test_missing_or_wrong_api_key(harness: Harness, headers: dict[str, str]) -> None:
    before = await counts(harness)
    response = await harness.client.post(URL, json=valid(harness), headers=headers)
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"
    assert await counts(harness) == before


async def test_wrong_role(harness: Harness) -> None:
    response = await harness.client.post(URL, json=valid(harness), headers=harness.auth("psyk-kbh"))
    assert_problem(response, 403, "forbidden")
    response = await harness.client.get("/medcom/v1/mailbox", headers=harness.auth(JC))
    assert_problem(response, 403, "forbidden")


async def test_other_job_centres_conversation_is_not_found(harness: Harness) -> None:
    response = await harness.client.post(URL, json=valid(harness), headers=harness.auth(JC))
    assert response.status_code == 202
    cid = response.json()["conversation_id"]
    other = await harness.client.get(f"{URL}/{cid}", headers=harness.auth("jc-aarhus"))
    missing = await harness.client.get(f"{URL}/no-such-id", headers=harness.auth("jc-aarhus"))
    assert_problem(other, 404, "not-found")
    assert_problem(missing, 404, "not-found")
    assert other.json()["detail"] == missing.json()["detail"]


async def test_unknown_route_is_problem_json(harness: Harness) -> None:
    problem = assert_problem(await harness.client.get("/nowhere"), 404, "not-found")
    assert problem["title"] == "Not found"


async def test_idempotency_key(harness: Harness) -> None:
    h = harness
    key = {"Idempotency-Key": "retry-7f3a"}
    first = await h.client.post(URL, json=valid(h), headers={**h.auth(JC), **key})
    assert first.status_code == 202
    before = await counts(h)
    again = await h.client.post(URL, json=valid(h), headers={**h.auth(JC), **key})
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await counts(h) == before
    changed = await h.client.post(
        URL, json=valid(h, questions="Andre spørgsmål"), headers={**h.auth(JC), **key}
    )
    assert_problem(changed, 409, "idempotency-key-reused")
    assert await counts(h) == before
    # The same key from another organisation is a different request.
    other = await h.client.post(
        URL,
        json=attest_request_body(jobcenter_gln=h.gln("jc-aarhus"), municipality="751"),
        headers={**h.auth("jc-aarhus"), **key},
    )
    assert other.status_code == 202
    assert other.json()["conversation_id"] != first.json()["conversation_id"]


async def test_one_idempotency_key_at_the_same_moment_makes_one_request(harness: Harness) -> None:
    """Five posts with one key at once: they pass the replay check together and their writes
    meet in one group commit, where the key's unique index stops all but one; the others are
    answered as replays of it."""
    h = harness
    before = await counts(h)
    key = {"Idempotency-Key": "at-once-51c2"}
    answers = await asyncio.gather(
        *(h.client.post(URL, json=valid(h), headers={**h.auth(JC), **key}) for _ in range(5))
    )
    assert [a.status_code for a in answers] == [202] * 5
    assert len({a.json()["conversation_id"] for a in answers}) == 1
    assert sorted(a.headers.get("idempotent-replayed", "false") for a in answers) == [
        "false", "true", "true", "true", "true"
    ]  # fmt: skip
    after = await counts(h)
    assert {name: after[name] - before[name] for name in after} == {
        "conversations": 1, "idempotency_keys": 1, "outbox_messages": 1, "submitted": 1
    }  # fmt: skip
