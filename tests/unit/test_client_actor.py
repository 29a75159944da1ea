"""The partner client names the person acting on every call (`Attest-Actor`, and a
clinician's `Attest-Actor-Authorisation`), when given one; without one it sends neither."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from attest_gateway.client import AsyncClient, Client


def _recording(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": []})

    return httpx.MockTransport(answer)


def test_every_call_names_the_person_acting() -> None:
    seen: list[httpx.Request] = []
    with Client(
        "http://gw", api_key="k-1", transport=_recording(seen),
        actor="mette.holm", actor_authorisation="0C4B1",
    ) as gw:  # fmt: skip
        gw.mailbox()
    assert seen[0].headers["Attest-Actor"] == "mette.holm"
    assert seen[0].headers["Attest-Actor-Authorisation"] == "0C4B1"

    async def read() -> None:
        async with AsyncClient(
            "http://gw", api_key="k-1", transport=_recording(seen), actor="sagsbeh-4711"
        ) as gw:
            await gw.mailbox()

    asyncio.run(read())
    assert seen[1].headers["Attest-Actor"] == "sagsbeh-4711"
    assert "Attest-Actor-Authorisation" not in seen[1].headers


def test_without_a_person_no_actor_header_is_sent() -> None:
    seen: list[httpx.Request] = []
    with Client("http://gw", api_key="k-1", transport=_recording(seen)) as gw:
        gw.mailbox()
    assert "Attest-Actor" not in seen[0].headers
    with pytest.raises(ValueError, match="give actor too"):
        Client("http://gw", api_key="k-1", actor_authorisation="0C4B1")
