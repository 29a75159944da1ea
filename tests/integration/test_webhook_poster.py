"""The webhook poster (infra/webhooks/client.py) against a real HTTPS server (uvicorn, a
certificate of the development CA for `localhost` only): the deliveries to one endpoint host
go over one kept-alive connection, and a connection opened for one name is never handed to
another name at the same address (that name's certificate check is made on a connection of
its own, and fails here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest_asyncio
import uvicorn

from attest_gateway.devtools.devca import DevCA, ensure_ca, issue_server_certificate
from attest_gateway.infra.webhooks.client import HttpxPoster, tls_context
from attest_gateway.ports.webhooks import PostResult

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Server:
    """Answers 204 and records the client port of each request (one port: one connection)."""

    def __init__(self, ca: DevCA) -> None:
        self.ca = ca
        self.client_ports: list[int] = []
        self.port = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        self.client_ports.append(scope["client"][1])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ca = ensure_ca(tmp_path / "ca")
    pair = issue_server_certificate(ca, "localhost-only", hosts=("localhost",))
    app = Server(ca)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(pair.cert),
        ssl_keyfile=str(pair.key),
        log_level="warning",
        lifespan="off",
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    while not running.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    app.port = running.servers[0].sockets[0].getsockname()[1]
    try:
        yield app
    finally:
        running.should_exit = True
        await task


async def test_one_connection_per_host_kept_alive_and_never_shared_by_names(
    server: Server,
) -> None:
    poster = HttpxPoster(
        connect_timeout=5,
        read_timeout=5,
        tls=tls_context(server.ca.cert, None, None),
        allow_private_addresses=True,
    )
    try:
        for _ in range(3):
            answer = await poster.post(f"https://localhost:{server.port}/h", b"{}", {})
            assert answer == PostResult(204, None)
        assert len(server.client_ports) == 3
        assert len(set(server.client_ports)) == 1  # kept alive
        # The same address by a name its certificate does not name: a connection of its
        # own, whose check fails, rather than the kept one checked for `localhost`.
        other = await poster.post(f"https://127.0.0.1:{server.port}/h", b"{}", {})
        assert other == PostResult(None, "tls-failed")
        assert len(server.client_ports) == 3
    finally:
        await poster.close()
