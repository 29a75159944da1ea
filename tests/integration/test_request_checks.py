"""The error model's edges: a body of another media type is 415, a query parameter an endpoint
does not take is 422 `unknown-parameter` (it would otherwise silently change a report), and a
creating call without an Idempotency-Key is 400 `idempotency-key-required` in production only.
Nothing is stored for any of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest

from tests.integration.conftest import Harness
from tests.integration.test_bad_input import (
    JC,
    PSY,
    URL,
    assert_problem,
    contact,
    contact_rows,
    counts,
    valid,
)

CONTACTS = "/jobcenter/v1/contacts"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", None],
    ids=["text", "form", "xml", "none"],
)
@pytest.mark.parametrize("url", [URL, CONTACTS])
async def test_a_json_route_refuses_another_media_type(
    harness: Harness, url: str, content_type: str | None
) -> None:
    h = harness
    before = await counts(h), await contact_rows(h)
    body = valid(h) if url == URL else contact()
    headers = {**h.auth(JC)} | ({"Content-Type": content_type} if content_type else {})
    response = await h.client.post(url, content=orjson.dumps(body), headers=headers)
    problem = assert_problem(response, 415, "unsupported-media-type")
    assert problem["title"] == "Unsupported media type"
    assert "application/json" in problem["detail"]
    assert (await counts(h), await contact_rows(h)) == before


async def test_json_with_a_charset_is_json(harness: Harness) -> None:
    response = await harness.client.post(
        URL,
        content=orjson.dumps(valid(harness)),
        headers={**harness.auth(JC), "Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 202, response.text


async def test_the_caller_is_known_before_the_media_type_is_looked_at(harness: Harness) -> None:
    response = await harness.client.post(URL, content=b"x", headers={"Content-Type": "text/plain"})
    assert_problem(response, 401, "unauthenticated")
    response = await harness.client.post(
        URL, content=b"x", headers={**harness.auth(PSY), "Content-Type": "text/plain"}
    )
    assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize(
    ("path", "org", "params", "unknown"),
    [
        ("/ministry/v1/report", "ministry", {"region_code": "1084"}, "region_code"),
        ("/ministry/v1/deadlines", "ministry", {"by": "region", "kommune": "101"}, "kommune"),
        ("/ministry/v1/durations", "ministry", {"from_date": "2026-01-01"}, "from_date"),
        ("/ministry/v1/contacts", "ministry", {"period": "week", "Region": "1084"}, "Region"),
        ("/ministry/v1/meta", "ministry", {"lang": "en"}, "lang"),
        ("/jobcenter/v1/inbox", JC, {"since": "2026-01-01"}, "since"),
        ("/medcom/v1/mailbox", PSY, {"max": "5"}, "max"),
        ("/audit/v1/entries", JC, {"after": "5"}, "after"),
    ],
)
async def test_an_unknown_query_parameter_is_refused_by_name(
    harness: Harness, path: str, org: str, params: dict[str, str], unknown: str
) -> None:
    response = await harness.client.get(path, params=params, headers=harness.auth(org))
    problem = assert_problem(response, 422, "unknown-parameter")
    assert problem["parameters"] == [unknown]
    assert unknown in problem["detail"]


async def test_the_declared_parameters_are_taken(harness: Harness) -> None:
    response = await harness.client.get(
        "/ministry/v1/durations",
        params={
            "from": "2026-01-01",
            "to": "2026-02-01",
            "period": "week",
            "by": "region",
            "series": "true",
            "format": "json",
            "metric": "request_to_attest",
            "attest_type": "LÆ 155",
            "region": "1084",
        },
        headers=harness.auth("ministry"),
    )
    assert response.status_code == 200, response.text


async def test_a_creating_call_refuses_a_query_parameter_and_stores_nothing(
    harness: Harness,
) -> None:
    before = await counts(harness)
    response = await harness.client.post(
        URL, params={"dry_run": "true"}, json=valid(harness), headers=harness.auth(JC)
    )
    assert_problem(response, 422, "unknown-parameter")
    assert await counts(harness) == before


async def test_a_parameter_name_like_a_number_is_not_repeated(harness: Harness) -> None:
    response = await harness.client.get(
        "/ministry/v1/report", params={"0101901234": "x"}, headers=harness.auth("ministry")
    )
    problem = assert_problem(response, 422, "unknown-parameter")
    assert "0101901234" not in response.text
    assert "parameters" not in problem


async def test_the_caller_is_known_before_the_parameters_are_looked_at(harness: Harness) -> None:
    response = await harness.client.get("/ministry/v1/report", params={"x": "1"})
    assert_problem(response, 401, "unauthenticated")
    response = await harness.client.get(
        "/ministry/v1/report", params={"x": "1"}, headers=harness.auth(JC)
    )
    assert_problem(response, 403, "forbidden")


@contextmanager
def production(h: Harness) -> Iterator[None]:
    """The running app's settings in production mode (what the routes read per request)."""
    settings = h.app.state.settings
    h.app.state.settings = settings.model_copy(update={"environment": "production"})
    try:
        yield
    finally:
        h.app.state.settings = settings


@pytest.mark.parametrize("url", [URL, CONTACTS])
async def test_production_requires_an_idempotency_key(harness: Harness, url: str) -> None:
    h = harness
    body = valid(h) if url == URL else contact()
    before = await counts(h), await contact_rows(h)
    with production(h):
        response = await h.client.post(url, json=body, headers=h.auth(JC))
    problem = assert_problem(response, 400, "idempotency-key-required")
    assert problem["title"] == "Idempotency-Key required"
    assert "Idempotency-Key" in problem["detail"]
    assert (await counts(h), await contact_rows(h)) == before
    with production(h):
        keyed = await h.client.post(
            url, json=body, headers={**h.auth(JC), "Idempotency-Key": f"prod-{url[-8:]}"}
        )
    assert keyed.status_code in (201, 202), keyed.text


async def test_development_takes_a_call_without_an_idempotency_key(harness: Harness) -> None:
    assert harness.app.state.settings.environment == "development"
    response = await harness.client.post(URL, json=valid(harness), headers=harness.auth(JC))
    assert response.status_code == 202, response.text
