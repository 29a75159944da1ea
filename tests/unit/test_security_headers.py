"""The security headers: the dashboard's page and assets carry a Content-Security-Policy
that allows its own script and stylesheet only and no framing, `nosniff` and no referrer;
the API's answers carry a policy that allows nothing (they are data, never a page). The app
is not started: these routes need no gateway."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from attest_gateway.config import load_settings
from attest_gateway.entrypoints.http.app import create_app


@pytest.fixture
def client(tmp_path: Path) -> httpx.AsyncClient:
    app = create_app(load_settings(var_dir=tmp_path), "127.0.0.1:1")  # not started: no I/O
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def _directives(policy: str) -> dict[str, str]:
    return {d.strip().split(" ", 1)[0]: d.strip().partition(" ")[2] for d in policy.split(";")}


@pytest.mark.parametrize(
    "path", ["/ministry/", "/ministry/static/app.js", "/ministry/static/style.css"]
)
async def test_the_dashboard_sends_a_strict_policy(client: httpx.AsyncClient, path: str) -> None:
    async with client:
        response = await client.get(path)
    assert response.status_code == 200
    policy = _directives(response.headers["content-security-policy"])
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no inline script, no eval
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def test_the_dashboard_has_no_inline_script_or_style() -> None:
    """What the policy forbids is not in the page: its script and style are files."""
    static = Path(__file__).parents[2] / "src/attest_gateway/entrypoints/http/static"
    page = (static / "index.html").read_text("utf-8")
    assert "<style" not in page
    assert " style=" not in page
    assert page.count("<script") == page.count("<script src=")
    assert not re.search(r"\son[a-z]+\s*=", page)  # no onclick= … handlers


async def test_the_api_answers_with_a_policy_that_allows_nothing(
    client: httpx.AsyncClient,
) -> None:
    async with client:
        missing = await client.get("/jobcenter/v1/no-such-thing")
        unauthenticated = await client.get("/medcom/v1/mailbox")
    for response in (missing, unauthenticated):
        assert response.headers["content-type"] == "application/problem+json"
        policy = _directives(response.headers["content-security-policy"])
        assert policy == {"default-src": "'none'", "frame-ancestors": "'none'"}
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
